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

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/02_table1.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Table 1 (`results/cpu/table1.md`, every run's parameters, seeds and times in
# `results/cpu/runs/table1.json`). Hit@10 % / MedR on the 1,000 test images, the paper's
# full-scale MedR beside ours, and the protection closure
# C = (MedR - MedR_clean) / (MedR_random - MedR_clean), 0 = no protection, 1 = chance:
#
# | method | i2t Hit@10 | i2t MedR | t2i Hit@10 | t2i MedR | C i2t / t2i | paper MedR i2t / t2i | paper C |
# |---|---|---|---|---|---|---|---|
# | Random | 1.0 | 647 | 1.0 | 500 | 1 / 1 | 727 / 490 | 1 / 1 |
# | Clean | 13.5 | 119 | 12.3 | 96 | 0 / 0 | 58 / 60 | 0 / 0 |
# | EM | 6.8 | 289 | 7.8 | 172 | 0.32 / 0.19 | 117 / 86 | 0.09 / 0.06 |
# | UAP | 8.0 | 240 | 9.7 | 134 | 0.23 / 0.09 | 110 / 76 | 0.08 / 0.04 |
# | MEM-3 | 1.0 | 666 | 1.6 | 425 | 1.04 / 0.81 | 304 / 250 | 0.37 / 0.44 |
# | MEM-5 | 1.7 | 595 | 1.5 | 429 | 0.90 / 0.82 | 308 / 275 | 0.37 / 0.50 |
#
# Reading: the clean victim learns (MedR 0.18 / 0.19 of random). The paper's ordering
# reproduces: MEM-3 and MEM-5 far above EM and UAP, UAP the weakest, EM in between; MEM-3 and
# MEM-5 are close to each other, as in the paper (304 / 250 vs 308 / 275). MEM drives the victim
# to chance image -> text and most of the way text -> image; every method closes more of the
# gap than at the paper's scale. This is not the paper's setting: 64 px, a 21 M-parameter
# ResNet CLIP, 8 epochs, per-image triggers and a cheaper schedule. `14_scale` measured why every
# closure is higher: not the small victim (over eleven operating points MEM-3's C stays at
# 0.95-1.44 / 0.73-0.85, and its trend with the clean victim's quality does not reach the paper's
# point) but the schedule: at 128 px the official code's schedule gives MEM-3 0.37 / 0.30 where
# ours gives 1.02 / 0.73. Seed spread: see `12_seeds`.
#
# Cost (`results/cpu/table1_costs.md`, in clean-victim runs of ~11 min): MEM-3 1.23 (809 s,
# measured alone), EM 0.69 (420 s), UAP 0.14 (92 s); the goal for MEM is at most 1.0, not met yet
# (the trigger search is ~310 s of MEM-3's 809 s). The way there is a top-4 search: in the
# ablation (`11_ablation`) it is as strong on test at about 80 % of the cost, and on val (the ablation's
# cached 2,000-image victims, each run's `key` in `results/cpu/runs/ablation.json`, scored with
# `mmue eval --checkpoint $MMUE_CACHE/runs/train/<key>/model.pt --csv
# ../shared/data/flickr8k/val.csv`) it reaches C 1.04 / 0.77 against the top-8 default's 1.06 /
# 0.78 (clean victim 211 / 167). At full data, measured alone (`benchmarks/protect_cost.py
# --scale cpu --set protect.trigger_top_k=4`), top-4 MEM-3 took 594 s (search round 292 s, the two
# noise-only rounds 146 s and 153 s) against the benchmark's own clean victim of 562 s: 1.06
# victim runs, 0.73 of the top-8 run's time, 0.90 of Table 1's clean victim (657 s). So the goal
# of 1.0 is within the 15 % by which equal work varies in time here, not clearly met; the tables
# keep top-8 (their MEM rows would all have to be rerun) and top-4's strength at full data is not
# measured.
# MEM-5 took 2,205 s = 3.4, but it shared the two cores with the test suite for most of its run,
# so that figure overstates it.
