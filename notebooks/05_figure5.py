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
#     - figures/figure5_gradcam.png
#     - figures/figure5_gradcam.pdf
#     - figures/figure5_integrated_gradients.png
#     - figures/figure5_integrated_gradients.pdf
#     produces:
#     - figure
# ---

# %% [markdown]
# # 5. Figure 5: what the victims look at (Grad-CAM and Integrated Gradients)
#
# The victims of Table 1 (trained on clean, EM, UAP and MEM-3 data) explain the same clean test
# pairs: Grad-CAM on the image tower and Integrated Gradients on the caption tokens, both for the
# similarity of an image with its own caption. In the paper the clean model attends to the objects
# the caption names and to its content words; models trained on unlearnable data attend to
# scattered regions and words. ResNet maps come from the stage set by `resnet_stage` (at small
# image sizes the last stage is a 1x1 or 2x2 grid), ViT maps from the last block's patch tokens.
#
# Reading the plots: in the Grad-CAM maps red marks the regions that raise the similarity of the
# image with its caption most (each map scaled to 0-1; colour bar beside the grid). In the
# Integrated Gradients heat maps each row is one victim, each column a caption token; red tokens
# raise the image-caption similarity, blue tokens lower it, each row scaled by its largest
# magnitude (colour bar beside the plot).
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models: 50 s on the project's 2-core CPU from an empty run cache, kernel start included). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).
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
from mmue_lib.settings import load_settings

settings = load_settings("05_figure5", scale, overrides, output_root)
settings

# %%
experiment = experiments.table1(settings)

# %%
options = settings.options
test_set = runs.load_data(settings.data, "test")
chosen = np.random.default_rng(settings.seed).choice(test_set.num_images, options.cam_examples, replace=False)
examples = test_set.subset(chosen)
labels = ["Clean"] + [METHODS[m].label for m in options.cam_methods]
victims = {label: load_clip(runs.pretrained_checkpoint(experiment[label]["victim"])) for label in labels}
captions, maps, attributions = explain.explain_models(victims, examples, options.resnet_stage, options.ig_steps)

# %%
figure = figures.plot_grad_cam(examples.images.numpy(), captions, maps)
figures.save_figure(figure, settings.figures_dir, "figure5_gradcam")

# %%
figure = figures.plot_token_attributions(attributions)
figures.save_figure(figure, settings.figures_dir, "figure5_integrated_gradients")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/05_figure5.ipynb`, its tables in `results/cpu/` and its figures in `figures/cpu/`.
#
# Figure 5 (`figure5_gradcam.png`, `figure5_integrated_gradients.png`): the MEM-3 victim's caption
# attributions pile up on the first words, where the trigger sits in training.
#
# The Grad-CAM maps do not show the paper's contrast at 64 px: the clean victim looks as often at
# the background as at the objects its caption names (rows 1 and 4), the EM and UAP victims' maps
# resemble each other, and the MEM-3 victim's map is flat on one pair (row 4: no region of the
# image moves its similarity with the caption). On a grid this coarse (the stage `resnet_stage`
# picks, a few cells a side) the maps say little more; the paper's maps are at 224 px.
