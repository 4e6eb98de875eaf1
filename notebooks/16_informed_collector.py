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
#     - results/informed_fine_tuning.csv
#     - results/informed_fine_tuning.md
#     - results/informed_countermeasures.csv
#     - results/informed_countermeasures.md
#     - results/informed_detection.csv
#     - results/informed_detection.md
#     - results/informed_caption_examples.md
#     - figures/informed_countermeasures.png
#     - figures/informed_countermeasures.pdf
#     - figures/informed_purified.png
#     - figures/informed_purified.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 16. Extension: the informed collector (not in the paper)
#
# Every victim of 02-15 but the face study trains from scratch on what it collects. The people a
# protector fears know more. Recent work says where unlearnable examples fail: pretraining priors
# make them learnable again (BAIT), frozen pretrained shallow layers filter the noise out (SSC), a
# denoiser trained on a little clean data purifies them (ECLIPSE, D-VAE), their signal is
# high-frequency and a low-pass filter removes it (FUSE), and simple classifiers detect them (UDP).
# None of it was measured for image-text protections. Here a collector:
#
# - **starts from its own pretrained CLIP**: trained on clean image-caption data disjoint from the
#   release (the train images after the released ones), then **fine-tuned** on the released data,
#   all of it or with the image tower's stem and first stages frozen (SSC);
# - **purifies** the released images: a denoiser it trains on clean images (the val split) with
#   added Gaussian noise, alone or after adding such noise to every released image (ECLIPSE's way:
#   noise that drowns the protection, removed with it), or a low-pass filter;
# - **detects**: a small classifier trained on some released and some clean images drops what it
#   flags (for a protector, an image dropped is an image not learned from: a success);
# - **recaptions**: it discards the released captions and gives each image the captions of its
#   nearest clean image under its own CLIP (a retrieval captioner), alone and after JPEG 30, so
#   that what the pixels alone protect shows.
#
# Against the protections of 13 (its data: the first released train images; its runs shared) and
# T2UE (15), and, to make the protection hold against the fine-tuning collector, the same methods
# made with the collector's own CLIP as their surrogate (`hold_methods`): a protector who expects
# the collector to start from a public pretrained model protects against that model. **The fine-tuning closure** C_ft = (MedR - MedR_ft_clean) / (MedR_pretrained -
# MedR_ft_clean) asks what fine-tuning on the released data bought the collector: 0 when it gained
# as much as fine-tuning on clean data, 1 when it gained nothing over the pretrained model it
# started from (above 1: the protected data made it worse). Its denominator is what clean
# fine-tuning gains, so where that gain is small C_ft is large and unsteady; beside it, C is Table
# 1's closure with the victim fine-tuned on clean data as its zero and chance as its one: how far
# toward chance the released data pushed the collector, on one scale however little fine-tuning
# gains.
#
# **Settings.** Everything this notebook runs comes from `params/<scale>/` (`shared.yaml` and this notebook's file); the settings cell below shows what it resolved. Run All runs the `smoke` scale (synthetic data, tiny models). To rerun it on the real data beside the project (Flickr8k, faces20), set `scale = "cpu"` in the first code cell; `overrides` changes single settings, e.g. `{"train.epochs": 2}` (then set `output_root` to another folder, so that the committed results stay as they are).

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import defenses, experiments, figures, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.release import protected_dataset
from mmue_lib.settings import load_settings

settings = load_settings("16_informed_collector", scale, overrides, output_root)
settings

# %%
options = settings.options
experiment = experiments.informed_collector(settings)
records.write_run_records(experiment, settings.results_dir, "informed_collector")
test_set = runs.load_data(settings.data, "test")
chance = random_metrics(test_set.row_image)

# %% [markdown]
# ## The collector who fine-tunes its own pretrained CLIP
#
# Per fine-tuning setting, the pretrained model's retrieval on the test split (not fine-tuned),
# then the victim fine-tuned on each released set (clean first; "against the collector's CLIP":
# made with the collector's pretrained model as surrogate), its fine-tuning closure C_ft and its
# closure C.

# %%
fine_tuning = tables.fine_tuning_table({setting: experiment[setting] for setting in ["fine-tuned", "fine-tuned, frozen"]},
                                       experiment["pretrained"], chance)
tables.write_table(fine_tuning, settings.results_dir, "informed_fine_tuning")

# %% [markdown]
# ## Purifier, low-pass filter, detector and re-captioner, against victims from scratch
#
# C against the undefended clean victim, as in 10 and 13: for clean data, what the countermeasure
# costs a collector whose data was never protected.

# %%
countermeasures = tables.defense_table(experiment["countermeasures"], chance)
tables.write_table(countermeasures, settings.results_dir, "informed_countermeasures")

# %%
figure = figures.plot_closure_heatmap(countermeasures)
figures.save_figure(figure, settings.figures_dir, "informed_countermeasures")

# %% [markdown]
# ## How well a detector tells each released set from clean images
#
# A detector trained on the first released images and as many of the collector's clean ones (the
# val split), scored on the rest; the set released clean gives the chance level.

# %%
train_set = runs.load_data(settings.data, "train")
val_set = runs.load_data(settings.data, "val")
released = {label: (protected_dataset(train_set, runs.load_protection(entry["protection"])).images
                    if entry["protection"] else train_set.images)
            for label, entry in experiment["scratch"].items()}
detection = tables.detection_table(released, val_set.images, options.detector["examples"], options.detector["steps"],
                                   settings.seed)
tables.write_table(detection, settings.results_dir, "informed_detection")

# %% [markdown]
# ## What the purifier and the low-pass filter leave of a protected image, and what the re-captioner writes

# %%
first = next(label for label, entry in experiment["scratch"].items() if entry["protection"])
protected = protected_dataset(train_set, runs.load_protection(experiment["scratch"][first]["protection"]))
purifiers = [item for item in options.countermeasures if item.startswith(("denoise", "lowpass"))]
figure = figures.plot_purified_examples(protected, {item: defenses.apply_defenses(protected, item, val_set)
                                                    for item in purifiers}, options.example_count, settings.seed)
figures.save_figure(figure, settings.figures_dir, "informed_purified")

# %%
captioner = runs.run_model(experiment["pretrained"])
examples = tables.caption_defense_examples(protected, ["recaption"], val_set, options.example_count, settings.seed,
                                           model=captioner)
tables.write_table(examples, settings.results_dir, "informed_caption_examples")

# %% [markdown]
# ## Reading
#
# The cpu results of this notebook are not measured yet: the tables above at cpu scale will be
# committed with their run records once its runs are made (`python -m mmue_lib.notebooks --scale cpu
# --only 16_informed_collector`), and the reading written from them. The low-pass cut-off at cpu
# scale, 0.5 of Nyquist, is the strongest that costs a clean collector at most 0.05 of C on the val
# split (0.375 cost 0.08 / 0.04, 0.25 cost 0.27 / 0.11; `benchmarks/collector_selection.py
# --clean-only`, `params/cpu/16_informed_collector.yaml`).
