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
#     - results/t2ue_table1.csv
#     - results/t2ue_table1.md
#     - results/t2ue_costs.csv
#     - results/t2ue_costs.md
#     - results/t2ue_generator_costs.csv
#     - results/t2ue_generator_costs.md
#     - results/t2ue_noise_diversity.csv
#     - results/t2ue_noise_diversity.md
#     - results/t2ue_table2.csv
#     - results/t2ue_table2.md
#     - results/t2ue_collector.csv
#     - results/t2ue_collector.md
#     - figures/t2ue_closure.png
#     - figures/t2ue_closure.pdf
#     - figures/t2ue_collector.png
#     - figures/t2ue_collector.pdf
#     - figures/t2ue_examples.png
#     - figures/t2ue_examples.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 15. Extension: T2UE, protection from the caption alone (not in the paper)
#
# MEM optimises the noise of each image against a surrogate, for each collection anew: a person
# must hand their photos to whoever runs it. **T2UE** (Ma et al., "Generating Unlearnable Examples
# from Text Descriptions", arXiv 2508.03091, 2025) trains a text-conditioned noise generator once,
# by error minimisation against a surrogate CLIP; afterwards an image's noise is one forward pass of
# its caption, and the image never leaves its owner ("zero-contact" protection).
#
# The library's T2UE (`mmue_lib.t2ue`, method `t2ue`) keeps the paper's structure: a text encoder,
# a generator into the image (noise) space, a bound of eps through the output layer, and EM's
# bi-level loop with the generator's weights in the place of each image's noise (the surrogate
# trains a few steps on the current noisy pairs, then the generator a few steps to lower the
# surrogate's loss on them). Where the paper starts from a pretrained text-to-image model and text
# encoder, nothing pretrained can be loaded here: the generator is the project's own, learned from
# scratch (a bag of the caption's BPE tokens with its own embeddings, zero for a token it never saw;
# four upsampling convolution stages; eps * tanh). An image's noise comes from its first caption.
#
# Two settings:
#
# - **T2UE**: the generator learns from the released images and captions themselves (the study's
#   setting, as MEM does);
# - **T2UE (generator_corpus: disjoint)**, zero contact: the generator learns from images the
#   release does not contain (the val split and the train images beyond the released ones) and is
#   applied to captions it never saw.
#
# Measured beside the paper's methods: Table 1 (02's runs), transfer to other victim architectures
# (03's), the careful collector of 13 (its data and runs), and what each costs to make.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#
# The victim architectures come from `03_table2`'s params and the careful collector from
# `13_careful_collector`'s, at the same scale, so that their runs are shared.

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
import pandas as pd

from mmue_lib import experiments, figures, paper, records, runs, tables
from mmue_lib.methods import method_variant
from mmue_lib.metrics import random_metrics
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("15_t2ue", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.t2ue(settings)
records.write_run_records(experiment, settings.results_dir, "t2ue")
test_set = runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image)

# %% [markdown]
# ## Table 1 with T2UE
#
# Retrieval of each victim on the clean test split (beside the paper's numbers where it has them),
# and the closure C against the clean victim (1: as bad as chance, 0: as good as clean data).

# %%
table1 = experiment["table1"]
finals = {label: entry["victim"]["final"] for label, entry in table1.items()}
paper_rows = {label: paper.table1(label, settings.paper_dataset) for label in ["Random", *finals]
              if (label, settings.paper_dataset) in paper.TABLE1}
table = tables.retrieval_table(finals, chance, paper_rows)
tables.write_table(table, settings.results_dir, "t2ue_table1")

# %%
protected_rows = table[~table["method"].isin(["Random", "Clean"])].assign(victim=settings.victim_model)
figure = figures.plot_grouped_bars(protected_rows, "victim", "method", ["i2t C", "t2i C"])
figures.save_figure(figure, settings.figures_dir, "t2ue_closure")

# %% [markdown]
# ## What each protection costs
#
# Every protection in seconds and in units of one clean victim run; then T2UE's two parts: training
# its generator (once), and the noise of the released set from its captions (per image).

# %%
costs = tables.protection_costs(table1)
tables.write_table(costs, settings.results_dir, "t2ue_costs")

# %%
generator_costs = tables.generator_costs(table1)
tables.write_table(generator_costs, settings.results_dir, "t2ue_generator_costs")

# %% [markdown]
# ## How different each image's noise is
#
# A contrastive batch learns a shortcut when the noise tells its pairs apart. Per protection (T2UE's and
# those of `diversity_methods`), over the first released images: the share of the noises' energy in their 2 and 10 main directions (near 1: a
# few patterns shared by many images), and how close each image's noise is to the most similar other
# image's (median cosine; 1: the same noise).

# %%
compared = {method_variant(item)[2] for item in [*options.diversity_methods, *options.t2ue_methods]}
noises = {label: runs.load_protection(entry["protection"]).noise for label, entry in table1.items() if label in compared}
diversity = tables.noise_diversity(noises, options.diversity_images)
tables.write_table(diversity, settings.results_dir, "t2ue_noise_diversity")

# %% [markdown]
# ## Transfer to other victim architectures (Table 2's question)
#
# Each protection made on the surrogate, victims of each architecture trained on clean and on
# protected data.

# %%
table2_options = load_settings("03_table2", scale).options
victim_models, paper_victims = table2_options.victim_models, table2_options.paper_victims
transfer = pd.concat([
    tables.transfer_table([(victim, paper_victim, runs_of[victim]["clean"]["final"],
                            runs_of[victim]["protected"]["final"])
                           for victim, paper_victim in zip(victim_models, paper_victims)],
                          chance, "protected", {}).assign(method=label)
    for label, runs_of in experiment["transfer"].items()], ignore_index=True)
transfer = transfer[["method", *[c for c in transfer if c != "method" and not c.endswith("(paper)")]]]
tables.write_table(transfer, settings.results_dir, "t2ue_table2")

# %% [markdown]
# ## Under the careful collector of `13_careful_collector`
#
# Its data (the first released images), its released-data countermeasures and its training; C
# against its undefended clean victim (for clean data C is what the countermeasure costs a collector
# whose data was never protected).

# %%
collector = tables.defense_table(experiment["collector"], random_metrics(
    runs.load_data(load_settings("13_careful_collector", scale).data, "test").row_image))
tables.write_table(collector, settings.results_dir, "t2ue_collector")

# %%
figure = figures.plot_closure_heatmap(collector)
figures.save_figure(figure, settings.figures_dir, "t2ue_collector")

# %% [markdown]
# ## What T2UE publishes: clean, protected, amplified noise, caption
#
# The noise of each image is its caption's: images whose captions share words share parts of their
# noise. The caption is released unchanged (T2UE adds no trigger).

# %%
train_set = runs.load_data(settings.data, "train")
t2ue_label = next(label for label in table1 if label.startswith("T2UE"))
published = protected_dataset(train_set, runs.load_protection(table1[t2ue_label]["protection"]))
figure = figures.plot_protected_examples(train_set, published, options.example_count)
figures.save_figure(figure, settings.figures_dir, "t2ue_examples")

# %% [markdown]
# ## Reading
#
# The cpu results of this notebook are not measured yet: the tables above at cpu scale will be
# committed with their run records once its runs are made (`python -m mmue_lib.notebooks --scale cpu
# --only 15_t2ue`), and the reading written from them.
