"""Photos as people post them, for `mmue protect`: any size, mode and orientation in, the same out.

A photo is read as it is displayed (EXIF orientation applied), converted to 8 bits per channel
(16-bit scaled, CMYK and palette converted) and kept at its own resolution; grayscale stays one
channel and alpha is kept aside. The surrogate sees the photo as a collector's loader does
(`data.load_rgb` + `data.resize_center_crop`: alpha on white, shorter side to the model's size,
centre crop). Noise made at the model's size is carried back to the photo's resolution by
nearest-neighbour upsampling over the centre square that crop came from, so every saved pixel
stays within the bound and the collector's resize brings the noise back. Outside that square the
photo is unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import CaptionTable, DataError, PairDataset, center_crop_geometry, resize_center_crop, write_caption_csv
from .progress import bar as progress_bar
from .protect import ProtectConfig, Protection, protected_dataset, psnr
from .storage import atomic_path, write_json

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass
class Photo:
    """A photo as displayed: uint8 `pixels` [H, W, C] (C = 1 for grayscale, else 3), `alpha` [H, W] or None,
    and `notes` naming each conversion made on the way in."""

    path: Path
    pixels: np.ndarray
    alpha: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def gray(self) -> bool:
        return self.pixels.shape[2] == 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in px."""
        return self.pixels.shape[1], self.pixels.shape[0]

    def rgb_on_white(self) -> Image.Image:
        """The photo as an RGB image, transparency composited on white (as `data.load_rgb` reads it)."""
        rgb = np.repeat(self.pixels, 3, axis=2) if self.gray else self.pixels
        if self.alpha is None:
            return Image.fromarray(rgb, "RGB")
        weight = self.alpha[..., None].astype(np.float64) / 255
        return Image.fromarray(np.round(rgb * weight + 255 * (1 - weight)).astype(np.uint8), "RGB")


