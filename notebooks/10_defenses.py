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
#     - results/defenses.csv
#     - results/defenses.md
#     - results/defenses_caption_examples.md
#     - figures/defenses.png
#     - figures/defenses.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 10. Extension: countermeasures against MEM (not in the paper)
#
# No published work says how multimodal unlearnable examples hold up against the countermeasures
# known for unimodal ones. A data collector who downloads protected pairs can transform them
# before training (JPEG re-compression, grayscale, blur; on the text side: strip the first words,
# drop words rare in the corpus, keep only words of a dictionary built from a clean corpus, here
# the val split's captions) or train with strong augmentation (random resized crop, flip, colour
# jitter), optionally keeping the worst of r augmented views of each pair (UEraser's
# augmentation-max). Each countermeasure trains one victim on clean data (its own cost) and one
# per protection method; all are scored on the clean test split.
#
# The table's C is the closure against the undefended clean victim: for protected data, C near 0
# means the countermeasure broke the protection; for clean data, C is what the countermeasure
# costs a collector whose data was never protected. The settings are strings in the params
# (`"jpeg(quality: 30)"`, `"strip_words(count: 3) + dictionary_filter"`,
# `"augment: strong, augment_views: 4"`), so any other combination is one line away.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 55 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.methods import METHODS
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("10_defenses", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.defenses(settings)
records.write_run_records(experiment, settings.results_dir, "defenses")
test_set = runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image, test_set.num_images)

# %% [markdown]
# ## Retrieval on the clean test split under each countermeasure
#

# %%
table = tables.defense_table(experiment, chance)
tables.write_table(table, settings.results_dir, "defenses")

# %% [markdown]
# ## Closure C per countermeasure (0 = the victim learns as from clean data, 1 = chance)
#

# %%
figure = figures.plot_grouped_bars(table, "defense", "data", ["i2t C", "t2i C"], horizontal=True)
figures.save_figure(figure, settings.figures_dir, "defenses")

# %% [markdown]
# ## What the caption defenses leave of protected captions (first method's triggers)
#

# %%
train_set = runs.load_data(settings.data, "train")
protections = experiments.method_runs(experiments.Experiment.of(settings, options.defense_methods))  # cached above
first = METHODS[options.defense_methods[0]].label
protected = protected_dataset(train_set, runs.load_protection(protections[first]["protection"]))
examples = tables.caption_defense_examples(protected, options.released_defenses,
                                           runs.load_data(settings.data, "val"), options.example_count,
                                           settings.seed)
