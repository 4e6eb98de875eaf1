"""Photos as people post them, for `mmue protect`: any size, mode and orientation in, the same out.

A photo is read as it is displayed (EXIF orientation applied), converted to 8 bits per channel
(16-bit scaled, CMYK and palette converted) and kept at its own resolution; grayscale stays one
channel and alpha is kept aside. The surrogate sees the photo as a collector's loader does
(`data.load_rgb` + `data.resize_center_crop`: alpha on white, shorter side to the model's size,
centre crop). Noise made at the model's size is carried to the photo's resolution smoothly
(`carry_noise`: mirrored past the centre square so that it covers the whole photo, Lanczos
upsampled, corrected until the collector's own resize gives the noise back, and bounded at full
resolution), so that no mosaic of the model's pixels shows on flat areas.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from . import distributed
from .data import (CaptionTable, PairDataset, center_crop_geometry, check_image_files, duplicate_rows,
                   image_file_names, load_csv_dataset, read_caption_csv, reading_image, resize_center_crop,
                   write_caption_csv)
from .distributed import resolve_device
from .methods import (METHODS, ProtectConfig, batch_pairs, bound, checkpoint_differences, protection_config,
                      schedule_settings)
from .models import create_clip, load_clip, model_image_size
from .progress import bar as progress_bar
from .progress import duration
from .protect import Protection, estimate_seconds, generate_protection
from .outfolder import (add_to_manifest, check_output_folder, check_room, mib, nearest_existing, prepare_output,
                        read_manifest, state_path)
from .release import export_protected, protected_dataset, psnr, blockiness, ssim
from .storage import atomic_path, cache_root, stable_hash, write_json
from .t2ue import TrainedGenerator, generated_noise, load_generator, new_generator, train_generator
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


CARRY_CORRECTIONS = 3
"""Corrections of the carried noise by what the collector's resize makes of it: measured on
random sign noise (the hardest case), the collector then sees 0.67-0.69 of the noise's amplitude,
as with nearest-neighbour upsampling (0.68-0.70), against 0.61 uncorrected."""


def _resize_field(field: np.ndarray, width: int, height: int, method: int) -> np.ndarray:
    """float32 [C, H', W'] resized channel by channel to `width` x `height` with PIL's `method`."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(channel, np.float32), "F")
                                .resize((width, height), method, reducing_gap=3.0 if method == Image.BICUBIC else None))
                     for channel in field])


def carry_noise(photo: Photo, noise: np.ndarray, bound: int) -> np.ndarray:
    """uint8 [H, W, C]: the photo with int noise [3, S, S] (made at the model's size, within
    `bound`) carried to its own resolution over the whole photo (see the module docstring);
    grayscale photos take the first channel (their noise is tied)."""
    size = noise.shape[-1]
    width, height = photo.size
    new_w, new_h, left, top = center_crop_geometry(width, height, size)
    channels = (noise[:1] if photo.gray else noise).astype(np.float32)
    target = np.pad(channels, ((0, 0), (top, new_h - size - top), (left, new_w - size - left)), mode="reflect")
    carried = np.clip(_resize_field(target, width, height, Image.LANCZOS), -bound, bound)
    for _ in range(CARRY_CORRECTIONS):
        seen = _resize_field(carried, new_w, new_h, Image.BICUBIC)
        carried = np.clip(carried + _resize_field(target - seen, width, height, Image.LANCZOS), -bound, bound)
    change = np.round(carried).astype(np.int16).transpose(1, 2, 0)
    return np.clip(photo.pixels.astype(np.int16) + change, 0, 255).astype(np.uint8)


OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg"}
"""`mmue protect --output-format`: lossless PNG, or JPEG at `--quality` (photos with transparency
stay PNG, which JPEG cannot hold)."""


def save_photo(photo: Photo, pixels: np.ndarray, out_path: str | os.PathLike, quality: int | None = None) -> None:
    """Write uint8 [H, W, C] `pixels` as PNG (lossless; the photo's alpha kept), or as JPEG at
    `quality` when `out_path` ends in .jpg; grayscale as L. Written to a temporary name and
    renamed, so no half-written file is left."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    with atomic_path(out_path) as temporary:
        if out_path.suffix == ".jpg":
            image.save(temporary, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        else:
            if photo.alpha is not None:
                image.putalpha(Image.fromarray(photo.alpha, "L"))
            image.save(temporary, format="PNG")


@dataclass
class PhotoHeader:
    """What a photo's header says, before its pixels are decoded."""

    width: int
    height: int
    channels: int
    alpha: bool


