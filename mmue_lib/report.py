"""Tables (CSV + Markdown, ours beside the paper's) and figures (PNG + PDF), written atomically."""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .data import PairDataset
from .models import Tokenizer
from .storage import atomic_path, write_text


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub Markdown table of a DataFrame (floats rounded to `digits`)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else (f"{value:.0f}" if value.is_integer() else f"{value:.{digits}f}")
        return str(value)

    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, results_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write `name.csv` and `name.md` under `results_dir`."""
    results_dir = Path(results_dir)
    csv_path, md_path = results_dir / f"{name}.csv", results_dir / f"{name}.md"
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    write_text(md_path, markdown_table(frame))
    return csv_path, md_path


def save_figure(figure: plt.Figure, figures_dir: str | os.PathLike, name: str, dpi: int = 120) -> tuple[Path, Path]:
    """Write `name.png` and `name.pdf` under `figures_dir`."""
    figures_dir = Path(figures_dir)
    paths = (figures_dir / f"{name}.png", figures_dir / f"{name}.pdf")
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=path.suffix[1:], dpi=dpi, bbox_inches="tight")
    return paths


def beside_paper(ours: dict[str, float], paper: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Interleave our numbers and the paper's: `key` and `key (paper)` for every key."""
    row = {}
    for key in keys:
        row[key] = ours.get(key, float("nan"))
        row[f"{key} (paper)"] = paper.get(key, float("nan"))
    return row


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
    first_row = {int(image): row for row, image in reversed(list(enumerate(dataset.row_image.tolist())))}
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, chosen):
        axis.imshow(dataset.images[image].permute(1, 2, 0).numpy())
        caption = dataset.captions[first_row[int(image)]]
        axis.set_title("\n".join(_wrap(caption, 34)), fontsize=8)
    figure.tight_layout()
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
