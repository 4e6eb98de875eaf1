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
#     - results/ablation.csv
#     - results/ablation.md
#     - figures/ablation.png
#     - figures/ablation.pdf
#     - figures/ablation_rounds.png
#     - figures/ablation_rounds.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 11. Extension: the paper's text vs the official code (not in the paper)
#
# The official code differs from the paper's text at several points that change behaviour
# (`../shared/PAPER.md`): one noise per caption row instead of per image, one trigger per row
# instead of per image (or one for all), random instead of "the" initial triggers, a fixed schedule
# instead of stopping when the loss falls under a threshold, captions shuffled at every PGD step
# instead of once per batch (or not at all), greedy search instead of a beam. Each flip below is
# one protection run with that setting changed from this scale's schedule (`ablation_flips`: a
# string of protection settings, so any other flip is one line of params), and one victim trained
# on it. The table puts the protection's strength (closure C on the clean test split; 0 = the
# victim learns as from clean data, 1 = chance) beside what it costs to make (seconds, and
# clean-victim training runs).
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 60 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.settings import load_settings

settings = load_settings("11_ablation", scale, overrides, output_root)
settings

# %%
experiment = experiments.ablation(settings)
records.write_run_records(experiment, settings.results_dir, "ablation")
chance = random_metrics(runs.load_data(settings.data, "test").row_image)

# %% [markdown]
# ## Strength and cost of each setting

# %%
table = tables.ablation_table(experiment, chance)
tables.write_table(table, settings.results_dir, "ablation")

# %%
figure = figures.plot_strength_vs_cost(table)
figures.save_figure(figure, settings.figures_dir, "ablation")

# %% [markdown]
# ## How each protection converged (PGD loss per round)

# %%
figure = figures.plot_protection_rounds({setting: entry["protection"]["history"]
                                        for setting, entry in experiment.items() if entry["protection"]})
figures.save_figure(figure, settings.figures_dir, "ablation_rounds")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/11_ablation.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Extension: paper text vs official code (`11_ablation`; `results/cpu/ablation.md`,
# `figures/cpu/ablation.png`, runs in `results/cpu/runs/ablation.json`). Each point of
# `../shared/PAPER.md` where the official code differs from the paper's text, flipped one at a
# time from the cpu MEM-3 schedule, one protection and one victim each, on the first 2,000 train
# images (victims ~4 min). The clean victim reaches MedR 248 / 186 (0.38 / 0.37 of random: it
# learns less from a third of the data, so read the rows against each other, not against Table 1).
# Cost is protection time over that clean victim's 258 s; per-round times of equal work vary by
# about 15 % on this machine (the default's search round took 189 s, the same round 157-165 s in
# flips that do not touch the search), so only larger cost differences mean something:
#
# | setting | MedR i2t / t2i | C i2t / t2i | seconds | victim runs |
# |---|---|---|---|---|
# | clean data | 248 / 186 | 0 / 0 | 0 | 0 |
# | default: the cpu schedule | 720 / 433 | 1.18 / 0.79 | 358 | 1.39 |
# | trigger_top_k: 4 | 709 / 430 | 1.16 / 0.78 | 283 | 1.10 |
# | trigger_init: random | 611 / 423 | 0.91 / 0.75 | 295 | 1.14 |
# | shuffle_pgd: false | 693 / 392 | 1.12 / 0.66 | 307 | 1.19 |
# | trigger_per: universal | 264 / 205 | 0.04 / 0.06 | 433 | 1.68 |
# | trigger_top_k: 16 | 676 / 434 | 1.07 / 0.79 | 431 | 1.67 |
# | beam_size: 4 | 693 / 439 | 1.12 / 0.81 | 516 | 2.00 |
# | reshuffle: step | 719 / 436 | 1.18 / 0.80 | 336 | 1.30 |
# | max_rounds: 6, stop_loss: null | 692 / 442 | 1.11 / 0.82 | 593 | 2.30 |
# | trigger_per: row, search_rows: all | 540 / 328 | 0.73 / 0.45 | 746 | 2.89 |
# | noise_per: row, pgd_rows: all | 642 / 436 | 0.99 / 0.80 | 711 | 2.76 |
# | all official settings at once (last row of the params) | 601 / 399 | 0.88 / 0.68 | 1900 | 7.36 |
#
# Reading: what makes MEM work here is a trigger that differs between images and is shared by an
# image's captions. The paper's "a text trigger t", read as one trigger for the whole set, gives
# no protection at all (C 0.04 / 0.06): a constant prefix carries nothing that tells pairs apart,
# so the contrastive loss has no shortcut to take. The official per-row triggers (five per image)
# protect much less than per-image ones (C 0.73 / 0.45 against 1.18 / 0.79) at twice the cost (a
# guess at why: with one search round, the image's one noise has to serve five different
# triggers). One noise per caption row (the official code) is about as strong (0.99 / 0.80) at
# twice the cost, and releases five differently-noised copies of each photo (its victim sees each
# row as an image: five times the pairs per epoch, 895 s). Initialising triggers with "the" beats
# random tokens image -> text (1.18 against 0.91); turning the caption shuffle off costs text ->
# image (0.66 against 0.79), as the paper's argument for it predicts, while shuffling at every
# PGD step instead of once per batch changes nothing. More search buys nothing: top-16, a beam of
# 4, or 6 rounds with no early stop reach the same C (1.07-1.12 / 0.79-0.82) at 1.7-2.3 victim
# runs; top-4 reaches it (1.16 / 0.78) at 1.10. All the official settings together reach C 0.88 /
# 0.68 at 7.4 victim runs, weaker and five times dearer than the cpu schedule. Test-split
# numbers, one seed: they describe the settings, they were not used to choose the cpu schedule
# (that was chosen on val).
