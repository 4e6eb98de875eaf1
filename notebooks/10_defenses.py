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
