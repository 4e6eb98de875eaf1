"""A folder of photos of every kind people post (sizes, orientations, modes), made from any RGB images:
the fixture of the `mmue protect` tests and of `benchmarks/protect_photos.py`."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = [
    # (file name pattern, stored size, what it is)
    ("landscape_{}.jpg", (500, 333), "RGB JPEG"),
    ("portrait_{}.png", (333, 500), "RGB PNG, portrait"),
    ("gray_{}.jpg", (640, 480), "grayscale JPEG"),
    ("alpha_{}.png", (400, 300), "RGBA PNG with a transparent border"),
    ("palette_{}.png", (300, 300), "palette PNG"),
    ("cmyk_{}.jpg", (600, 400), "CMYK JPEG"),
    ("deep_{}.png", (480, 360), "16-bit grayscale PNG"),
    ("rotated_{}.jpg", (800, 600), "JPEG stored sideways with EXIF orientation 6 (displayed 600 x 800)"),
    ("large_{}.jpg", (1200, 900), "large RGB JPEG"),
    ("graya_{}.png", (360, 360), "grayscale PNG with alpha"),
]
"""The kinds, used in turn; one extra 8 x 8 PNG is added to every folder."""

DISPLAYED_SIZES = {"rotated": (600, 800)}


def displayed_size(name: str) -> tuple[int, int]:
    """(width, height) of a fixture photo as a viewer displays it."""
    kind = name.split("_")[0]
    if kind == "tiny":
        return 8, 8
    return DISPLAYED_SIZES.get(kind, next(size for pattern, size, _ in KINDS if pattern.startswith(kind + "_")))


def _write(image: Image.Image, kind: str, path: Path) -> None:
    if kind == "gray":
        image.convert("L").save(path, quality=92)
    elif kind == "alpha":
        alpha = np.full(image.size[::-1], 255, np.uint8)
        alpha[:20], alpha[-20:] = 0, 128
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(path)
    elif kind == "palette":
        image.quantize(64).save(path)
    elif kind == "cmyk":
        image.convert("CMYK").save(path, quality=92)
    elif kind == "deep":
        Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257).save(path)
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.rotate(90, expand=True).save(path, quality=92, exif=exif.tobytes())
    elif kind == "graya":
        gray = image.convert("LA")
        gray.putalpha(Image.fromarray(np.tile(np.linspace(64, 255, image.size[0]).astype(np.uint8), (image.size[1], 1))))
        gray.save(path)
    else:
        image.save(path, quality=92)


def write_odd_photos(sources: list[np.ndarray], folder: Path, captions: list[str]) -> Path:
    """One photo per source image (uint8 [H, W, 3]), the kinds of `KINDS` in turn, plus an 8 x 8 PNG;
    writes `folder/photos.csv` (one caption per photo, from `captions` in turn) and returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, source in enumerate(sources):
        pattern, size, _ = KINDS[index % len(KINDS)]
        kind = pattern.split("_")[0]
        width, height = DISPLAYED_SIZES.get(kind, size)
        name = pattern.format(index)
        _write(Image.fromarray(source).resize((width, height), Image.BICUBIC), kind, folder / name)
        rows.append((name, captions[index % len(captions)]))
    Image.fromarray(sources[0]).resize((8, 8), Image.BICUBIC).save(folder / "tiny_0.png")
    rows.append(("tiny_0.png", captions[0]))
    csv_path = folder / "photos.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    return csv_path
