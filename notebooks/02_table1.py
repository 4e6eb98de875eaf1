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
#     outputs:
#     - results/table1.csv
#     - results/table1_costs.csv
#     - figures/table1_examples.png
#     - figures/table1_examples.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 2. Table 1: protection against CLIP trained from scratch
#
# Victims of one architecture are trained from scratch on clean data and on data protected by
# each method; each is evaluated by retrieval on the **clean** test set (Hit@10 = R@10 in %,
# MedR; image->text and text->image). The paper's numbers stand beside ours (its victims are
# RN50 at 224 px trained 32 epochs; the scale of this run is in its settings), and the last
# columns give the protection closure C = (MedR - MedR_clean) / (MedR_random - MedR_clean):
# 0 is no protection, 1 is as bad as random guessing.
#
# All runs are cached (`mmue_lib.runs`): Figure 4, 5 and 6 reuse them without retraining.
# UAP attacks the clean victim (a surrogate trained on clean data, as in the paper).
# `trigger_per` decides whether each caption row (the official code, and the library's default)
# or each image (all its captions) carries its own trigger; the settings cell shows the
# choice at this scale.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 55 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, paper, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("02_table1", scale, overrides, output_root)
settings

# %%
experiment = experiments.table1(settings)
records.write_run_records(experiment, settings.results_dir, "table1")
test_set = runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image)

# %% [markdown]
# ## Retrieval on the clean test set

# %%
finals = {label: entry["victim"]["final"] for label, entry in experiment.items()}
paper_rows = {label: paper.table1(label, settings.paper_dataset) for label in ["Random", *finals]
              if (label, settings.paper_dataset) in paper.TABLE1}
table = tables.retrieval_table(finals, chance, paper_rows)
tables.write_table(table, settings.results_dir, "table1")

# %% [markdown]
# ## Cost of each protection (seconds, and in units of one clean victim run) and its final objective

# %%
costs = tables.protection_costs(experiment)
tables.write_table(costs, settings.results_dir, "table1_costs")

# %% [markdown]
# ## What a protector publishes: MEM examples (clean, protected, amplified noise, caption with trigger)

# %%
train_set = runs.load_data(settings.data, "train")
mem_label = next(label for label in experiment if label.startswith("MEM"))
published = protected_dataset(train_set, runs.load_protection(experiment[mem_label]["protection"]))
figure = figures.plot_protected_examples(train_set, published, settings.options.example_count)
figures.save_figure(figure, settings.figures_dir, "table1_examples")
