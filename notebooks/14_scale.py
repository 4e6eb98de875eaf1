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
#     - results/scale.csv
#     - results/scale.md
#     - results/scale_cost_extrapolated.csv
#     - results/scale_trend.csv
#     - results/scale_axes.csv
#     - results/scale_schedule.csv
#     - results/scale_seeds.csv
#     - figures/scale_closure.png
#     - figures/scale_closure.pdf
#     - figures/scale_cost.png
#     - figures/scale_cost.pdf
#     produces:
#     - table
#     - figure
# ---

# %% [markdown]
# # 14. Extension: the study beyond one operating point (not in the paper)
#
# Every other notebook measures at one operating point: at cpu scale 64 px images, RN-small victims and
# surrogates trained from scratch, 8-epoch victims. There MEM-3's closure C is about three times the
# paper's (Table 1: 1.04 / 0.81 against 0.37 / 0.44). This notebook moves the operating point one axis
# at a time (image size, architecture, train images; `ladder` in the params), makes clean, EM and MEM-3
# victims at each point as Table 1 does, and asks two questions:
#
# 1. **Does the closure fall as the clean victim gets better?** C against the clean victim's quality
#    q = MedR_clean / MedR_random (0 is perfect retrieval, 1 is chance), every point with a least-squares
#    line and its 95% band, and the paper's own point (RN50 at 224 px: q = 0.08 / 0.12) as a star.
# 2. **What does a run at the paper's scale cost?** Seconds per run against work = pixels x parameters
#    x train images, a power law fitted per kind of run, and its extrapolation to the paper's runs on
#    this CPU.
#
# A schedule check repeats MEM-3 at one point under another named schedule (at cpu scale the official
# one), to tell schedule from scale; a seed check repeats one point with other seeds. Closures are
# measured on test, against each point's own clean victim; nothing here is chosen on test.
#
# Run All runs the `smoke` scale (synthetic data, tiny models: 85 s on the project's 2-core CPU from an
# empty run cache, kernel start included); `scale = "cpu"` runs the ladder on Flickr8k (hours: `make
# plan SCALE=cpu PART=extensions` says how many).

# %% tags=["parameters"]
scale = "smoke"  # "cpu": Flickr8k at 64 px ($MMUE_DATA), hours on a CPU; "paper": the paper's models at 224 px
overrides = {}  # settings to change for this run, e.g. {"train.epochs": 2, "data.max_train_images": 300}
output_root = None  # folder that receives results/ and figures/ (None: the project's)

# %%
from mmue_lib import experiments, figures, paper, records, runs, tables
from mmue_lib.metrics import random_metrics
from mmue_lib.settings import load_settings

settings = load_settings("14_scale", scale, overrides, output_root)
settings

# %%
experiment = experiments.scale(settings)
records.write_run_records(experiment, settings.results_dir, "scale")
chance = random_metrics(runs.load_data(settings.data, "test").row_image)
sizes = experiments.ladder_sizes(settings)

# %% [markdown]
# ## Every operating point
#
# Per point: what it varies, its size (work = pixels x parameters x train images), the clean victim's
# MedR and quality q, each protection's victim MedR and closure C, and the cost: seconds and peak
# memory of the clean victim and of each protection (the process's peak resident memory while the run
# computed), and each protection in clean victim runs.

# %%
table = tables.scale_table(experiment["ladder"], chance, sizes)
tables.write_table(table, settings.results_dir, "scale")

# %% [markdown]
# ## Closure against the clean victim's quality
#
# Each marker is one operating point, coloured by the axis it moves; the grey line is a least-squares
# fit over our points with its 95% band; the red star is the paper's point (its RN50 at 224 px on
# Flickr8k, from its Table 1). Where the line, followed to the star's quality, passes near the star, the
# paper's closure is what our protection gives a victim that good. Black, hollow and left out of the
# fit: the schedule check (below), MEM-3 at its point under this scale's schedule ("own", the
# ladder's point again) and under the named one.

# %%
method = "MEM-3"
published = {label: paper.table1(label, settings.paper_dataset) for label in ("Random", "Clean", method)}
paper_point = {direction: (tables.clean_quality(published["Clean"], published["Random"], direction),
                           tables.protection_closure(published[method], published["Clean"], published["Random"],
                                                     direction))
               for direction in ("i2t", "t2i")}
