"""Figures: PNG + PDF written atomically, one function per kind of plot a notebook shows."""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn

from .data import PairDataset
from .storage import atomic_path


def save_figure(figure: plt.Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 120) -> None:
    """Write `name.png` and `name.pdf` under `figures_dir`, byte for byte the same for the same
    figure (no creation date in the PDF), so that regenerating one leaves git clean."""
    for suffix, metadata in (("png", {}), ("pdf", {"CreationDate": None})):
        with atomic_path(Path(figures_dir) / f"{name}.{suffix}") as tmp:
            figure.savefig(tmp, format=suffix, dpi=dpi, bbox_inches="tight", metadata=metadata)


DIRECTIONS = {"i2t": "image -> text", "t2i": "text -> image"}


def readable(column: str) -> str:
    """A table column as a panel title: "i2t_MedR" -> "image -> text MedR", "t2i C" -> "text -> image C",
    "all t2i_MedR" (Table 4's metric over every test photo) -> "text -> image MedR, all test photos"."""
    if column.startswith("all "):
        return f"{readable(column.removeprefix('all '))}, all test photos"
    for short, words in DIRECTIONS.items():
        if column.startswith(short):
            return f"{words} {column[len(short):].lstrip('_ ')}".strip()
    return column


def legend_entries(axes) -> tuple[list, list[str]]:
    """The handles and labels of every panel, each label once: one legend for lines that only
    some panels draw (a "random" line in the MedR panels, not in the loss panel)."""
    handles, labels = [], []
    for axis in np.ravel(axes):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


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
    axes[0].legend(*legend_entries(axes), fontsize=8)
    figure.tight_layout()
    return figure


def _closure_axis(axis: plt.Axes, direction: str, xlabel: str) -> None:
    """Reference lines at C = 0 (clean) and 1 (random), labels of a closure panel."""
    axis.axhline(0, color="green", linestyle="--", linewidth=1, label="clean")
    axis.axhline(1, color="gray", linestyle="--", linewidth=1, label="random")
    axis.set_xlabel(xlabel)
    axis.set_title(f"{direction} protection closure C")


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
        axis.set_title(f"{readable(value)}, mean and 95% interval over seeds")
    axes[0][0].legend(*legend_entries(axes), fontsize=8)
    figure.tight_layout()
    return figure


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
        axis.set_title(readable(value))
        if not horizontal:
            axis.set_xticks(range(len(groups)), groups)
    if horizontal:
        axes[0][0].set_yticks(range(len(groups)), groups)
        axes[0][0].invert_yaxis()
        handles, labels = legend_entries(axes)
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / size[1]))
    else:
        axes[0][0].legend(*legend_entries(axes), fontsize=8)
        figure.tight_layout()
    return figure


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


def plot_purified_examples(protected: PairDataset, views: dict[str, PairDataset], count: int = 4,
                           seed: int = 0) -> plt.Figure:
    """Per example: the protected image, then what each countermeasure of `views` (label -> the same
    images after it) makes of it, with what it changed (amplified) below; pixels drawn as squares
    (no smoothing, which would blur the noise and swell the PNG)."""
    chosen = np.random.default_rng(seed).choice(protected.num_images, size=min(count, protected.num_images),
                                                replace=False)
    columns = 1 + len(views)
    figure, axes = plt.subplots(2 * len(chosen), columns, figsize=(2.4 * columns, 4.6 * len(chosen)), squeeze=False)
    for pair, index in enumerate(chosen):
        image = protected.images[index].permute(1, 2, 0).numpy()
        pictures = [("protected", image, None)]
        for label, view in views.items():
            after = view.images[index].permute(1, 2, 0).numpy()
            pictures.append((label, after, after.astype(np.int16) - image.astype(np.int16)))
        for column, (label, picture, change) in enumerate(pictures):
            top, bottom = axes[2 * pair][column], axes[2 * pair + 1][column]
            top.imshow(picture, interpolation="nearest")
            top.set_xlabel("\n".join(_wrap(label, 24)), fontsize=8)
            if change is not None:
                scale = max(1, int(np.abs(change).max()))
                bottom.imshow(change / (2 * scale) + 0.5, interpolation="nearest")
                bottom.set_xlabel(f"change x{127 / scale:.2g}", fontsize=8)
            else:
                bottom.axis("off")
            for axis in (top, bottom):
                axis.set_xticks([])
                axis.set_yticks([])
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
    axes[0].legend(*legend_entries(axes), fontsize=8)
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


