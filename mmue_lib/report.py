"""Tables (CSV + Markdown, ours beside the paper's) and figures (PNG + PDF), written atomically."""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn
import torch
from scipy import stats

from . import defenses
from .data import PairDataset
from .models import Tokenizer
from .protect import Protection, ProtectConfig, converged
from .storage import atomic_path, write_text


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a DataFrame. Integer-valued floats print without decimals; other
    floats with two decimals in a column whose floats all lie below 10 in size (closure C,
    losses) and one decimal elsewhere (Hit@10 %, MedR)."""
    digits = [_column_digits(frame.iloc[:, i]) for i in range(frame.shape[1])]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v, d) for v, d in zip(row, digits)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _column_digits(column: pd.Series) -> int:
    sizes = [abs(v) for v in column if isinstance(v, float) and math.isfinite(v)]
    return 2 if sizes and max(sizes) < 10 else 1


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else (f"{value:.0f}" if value.is_integer() else f"{value:.{digits}f}")
    return str(value)


def display_table(frame: pd.DataFrame) -> "pd.io.formats.style.Styler":
    """`frame` as a notebook shows it: rounded as `markdown_table` rounds, without the row index."""
    formats = {column: (lambda value, digits=_column_digits(frame.iloc[:, i]): _cell(value, digits))
               for i, column in enumerate(frame.columns)}
    return frame.style.format(formats).hide(axis="index")


def write_table(frame: pd.DataFrame, results_dir: str | os.PathLike, name: str) -> "pd.io.formats.style.Styler":
    """Write `name.csv` and `name.md` under `results_dir`; return the table styled for display."""
    results_dir = Path(results_dir)
    with atomic_path(results_dir / f"{name}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(results_dir / f"{name}.md", markdown_table(frame))
    return display_table(frame)


def save_figure(figure: plt.Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 120) -> None:
    """Write `name.png` and `name.pdf` under `figures_dir`."""
    for suffix in ("png", "pdf"):
        with atomic_path(Path(figures_dir) / f"{name}.{suffix}") as tmp:
            figure.savefig(tmp, format=suffix, dpi=dpi, bbox_inches="tight")


def beside_paper(ours: dict[str, float], paper: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Interleave our numbers and the paper's: `key` and `key (paper)` for every key."""
    row = {}
    for key in keys:
        row[key] = ours.get(key, float("nan"))
        row[f"{key} (paper)"] = paper.get(key, float("nan"))
    return row


RETRIEVAL_KEYS = ["i2t_R@10", "i2t_MedR", "t2i_R@10", "t2i_MedR"]


def protection_closure(protected: dict, clean: dict, chance: dict, direction: str) -> float:
    """C = (MedR_protected - MedR_clean) / (MedR_random - MedR_clean): 0 = no protection, 1 = random."""
    key = f"{direction}_MedR"
    gap = chance[key] - clean[key]
    return float("nan") if gap <= 0 else (protected[key] - clean[key]) / gap


def retrieval_table(finals: dict[str, dict], chance: dict, paper_rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per method (Random first): Hit@10 and MedR both ways (beside the paper's, given
    `paper_rows`), and the protection closure C of every row against the 'Clean' row (Random 1,
    Clean 0 by definition)."""
    rows = []
    for label, final in {"Random": chance, **finals}.items():
        scores = ({key: final[key] for key in RETRIEVAL_KEYS} if paper_rows is None
                  else beside_paper(final, paper_rows.get(label, {}), RETRIEVAL_KEYS))
        row = {"method": label, **scores}
        if "Clean" in finals:
            for direction in ("i2t", "t2i"):
                row[f"{direction} C"] = protection_closure(final, finals["Clean"], chance, direction)
        rows.append(row)
    return pd.DataFrame(rows)


def protection_costs(experiment: dict[str, dict]) -> pd.DataFrame:
    """Table 1's cost of each protection: seconds, rounds, final PGD loss (and whether it reached
    `stop_loss`), its victim's seconds, and the protection in units of one clean victim run."""
    clean_seconds = experiment["Clean"]["victim"]["seconds"]
    rows = []
    for label, entry in experiment.items():
        protection = entry["protection"]
        if not protection:
            continue
        reached = converged(ProtectConfig(**protection["spec"]["config"]), protection["history"])
        rows.append({"method": label, "protection s": protection["seconds"], "rounds": len(protection["history"]),
                     "final noise loss": protection["history"][-1]["noise_loss"],
                     "reached stop_loss": {None: "n/a", True: "yes", False: "no"}[reached],
                     "victim s": entry["victim"]["seconds"],
                     "protection / clean victim": protection["seconds"] / clean_seconds})
    return pd.DataFrame(rows)