schedules = tables.closure_rows(experiment["schedule"], chance, "schedule")
figure = figures.plot_closure_against_quality(table, method, paper_point,
                                              tables.quality_closure_points(schedules, "schedule"))
figures.save_figure(figure, settings.figures_dir, "scale_closure")

# %% [markdown]
# Does the trend reach the paper's point? Per direction, the line's slope, the C it predicts at the
# paper's quality with the 95% confidence interval of that prediction, and whether the paper's C lies
# inside. Then which axis moves C most: per axis moved one at a time (the study's point counted on
# each), the range of clean quality and of C along it.

# %%
trend = tables.closure_trend(table, method, paper_point)
tables.write_table(trend, settings.results_dir, "scale_trend")

# %%
axes = tables.axis_effects(table, method, experiments.STUDY_POINT)
tables.write_table(axes, settings.results_dir, "scale_axes")

# %% [markdown]
# ## What a run costs, and what the paper's runs would cost here
#
# Left: seconds per clean victim run and per MEM-3 protection against work, on log-log axes, each with
# its fitted power law (the exponent and its standard error in the legend), fitted over the runs timed
# with the same number of CPU threads (most of the ladder's; hollow markers: runs timed otherwise,
# e.g. alone with both cores, left out of the fit). Right: each run's peak
# resident memory against forward size = pixels x parameters (what one image's pass holds; memory
# does not grow with the number of train images, which are read in batches), fitted likewise. The
# table below extrapolates each law to the paper's runs (`paper_runs`): hours of this CPU, victims
# scaled by their epochs over ours, protections at this scale's schedule, and peak memory at this
# scale's batch size: a guide to what `benchmarks/gpu_check.py` measures on a GPU, not a measurement.

# %%
kinds = {"clean victim": ("victim s", "victim threads"),
         f"{method} protection": (f"{method} protection s", f"{method} protection threads")}
laws = tables.cost_laws(table, kinds, "work")
memory_kinds = {"clean victim": ("victim peak GiB", "victim threads"),
                f"{method} protection": (f"{method} protection peak GiB", f"{method} protection threads")}
memory_laws = tables.cost_laws(table, memory_kinds, "forward size")
figure = figures.plot_cost_law(table, kinds, laws, memory_kinds, memory_laws)
figures.save_figure(figure, settings.figures_dir, "scale_cost")

# %%
costs = tables.extrapolated_costs(laws, experiments.run_work(settings, settings.options.paper_runs),
                                  per_epoch=("clean victim",), memory_laws=memory_laws)
tables.write_table(costs, settings.results_dir, "scale_cost_extrapolated")

# %% [markdown]
# ## Schedule against scale, and seeds
#
# The schedule check: MEM-3 at the check's point under this scale's schedule ("own") and under the
# named one. The seed check: the closure of each protection at the seed check's point, per seed, then
# its mean and the half-width of its 95% interval.

# %%
tables.write_table(schedules, settings.results_dir, "scale_schedule")

# %%
seeds = tables.closure_rows(experiment["seeds"], chance, "seed")
tables.write_table(tables.interval_summary(seeds, "method"), settings.results_dir, "scale_seeds")

