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
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from . import distributed
from .data import (CaptionTable, DataError, PairDataset, center_crop_geometry, check_image_files, duplicate_rows,
                   load_csv_dataset, read_caption_csv, resize_center_crop, write_caption_csv)
from .distributed import resolve_device
from .methods import METHODS, ProtectConfig, protection_config, schedule_settings
from .models import create_clip, load_clip, model_image_size
from .progress import bar as progress_bar
from .progress import duration
from .protect import Protection, checkpoint_differences, estimate_seconds, generate_protection
from .release import export_protected, protected_dataset, psnr
from .storage import atomic_path, write_json
from .triggers import trigger_vocabulary

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


@dataclass
class ProtectRequest:
    """What a person asks of `mmue protect` (the CLI's options; their help says what each means)."""

    csv: str
    out: str
    method: str = "mem-3"
    schedule: str = "calibrated"
    resolution: Literal["photo", "model"] = "photo"
    model: str = "auto"
    size: int | None = None
    surrogate: str | None = None
    fraction: float = 1.0
    force: bool = False
    settings: dict = field(default_factory=dict)
    """Protection settings over the method's preset and the schedule (`ProtectConfig` fields)."""


DEVICE_SURROGATES = {"cuda": "RN50", "cpu": "RN-small"}
"""The surrogate `mmue protect --model auto` trains from scratch, by device: the paper's RN50 at
224 px on a GPU; elsewhere a small ResNet CLIP at 64 px (the cpu scale's), which finishes."""

SMALL_COLLECTION = 2000
"""Below this many photos the calibrated protection's loss did not fall in its 3 rounds here
(`benchmarks/protect_photos.py` on Flickr8k photos: it rose round after round at 41 and 101
photos, turned only after round 3 at 251 and 501, fell to 0.07 at 2,000): the surrogate learns
a small collection by its captions' content instead of its triggers. What the photos then get
was measured with `benchmarks/protect_companions.py` (100 photos collected among 2,000 others):
a collector's victim ranked them 0.39 of the way from posted-clean toward never-posted, the same
as when they were protected together with 1,900 companion photos (0.40), whose loss did fall."""

STATE_FILE = "protect_state.ckpt"
"""Kept in --out after a protection, so a rerun with a larger --max-rounds continues from it."""