def transfer_table(rows: list[tuple[str, str, dict, dict]], chance: dict, method_label: str,
                   paper_rows: dict[str, dict]) -> pd.DataFrame:
    """Table 2: per victim architecture (ours, the paper's counterpart), MedR when trained on clean
    and on protected data, beside the paper's, with the protection closure C."""
    table = []
    for victim, paper_victim, clean, protected in rows:
        row = {"victim": victim, "paper victim": paper_victim}
        published = paper_rows.get(paper_victim, {})
        for direction in ("i2t", "t2i"):
            key = f"{direction}_MedR"
            row[f"clean {key}"] = clean[key]
            row[f"clean {key} (paper)"] = published.get(f"clean {key}", float("nan"))
            row[f"{method_label} {key}"] = protected[key]
            row[f"{method_label} {key} (paper)"] = published.get(f"MEM-3 {key}", float("nan"))
            row[f"{direction} C"] = protection_closure(protected, clean, chance, direction)
        table.append(row)
    return pd.DataFrame(table)


def fraction_table(finals: dict[tuple[str, float], dict], clean: dict, chance: dict,
                   paper_rows: dict[tuple, dict], paper_clean: dict, paper_chance: dict) -> pd.DataFrame:
    """Poisoning fraction: per (method, fraction p of protected images) Hit@10 and MedR both ways,
    MedR beside the draft paper's, and the closure C against the clean victim (p = 0), ours and
    the paper's (from its Table 1 clean and random rows): C compares across test-set sizes."""
    rows = [{"method": "Clean", "p": 0.0, **{k: clean[k] for k in RETRIEVAL_KEYS}, "i2t C": 0.0, "t2i C": 0.0}]
    for (label, fraction), final in finals.items():
        row = {"method": label, "p": fraction}
        published = paper_rows.get((label, fraction), {})
        for key in RETRIEVAL_KEYS:
            row[key] = final[key]
            if key in published:
                row[f"{key} (paper)"] = published[key]
        for direction in ("i2t", "t2i"):
            row[f"{direction} C"] = protection_closure(final, clean, chance, direction)
            if f"{direction}_MedR" in published:
                row[f"{direction} C (paper)"] = protection_closure(published, paper_clean, paper_chance, direction)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_fraction(table: pd.DataFrame) -> plt.Figure:
    """Protection closure C against the protected fraction p, one line per method, with the
    paper's C where it has one (0 = clean victim, 1 = random guessing)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, direction in zip(axes, ("i2t", "t2i")):
        for index, (label, rows) in enumerate(table[table["method"] != "Clean"].groupby("method", sort=False)):
            rows = rows.sort_values("p")
            colour = f"C{index}"
            axis.plot(rows["p"], rows[f"{direction} C"], marker="o", color=colour, label=label)
            if f"{direction} C (paper)" in rows and rows[f"{direction} C (paper)"].notna().any():
                axis.plot(rows["p"], rows[f"{direction} C (paper)"], marker="x", linestyle=":", color=colour,
                          label=f"{label} (paper)")
        _closure_axis(axis, direction, "fraction of protected images p")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def _closure_axis(axis: plt.Axes, direction: str, xlabel: str) -> None:
    """Reference lines at C = 0 (clean) and 1 (random), labels of a closure panel."""
    axis.axhline(0, color="green", linestyle="--", linewidth=1, label="clean")
    axis.axhline(1, color="gray", linestyle="--", linewidth=1, label="random")
    axis.set_xlabel(xlabel)
    axis.set_title(f"{direction} protection closure C")


def defense_table(settings: dict[str, dict[str, dict]], chance: dict) -> pd.DataFrame:
    """One row per (defense, training data): Hit@10 and MedR both ways, and the closure C against
    the undefended clean victim (`settings["none"]["Clean"]`). For protected data C near 0 means
    the defense broke the protection; for clean data C is the defense's own cost."""
    reference = settings["none"]["Clean"]["final"]
    rows = []
    for setting, victims in settings.items():
        for data, run in victims.items():
            final = run["final"]
            rows.append({"defense": setting, "data": data, **{k: final[k] for k in RETRIEVAL_KEYS},
                         **{f"{d} C": protection_closure(final, reference, chance, d) for d in ("i2t", "t2i")}})
    return pd.DataFrame(rows)