# %% [markdown]
# ## Reading at cpu scale
#
# Read against the committed cpu results, which one execution of this notebook wrote together:
# `executed/cpu/14_scale.ipynb`, its tables in `results/cpu/scale*.md`, its figures in
# `figures/cpu/scale*.png` and its runs in `results/cpu/runs/scale.json`. C image -> text / text -> image,
# on test; every ladder run timed at one thread beside another job.
#
# **The answer: the schedule, not the scale.** At the 128 px point (RN-small, 2,000 images) MEM-3
# under the official code's schedule gives C 0.37 / 0.30 (black markers in the closure figure), the
# paper's 0.37 / 0.44 image -> text and below it text -> image, where our `calibrated` schedule
# gives 1.02 / 0.73 against the same clean victim (MedR 371 / 272 against 657 / 413). No axis of
# the ladder moves C by more than 0.36; the schedule moves it by 0.65 / 0.43. Our closure is about
# three times the paper's because our schedule protects more, not because our victims are small.
# One seed, one point: the seeds below put MEM-3's spread at +- 0.05, so the gap is real, but which
# of the official settings makes it is only partly measured (see the last paragraph).
#
# **The closure stays high at every operating point under our schedule.** Over 11 points (32-128
# px; RN-tiny to RN-medium and ViT-small; 1,000 to 6,091 images) the clean victim's quality q runs
# from 0.64 / 0.58 (RN-tiny) to 0.18 / 0.19 (every train image), and MEM-3's C from 1.44 to 0.95
# image -> text and from 0.85 to 0.73 text -> image: never near the paper's 0.37 / 0.44. EM stays
# above the paper's EM too (0.23-0.79 / 0.01-0.23 against 0.09 / 0.06).
#
# **Victim quality does not explain the gap.** Image -> text, C falls as the victim gets better
# (slope 0.84 +- 0.25 per unit of q), but the line predicts 0.91 +- 0.21 at the paper's quality (q
# 0.08), not 0.37; text -> image it is flat (0.07 +- 0.11) and predicts 0.78 +- 0.08 against 0.44.
# The paper's point lies outside both 95% bands. The best victim of the ladder (every train image, q
# 0.18 / 0.19) still gives 1.04 / 0.81.
#
# **Image size moves C most, then architecture; data least.** Over 32-128 px C moves 0.36 / 0.11 (1.39
# at 32 px, 1.02 at 128 px, not monotone between), over the four architectures 0.31 / 0.06 (the
# smallest, RN-tiny, is the easiest to protect), over 1,000-6,091 images 0.15 / 0.06. The largest point
# (RN-medium at 128 px) gives the lowest C, 0.95 / 0.78. Followed to 224 px and an RN50, the image-size
# and capacity trends may take C lower, but at these rates not to 0.37.
#
# **Seeds.** At the point closest to the paper's quality (every train image; 12_seeds' runs) MEM-3
# gives 1.05 +- 0.05 / 0.83 +- 0.04 over three seeds, EM 0.39 +- 0.21 / 0.18 +- 0.03: the gap to the
# paper is many times the seed spread.
#
# **Cost.** At one thread a clean victim's seconds grow as work^0.65 +- 0.17 and MEM-3's as
# work^0.87 +- 0.08 (work = pixels x parameters x images; 9 points timed alike), so MEM-3 costs more
# victim runs as the point grows (0.6 at 32 px, 2.3 at 128 px). Peak memory grows slowly with forward
# size (exponent 0.18-0.19). Extrapolated to the paper's runs on this CPU: RN50 at 224 px on Flickr8k,
# a 32-epoch victim 15.6 h and MEM-3 17.8 h (peak 6.6 / 7.0 GiB), Flickr30k 43 h / 70 h, COCO 105 h /
# 227 h, all under our schedule: a guide for `benchmarks/gpu_check.py`, which measures the Flickr8k
# slice's on a GPU. The official schedule costs far more: 20 rounds (its stop at a noise loss of 0.01
# is never reached: 0.70 after 20), the first five with a search over every caption, 30 victim runs as
# timed (8.0 h; its last 8 rounds ran alone at two threads, so about 35 at one thread throughout),
# 13-15 times our schedule's 2.3.
#
# **What is still unexplained, and which run would settle it.** Which of the official settings
# lowers C. `11_ablation` (64 px, 2,000 images, 3 rounds) flips them one at a time: a trigger per
# caption searched over every caption alone takes C from 1.18 / 0.79 to 0.73 / 0.45, every switch at
# once (3 rounds) to 0.88 / 0.68, 6 rounds instead of 3 to 1.11 / 0.82. The rest of the gap lies in
# what it never tried: 20 rounds of a surrogate trained 200 steps each against our 3 of 40, at 128
# px. The run that settles it is the official schedule cut to our 3 rounds of 40 surrogate steps at
# this 128 px point (a few hours here),
# beside the official schedule over three seeds; the paper's own point (RN50 at 224 px on all of
# Flickr8k, 32-epoch victims; `params/paper/14_scale.yaml`) is then a check, not the explanation
# (about 16 h per victim on this CPU, well under an hour on a GPU).
