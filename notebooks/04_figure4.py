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
#     - results/figure4_curves.csv
#     - figures/figure4_training_curves.png
#     - figures/figure4_training_curves.pdf
#     produces:
#     - figure
# ---

# %% [markdown]
# # 4. Figure 4: training loss and clean-test MedR per epoch
#
# For the victims of Table 1 (read from the cache, no retraining): the mean training loss of
# each epoch on its (clean or protected) training data, and the clean-test MedR after each
# epoch. Protected data that works is learnt fast (low loss) while the test MedR stays near
# random guessing (dashed). The paper's Figure 4 shows Flickr30k; this run uses the dataset in
# its settings.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 55 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
import pandas as pd

from mmue_lib import experiments, figures, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.settings import load_settings

settings = load_settings("04_figure4", scale, overrides, output_root)
settings

# %%
experiment = experiments.table1(settings)
chance = random_metrics(runs.load_data(settings.data, "test").row_image)

# %%
histories = {label: entry["victim"]["history"] for label, entry in experiment.items()}
figure = figures.plot_training_curves(histories, chance)
figures.save_figure(figure, settings.figures_dir, "figure4_training_curves")

# %%
curves = pd.DataFrame([{"method": label, **{k: h[k] for k in ("epoch", "train_loss", "i2t_MedR", "t2i_MedR")}}
                       for label, history in histories.items() for h in history])
tables.write_table(curves, settings.results_dir, "figure4_curves")
tables.display_table(curves.pivot(index="epoch", columns="method", values="t2i_MedR").reset_index())

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/04_figure4.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Figure 4 (`figures/cpu/figure4_training_curves.png`): as in the paper, the MEM victims' training
# loss falls to ~0 within two epochs (the shortcut is learnt at once) while their test MedR stays
# at chance; EM's loss falls faster than clean but its MedR still improves.