def read_headers(table: CaptionTable) -> list[PhotoHeader]:
    """The header of every photo of `table`; a DataError naming the CSV line of one that is not an image."""
    headers = []
    for path, line in zip(table.image_paths, table.image_lines):
        with reading_image(table.csv_path, line, path), Image.open(path) as image:
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            headers.append(PhotoHeader(*image.size, len(image.getbands()), alpha))
    return headers


def published_names(table: CaptionTable, alpha: list[bool] | None = None,
                    output_format: str = "png") -> tuple[list[str], list[str]]:
    """Where each photo of `table` is published, relative to the output folder, and a note per
    renamed photo: `images/` + its path relative to the CSV's folder (else its file name), with
    the format's suffix (PNG for photos with `alpha`). Photos that would share a name (`a.jpg`,
    `a.png`) keep their own suffix in it (`a-jpg.png`, `a-png.png`)."""
    folder = table.csv_path.parent.resolve()
    alpha = alpha or [False] * len(table.image_paths)
    relatives = []
    for path in table.image_paths:
        try:
            relatives.append(path.resolve().relative_to(folder))
        except ValueError:
            relatives.append(Path(path.name))
    suffixes = [".png" if has_alpha else OUTPUT_FORMATS[output_format] for has_alpha in alpha]
    plain = [(Path("images") / relative).with_suffix(suffix).as_posix() for relative, suffix in zip(relatives, suffixes)]
    counts = Counter(plain)
    taken = {name for name in plain if counts[name] == 1}
    names, notes = [], []
    for relative, suffix, name, line in zip(relatives, suffixes, plain, table.image_lines):
        if counts[name] > 1:
            kind = relative.suffix.lstrip(".").lower() or "image"
            kept = (Path("images") / relative.parent / f"{relative.stem}-{kind}{suffix}").as_posix()
            if kept in taken:
                kept = (Path("images") / relative.parent / f"{relative.stem}-{kind}-line{line}{suffix}").as_posix()
            taken.add(kept)
            notes.append(f"{relative.as_posix()} (line {line}) is published as {kept}: another photo would also "
                         f"be {name}")
            name = kept
        names.append(name)
    return names, notes


def read_photos(table: CaptionTable, size: int, progress: bool = True) -> PairDataset:
    """The photos of `table` as the surrogate sees them at `size` px, with `extra["gray_images"]`
    (bool per image: noise tied across channels), `extra["photo_notes"]` (conversions per image)
    and `extra["warnings"]` (photos too small to carry the noise)."""
    views, gray, notes, warnings = [], [], [], []
    with progress_bar(len(table.image_paths), "photo", f"reading {table.csv_path.name}", enabled=progress) as bar:
        for path, line in zip(table.image_paths, table.image_lines):
            with reading_image(table.csv_path, line, path):
                photo = open_photo(path)
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


def noise_kept(photo: Photo, intended: np.ndarray, published: np.ndarray, size: int) -> float:
    """The share of the intended change (uint8 [H, W, C] `intended` against the photo) that a model
    at `size` px still sees in `published` (after a lossy save): the projection of the one change
    on the other, 1 when all of it is there."""
    clean = model_view(photo, size).astype(np.float64)
    wanted = model_view(Photo(photo.path, intended, photo.alpha), size) - clean
    seen = model_view(Photo(photo.path, published, photo.alpha), size) - clean
    energy = float((wanted * wanted).sum())
    return float((seen * wanted).sum() / energy) if energy else 1.0