def plot_closure_heatmap(table: pd.DataFrame, group: str = "defense", column: str = "data") -> plt.Figure:
    """Closure C as two heat maps (image -> text, text -> image): one row per `group`
    (countermeasure), one column per `column` (training data), the value in each cell; blank where
    that pair was not run. Green: the protection holds (C near 1); red: it is broken (C near 0)."""
    rows, columns = list(dict.fromkeys(table[group])), list(dict.fromkeys(table[column]))
    figure, axes = plt.subplots(1, 2, figsize=(2.2 + 1.3 * len(columns) * 2, 1.0 + 0.38 * len(rows)), sharey=True)
    for axis, direction in zip(axes, ("i2t", "t2i")):
        grid = table.pivot_table(index=group, columns=column, values=f"{direction} C", sort=False)
        seaborn.heatmap(grid.reindex(index=rows, columns=columns), ax=axis, vmin=-0.2, vmax=1.2, center=0.5,
                        cmap="RdYlGn", annot=True, fmt=".2f", annot_kws={"fontsize": 7}, cbar=axis is axes[1],
                        cbar_kws={"label": "closure C (1: chance, 0: as clean)"})
        axis.set_title(f"{'image -> text' if direction == 'i2t' else 'text -> image'} C")
        axis.set_xlabel("training data")
        axis.set_ylabel(group if axis is axes[0] else "")
        axis.tick_params(axis="x", rotation=30, labelsize=8)
    figure.tight_layout()
    return figure


def seed_check_table(seeded: dict[str, dict[str, dict[str, dict]]], chance: dict, label: str) -> pd.DataFrame:
    """The headline cell once per seed (`runs.collector_runs`' "seeds"): per seed and countermeasure
    the closure C of `label`'s victim against that seed's undefended clean victim, then a row with
    the mean over the seeds and one with the half-width of its 95% interval."""
    rows = []
    for seed, settings in seeded.items():
        for setting, victims in settings.items():
            if setting != "none":
                rows.append({"seed": seed, "defense": setting, **{
                    f"{d} C": protection_closure(victims[label]["final"], settings["none"]["Clean"]["final"],
                                                 chance, d) for d in ("i2t", "t2i")}})
    table = pd.DataFrame(rows)
    summary = []
    for setting, group in table.groupby("defense", sort=False):
        intervals = {key: interval(group[key]) for key in ("i2t C", "t2i C")}
        summary += [{"seed": f"mean of {len(group)}", "defense": setting,
                     **{key: mean for key, (mean, _) in intervals.items()}},
                    {"seed": "95% half-width", "defense": setting,
                     **{key: half for key, (_, half) in intervals.items()}}]
    return pd.concat([table, pd.DataFrame(summary)], ignore_index=True)