def protect_photos(request: ProtectRequest) -> None:
    """Protect a person's photos: check the CSV, the photos and the output folder before any
    compute, train a surrogate while protecting (resuming a saved state), and publish the photos,
    their captions with triggers and a report in `request.out`."""
    out = Path(request.out)
    state = out / STATE_FILE
    table = read_caption_csv(request.csv)
    for line, first in duplicate_rows(table):
        print(f"warning: {request.csv}: line {line} repeats line {first} (same image and caption)", file=sys.stderr)
    check_image_files(table)
    config = protection_config(request.method, schedule_settings(request.schedule), **request.settings)
    if config.trigger_len and config.trigger_vocab == "captions":
        trigger_vocabulary(config, table.captions)
    if config.direction == "maximize" and not request.surrogate:
        raise ValueError(f"--method {request.method} attacks a clean-trained surrogate: pass --surrogate PATH")
    if request.resolution == "photo":
        check_photo_noise(config)
        published_names(table)
    device = resolve_device(config.device)
    model = DEVICE_SURROGATES.get(device.type, DEVICE_SURROGATES["cpu"]) if request.model == "auto" else request.model
    with distributed.main_first():
        done = prepare_output(out, state, config, len(table.image_paths), len(table.captions),
                                       request.force and distributed.context().is_main)
    if request.surrogate:
        surrogate = load_clip(request.surrogate)
        if request.size and request.size != model_image_size(surrogate):
            raise ValueError(f"--size {request.size} differs from the surrogate's {model_image_size(surrogate)} px")
    else:
        surrogate = create_clip(model, image_size=request.size, seed=config.seed)
    size = model_image_size(surrogate)
    with distributed.main_first():
        clean = read_photos(table, size) if request.resolution == "photo" else load_csv_dataset(request.csv, size)
    for warning in clean.extra.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if clean.num_images < SMALL_COLLECTION and config.direction == "minimize":
        print(f"warning: {clean.num_images} photos: below about {SMALL_COLLECTION} the protection's loss does not "
              f"fall (the surrogate learns a small collection's captions instead of its triggers). It still protects "
              f"in part: 100 photos collected among 2,000 others were ranked by a CLIP trained on the collection at "
              f"median 57 of 500 (6 if posted clean, 136 if never posted), and protecting them together with 1,900 "
              f"other photos did no better (README: Protect your photos). Measure yours with mmue check.",
              file=sys.stderr)
    surrogate_name = request.surrogate or f"{model} at {size} px (random init, trained during protection)"
    print(f"protecting {clean.num_images} photos ({clean.num_rows} captions) with {METHODS[request.method].label}, "
          f"schedule {request.schedule}, surrogate {surrogate_name}, on {device.type}: "
          f"{'continuing after round ' + str(done) + ', ' if done else ''}"
          f"about {duration(estimate_seconds(clean, surrogate, config, range(done, config.max_rounds)))} "
          f"for {max(0, config.max_rounds - done)} round(s) (fewer if the loss reaches {config.stop_loss})")

    def report_round(record: dict) -> None:
        spent = sum(r["seconds"] for r in protection_rounds) + record["seconds"]
        protection_rounds.append(record)
        left = (config.max_rounds - record["round"]) * spent / len(protection_rounds)
        tqdm.write(f"round {record['round']} of {config.max_rounds}: noise loss {record['noise_loss']:.3g}"
                   f"{f' (stops below {config.stop_loss:g})' if config.stop_loss is not None else ''}, "
                   f"{duration(record['seconds'])}; about {duration(left)} left", file=sys.stdout)

    protection_rounds: list[dict] = []
    started = time.perf_counter()
    protection = generate_protection(clean, surrogate, config, checkpoint_path=state, on_round=report_round)
    if not distributed.context().is_main:
        return
    report = {"method": request.method, "schedule": request.schedule, "config": asdict(config),
              "csv": str(request.csv), "image_size": size, "resolution": request.resolution,
              "fraction": request.fraction,
              "surrogate": surrogate_name, "rounds": len(protection.history), "history": protection.history,
              "final_loss": protection.history[-1]["noise_loss"] if protection.history else None,
              "converged": protection.converged, "seconds": protection.seconds,
              "seconds_this_run": time.perf_counter() - started,
              "state": f"{STATE_FILE}: rerun with a larger --max-rounds to continue from it; delete it when done"}
    if request.resolution == "photo":
        csv_path = export_photos(table, clean, protection, out, request.fraction, config.seed, report)
    else:
        csv_path = export_protected(clean, protected_dataset(clean, protection, request.fraction, config.seed), out,
                                    report)
    print(f"wrote {csv_path} ({clean.num_images} images) and {out / 'report.json'}; post the images and the "
          f"captions of {csv_path.name} together (the triggers are part of the protection)")
    if protection.converged is False:
        print(f"warning: the protection did not converge: after {len(protection.history)} rounds the PGD loss is "
              f"{report['final_loss']:.3g}, above stop_loss {config.stop_loss:g}; such noise protects less. "
              f"Rerun the same command with --max-rounds {2 * config.max_rounds} to continue from round "
              f"{len(protection.history)}, and measure it with mmue check.", file=sys.stderr)


def prepare_output(out: Path, state: Path, config, num_images: int, num_rows: int, force: bool) -> int:
    """Make --out ready before any compute: empty, or emptied of an earlier output (--force), or
    holding the saved state of this same protection (continued: more rounds, or after a kill).
    Returns the number of rounds the kept state holds."""
    if not out.is_dir() or not any(out.iterdir()):
        return 0
    if force:
        empty_output(out, keep=None)
        return 0
    if not state.is_file():
        raise ValueError(f"{out} is not empty; choose another --out or pass --force to overwrite")
    saved = torch.load(state, map_location="cpu", weights_only=True)
    differences = checkpoint_differences(saved, config, num_images, num_rows)
    if differences:
        raise ValueError(f"{out} holds a protection with other settings ({'; '.join(differences)}): rerun with "
                         f"the same options (a larger --max-rounds continues it), pass --force to start over, "
                         f"or choose another --out")
    empty_output(out, keep=state)
    return len(saved["history"])


PROTECT_OUTPUTS = ("protected.csv", "report.json")
"""Files `mmue protect` writes beside its `images/` folder of PNGs."""


def empty_output(out: Path, keep: Path | None) -> None:
    """Remove an earlier `mmue protect` output from `out` but `keep`; refuse a folder holding anything else."""
    images = out / "images"
    ours = [out / name for name in (*PROTECT_OUTPUTS, STATE_FILE) if out / name != keep]
    ours += [images] if images.is_dir() else []
    foreign = [p for p in out.iterdir() if p not in ours and p != keep]
    if images.is_dir():
        foreign += [p for p in images.rglob("*") if p.is_file() and p.suffix != ".png"]
    if foreign:
        raise ValueError(f"--force empties {out} of an earlier mmue protect output, but it also holds "
                         f"{', '.join(sorted(p.name for p in foreign)[:5])}: choose another --out")
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
