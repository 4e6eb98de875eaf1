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
#     - results/careful_collector.csv
#     - results/careful_collector.md
#     - results/careful_collector_single.csv
#     - results/careful_collector_single.md
#     - results/careful_collector_costs.csv
#     - results/careful_collector_costs.md
#     - results/careful_collector_seeds.csv
#     - results/careful_collector_seeds.md
#     - results/careful_collector_caption_examples.md
#     - figures/careful_collector.png
#     - figures/careful_collector.pdf
#     - figures/careful_collector_single.png
#     - figures/careful_collector_single.pdf
#     - figures/careful_collector_persistence.png
#     - figures/careful_collector_persistence.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 13. Extension: against a careful collector (not in the paper)
#
# `10_defenses` tried one countermeasure at a time. A careful collector does more, and some of it
# without meaning to defend:
#
# - **default open_clip training**: open_clip's own training transform crops every image anew each
#   epoch (a random resized crop keeping 90-100% of the area, resized back bicubic) and reads every
#   caption row of the CSV each epoch; the noise was made for the pixels as released;
# - **one countermeasure per modality**: `jpeg(quality: 30) + dictionary_filter` re-compresses the
#   images and keeps only the words of a dictionary built from clean captions (here the val split's);
# - **a collector who knows R-MEM-8** (below) strips as many leading words as its trigger has
#   (`strip_words(count: 8)`), at a cost to every clean caption;
# - **training as long as the paper**: victims of 32 epochs instead of our 8, to see whether a victim
#   trained longer learns its way past the shortcut.
#
# Against these stand EM, MEM-3 and MEM-5 (Table 1), MEM-3 with triggers from the captions' own
# words (Table 3's semantic triggers, which an in-domain dictionary keeps), and **R-MEM-8**, ours,
# chosen on the val split (`benchmarks/collector_selection.py`): MEM with an 8-word trigger at the
# start of each caption, of words seen at least 20 times in the training captions, so that an
# in-domain dictionary keeps them and stripping fewer than 8 leading words leaves part of the
# trigger, while stripping 8 takes most of the words of a clean caption (Flickr8k's have about 12). The other ideas tried on val
# (the trigger at a random word of each caption or at its end, noise made in expectation over the
# collector's JPEG, crops and flips) are library settings (`trigger_position`, `noise_eot`) that
# protected less; the reading below gives their numbers. R-MEM-8 is registered as `rmem-8` in
# `mmue_lib.methods.METHODS` and `mmue protect --method rmem-8`.
#
# C is the closure against the undefended clean victim (1: as bad as chance, 0: as good as clean
# data); for clean data C is what the countermeasure costs a collector whose data was never
# protected. R-MEM-8 and MEM-3 are also measured under every countermeasure of `10_defenses`.

# %% [markdown]
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 2 min on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#
#
# The single countermeasures come from `10_defenses`' params at the same scale, so that its victims are shared.

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, methods, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("13_careful_collector", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.careful_collector(settings)
records.write_run_records(experiment, settings.results_dir, "careful_collector")
test_set = runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image, test_set.num_images)

# %% [markdown]
# ## Every protection under the careful collector
#
# Retrieval of each victim on the clean test split, and its closure C.

# %%
table = tables.defense_table(experiment["countermeasures"], chance)
tables.write_table(table, settings.results_dir, "careful_collector")

# %%
figure = figures.plot_closure_heatmap(table)
figures.save_figure(figure, settings.figures_dir, "careful_collector")

# %% [markdown]
# ## The robust protection under each single countermeasure of `10_defenses`

# %%
single = tables.defense_table(experiment["single"], chance)
tables.write_table(single, settings.results_dir, "careful_collector_single")

# %%
figure = figures.plot_closure_heatmap(single)
figures.save_figure(figure, settings.figures_dir, "careful_collector_single")

# %% [markdown]
# ## What each protection costs to make
#
# Generation time in units of one clean victim's training run on the same data.

# %%
costs = tables.protection_costs(experiment["methods"])
tables.write_table(costs, settings.results_dir, "careful_collector_costs")

# %% [markdown]
# ## Persistence: victims trained as long as the paper's
#
# Training loss and clean-test MedR per epoch of a victim trained on clean data and of one trained
# on protected data (Table 1's data and protection). A victim that learns its way past the
# shortcut shows a protected MedR that falls towards the clean one in the late epochs.

# %%
histories = {label: entry["victim"]["history"] for label, entry in experiment["persistence"].items()}
figure = figures.plot_training_curves(histories, chance)
figures.save_figure(figure, settings.figures_dir, "careful_collector_persistence")

# %% [markdown]
# ## The headline cell with other seeds
#
# The robust protection under the combined countermeasure, its surrogate, noise, triggers and
# victims made anew with each seed; the last row gives the mean and the half-width of its 95%
# interval.