def export_photos(table: CaptionTable, dataset: PairDataset, protection: Protection, out_dir: Path,
                  names: list[str], fraction: float, seed: int, quality: int, report: dict) -> tuple[Path, dict]:
    """Publish at each photo's own resolution: the photos under `names` (PNG, or JPEG at `quality`
    for names ending .jpg), `protected.csv` (captions with their triggers, the CSV's other columns
    kept) and `report.json` (`report` plus, per photo, its size, whether it is protected and how
    visible its change is: PSNR, SSIM, blockiness, largest change; for a JPEG, the share of
    the noise its model view keeps). Returns the CSV's path and the visibility means."""
    check_photo_noise(protection.config)
    protected = protected_dataset(dataset, protection, fraction, seed)
    chosen = protected.extra["protected_images"].tolist()
    bound, size = protection.config.eps, dataset.image_size
    images = []
    for index, (path, name) in enumerate(zip(table.image_paths, names)):
        photo = open_photo(path)
        noise = protection.noise[0 if protection.config.noise_per == "universal" else index].numpy()
        pixels = carry_noise(photo, noise, bound) if chosen[index] else photo.pixels
        save_photo(photo, pixels, out_dir / name, quality)
        entry = {"file": name, "source": str(path), "size": list(photo.size), "protected": chosen[index],
                 "grayscale": photo.gray, "alpha": photo.alpha is not None, "notes": photo.notes}
        if name.endswith(".jpg"):
            published = open_photo(out_dir / name).pixels
            entry["noise_kept"] = noise_kept(photo, pixels, published, size) if chosen[index] else None
            pixels = published
        changed = chosen[index] or name.endswith(".jpg")
        entry.update({"psnr_db": psnr(torch.from_numpy(photo.pixels), torch.from_numpy(pixels)),
                      "ssim": ssim(photo.pixels, pixels) if changed else 1.0,
                      "blockiness": blockiness(photo.pixels, pixels) if changed else None,
                      "max_abs_delta": int(np.abs(pixels.astype(np.int16) - photo.pixels.astype(np.int16)).max())})
        images.append(entry)
    csv_path = out_dir / "protected.csv"
    write_caption_csv(csv_path, ((names[image], caption, extras) for image, caption, extras in
                                 zip(table.row_image, protected.captions, table.row_extras)), table.extra_columns)
    visibility = visibility_summary(images)
    write_json(out_dir / "report.json", {
        **report, "images": images, "visibility": visibility,
        "image_fields": "file: the published image (at the photo's own resolution and orientation); source: the "
                        "photo it came from; size: [width, height] px; protected: whether noise was added "
                        "(--fraction); grayscale / alpha: kept as in the photo; notes: conversions on reading; "
                        "psnr_db (null where unchanged) and ssim (1 = identical): how much the published image "
                        "differs from the photo; blockiness: the share of the change's variation in steps "
                        "(about 1: a visible mosaic of noise cells; 0.02-0.2: smooth noise); max_abs_delta: largest pixel change in "
                        "1/255 steps; noise_kept (JPEG only): share of the noise a model still sees after the "
                        "JPEG compression"})
    return csv_path, visibility


