"""Release: what a victim trains on and what a protector publishes, from a finished `Protection`:
noisy images and triggered captions for a chosen fraction of the images, PNGs with a report."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .data import PairDataset, image_file_names, write_dataset_folder
from .protect import Protection, group_index
from .storage import mapped_uint8, write_json


PROTECTED_CHUNK = 256
"""Images made protected at a time: memory beyond the result stays a chunk's, whatever the set's size."""


def protected_dataset(dataset: PairDataset, protection: Protection, fraction: float = 1.0,
                      seed: int = 0, images_file: str | os.PathLike | None = None) -> PairDataset:
    """What a victim trains on: noisy images and triggered captions (as text) for a seeded
    random `fraction` of the images (exactly round(fraction * N) of them); the rest stays clean.
    With per-row noise every row becomes its own image. The images are made a chunk at a time;
    with `images_file` (a `.npy`) they go straight into that file and come back memory-mapped,
    so a set larger than memory never sits in RAM (a complete file from an earlier call is reused)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    chosen = torch.zeros(dataset.num_images, dtype=torch.bool)
    count = round(fraction * dataset.num_images)
    chosen[torch.randperm(dataset.num_images, generator=torch.Generator().manual_seed(seed))[:count]] = True
    per_row = protection.config.noise_per == "row"
    row_chosen = chosen[dataset.row_image]
    source = dataset.row_image if per_row else torch.arange(dataset.num_images)
    group = group_index(protection.config.noise_per, torch.arange(len(source)))
    shape = (len(source), *dataset.images.shape[1:])

    def fill(images: torch.Tensor) -> None:
        for start in range(0, len(source), PROTECTED_CHUNK):
            part = slice(start, start + PROTECTED_CHUNK)
            noise = protection.noise[group[part]].short() * chosen[source[part]].view(-1, 1, 1, 1)
            images[part] = (dataset.images[source[part]].short() + noise).clamp(0, 255).to(torch.uint8)

    if images_file is None:
        images = torch.empty(shape, dtype=torch.uint8)
        fill(images)
    else:
        images = mapped_uint8(images_file, shape, lambda array: fill(torch.from_numpy(array)))
    captions = protection.triggered_captions(dataset.row_image, dataset.captions, row_chosen.tolist())
    return PairDataset(images, captions, torch.arange(dataset.num_rows) if per_row else dataset.row_image.clone(),
                       name=f"{dataset.name}-protected",
                       image_paths=[dataset.image_paths[i] for i in source.tolist()] if dataset.image_paths else None,
                       extra={"protected_images": chosen, "source_image": source})


def psnr(clean: torch.Tensor, protected: torch.Tensor) -> float | None:
    """PSNR (dB) of a uint8 image pair; None where they are identical."""
    mse = float((clean.float() - protected.float()).pow(2).mean())
    return None if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ssim(clean: np.ndarray, protected: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: Gaussian window, sigma 1.5) of two uint8 images
    [H, W, C], averaged over channels: 1 for identical images."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for channel in range(clean.shape[2]):
        x, y = clean[..., channel].astype(np.float64), protected[..., channel].astype(np.float64)
        mean_x, mean_y = gaussian_filter(x, 1.5), gaussian_filter(y, 1.5)
        var_x = gaussian_filter(x * x, 1.5) - mean_x ** 2
        var_y = gaussian_filter(y * y, 1.5) - mean_y ** 2
        covariance = gaussian_filter(x * y, 1.5) - mean_x * mean_y
        score = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)
                 / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2)))
        scores.append(score.mean())
    return float(np.mean(scores))


def blockiness(clean: np.ndarray, protected: np.ndarray) -> float | None:
    """How much of a change (uint8 images [H, W, C], protected - clean) is steps: the share of its
    total variation (jumps between neighbouring pixels) in jumps of at least 2/255 that are at
    least twice the jumps on either side. A mosaic of noise cells (nearest-neighbour upsampling,
    cells 8-16 px on a photo several times the model's size) is all steps: about 1; noise carried
    smoothly: 0.02-0.2; noise at the model's own size: about 0.27. None for an unchanged image."""
    change = protected.astype(np.int16) - clean.astype(np.int16)
    total = steps = 0
    for axis in (0, 1):
        jumps = np.abs(np.diff(change, axis=axis)).astype(np.int64)
        padding = [(0, 0)] * jumps.ndim
        padding[axis] = (1, 1)
        padded = np.pad(jumps, padding)
        count = padded.shape[axis]
        before = np.take(padded, range(0, count - 2), axis=axis)
        after = np.take(padded, range(2, count), axis=axis)
        total += int(jumps.sum())
        steps += int(jumps[(jumps >= 2) & (jumps >= 2 * before) & (jumps >= 2 * after)].sum())
    return None if total == 0 else steps / total


def export_protected(clean: PairDataset, protected: PairDataset, out_dir: str | os.PathLike,
                     report: dict) -> Path:
    """Write what a protector publishes: `images/*.png` (8-bit, lossless), `protected.csv` with the
    triggers as plain text, and `report.json` (the given facts plus the PSNR of every image).
    `protected` comes from `protected_dataset(clean, ...)`."""
    csv_path = write_dataset_folder(protected, out_dir, "protected.csv")
    sources = protected.extra["source_image"].tolist()
    chosen = protected.extra["protected_images"]
    images = []
    for index, (name, source) in enumerate(zip(image_file_names(protected), sources)):
        delta = (protected.images[index].short() - clean.images[source].short()).abs()
        images.append({"file": name, "source": clean.image_paths[source] if clean.image_paths else None,
                       "size": list(protected.images[index].shape[1:][::-1]), "protected": bool(chosen[source]),
                       "psnr_db": psnr(clean.images[source], protected.images[index]),
                       "max_abs_delta": int(delta.max())})
    finite = [entry["psnr_db"] for entry in images if entry["psnr_db"] is not None]
    write_json(Path(out_dir) / "report.json", {
        **report, "images": images, "psnr_db_mean": sum(finite) / len(finite) if finite else None,
        "image_fields": "file: the published image; source: the photo it came from; size: [width, height] px; "
                        "protected: whether noise was added (--fraction); psnr_db: null where the image is "
                        "unchanged; max_abs_delta: largest pixel change in 1/255 steps"})
    return csv_path