def ablation_table(experiment: dict[str, dict], chance: dict) -> pd.DataFrame:
    """One row per protection setting of `runs.ablation_runs` (the clean victim first, at no
    cost): generation time in seconds and in clean-victim runs, rounds run, the victim's Hit@10
    and MedR both ways, and the closure C against the clean victim."""
    clean = experiment["Clean"]["victim"]
    rows = []
    for setting, entry in experiment.items():
        protection, final = entry["protection"], entry["victim"]["final"]
        seconds = protection["seconds"] if protection else 0.0
        row = {"setting": setting if protection else "clean data", "seconds": seconds,
               "victim runs": seconds / clean["seconds"], "rounds": len(protection["history"]) if protection else 0}
        row.update({k: final[k] for k in RETRIEVAL_KEYS})
        row.update({f"{d} C": protection_closure(final, clean["final"], chance, d) for d in ("i2t", "t2i")})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_strength_vs_cost(table: pd.DataFrame) -> plt.Figure:
    """Protection closure C against generation cost (clean-victim runs, log scale) for each setting of
    `ablation_table`, drawn as its number; a legend below the panels maps numbers to settings."""
    shown = table[table["setting"] != "clean data"]
    legend_height = 0.2 * math.ceil((len(shown) + 2) / 2)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2 + legend_height), sharey=True)
    for axis, direction in zip(axes, ("i2t", "t2i")):
        for number, (_, row) in enumerate(shown.iterrows(), start=1):
            axis.plot(row["victim runs"], row[f"{direction} C"], linestyle="", marker=f"${number}$", markersize=7,
                      color="black", label=row["setting"])
        _closure_axis(axis, direction, "generation time (clean-victim training runs, log scale)")
        axis.set_xlim(shown["victim runs"].min() / 1.5, shown["victim runs"].max() * 1.5)
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 1))
    return figure


SEED_VALUES = [*RETRIEVAL_KEYS, "i2t C", "t2i C"]