def visibility_summary(images: list[dict]) -> dict:
    """Means over the protected photos of `export_photos`' per-photo measures (None where none has one)."""
    def mean(key: str) -> float | None:
        values = [entry[key] for entry in images if entry["protected"] and entry.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {key: mean(key) for key in ("psnr_db", "ssim", "blockiness", "noise_kept")}


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
    keep_state: bool = False
    output_format: Literal["png", "jpeg"] = "png"
    quality: int = 92
    generator: str | None = None
    """A T2UE generator file (`mmue train-generator`) for --method t2ue: no optimisation, each photo's
    noise comes from its first caption in one forward pass."""
    settings: dict = field(default_factory=dict)
    """Protection settings over the method's preset and the schedule (`ProtectConfig` fields)."""


DEVICE_SURROGATES = {"cuda": "RN50", "cpu": "RN-small"}
"""The surrogate `mmue protect --model auto` trains from scratch, by device: the paper's RN50 at
224 px on a GPU; elsewhere a small ResNet CLIP at 64 px (the cpu scale's), which finishes."""

def surrogate_architecture(model: str, device: torch.device) -> str:
    """The architecture `--model` names, `DEVICE_SURROGATES`' for the device when it is "auto"."""
    return DEVICE_SURROGATES.get(device.type, DEVICE_SURROGATES["cpu"]) if model == "auto" else model


SMALL_COLLECTION = 2000
"""Below this many photos the calibrated protection's loss did not fall in its 3 rounds here
(`benchmarks/protect_photos.py` on Flickr8k photos: it rose round after round at 41 and 101
photos, turned only after round 3 at 251 and 501, fell to 0.07 at 2,000): the surrogate learns
a small collection by its captions' content instead of its triggers. What the photos then get
was measured with `benchmarks/protect_companions.py` (100 photos collected among 2,000 others):
a collector's victim ranked them 0.39 of the way from posted-clean toward never-posted, the same
as when they were protected together with 1,900 companion photos (0.40), whose loss did fall."""


MIN_TRIGGER_WORDS = 100
"""A trigger drawn from the collection's own captions needs at least this many words they supply
(each seen `trigger_min_count` times); from fewer, it repeats the few there are ("the a in")."""


def collection_trigger_words(config: ProtectConfig, captions: list[str]) -> tuple[ProtectConfig, str | None]:
    """`config`, or for a caption-vocabulary trigger whose captions supply fewer than
    `MIN_TRIGGER_WORDS` words, the same drawing from the study's Flickr8k caption vocabulary,
    with a note saying so."""
    if not config.trigger_len or config.trigger_vocab != "captions":
        return config, None
    try:
        supplied = int(trigger_vocabulary(config, captions).sum())
    except ValueError:
        supplied = 0
    if supplied >= MIN_TRIGGER_WORDS:
        return config, None
    study = replace(config, trigger_vocab="study")
    return study, (f"your {len(captions)} captions supply {supplied} words seen {config.trigger_min_count} times or "
                   f"more, too few for a trigger of {config.trigger_len} words: its words are drawn from the study's "
                   f"Flickr8k caption vocabulary instead ({int(trigger_vocabulary(study, captions).sum())} words "
                   f"seen as often there)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a protection, with the one line that says how to continue."""


def state_bytes(surrogate: torch.nn.Module, num_images: int, size: int) -> int:
    """About how large the saved state is: the surrogate and its optimizer's two moments (float32)
    and one int8 noise per photo."""
    parameters = sum(p.numel() for p in surrogate.parameters())
    return 3 * 4 * parameters + num_images * 3 * size * size + 2 ** 20


SHIPPED_GENERATOR = Path(__file__).parent / "generators" / "t2ue_flickr8k_64px.pt"
"""The T2UE generator the project ships (Table 1's at cpu scale: Flickr8k train, 64 px, RN-small; its
record beside it names the run), used by `mmue protect --method t2ue` without --generator."""

GENERATOR_SETTINGS = ("device",)
"""`mmue protect` settings that apply with a trained T2UE generator (the rest are the generator's)."""


def request_generator(request: ProtectRequest, config: ProtectConfig) -> TrainedGenerator | None:
    """The T2UE generator the request names (None for the other methods), refused before any photo
    is read when the method and --generator do not go together or a setting would be ignored."""
    if not config.generator_steps:
        if request.generator:
            raise ValueError(f"--generator is for --method t2ue, not {request.method}")
        return None
    trained = load_generator(request.generator)
    defaults = asdict(ProtectConfig())
    ignored = sorted(name for name, value in request.settings.items() if name not in GENERATOR_SETTINGS
                     and value != defaults[name] and value != getattr(trained.config, name))
    if ignored or request.surrogate or request.model != "auto":
        names = [f"--{name.replace('_', '-')}" for name in ignored] + ["--surrogate"] * bool(request.surrogate) + \
                ["--model"] * (request.model != "auto")
        raise ValueError(f"{', '.join(names)}: set when the generator is trained (mmue train-generator); "
                         f"--method t2ue with --generator uses the generator's own settings")
    if request.size and request.size != trained.generator.image_size:
        raise ValueError(f"--size {request.size} differs from the generator's {trained.generator.image_size} px")
    chosen = {name: request.settings[name] for name in GENERATOR_SETTINGS if name in request.settings}
    return replace(trained, config=replace(trained.config, **chosen))


def generator_protection(trained: TrainedGenerator, photos: PairDataset) -> Protection:
    """The protection of `photos` by a T2UE generator: each photo's noise from its first caption."""
    started = time.perf_counter()
    noise = generated_noise(trained.generator, photos.first_captions().captions,
                            device=resolve_device(trained.config.device))
    return Protection(trained.config, noise, torch.zeros(0, 0, dtype=torch.long), trained.history,
                      time.perf_counter() - started)


def protect_photos(request: ProtectRequest) -> None:
    """Protect a person's photos: check the CSV, the photos and the output folder before any
    compute, train a surrogate while protecting (resuming a saved state), and publish the photos,
    their captions with triggers and a report in `request.out`."""
    out = Path(request.out)
    table = read_caption_csv(request.csv)
    for line, first in duplicate_rows(table):
        print(f"warning: {request.csv}: line {line} repeats line {first} (same image and caption)", file=sys.stderr)
    check_image_files(table)
    check_output_folder(out, table.image_paths, table.image_lines, table.csv_path)
    config = protection_config(request.method, schedule_settings(request.schedule), **request.settings)
    shipped = bool(config.generator_steps and not request.generator)
    if shipped:
        request = replace(request, generator=str(SHIPPED_GENERATOR))
    generator = request_generator(request, config)
    if shipped:
        print(f"note: no --generator: using the project's, {SHIPPED_GENERATOR.name} (trained on Flickr8k train at "
              f"{generator.generator.image_size} px; train your own on captions like yours with mmue train-generator)",
              file=sys.stderr)
    config = generator.config if generator else config
    config, vocabulary_note = collection_trigger_words(config, table.captions)
    if config.direction == "maximize" and not request.surrogate:
        raise ValueError(f"--method {request.method} attacks a clean-trained surrogate: pass --surrogate PATH")
    headers = read_headers(table)
    names, renamed = [], []
    if request.resolution == "photo":
        check_photo_noise(config)
        names, renamed = published_names(table, [h.alpha for h in headers], request.output_format)
    device = resolve_device(config.device)
    model = surrogate_architecture(request.model, device)
    if generator:
        surrogate = None
    elif request.surrogate:
        surrogate = load_clip(request.surrogate)
        if request.size and request.size != model_image_size(surrogate):
            raise ValueError(f"--size {request.size} differs from the surrogate's {model_image_size(surrogate)} px")
    else:
        surrogate = create_clip(model, image_size=request.size, seed=config.seed)
    size = generator.generator.image_size if generator else model_image_size(surrogate)
    state = state_path(out)
    state_size = 0 if generator else state_bytes(surrogate, len(table.image_paths), size)
    outputs = sum(h.width * h.height * (h.channels + 1) for h in headers) + 2 ** 20
    check_room(out, outputs, f"the {len(headers)} published photos")
    check_room(state.parent, state_size, "the protection's resumable state")
    is_main = distributed.context().is_main
    with distributed.main_first():
        done = 0 if generator else saved_rounds(state, out, config, len(table.image_paths), len(table.captions),
                                                request.force)
        if is_main:
            prepare_output(out, [*names, "protected.csv", "report.json"], request.force, resuming=done > 0)
    for note in renamed + ([vocabulary_note] if vocabulary_note else []):
        print(f"note: {note}", file=sys.stderr)
    with distributed.main_first():
        clean = read_photos(table, size) if request.resolution == "photo" else load_csv_dataset(request.csv, size)
    for warning in clean.extra.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if generator:
        started = time.perf_counter()
        protection = generator_protection(generator, clean)
        print(f"protected {clean.num_images} photos with the T2UE generator {request.generator} ({size} px, eps "
              f"{config.eps}): each photo's noise from its first caption, "
              f"{1000 * protection.seconds / clean.num_images:.1f} ms per photo")
        if is_main:
            publish_protection(request, table, clean, protection, config, names, f"T2UE generator {request.generator}",
                               started, state)
        return
    small = clean.num_images < SMALL_COLLECTION and config.direction == "minimize"
    if small:
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
          f"for {max(0, config.max_rounds - done)} round(s) (fewer if the loss reaches {config.stop_loss}); "
          f"the state that lets a rerun continue (about {mib(state_size)}) is saved in {state}, outside --out")

    def report_round(record: dict) -> None:
        spent = sum(r["seconds"] for r in protection_rounds) + record["seconds"]
        protection_rounds.append(record)
        left = (config.max_rounds - record["round"]) * spent / len(protection_rounds)
        tqdm.write(f"round {record['round']} of {config.max_rounds}: noise loss {record['noise_loss']:.3g}"
                   f"{f' (stops below {config.stop_loss:g})' if config.stop_loss is not None else ''}, "
                   f"{duration(record['seconds'])}; about {duration(left)} left", file=sys.stdout)

    protection_rounds: list[dict] = []
    started = time.perf_counter()
    try:
        protection = generate_protection(clean, surrogate, config, checkpoint_path=state, on_round=report_round)
    except KeyboardInterrupt:
        finished = done + len(protection_rounds)
        raise Interrupted(f"interrupted{f' after round {finished}' if finished else ''}: rerun the same command to "
                          f"continue{f' from round {finished + 1}' if finished else ''}") from None
    if not is_main:
        return
    publish_protection(request, table, clean, protection, config, names, surrogate_name, started, state)
    if bound(config, protection.history, clean.num_images) is False:
        print(unbound_advice(protection, config, clean.num_images, small), file=sys.stderr)


def publish_protection(request: ProtectRequest, table: CaptionTable, clean: PairDataset, protection: Protection,
                       config: ProtectConfig, names: list[str], made_by: str, started: float, state: Path) -> None:
    """Write the protected photos (or images), their captions and report.json into `request.out`;
    a failed write keeps the resumable state, so that a rerun publishes without computing again."""
    out, size = Path(request.out), clean.image_size
    state_note = ("none: the noise came from the generator in one pass" if config.generator_steps else
                  f"kept in {state} (--keep-state): it holds the exact noise and triggers, which remove the "
                  f"protection; never publish it, and delete it when done" if request.keep_state else
                  "deleted when the protection finished (it holds the exact noise and triggers, which remove "
                  "the protection)")
    report = {"method": request.method, "schedule": request.schedule, "config": asdict(config),
              "csv": str(request.csv), "image_size": size, "resolution": request.resolution,
              "fraction": request.fraction, "output_format": request.output_format,
              "surrogate": made_by, "rounds": len(protection.history), "history": protection.history,
              "final_loss": protection.history[-1]["noise_loss"] if protection.history else None,
              "converged": protection.converged, "seconds": protection.seconds,
              "seconds_this_run": time.perf_counter() - started, "state": state_note,
              **({"generator": str(request.generator)} if request.generator else {})}
    try:
        if request.resolution == "photo":
            csv_path, visibility = export_photos(table, clean, protection, out, names, request.fraction,
                                                 config.seed, request.quality, report)
        else:
            published = protected_dataset(clean, protection, request.fraction, config.seed)
            add_to_manifest(out, image_file_names(published))
            csv_path = export_protected(clean, published, out, report)
    except OSError as error:
        again = ("make room and rerun the same command (the generator makes the noise again in one pass)"
                 if config.generator_steps else f"the protection itself is saved in {state}: make room and rerun the "
                 "same command to publish it without computing it again")
        raise OSError(f"cannot write the protected photos in {out}: {error.strerror or error}. {again}") from error
    if not request.keep_state:
        state.unlink(missing_ok=True)
    together = (f"post the images and the captions of {csv_path.name} together (the triggers are part of the "
                f"protection)" if config.trigger_len else f"post the images with their captions")
    print(f"wrote {csv_path} ({clean.num_images} images) and {out / 'report.json'}; {together}")
    if request.resolution == "photo":
        print(visibility_line(visibility, request.quality if request.output_format == "jpeg" else None))


def visibility_line(summary: dict, quality: int | None) -> str:
    """One line on how visible the published change is (and, for JPEG, how much noise survives)."""
    line = (f"visibility (means over the protected photos, report.json has each): PSNR {summary['psnr_db']:.1f} dB, "
            f"SSIM {summary['ssim']:.3f}, blockiness {summary['blockiness']:.2f} (about 1: a visible mosaic of noise "
            f"cells; 0.02-0.2: smooth noise)") if summary["psnr_db"] is not None else "no photo was changed"
    if quality is not None and summary["noise_kept"] is not None:
        line += (f"; JPEG at quality {quality} keeps {summary['noise_kept']:.2f} of the noise as a model sees it "
                 f"(PNG keeps all of it)")
    return line


def unbound_advice(protection: Protection, config: ProtectConfig, num_images: int, small: bool) -> str:
    """What to do about a protection whose noise did not bind (`methods.bound`)."""
    loss, rounds = protection.history[-1]["noise_loss"], len(protection.history)
    pairs = batch_pairs(config, num_images)
    state = (f"after {rounds} rounds the protection's loss is {loss:.3g}, not below half a contrastive loss at chance "
             f"(ln {pairs} = {math.log(pairs):.2f})")
    if small:
        return (f"note: {state}, as expected for a small collection (see the warning above): more rounds do not "
                f"lower it. Measure what the photos get with mmue check")
    return (f"warning: the noise did not bind to the captions: {state}; such noise protects less. Rerun with "
            f"--force and more --surrogate-steps or --max-rounds {2 * config.max_rounds}, and measure it with "
            f"mmue check")


def saved_rounds(state: Path, out: Path, config: ProtectConfig, num_images: int, num_rows: int, force: bool) -> int:
    """Rounds an interrupted protection into `out` saved in `state` (0: none). A state of another
    protection is refused (--force starts over); a state whose output folder is gone or replaced
    (--force) is stale and removed."""
    if not state.is_file():
        return 0
    if force or read_manifest(out) is None:
        if distributed.context().is_main:
            state.unlink()
        return 0
    saved = torch.load(state, map_location="cpu", weights_only=True)
    differences = checkpoint_differences(saved, config, num_images, num_rows)
    if differences:
        raise ValueError(f"the saved state of the protection into {out} has other settings "
                         f"({'; '.join(differences)}): rerun with the same options (a larger --max-rounds continues "
                         f"it), pass --force to start over, or choose another --out")
    return len(saved["history"])


@dataclass
class GeneratorRequest:
    """What a person asks of `mmue train-generator` (the CLI's options; their help says what each means)."""

    csv: str
    out: str
    schedule: str = "calibrated"
    model: str = "auto"
    size: int | None = None
    max_images: int | None = None
    force: bool = False
    settings: dict = field(default_factory=dict)
    """Protection settings over T2UE's preset and the schedule (`ProtectConfig` fields)."""


def generator_state_path(request: GeneratorRequest, config: ProtectConfig, model: str, size: int) -> Path:
    """Where the resumable state of a generator training lives: in the cache, keyed by its data and settings."""
    csv = Path(request.csv).resolve()
    key = stable_hash({"csv": str(csv), "mtime_ns": csv.stat().st_mtime_ns, "config": config.keyed(), "model": model,
                       "size": size, "max_images": request.max_images})
    return cache_root() / "generator-state" / f"{key[:16]}.ckpt"


def train_photo_generator(request: GeneratorRequest) -> None:
    """Train a T2UE generator on an image,caption CSV (images the release will not hold, for zero
    contact) and write it to `request.out`: refused before any compute when the file exists and is
    not a generator this command wrote (--force replaces one that is); resumable after a kill."""
    out = Path(request.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the generator file to write, e.g. {out / 'generator.pt'}")
    if out.exists():
        if not request.force:
            raise ValueError(f"--out {out} exists: pass --force to replace it (only a T2UE generator is replaced)")
        try:
            load_generator(out)
        except ValueError:
            raise ValueError(f"--out {out} is not a T2UE generator: it is not replaced, even with --force") from None
    config = protection_config("t2ue", schedule_settings(request.schedule), **request.settings)
    device = resolve_device(config.device)
    model = surrogate_architecture(request.model, device)
    surrogate = create_clip(model, image_size=request.size, seed=config.seed)
    size = model_image_size(surrogate)
    state = generator_state_path(request, config, model, size)
    corpus = load_csv_dataset(request.csv, size, max_images=request.max_images)
    generator_bytes = 4 * sum(p.numel() for p in new_generator(size, config, corpus.first_captions().captions)
                              .parameters()) + 2 ** 20
    check_room(nearest_existing(out.parent), generator_bytes, "the generator")
    check_room(state.parent, state_bytes(surrogate, 0, size) + 3 * generator_bytes, "the training's resumable state")
    print(f"training a T2UE generator on {corpus.num_images} images ({corpus.num_rows} captions) of {request.csv}, "
          f"surrogate {model} at {size} px (random init), schedule {request.schedule}: {config.max_rounds} rounds of "
          f"{config.surrogate_steps} surrogate and {config.generator_steps} generator steps; the state that lets a "
          f"rerun continue is saved in {state}")
    try:
        trained = train_generator(corpus, surrogate, config, checkpoint_path=state,
                                  on_round=lambda record: tqdm.write(
                                      f"round {record['round']} of {config.max_rounds}: generator loss "
                                      f"{record['noise_loss']:.3g}, {duration(record['seconds'])}", file=sys.stdout))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: rerun the same command to continue from the last finished round") from None
    if not distributed.context().is_main:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    trained.save(out, {"csv": str(request.csv), "images": corpus.num_images, "captions": corpus.num_rows,
                       "surrogate": model, "image_size": size, "schedule": request.schedule})
    state.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {size} px, eps {config.eps}) after "
          f"{duration(trained.seconds)}; protect photos with it: mmue protect --method t2ue --generator {out} "
          f"--csv YOUR.csv --out FOLDER")
    if bound(config, trained.history) is False:
        print(f"warning: the generator's loss ended at {trained.history[-1]['noise_loss']:.3g}, not below half a "
              f"contrastive loss at chance (ln {batch_pairs(config)}): its noise did not bind to the captions and protects "
              f"little; more rounds (--max-rounds) or more images help", file=sys.stderr)