def _sixteen_bit_to_8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.max(initial=0) <= 1:
        values = values * 255
    elif image.mode != "I" or values.max(initial=0) > 255:
        values = values / 257
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def open_photo(path: str | os.PathLike) -> Photo:
    """Read a photo as displayed, at 8 bits per channel; see the module docstring."""
    path = Path(path)
    with Image.open(path) as opened:
        opened.load()
        notes = []
        orientation = opened.getexif().get(0x0112, 1)
        image = ImageOps.exif_transpose(opened) if orientation != 1 else opened
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation} applied")
        mode = image.mode
        alpha = None
        if mode in SIXTEEN_BIT_MODES:
            notes.append(f"{'32-bit float' if mode == 'F' else '16-bit'} grayscale scaled to 8 bits")
            return Photo(path, _sixteen_bit_to_8(image)[..., None], None, notes)
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            notes.append("palette converted to RGB")
        elif mode == "PA":
            image = image.convert("RGBA")
            notes.append("palette converted to RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGB")
            notes.append(f"{mode} converted to RGB")
        if image.mode in ("LA", "RGBA"):
            alpha = np.asarray(image.getchannel("A"), dtype=np.uint8).copy()
            image = image.convert(image.mode[:-1])
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if pixels.shape[2] == 3 and (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            pixels = pixels[..., :1]
            notes.append("grayscale stored as colour: kept grayscale")
        return Photo(path, pixels.copy(), alpha, notes)


def model_view(photo: Photo, size: int) -> np.ndarray:
    """uint8 [3, S, S]: what a model at `size` px sees of the photo (shorter side resized, centre crop)."""
    return resize_center_crop(photo.rgb_on_white(), size)


def _cells(length: int, resized: int, offset: int, size: int) -> np.ndarray:
    """For each pixel along a side of `length` px, resized to `resized` px and cropped from `offset`,
    the model-size crop cell it falls in (-1 outside the crop)."""
    cells = np.floor((np.arange(length) + 0.5) * resized / length).astype(np.int64) - offset
    return np.where((cells >= 0) & (cells < size), cells, -1)


def carry_noise(photo: Photo, noise: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C]: the photo with int noise [3, S, S] (made at the model's size) carried to its own
    resolution over the centre crop; grayscale photos take the first channel (their noise is tied)."""
    size = noise.shape[-1]
    width, height = photo.size
    new_w, new_h, left, top = center_crop_geometry(width, height, size)
    rows, cols = _cells(height, new_h, top, size), _cells(width, new_w, left, size)
    channels = noise[:1] if photo.gray else noise
    full = channels[:, np.clip(rows, 0, None)][:, :, np.clip(cols, 0, None)].transpose(1, 2, 0).astype(np.int16)
    full *= ((rows >= 0)[:, None] & (cols >= 0)[None, :])[..., None]
    return np.clip(photo.pixels.astype(np.int16) + full, 0, 255).astype(np.uint8)


def save_photo(photo: Photo, pixels: np.ndarray, out_path: str | os.PathLike) -> None:
    """Write uint8 [H, W, C] `pixels` as a lossless PNG, grayscale as L and the photo's alpha kept;
    written to a temporary name and renamed, so no half-written file is left."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    if photo.alpha is not None:
        image.putalpha(Image.fromarray(photo.alpha, "L"))
    with atomic_path(out_path) as temporary:
        image.save(temporary, format="PNG")


def published_names(table: CaptionTable) -> list[str]:
    """Where each photo of `table` is published, relative to the output folder: `images/` + its path
    relative to the CSV's folder (else its file name), as `.png`; two photos that would share a
    name are an error naming both CSV lines."""
    folder = table.csv_path.parent.resolve()
    names: dict[str, int] = {}
    for path, line in zip(table.image_paths, table.image_lines):
        try:
            relative = path.resolve().relative_to(folder)
        except ValueError:
            relative = Path(path.name)
        name = (Path("images") / relative).with_suffix(".png").as_posix()
        if name in names:
            raise DataError(f"{table.csv_path}: lines {names[name]} and {line} would both be published as {name}: "
                            f"rename one of the photos")
        names[name] = line
    return list(names)


def read_photos(table: CaptionTable, size: int, progress: bool = True) -> PairDataset:
    """The photos of `table` as the surrogate sees them at `size` px, with `extra["gray_images"]`
    (bool per image: noise tied across channels), `extra["photo_notes"]` (conversions per image)
    and `extra["warnings"]` (photos too small to carry the noise)."""
    views, gray, notes, warnings = [], [], [], []
    with progress_bar(len(table.image_paths), "photo", f"reading {table.csv_path.name}", enabled=progress) as bar:
        for path, line in zip(table.image_paths, table.image_lines):
            try:
                photo = open_photo(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
                raise DataError(f"{table.csv_path}: line {line}: cannot read image {path}: {error}") from error
            if min(photo.size) < size:
                warnings.append(f"{path.name} is {photo.size[0]} x {photo.size[1]} px, below the surrogate's {size} px: "
                                 f"it is upscaled for the surrogate and keeps only part of its noise")
            views.append(model_view(photo, size))
            gray.append(photo.gray)
            notes.append(photo.notes)
            bar.update()
    return PairDataset(torch.from_numpy(np.stack(views)), table.captions, torch.tensor(table.row_image),
                       name=table.csv_path.stem, image_paths=[str(p) for p in table.image_paths],
                       extra={"gray_images": torch.tensor(gray, dtype=torch.bool), "photo_notes": notes,
                              "warnings": warnings})


def check_photo_noise(config: ProtectConfig) -> None:
    """Refuse per-row noise, which would publish one copy of a photo per caption."""
    if config.noise_per == "row":
        raise ValueError("--noise-per row makes one copy of a photo per caption: use it with --resolution model")


def export_photos(table: CaptionTable, dataset: PairDataset, protection: Protection, out_dir: str | os.PathLike,
                  fraction: float, seed: int, report: dict) -> Path:
    """Publish at each photo's own resolution: the protected photos under `published_names`,
    `protected.csv` (captions with their triggers) and `report.json` (`report` plus, per photo,
    its file, size, whether it is protected, PSNR and largest change at full resolution)."""
    check_photo_noise(protection.config)
    out_dir = Path(out_dir)
    protected = protected_dataset(dataset, protection, fraction, seed)
    chosen = protected.extra["protected_images"].tolist()
    names = published_names(table)
    images = []
    for index, (path, name) in enumerate(zip(table.image_paths, names)):
        photo = open_photo(path)
        noise = protection.noise[0 if protection.config.noise_per == "universal" else index].numpy()
        pixels = carry_noise(photo, noise) if chosen[index] else photo.pixels
        save_photo(photo, pixels, out_dir / name)
        delta = np.abs(pixels.astype(np.int16) - photo.pixels.astype(np.int16))
        images.append({"file": name, "source": str(path), "size": list(photo.size), "protected": chosen[index],
                       "grayscale": photo.gray, "alpha": photo.alpha is not None, "notes": photo.notes,
                       "psnr_db": psnr(torch.from_numpy(photo.pixels), torch.from_numpy(pixels)),
                       "max_abs_delta": int(delta.max(initial=0))})
    csv_path = out_dir / "protected.csv"
    write_caption_csv(csv_path, ((names[image], caption) for image, caption in
                                 zip(table.row_image, protected.captions)))
    finite = [entry["psnr_db"] for entry in images if entry["psnr_db"] is not None]
    write_json(out_dir / "report.json", {
        **report, "images": images, "psnr_db_mean": sum(finite) / len(finite) if finite else None,
        "image_fields": "file: the published image (lossless PNG at the photo's own resolution and orientation); "
                        "source: the photo it came from; size: [width, height] px; protected: whether noise was "
                        "added (--fraction); grayscale / alpha: kept as in the photo; notes: conversions on reading; "
                        "psnr_db: null where the image is unchanged; max_abs_delta: largest pixel change in 1/255 "
                        "steps"})
    return csv_path