def seed_long_table(experiment: dict[str, dict], chance: dict) -> pd.DataFrame:
    """One row per (seed, victim architecture, training data) of `runs.seed_runs`: Hit@10 and
    MedR both ways, and C against the same seed's clean victim of the same architecture."""
    rows = []
    for seed, entry in experiment.items():
        for victim, runs_of_victim in entry["victims"].items():
            clean = runs_of_victim["Clean"]["final"]
            for data, run in runs_of_victim.items():
                final = run["final"]
                rows.append({"seed": seed, "victim": victim, "data": data, **{k: final[k] for k in RETRIEVAL_KEYS},
                             **{f"{d} C": protection_closure(final, clean, chance, d) for d in ("i2t", "t2i")}})
    return pd.DataFrame(rows)


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval of the mean (half-width nan for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def seed_table(long: pd.DataFrame, paper_rows: dict[tuple[str, str], dict] | None = None) -> pd.DataFrame:
    """Per (victim, training data): the number of seeds, and the mean and the 95% interval's
    half-width of every value of `seed_long_table`, beside the paper's number where `paper_rows`
    ({(victim, data): {value: number}}) has one."""
    rows = []
    for (victim, data), group in long.groupby(["victim", "data"], sort=False):
        row = {"victim": victim, "data": data, "seeds": len(group)}
        published = (paper_rows or {}).get((victim, data), {})
        for value in SEED_VALUES:
            row[value], row[f"{value} ±95%"] = interval(group[value])
            if value in published:
                row[f"{value} (paper)"] = published[value]
        rows.append(row)
    return pd.DataFrame(rows)


def seed_differences(long: pd.DataFrame, victim: str, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """For each (better, worse) pair of training data on `victim`: the per-seed difference of C
    (better - worse), its mean and 95% interval, and whether that interval excludes 0, i.e.
    whether the advantage is larger than the seed-to-seed spread."""
    rows = []
    of_victim = long[long["victim"] == victim].set_index(["seed", "data"])
    for better, worse in pairs:
        for direction in ("i2t", "t2i"):
            column = of_victim[f"{direction} C"].unstack("data")
            mean, half = interval(column[better] - column[worse])
            rows.append({"victim": victim, "comparison": f"{better} - {worse}", "value": f"{direction} C",
                         "mean": mean, "±95%": half, "beyond seed spread": bool(mean - half > 0)})
    return pd.DataFrame(rows)


def plot_seed_intervals(summary: pd.DataFrame, values: tuple[str, ...] = ("i2t C", "t2i C")) -> plt.Figure:
    """Mean C per (victim, training data) with its 95% interval over seeds (clean rows left out)."""
    shown = summary[summary["data"] != "Clean"]
    labels = [f"{v}\n{d}" for v, d in zip(shown["victim"], shown["data"])]
    figure, axes = plt.subplots(1, len(values), figsize=(max(6, 1.1 * len(labels)) * len(values) / 1.5, 3.8),
                                squeeze=False, sharey=True)
    for axis, value in zip(axes[0], values):
        axis.bar(range(len(labels)), shown[value], yerr=shown[f"{value} ±95%"].fillna(0), capsize=4,
                 color=[f"C{i % 10}" for i in range(len(labels))])
        axis.axhline(1, color="gray", linestyle="--", linewidth=1, label="random")
        axis.set_xticks(range(len(labels)), labels, fontsize=8)
        axis.set_title(f"{value}, mean and 95% interval over seeds")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def caption_defense_examples(protected: PairDataset, released: list[str], reference_captions: list[str],
                             count: int = 4, seed: int = 0) -> pd.DataFrame:
    """Some protected captions (triggers included) and what the caption defenses of each item of
    `released` leave of them (a chain's image defenses are left out; items with none are skipped)."""
    chosen = torch.randperm(protected.num_rows, generator=torch.Generator().manual_seed(seed))[:count].tolist()
    table = pd.DataFrame({"protected caption": [protected.captions[r] for r in chosen]})
    for item in released:
        chain = [entry for entry in defenses.parse_defenses(item) if entry["name"] in defenses.CAPTION_DEFENSES]
        if chain:
            cleaned = defenses.apply_defenses(protected, chain, reference_captions)
            table[defenses.defense_label(chain)] = [cleaned.captions[r] for r in chosen]
    return table


def trigger_examples(dataset: PairDataset, protections: dict[str, Protection], count: int = 5,
                     seed: int = 0) -> pd.DataFrame:
    """The same random training captions with each protection's trigger in front."""
    rows_of = dataset.rows_of_image()
    chosen = np.random.default_rng(seed).choice(dataset.num_images, size=min(count, dataset.num_images), replace=False)
    table = []
    for image in chosen.tolist():
        row = rows_of[image][0]
        entry = {"image": image, "caption": dataset.captions[row]}
        for label, protection in protections.items():
            entry[label] = protection.trigger_texts(dataset.row_image[row:row + 1])[0]
        table.append(entry)
    return pd.DataFrame(table)


FACE_KEYS = ["i2t_R@1", "i2t_R@10", "i2t_MedR", "t2i_R@1", "t2i_R@10", "t2i_MedR"]


def face_table(rows: list[dict], paper_victims: dict[str, str], paper_rows: dict[tuple, dict]) -> pd.DataFrame:
    """Table 4: per victim and setting, identity retrieval on one photo per person beside the
    paper's (image -> text only: its text -> image column is a copy), and MedR on all test photos."""
    table = []
    for row in rows:
        paper_victim = paper_victims.get(row["victim"], "")
        published = paper_rows.get((row["setting"], paper_victim), {})
        out = {"victim": row["victim"], "paper victim": paper_victim, "setting": row["setting"]}
        for key in FACE_KEYS:
            out[key] = row[key]
            if key in published:
                out[f"{key} (paper)"] = published[key]
        out["all i2t_MedR"], out["all t2i_MedR"] = row["all i2t_MedR"], row["all t2i_MedR"]
        table.append(out)
    return pd.DataFrame(table)


def plot_grouped_bars(table: pd.DataFrame, group: str, bar: str, values: list[str],
                      chance: dict | None = None, horizontal: bool = False) -> plt.Figure:
    """One panel per value column: bars per `bar` label inside each `group`; a dashed line at
    the chance level where `chance` gives one. `horizontal` lists the groups top to bottom with
    the legend above the panels, for many groups or long group names."""
    groups, bars = list(dict.fromkeys(table[group])), list(dict.fromkeys(table[bar]))
    width = 0.8 / len(bars)
    size = (4.5 * len(values), 1.2 + 0.1 * len(groups) * len(bars)) if horizontal else (4.5 * len(values), 3.6)
    figure, axes = plt.subplots(1, len(values), figsize=size, squeeze=False, sharey=horizontal)
    for axis, value in zip(axes[0], values):
        for index, label in enumerate(bars):
            heights = [table[(table[group] == g) & (table[bar] == label)][value].mean() for g in groups]
            positions = np.arange(len(groups)) + (index - (len(bars) - 1) / 2) * width
            (axis.barh if horizontal else axis.bar)(positions, heights, width, label=label)
        if chance and value in chance:
            (axis.axvline if horizontal else axis.axhline)(chance[value], color="gray", linestyle="--",
                                                           linewidth=1, label="random")
        axis.set_title(value)
        if not horizontal:
            axis.set_xticks(range(len(groups)), groups)
    if horizontal:
        axes[0][0].set_yticks(range(len(groups)), groups)
        axes[0][0].invert_yaxis()
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / size[1]))
    else:
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
    return figure


