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
#     - results/data_overview.csv
#     - results/random_row.csv
#     - figures/data_examples.png
#     - figures/data_examples.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 1. Data overview
#
# The dataset each experiment uses, split by split: sizes, captions per image, caption length in
# words and CLIP tokens (and how many captions the text context truncates), a grid of example
# images with a caption, and the **random-guessing row** of Table 1 computed exactly for this
# test set, beside the paper's (the paper's row is an empirical run of random guessing, so it
# differs a little from the exact expectation).
#
# `data.path` in the settings is `synthetic` (the built-in set) or a folder with `train.csv`,
# `val.csv`, `test.csv` (`$MMUE_DATA` expands).
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 65 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
import pandas as pd

from mmue_lib import figures, paper, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.settings import load_settings

settings = load_settings("01_data_overview", scale, overrides, output_root)
settings

# %% [markdown]
# ## Splits and caption statistics

# %%
splits = {name: runs.load_data(settings.data, name) for name in ("train", "val", "test")}
summary = pd.DataFrame([{**tables.split_summary(split, settings.context_length), "split": name}
                        for name, split in splits.items()])
tables.write_table(summary, settings.results_dir, "data_overview")

# %% [markdown]
# ## Random guessing on this test set
#
# Image->text takes the best of an image's true captions, so its expected MedR is well below half
# the gallery; text->image ranks one image among N, so its MedR is about N/2.

# %%
keys = ["i2t_R@10", "i2t_MedR", "t2i_R@10", "t2i_MedR"]
chance = random_metrics(splits["test"].row_image)
random_row = pd.DataFrame([{"method": "Random (exact expectation)", "test images": splits["test"].num_images,
                            **tables.beside_paper(chance, paper.table1("Random", settings.paper_dataset), keys)}])
tables.write_table(random_row, settings.results_dir, "random_row")

# %% [markdown]
# ## Example training images

# %%
figure = figures.plot_examples(splits["train"], settings.options.example_count)
figures.save_figure(figure, settings.figures_dir, "data_examples")
