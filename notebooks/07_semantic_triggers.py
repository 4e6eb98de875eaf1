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
#     - results/table3_semantic.csv
#     - results/table3_semantic.md
#     - results/table3_trigger_examples.csv
#     - figures/semantic_trigger_examples.png
#     - figures/semantic_trigger_examples.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 7. Semantic triggers (paper Table 3)
#
# MEM-3 with a free trigger vocabulary (the Table 1 run: any whole word of the tokenizer) against a
# restricted, semantic vocabulary: words a local masked language model proposes for the trigger
# slots when `semantic_mlm_path` names one (the paper's BERT variant), else the built-in caption
# vocabulary (whole words that occur in the training captions). A semantic trigger reads like the
# start of a sentence, so a data collector is less likely to spot and strip it. The paper reports
# MedR only; Hit@10 cells without a published number stay empty.
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
from mmue_lib.triggers import trigger_vocabulary
from mmue_lib.settings import load_settings

settings = load_settings("07_semantic_triggers", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.semantic_triggers(settings)
records.write_run_records(experiment, settings.results_dir, "table3_semantic")

# %%
train_set, test_set = runs.load_data(settings.data, "train"), runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image, test_set.num_images)
protections = {name: runs.load_protection(run) for name, run in experiment["protection"].items()}
finals = {"Clean": experiment["Clean"]["final"], **{name: run["final"] for name, run in experiment["victim"].items()}}
paper_rows = {"Random": paper.table1("Random", settings.paper_dataset),
              "Clean": paper.table1("Clean", settings.paper_dataset),
              **{name: paper.TABLE3.get((kind, settings.paper_dataset), {})
                 for name, kind in zip(protections, ("free", "semantic"))}}
table = tables.retrieval_table(finals, chance, paper_rows)
print({name: int(trigger_vocabulary(p.config, train_set.captions).sum()) for name, p in protections.items()},
      "words a trigger may use")
tables.write_table(table, settings.results_dir, "table3_semantic")

# %%
examples = tables.trigger_examples(train_set, protections, count=options.example_count, seed=settings.seed)
tables.write_table(examples, settings.results_dir, "table3_trigger_examples")

# %%
semantic = protections[list(protections)[1]]
figure = figures.plot_protected_examples(train_set, protected_dataset(train_set, semantic), count=4, seed=settings.seed)
figures.save_figure(figure, settings.figures_dir, "semantic_trigger_examples")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/07_semantic_triggers.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Table 3, semantic triggers (`results/cpu/table3_semantic.md`, examples in
# `table3_trigger_examples.md` and `figures/cpu/semantic_trigger_examples.png`): with no masked
# language model offline, the semantic variant draws trigger words from the training captions'
# vocabulary instead of BERT's proposals. MEM-3 with it: MedR 620 / 420, C 0.90 / 0.80, against
# 1.04 / 0.81 with the free vocabulary; in the paper BERT triggers are also a little weaker
# (C 0.30 / 0.36 against 0.37 / 0.44). Our triggers are caption words ("grass port engaged",
# "practising product backed") but not fluent phrases like the paper's "There he saw": that
# needs a real masked LM (`semantic_mlm_path`). Notebook time: 22 min (one protection of 690 s
# and its victim).