def plot_closure_against_quality(table: pd.DataFrame, method: str, paper_point: dict[str, tuple[float, float]],
                                 other_points: dict[str, dict[str, tuple[float, float]]] | None = None
                                 ) -> plt.Figure:
    """Closure C of `method` against the clean victim's quality q = MedR_clean / MedR_random, one
    panel per direction: every operating point of `tables.scale_table`, coloured by what it varies,
    a least-squares line with its 95% band over them, the paper's point (`paper_point[direction]`
    = (q, C)) as a star, and `other_points` (label -> direction -> (q, C)), left out of the fit, in
    black."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for axis, direction in zip(axes, ("i2t", "t2i")):
        x, y = f"{direction} q", f"{method} {direction} C"
        seaborn.regplot(data=table, x=x, y=y, ax=axis, scatter=False, color="0.4", truncate=False, seed=0,
                        label="least-squares line, 95% band", line_kws={"linewidth": 1})
        seaborn.scatterplot(data=table, x=x, y=y, hue="varies", style="varies", s=60, ax=axis)
        quality, closure = paper_point[direction]
        axis.plot([quality], [closure], marker="*", markersize=14, color="crimson", linestyle="", label="the paper")
        others = {label: points[direction] for label, points in (other_points or {}).items()}
        for (label, (other_quality, other_closure)), marker in zip(others.items(), "DPXv^<>"):
            axis.plot([other_quality], [other_closure], marker=marker, markersize=8, color="black",
                      markerfacecolor="none", linestyle="", label=label)
        axis.set_xlabel(f"clean victim quality q ({direction} MedR / random MedR; 0 = perfect)")
        axis.set_ylabel(f"{method} closure C ({direction}; 1 = random, 0 = no protection)")
        axis.set_title(f"{'image -> text' if direction == 'i2t' else 'text -> image'}")
        shown = [*table[y], closure, *(c for _, c in others.values()), 0.0, 1.0]
        axis.set_xlim(0, max(1.0, table[x].max() * 1.05))
        axis.set_ylim(min(shown) - 0.15, max(shown) + 0.15)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_cost_law(table: pd.DataFrame, kinds: dict[str, tuple[str, str]], laws: dict[str, dict[str, float]],
                  memory_kinds: dict[str, tuple[str, str]] | None = None,
                  memory_laws: dict[str, dict[str, float]] | None = None) -> plt.Figure:
    """Seconds per run against work = pixels x parameters x images (log-log): one series per kind of
    run (`kinds`: legend label -> (seconds column, threads column) of `tables.scale_table`), each
    with its fitted power law (`tables.cost_laws`, exponent in the legend); runs the law leaves out
    (timed with other threads) are hollow. Beside it, where `memory_kinds` are given, peak memory
    against forward size = pixels x parameters likewise."""
    panels = [("work", "work = pixels x parameters x train images", "seconds per run (this CPU)", "seconds",
               kinds, laws)]
    if memory_kinds:
        panels.append(("forward size", "forward size = pixels x parameters", "peak resident memory per run (GiB)",
                       "GiB", memory_kinds, memory_laws))
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for axis, (size, xlabel, ylabel, unit, series, fitted) in zip(axes[0], panels):
        span = np.geomspace(table[size].min() / 1.5, table[size].max() * 1.5, 50)
        for (name, (column, threads)), color in zip(series.items(), seaborn.color_palette(n_colors=len(series))):
            law = fitted[name]
            alike = table[threads] == law["threads"]
            axis.plot(table.loc[alike, size], table.loc[alike, column], marker="o", linestyle="", color=color,
                      label=f"{name} ({law['threads']:.0f} thread(s))")
            if (~alike & table[column].notna()).any():
                axis.plot(table.loc[~alike, size], table.loc[~alike, column], marker="o", linestyle="",
                          markerfacecolor="none", color=color, label=f"{name}, other threads (not fitted)")
            axis.plot(span, law["a"] * span ** law["b"], color=color, linewidth=1,
                      label=f"{name}: {unit} ~ {size}^{law['b']:.2f} (±{law['b stderr']:.2f})")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
