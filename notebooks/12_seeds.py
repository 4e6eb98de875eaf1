# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,mmue,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (mmue)
#     language: python
#     name: mmue
#   mmue:
#     extension: true
#     outputs:
#     - results/seeds.csv
#     - results/seeds.md
#     - results/seeds_per_run.csv
#     - results/seeds_mem_vs_em.csv
#     - figures/seeds.png
#     - figures/seeds.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 12. Extension: Tables 1 and 2 over seeds (not in the paper)
#
# The paper reports one run per cell. Here every run of Tables 1 and 2 (the surrogate's and the
# victims' initialisation, batch order, caption and shuffle draws) is repeated with each seed of
# `seeds`; each cell shows the mean and the half-width of the 95% Student-t interval of the mean,
# beside the paper's single number. C is computed per seed against that seed's clean victim of the
# same architecture. The last table says whether MEM's advantage over EM (the per-seed difference
# of C) is larger than the seed-to-seed spread, i.e. whether its 95% interval excludes 0.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 75 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, paper, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.methods import METHODS
from mmue_lib.settings import load_settings

settings = load_settings("12_seeds", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.seeds(settings)
records.write_run_records(experiment, settings.results_dir, "seeds")
chance = random_metrics(runs.load_data(settings.data, "test").row_image)
long = tables.seed_long_table(experiment, chance)
tables.write_table(long, settings.results_dir, "seeds_per_run")

# %% [markdown]
# ## Mean and 95% interval per cell, beside the paper's single run

# %%
labels = ["Clean", *(METHODS[m].label for m in options.seed_methods)]
paper_rows = paper.seed_study_rows(settings.victim_model, labels, dict(zip(options.victim_models, options.paper_victims)),
                                   METHODS[options.transfer_method].label, settings.paper_dataset)
summary = tables.seed_table(long, paper_rows)
tables.write_table(summary, settings.results_dir, "seeds")

# %%
figure = figures.plot_seed_intervals(summary)
figures.save_figure(figure, settings.figures_dir, "seeds")

# %% [markdown]
# ## Is MEM's advantage over EM larger than the seed spread?

# %%
pairs = [(label, "EM") for label in labels if label.startswith("MEM")]
differences = tables.seed_differences(long, settings.victim_model, pairs)
for _, row in differences.iterrows():
    verdict = "larger than" if row["beyond seed spread"] else "within"
    print(f"{row['comparison']} on {row['value']}: {row['mean']:+.2f} ± {row['±95%']:.2f} (95%), {verdict} the seed spread")
tables.write_table(differences, settings.results_dir, "seeds_mem_vs_em")