tables.write_table(examples, settings.results_dir, "defenses_caption_examples")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/10_defenses.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Extension: countermeasures (`10_defenses`; `results/cpu/defenses.md`, `figures/cpu/defenses.png`,
# what the caption defenses leave of protected captions in `results/cpu/defenses_caption_examples.md`,
# runs in `results/cpu/runs/defenses.json`). A collector transforms the released pairs before
# training, or trains with strong augmentation; one victim per countermeasure on clean data (its
# own cost to a collector whose data was never protected) and one per protection, on the first
# 2,000 train images (MEM-3, MEM-5 and EM made anew on them; the undefended clean victim is the
# ablation's, MedR 248 / 186). C against that undefended clean victim, i2t / t2i:
#
# | countermeasure | Clean | MEM-3 | MEM-5 | EM |
# |---|---|---|---|---|
# | none | 0 / 0 | 1.18 / 0.79 | 0.90 / 0.84 | 0.40 / 0.18 |
# | JPEG quality 10 | 0.03 / 0.03 | 0.79 / 0.51 | 0.76 / 0.61 | 0.00 / 0.03 |
# | JPEG quality 30 | 0.00 / 0.00 | 0.82 / 0.54 | 0.76 / 0.62 | -0.05 / 0.02 |
# | JPEG quality 75 | -0.01 / 0.00 | 0.91 / 0.57 | 0.76 / 0.66 | 0.04 / 0.00 |
# | grayscale | 0.72 / 0.43 | 1.23 / 0.76 | 1.28 / 0.88 | 0.91 / 0.44 |
# | blur sigma 1 | 0.28 / 0.14 | 1.09 / 0.58 | 0.93 / 0.70 | 0.42 / 0.11 |
# | strip first 3 words | 0.09 / 0.09 | 0.06 / 0.07 | 1.11 / 0.76 | 0.42 / 0.19 |
# | strip first 5 words | 0.15 / 0.14 | 0.10 / 0.11 | 0.05 / 0.05 | 0.36 / 0.21 |
# | drop words seen < 10 times | -0.04 / 0.01 | 0.96 / 0.75 | 1.06 / 0.81 | 0.37 / 0.15 |
# | dictionary filter (val captions' words) | 0.05 / 0.04 | 0.13 / 0.21 | 0.21 / 0.21 | 0.39 / 0.17 |
# | strong augmentation | 0.12 / 0.09 | 0.77 / 0.47 | 0.80 / 0.52 | 0.15 / 0.09 |
# | strong augmentation, worst of 4 views | 0.23 / 0.19 | 0.69 / 0.51 | 0.74 / 0.53 | 0.28 / 0.18 |
#
# Reading (one seed, a third of the data: differences of about 0.1 in C are within noise):
# - Image-side squeezing breaks EM, not MEM. JPEG at quality 10, 30 or 75 erases EM (C about 0)
#   at no cost to a clean collector, as known for unimodal unlearnable examples; MEM keeps most of
#   its closure through it (MEM-3 0.79-0.91 / 0.51-0.57, MEM-5 about 0.76 / 0.61-0.66): the text
#   trigger still carries the shortcut when the image noise is squeezed. Blur (sigma 1) costs the
#   clean collector (0.28 / 0.14) and leaves MEM whole. Grayscale is no countermeasure here: the
#   victim trained on gray photos and scored on colour test photos loses most of what it learns
#   even from clean data (0.72 / 0.43; gray test queries were not tried).
# - Strong augmentation in training (random resized crop, flip, colour jitter) erases EM at a
#   small clean cost (0.12 / 0.09) and weakens MEM by about a third (0.77-0.80 / 0.47-0.52).
#   UEraser-style augmentation-max (the worst of 4 views) costs the clean collector more (0.23 /
#   0.19) and does no better against MEM (0.69-0.74 / 0.51-0.53) or EM.
# - Text-side cleaning breaks MEM cheaply, when it reaches the trigger. Stripping the first 3 words
#   of every caption erases MEM-3 (0.06 / 0.07, as low as the clean victim with the same stripping)
#   but not MEM-5 (1.11 / 0.76: the two trigger words left suffice); stripping 5 erases both at a
#   clean cost of 0.15 / 0.14. Dropping rare words does nothing: each trigger word sits in an
#   image's five captions and most are reused across images, so they are not rare (of the 18
#   trigger words in the examples, the filter drops 4). Keeping only the words
#   of a dictionary built from a clean in-domain corpus (here the val captions) breaks MEM-3 and
#   MEM-5 (0.13-0.21) at almost no clean cost (0.05 / 0.04) without knowing the trigger's length.
#   The triggers are whole-word tokens that are real English but not caption words ("anaheim gmo
#   piero", "hemisphere horror multi", "particles saul counterfeit"), so a general English word
#   list would keep many of them: the filter works because it is in-domain.
# - Text-side cleaning leaves EM as it was (0.36-0.42 / 0.15-0.21). Each method falls to a
#   countermeasure of its own modality; a collector who applies one of each (`"jpeg(quality: 30) +
#   dictionary_filter"`, one line in the params) breaks both, and MEM's semantic triggers (Table 3)
#   only in part: see `13_careful_collector`. Notebook time: the last 22 victims took
#   91 min run alone (about 3.5 min each, 6 min with 4 augmented views); the protections and the
#   first 22 victims ran in an earlier session, partly beside other jobs, so the total (about 3 h)
#   is an estimate.