# %%
seed_label = methods.method_variant(options.seed_check["method"])[2]
seeds = tables.seed_check_table(experiment["seeds"], chance, seed_label)
tables.write_table(seeds, settings.results_dir, "careful_collector_seeds")

# %% [markdown]
# ## What the caption countermeasures leave of the seed-checked protection's captions

# %%
train_set = runs.load_data(settings.data, "train")
protected = protected_dataset(train_set, runs.load_protection(experiment["methods"][seed_label]["protection"]))
examples = tables.caption_defense_examples(protected, [*options.collector_released, *options.example_defenses],
                                           runs.load_data(settings.data, "val"), options.example_count,
                                           settings.seed)
tables.write_table(examples, settings.results_dir, "careful_collector_caption_examples")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/13_careful_collector.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Extension: against a careful collector (`13_careful_collector`; `results/cpu/careful_collector.md`,
# R-MEM-8 under each single countermeasure of `10_defenses` in `careful_collector_single.md`,
# generation costs `careful_collector_costs.md`, the seed check `careful_collector_seeds.md`, what
# the caption countermeasures leave of R-MEM-8's captions `careful_collector_caption_examples.md`,
# `figures/cpu/careful_collector*.png`, runs in `results/cpu/runs/careful_collector.json`). The data,
# victims and closure of `10_defenses` (first 2,000 train images, RN-small, 8 epochs, test split); C
# image -> text / text -> image against the undefended clean victim (MedR 248 / 186; random 647 /
# 500), 10's run. The clean victim, the victims of clean, EM, MEM-3 and MEM-5 data under 10's single
# countermeasures and the MEM-3 protection are the records 10 and 11 made of these runs on an
# earlier machine; every other protection and victim was made on one later machine at 2 threads.
#
# | countermeasure | Clean | EM | MEM-3 | MEM-5 | MEM-3, caption-vocabulary triggers | R-MEM-8 (ours) |
# |---|---|---|---|---|---|---|
# | none | 0.00 / 0.00 | 0.40 / 0.18 | 1.18 / 0.79 | 0.90 / 0.84 | 1.02 / 0.78 | 1.08 / 0.77 |
# | default open_clip training | -0.11 / -0.07 | -0.11 / -0.06 | 0.92 / 0.61 | 0.73 / 0.68 | 0.92 / 0.65 | 0.77 / 0.67 |
# | `jpeg(quality: 30) + dictionary_filter` | 0.05 / 0.04 | -0.02 / 0.04 | 0.12 / 0.15 | 0.14 / 0.14 | 0.44 / 0.43 | 0.73 / 0.59 |
# | `strip_words(count: 8)` | 0.23 / 0.23 | 0.40 / 0.26 | 0.20 / 0.15 | 0.13 / 0.16 | 0.18 / 0.18 | 0.11 / 0.06 |
#
# R-MEM-8 beside MEM-3 under each single countermeasure of `10_defenses` (the clean and MEM-3
# victims are 10's, and so is the clean victim C is measured against: the same C as 10's table):
#
# | countermeasure | Clean | MEM-3 | R-MEM-8 |
# |---|---|---|---|
# | JPEG quality 10 | 0.03 / 0.03 | 0.79 / 0.51 | 0.69 / 0.55 |
# | JPEG quality 30 | -0.00 / 0.00 | 0.82 / 0.54 | 0.77 / 0.57 |
# | JPEG quality 75 | -0.01 / 0.00 | 0.91 / 0.57 | 0.83 / 0.63 |
# | grayscale | 0.72 / 0.43 | 1.23 / 0.76 | 1.17 / 0.86 |
# | blur sigma 1 | 0.28 / 0.14 | 1.09 / 0.58 | 0.93 / 0.68 |
# | strip first 3 words | 0.09 / 0.09 | 0.06 / 0.07 | 0.87 / 0.67 |
# | strip first 5 words | 0.15 / 0.14 | 0.10 / 0.11 | 0.81 / 0.63 |
# | drop words seen < 10 times | -0.04 / 0.01 | 0.96 / 0.75 | 0.95 / 0.76 |
# | dictionary filter (val captions' words) | 0.05 / 0.04 | 0.13 / 0.21 | 0.97 / 0.77 |
# | strong augmentation | 0.12 / 0.09 | 0.77 / 0.47 | 0.74 / 0.57 |
# | strong augmentation, worst of 4 views | 0.23 / 0.19 | 0.69 / 0.51 | 0.55 / 0.50 |
#
# Generation cost, in runs of the undefended clean victim (258 s as 10 recorded it on an earlier
# machine; timed again beside these protections it took 280 s, so these ratios run about 8% high):
# EM 326 s (1.27), MEM-3 358 s (1.39; 11's record of the same run), MEM-5 444 s (1.72), MEM-3 with
# caption-vocabulary triggers 411 s (1.59), R-MEM-8 428 s (1.66; 1.53 runs of the clean victim
# timed beside it).
#
# Persistence (`careful_collector_persistence.png`): victims of 32 epochs, as the paper's, on all
# 6,091 train images (Table 1's data and MEM-3 protection). Test MedR image -> text / text -> image
# by epoch:
#
# | data | epoch 1 | 2 | 5 | 8 | 16 | 24 | 32 |
# |---|---|---|---|---|---|---|---|
# | clean (2,294 s) | 423 / 265 | 295 / 189 | 183 / 132 | 132 / 105 | 108 / 88 | 91 / 80 | 93 / 80 |
# | MEM-3 (2,668 s) | 671 / 439 | 656 / 434 | 682 / 438 | 688 / 445 | 656 / 425 | 709 / 438 | 673 / 435 |
#
# The clean victim keeps learning past our 8 epochs (MedR 132 / 105 after 8, 93 / 80 after 32);
# the MEM-3 victim stays where its first epoch put it, 633-733 / 422-447 at every epoch (random
# 647 / 500), while its training loss falls to 0.003: 32 epochs learn the shortcut more firmly,
# not past it. C after 32
# epochs 1.05 / 0.85 (Table 1's 8 epochs: 1.04 / 0.81).
#
# Seed check (`careful_collector_seeds.md`): R-MEM-8 under `jpeg(quality: 30) + dictionary_filter`,
# its surrogate, noise, triggers and victims made anew with seeds 0, 1 and 2, each against that
# seed's clean victim: C 0.73 / 0.59, 0.66 / 0.53, 0.67 / 0.60; mean 0.69 ± 0.09 / 0.57 ± 0.09
# (half-width of the 95% Student-t interval, 2 degrees of freedom). Undefended, the same seeds gave
# 1.08 / 0.77, 1.01 / 0.81 and 0.94 / 0.83 (mean 1.01 / 0.80). The generations of seeds 1 and 2
# took 428-453 s when their victims were made; their files were not kept, and the runs recorded now
# were made again beside two other jobs (887 and 1,187 s), so their times do not compare. The
# caption examples (`careful_collector_caption_examples.md`) come from seed 0's R-MEM-8 made again
# on this later machine, whose search chose other words at some near-ties than the run its victims
# trained on.
#
# Reading (one seed except the seed check; differences of about 0.1 in C are within noise):
# - A collector who does not mean to defend already erases EM. open_clip's default training (a
#   random resized crop keeping 90-100% of each image, every epoch, and every caption row) leaves EM
#   nothing (-0.11 / -0.06, as good as the clean victim, which gains from it: MedR 205 / 163, C
#   -0.11 / -0.07), while every MEM keeps most of its closure (MEM-3 0.92 / 0.61, MEM-5 0.73 / 0.68,
#   R-MEM-8 0.77 / 0.67): the crop resamples the pixels the noise was made for, the trigger is
#   untouched.
# - One countermeasure per modality breaks the published methods at little cost. `jpeg(quality: 30)
#   + dictionary_filter` costs a clean collector 0.05 / 0.04 and leaves EM -0.02 / 0.04, MEM-3 0.12 /
#   0.15, MEM-5 0.14 / 0.14. Table 3's semantic triggers, whose words come from the captions, keep
#   0.44 / 0.43: the in-domain dictionary keeps 67% of their trigger words (Table 3 draws them from
#   the whole caption vocabulary, rare words included; of MEM-3's free-vocabulary trigger words it
#   keeps 13%). R-MEM-8 keeps 0.73 / 0.59: its 8 words are common caption words, all of which the
#   dictionary keeps, and JPEG was never MEM's problem.
# - R-MEM-8 holds under every single countermeasure of `10_defenses`: its lowest C is 0.55 / 0.50
#   under augmentation-max (the worst of 4 strongly augmented views, which leaves MEM-3 0.69 / 0.51),
#   then 0.69 / 0.55 under JPEG quality 10. Where MEM-3 falls it stands: the dictionary filter 0.97 /
#   0.77 (MEM-3 0.13 / 0.21), stripping the first 3 or 5 words 0.87 / 0.67 and 0.81 / 0.63 (MEM-3
#   0.06 / 0.07 and 0.10 / 0.11).
# - What breaks it: a collector who knows the trigger's length. `strip_words(count: 8)` leaves
#   R-MEM-8 0.11 / 0.06 (the image noise alone) and every MEM about as low (0.13-0.20), but costs a
#   collector whose data was clean 0.23 / 0.23 of the way to chance, since Flickr8k's captions have
#   about 12 words: a price he pays on every clean collection, for a protection he must first know
#   of. EM, with no trigger, keeps 0.40 / 0.26 under it.
# - Against the aim (C >= 0.5 both ways under the combined countermeasure, open_clip's training and
#   each single countermeasure of `10_defenses`; at most 1.5 victim runs; C >= 0.9 both ways
#   undefended): met under every countermeasure, and under the combined one with each of three seeds
#   (lowest 0.66 / 0.53; the interval's lower end in text -> image, 0.48, is just below); short
#   undefended, text -> image 0.77-0.83 over the seeds (image -> text 0.94-1.08; MEM-3 reaches 0.79
#   on these images), and on cost, 1.66 runs of 10's clean victim, 1.53 of the one timed beside it (MEM-3 1.39). Image noise made in
#   expectation over the collector's JPEG, crops and flips (`noise_eot`) protected less on val (below),
#   so R-MEM-8 has none: its trigger carries the protection through the image-side countermeasures.
#   What would be needed to close the rest: a trigger the victim learns wherever it is placed (on
#   val, a seeded random position per caption halved the protection: 0.50 / 0.47 undefended), so
#   that no fixed strip removes it; and a cheaper search (R-MEM-8 already takes top-4 candidates per
#   slot).
#
# How R-MEM-8 was chosen: on val (`benchmarks/collector_selection.py`: 13's data, the first 2,000
# train images; victims scored on val, never test). Closure C image -> text / text -> image on val against the undefended clean
# victim (MedR 217 / 167; random 647 / 500; calibrated MEM-3 on the same images reached 1.05 / 0.81
# undefended when the schedule was chosen); generation time in clean victim runs, both timed beside
# one other job:
#
# | candidate (calibrated schedule, RN-small) | undefended | `jpeg(quality: 30) + dictionary_filter` | generation / clean victim run |
# |---|---|---|---|
# | 3 caption-vocabulary words at a random word of each caption, noise over the collector's views (EOT, 2 views; first registered as R-MEM-3) | 0.40 / 0.37 | 0.24 / 0.26 | 1.71 |
# | the same, 1 view | 0.34 / 0.34 | 0.23 / 0.26 | 1.35 |
# | the same, no EOT | 0.50 / 0.47 | 0.20 / 0.23 | 1.28 |
# | the same, no EOT, 6 rounds instead of 3 (PGD loss 0.11 instead of 0.58) | 0.50 / 0.55 | 0.19 / 0.23 | 2.66 |
# | 3 caption-vocabulary words at the end, 1 view | 0.33 / 0.35 | 0.17 / 0.27 | not measured |
# | 3 caption-vocabulary words at the start, no EOT (Table 3's semantic MEM-3) | 0.97 / 0.78 | not run | not measured |
# | 8 words seen at least 20 times in the captions, at the start, no EOT | 0.96 / 0.78 | 0.75 / 0.61 | 1.86 |
# | **R-MEM-8**: the same, top-4 candidates per trigger slot instead of 8 | 0.95 / 0.79 | 0.72 / 0.57 | 1.66 (1.42 at the round times of the row above: its rounds 2-3 ran beside two other jobs) |
#
# What the candidates show. A trigger off the start of the caption halves the protection, and more
# rounds do not bring it back: the surrogate's loss falls (0.58 -> 0.11 over 6 rounds) but the victim,
# a text transformer trained from scratch for 8 epochs, does not learn a trigger whose place moves as
# it learns one at fixed leading positions. Noise made over the collector's JPEG, crops and flips
# keeps a little more through JPEG (0.24 against 0.20) and protects less undefended; JPEG alone was
# never MEM's problem (MEM-3 kept 0.82 / 0.54 at quality 30 in `10_defenses`). What broke MEM under
# the combined countermeasure was the dictionary: only 49.5% of the words of the training captions are
# in the val dictionary, against 99.8% of those seen at least 20 times (`trigger_min_count: 20`, 487
# single-token words). R-MEM-8 keeps the trigger at the start, where the victim learns it, and makes
# it long (top-4 candidates per slot keep its search near MEM-3's cost; `11_ablation` found top-4 as
# strong as top-8). Measured with top-8: stripping 5 leading words leaves it 0.78 / 0.62 (a clean
# collector pays 0.04 / 0.12 for that strip); stripping 8 removes it (0.14 / 0.08: what the image
# noise does alone), and costs a collector whose data was clean 0.23 / 0.21, since Flickr8k's captions
# have about 12 words. So a collector who knows the trigger's length breaks R-MEM-8, and pays 0.23 /
# 0.21 wherever his data was never protected; one who applies one countermeasure per modality leaves
# it 0.72 / 0.57. Short of the aim: undefended text -> image is 0.79 (MEM-3's is 0.81 on these images;
# the aim was 0.9). Under default open_clip training (crop 90-100% every epoch, every caption row: a
# clean victim gains, MedR 184 / 156) the 8-word trigger (top-8) keeps 0.83 / 0.69, with noise made
# for the pixels as released (on test: 0.77 / 0.67, above).