def split_summary(dataset: PairDataset, context_length: int) -> dict[str, float]:
    """Sizes and caption statistics of one split; `truncated %` counts captions longer than the context."""
    tokenizer = Tokenizer()
    words = np.array([len(c.split()) for c in dataset.captions])
    tokens = np.array([len(tokenizer.encode(c)) for c in dataset.captions])
    per_image = np.bincount(dataset.row_image.numpy(), minlength=dataset.num_images)
    return {"split": dataset.name, "images": dataset.num_images, "captions": dataset.num_rows,
            "captions/image (min)": int(per_image.min()), "captions/image (max)": int(per_image.max()),
            "words (mean)": float(words.mean()), "tokens (mean)": float(tokens.mean()),
            "tokens (max)": int(tokens.max()), "truncated %": float(np.mean(tokens > context_length - 2) * 100),
            "vocabulary": len({w.lower().strip(".,") for c in dataset.captions for w in c.split()})}


def plot_examples(dataset: PairDataset, count: int = 8, seed: int = 0, columns: int = 4) -> plt.Figure:
    """A grid of random images with their first caption."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(dataset.num_images, size=min(count, dataset.num_images), replace=False)
    rows_of = dataset.rows_of_image()
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, chosen):
        axis.imshow(dataset.images[image].permute(1, 2, 0).numpy())
        caption = dataset.captions[rows_of[int(image)][0]]
        axis.set_title("\n".join(_wrap(caption, 34)), fontsize=8)
    figure.tight_layout()
    return figure


def plot_protected_examples(clean: PairDataset, protected: PairDataset, count: int = 4, seed: int = 0) -> plt.Figure:
    """Per example: the clean image, the protected image, the noise (amplified) and the caption
    as published (trigger first)."""
    rng = np.random.default_rng(seed)
    source = protected.extra["source_image"]
    chosen = rng.choice(protected.num_images, size=min(count, protected.num_images), replace=False)
    rows_of = protected.rows_of_image()
    figure, axes = plt.subplots(len(chosen), 3, figsize=(7, 3.2 * len(chosen)), squeeze=False)
    for line, index in zip(axes, chosen):
        before = clean.images[int(source[index])].permute(1, 2, 0).numpy()
        after = protected.images[index].permute(1, 2, 0).numpy()
        noise = after.astype(np.int16) - before.astype(np.int16)
        scale = max(1, int(np.abs(noise).max()))
        for axis, picture, label in zip(line, (before, after, noise / (2 * scale) + 0.5),
                                        ("clean", "protected", f"noise x{127 // scale}")):
            axis.imshow(picture)
            axis.set_xlabel(label, fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        line[1].set_title("\n".join(_wrap(protected.captions[rows_of[int(index)][0]], 60)), fontsize=8)
    figure.tight_layout()
    return figure


def plot_training_curves(histories: dict[str, list[dict]], chance: dict | None = None) -> plt.Figure:
    """Figure 4: per epoch, the victim's mean training loss and its clean-test MedR both ways."""
    panels = [("train_loss", "training loss"), ("i2t_MedR", "image -> text MedR"), ("t2i_MedR", "text -> image MedR")]
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for axis, (key, title) in zip(axes, panels):
        for label, history in histories.items():
            axis.plot([h["epoch"] for h in history], [h[key] for h in history], marker="o", markersize=3, label=label)
        if chance and key in chance:
            axis.axhline(chance[key], color="gray", linestyle="--", linewidth=1, label="random")
        axis.set_title(title)
        axis.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_protection_rounds(histories: dict[str, list[dict]]) -> plt.Figure:
    """Per protection round: the surrogate's mean training loss and the PGD objective, one line per run."""
    panels = [("surrogate_loss", "surrogate training loss"), ("noise_loss", "PGD objective (noise loss)")]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, (key, title) in zip(axes, panels):
        for label, history in histories.items():
            rounds = [h for h in history if key in h]
            axis.plot([h["round"] for h in rounds], [h[key] for h in rounds], marker="o", markersize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("round")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_tsne(panels: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> plt.Figure:
    """Figure 6: one panel per (2-D points, image id of each point, number of images); images
    are triangles, captions circles, one colour per image."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    for axis, (title, (points, groups, num_images)) in zip(axes[0], panels.items()):
        colours = plt.get_cmap("tab20")(groups % 20)
        is_image = np.arange(len(points)) < num_images
        axis.scatter(points[~is_image, 0], points[~is_image, 1], c=colours[~is_image], marker="o", s=28, alpha=0.8)
        axis.scatter(points[is_image, 0], points[is_image, 1], c=colours[is_image], marker="^", s=90,
                     edgecolors="black", linewidths=0.6)
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    marker = {"color": "grey", "linestyle": "none"}
    handles = [plt.Line2D([], [], marker="^", markersize=9, markeredgecolor="black", label="image", **marker),
               plt.Line2D([], [], marker="o", markersize=6, label="caption", **marker)]
    figure.legend(handles=handles, loc="lower center", ncol=2, frameon=False,
                  title="one colour = one image and its captions")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    return figure


def plot_grad_cam(images: np.ndarray, captions: list[str], maps: dict[str, np.ndarray]) -> plt.Figure:
    """Figure 5 (image side): one row per example (uint8 [B, 3, S, S] images), the image and then
    each model's Grad-CAM map laid over it."""
    figure, axes = plt.subplots(len(images), 1 + len(maps), figsize=(2.3 * (1 + len(maps)) + 1, 2.5 * len(images)),
                                squeeze=False, layout="constrained")
    for row, (line, image) in enumerate(zip(axes, images)):
        picture = np.asarray(image).transpose(1, 2, 0)
        line[0].imshow(picture)
        line[0].set_ylabel("\n".join(_wrap(captions[row], 28)), fontsize=7, rotation=0, ha="right", va="center")
        for axis, (label, cams) in zip(line[1:], maps.items()):
            axis.imshow(picture)
            heat = axis.imshow(cams[row], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if row == 0:
                axis.set_title(label, fontsize=10)
        for axis in line:
            axis.set_xticks([])
            axis.set_yticks([])
    if maps:
        figure.colorbar(heat, ax=axes[:, 1:].ravel().tolist(), shrink=0.5,
                        label="Grad-CAM, scaled per map: 0 = ignored, 1 = drives the image-caption similarity most")
    return figure


def plot_token_attributions(attributions: dict[str, list[list[tuple[str, float]]]]) -> plt.Figure:
    """Figure 5 (text side): per example a heat map of Integrated Gradients over its caption
    tokens (columns), one row per model; each row is scaled by its largest magnitude."""
    labels = list(attributions)
    count = len(next(iter(attributions.values())))
    figure, axes = plt.subplots(count, 1, figsize=(11, 0.45 * len(labels) * count + 0.9 * count), squeeze=False,
                                layout="constrained")
    for example, axis in enumerate(axes[:, 0]):
        words = [word for word, _ in attributions[labels[0]][example]]
        scores = np.array([[score for _, score in attributions[label][example]] for label in labels])
        scores = scores / np.maximum(np.abs(scores).max(axis=1, keepdims=True), 1e-12)
        seaborn.heatmap(pd.DataFrame(scores, index=labels, columns=range(len(words))), ax=axis, cmap="RdBu_r",
                        vmin=-1, vmax=1, cbar=False)
        axis.set_xticks(np.arange(len(words)) + 0.5, words, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=8, rotation=0)
    figure.colorbar(plt.cm.ScalarMappable(plt.Normalize(-1, 1), "RdBu_r"), ax=axes[:, 0].tolist(), shrink=0.6,
                    label="Integrated Gradients, scaled per row: red raises the image-caption "
                          "similarity, blue lowers it")
    return figure


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]
