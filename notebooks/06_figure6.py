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
#     - figures/figure6_tsne.png
#     - figures/figure6_tsne.pdf
#     produces:
#     - figure
# ---

# %% [markdown]
# # 6. Figure 6: t-SNE of image and text features
#
# (a) The model trained on clean data, on clean training pairs; (b) the model trained on MEM
# data, on the protected pairs it was trained on. Triangles are images, circles captions; one
# colour is one image and its captions (the legend under the plot).
#
# What to look for: whether each image sits with its own captions. In the committed cpu figure
# (`figures/cpu/figure6_tsne.png`) the clean model does **not** put an image beside its
# captions: the captions of one image gather with each other, and the images lie apart from
# the captions (a small CLIP trained from scratch keeps a wide gap between the two modalities).
# The MEM-3 model puts each protected image and its captions into one tight cluster: the
# noise-and-trigger shortcut ties the pair together, whatever the picture shows. At smoke scale
# (tiny models, synthetic shapes) the panels are noisier and may not show this.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 45 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
#

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
import numpy as np

from mmue_lib import experiments, explain, figures, runs
from mmue_lib.models import load_clip
from mmue_lib.methods import METHODS
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("06_figure6", scale, overrides, output_root)
settings

# %%
experiment = experiments.table1(settings)

# %%
train_set = runs.load_data(settings.data, "train")
chosen = np.random.default_rng(settings.seed).choice(train_set.num_images, settings.options.tsne_images, replace=False)
label = METHODS[settings.options.tsne_method].label
protected = protected_dataset(train_set, runs.load_protection(experiment[label]["protection"]))
panels = {}
for title, victim, dataset in (("(a) clean model, clean data", experiment["Clean"]["victim"], train_set),
                               (f"(b) {label} model, protected data", experiment[label]["victim"], protected)):
    features, groups = explain.joint_features(load_clip(runs.pretrained_checkpoint(victim)), dataset.subset(chosen))
    panels[title] = (explain.tsne_2d(features, settings.seed), groups, len(chosen))
figure = figures.plot_tsne(panels)
figures.save_figure(figure, settings.figures_dir, "figure6_tsne")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/06_figure6.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Figure 6 (`figure6_tsne.png`): the MEM-3 victim maps each protected image and its five captions onto one
# tight cluster (the trigger-noise shortcut), where the clean model spreads them by content.
