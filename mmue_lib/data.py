"""Image-caption data: CSV datasets, a decoded-image cache, converters and a synthetic set.

A dataset CSV has columns `image,caption`; `image` is a path relative to the CSV's
folder (or absolute). Rows of one image need not be consecutive; images get stable
integer ids in order of first appearance and rows keep their CSV order.

Images are decoded once per (file list, size) and cached as uint8 arrays: each image is
converted to RGB (alpha composited on white), its shorter side resized to `size`
(bicubic, antialiased) and the centre `size x size` square cropped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .progress import bar as progress_bar
from .storage import atomic_path, cache_root, expand_path, mapped_uint8, stable_hash

RESIZE_VERSION = "rgb-white-alpha/short-side-bicubic/center-crop/v1"


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the row."""


@dataclass
class PairDataset:
    """Images (uint8, decoded once) and caption rows, each row pointing at its image.

    `images` is [N, 3, S, S] uint8; `captions` has one string per row; `row_image` [M]
    gives each row's image id (0..N-1). `image_paths` (when the data came from files)
    gives each image's source path, in image-id order.
    """

    images: torch.Tensor
    captions: list[str]
    row_image: torch.Tensor
    name: str = "dataset"
    image_paths: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 [N, 3, S, S], got {self.images.dtype} {tuple(self.images.shape)}")
        self.row_image = torch.as_tensor(self.row_image, dtype=torch.long)
        if len(self.captions) != len(self.row_image):
            raise ValueError(f"{self.name}: {len(self.captions)} captions but {len(self.row_image)} row indices")
        if len(self.row_image) and (self.row_image.min() < 0 or self.row_image.max() >= len(self.images)):
            raise ValueError(f"{self.name}: row_image points outside the {len(self.images)} images")

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_rows(self) -> int:
        return len(self.captions)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def rows_of_image(self) -> list[list[int]]:
        """Row ids of every image, in image-id order."""
        rows: list[list[int]] = [[] for _ in range(self.num_images)]
        for row, image in enumerate(self.row_image.tolist()):
            rows[image].append(row)
        return rows

    def subset(self, image_ids: Sequence[int], name: str | None = None) -> "PairDataset":
        """The given images (renumbered 0..len-1 in the given order) with all their rows."""
        image_ids = [int(i) for i in image_ids]
        rows_of = self.rows_of_image()
        rows = [r for i in image_ids for r in rows_of[i]]
        new_id = {old: new for new, old in enumerate(image_ids)}
        return PairDataset(
            images=self.images[image_ids].clone(),
            captions=[self.captions[r] for r in rows],
            row_image=torch.tensor([new_id[int(self.row_image[r])] for r in rows], dtype=torch.long),
            name=name or f"{self.name}[{len(image_ids)}]",
            image_paths=[self.image_paths[i] for i in image_ids] if self.image_paths else None,
        )

    def with_images(self, images: torch.Tensor, name: str | None = None) -> "PairDataset":
        """Same rows, other pixels (for example protected images)."""
        return PairDataset(images, list(self.captions), self.row_image.clone(), name or self.name, self.image_paths)

    def with_captions(self, captions: Sequence[str], name: str | None = None) -> "PairDataset":
        """Same images, other caption text per row (for example with a trigger)."""
        return PairDataset(self.images, list(captions), self.row_image.clone(), name or self.name, self.image_paths)

    def first_captions(self, name: str | None = None) -> "PairDataset":
        """Every image with its first caption only (one row per image, in image order)."""
        first = [rows[0] for rows in self.rows_of_image()]
        return PairDataset(self.images, [self.captions[row] for row in first], torch.arange(self.num_images),
                           name or self.name, self.image_paths)


def concat_datasets(parts: Sequence[PairDataset], name: str) -> PairDataset:
    """The images and rows of `parts`, one after the other."""
    offsets = np.cumsum([0] + [part.num_images for part in parts[:-1]])
    return PairDataset(torch.cat([part.images for part in parts]), [c for part in parts for c in part.captions],
                       torch.cat([part.row_image + int(offset) for part, offset in zip(parts, offsets)]), name,
                       [path for part in parts for path in (part.image_paths or [""] * part.num_images)])


@dataclass
class CaptionTable:
    """A parsed dataset CSV before any image is decoded."""

    csv_path: Path
    image_paths: list[Path]
    image_lines: list[int]
    captions: list[str]
    row_image: list[int]
    row_lines: list[int] = field(default_factory=list)
    """The CSV line of every row."""
    extra_columns: list[str] = field(default_factory=list)
    """Columns beside `image` and the caption, in the CSV's order."""
    row_extras: list[dict[str, str]] = field(default_factory=list)
    """The values of `extra_columns` in every row."""


CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
"""Column separators a CSV may use (spreadsheets in many locales write `;`); the first under which
the header holds the required columns is taken."""


def _csv_delimiter(csv_path: Path, header_line: str, required: tuple[str, ...]) -> str:
    """The separator under which `header_line` holds every `required` column; else a DataError
    naming the missing column, the header as read and the separators tried."""
    for delimiter in CSV_DELIMITERS:
        header = next(csv.reader([header_line], delimiter=delimiter), [])
        if all(column in (name.strip() for name in header) for column in required):
            return delimiter
    header = next(csv.reader([header_line]), [])
    missing = next(column for column in required if column not in (name.strip() for name in header))
    raise DataError(f"{csv_path}: missing column '{missing}' (header is {header}; tried columns separated by "
                    f"{', '.join(CSV_DELIMITERS.values())}): the first line must name the columns "
                    f"{' and '.join(required)}")


def _image_path(csv_path: Path, image: str) -> Path:
    """Where a CSV's image entry points: relative to the CSV's folder unless absolute; a path
    written with Windows separators (`trip\\photo.jpg`) is read with this system's."""
    if "\\" in image and os.sep == "/" and not (csv_path.parent / image).exists():
        image = image.replace("\\", "/")
    return Path(image) if os.path.isabs(image) else (csv_path.parent / image)


def _read_rows(csv_path: Path, caption_column: str) -> CaptionTable:
    """The rows of a dataset CSV whose file exists, in order; see `read_caption_csv`."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header_line = f.readline()
        f.seek(0)
        delimiter = _csv_delimiter(csv_path, header_line, ("image", caption_column))
        reader = csv.DictReader(f, delimiter=delimiter)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        extra_columns = [name for name in reader.fieldnames if name not in ("image", caption_column)]
        image_ids: dict[Path, int] = {}
        table = CaptionTable(csv_path, [], [], [], [], extra_columns=extra_columns)
        for row in reader:
            line = reader.line_num
            if None in row:
                if reader.fieldnames[-1] != caption_column:
                    raise DataError(f"{csv_path}: line {line}: {len(reader.fieldnames) + len(row[None])} columns "
                                    f"where the header names {len(reader.fieldnames)}: put a caption that holds a "
                                    f"'{delimiter}' in double quotes")
                row[caption_column] = delimiter.join([row[caption_column] or "", *row.pop(None)])
            image = (row.get("image") or "").strip()
            caption = " ".join((row.get(caption_column) or "").split())
            if not image:
                raise DataError(f"{csv_path}: line {line}: empty image path")
            if not caption:
                raise DataError(f"{csv_path}: line {line}: empty {caption_column} for image '{image}'")
            path = _image_path(csv_path, image)
            if path not in image_ids:
                image_ids[path] = len(table.image_paths)
                table.image_paths.append(path)
                table.image_lines.append(line)
            table.captions.append(caption)
            table.row_image.append(image_ids[path])
            table.row_lines.append(line)
            table.row_extras.append({name: row.get(name) or "" for name in extra_columns})
    return table


def read_caption_csv(csv_path: str | os.PathLike, caption_column: str = "caption") -> CaptionTable:
    """Parse and validate a dataset CSV (columns `image` and `caption_column`, any others kept as
    `extra_columns`), as spreadsheets write it too: a byte-order mark, CRLF line ends, `;`, tab
    or `|` between columns, Windows separators in paths. A caption in the last column may hold
    the separator unquoted, as people write by hand."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: dataset CSV not found")
    try:
        table = _read_rows(csv_path, caption_column)
    except UnicodeDecodeError as error:
        raise DataError(f"{csv_path}: not UTF-8 text ({error}); save it as CSV UTF-8") from error
    if not table.captions:
        raise DataError(f"{csv_path}: no data rows")
    return table


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any PIL-readable image as RGB; transparency is composited on white."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def center_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of `resize_center_crop` on a `width x height` image."""
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic), centre crop to `size x size`; returns uint8 [3, S, S]."""
    new_w, new_h, left, top = center_crop_geometry(*image.size, size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


@contextmanager
def reading_image(csv_path: Path, line: int, path: Path) -> Iterator[None]:
    """Turn a failure to read the image `path` inside the block into a DataError naming its CSV line."""
    try:
        yield
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{csv_path}: line {line}: cannot read image {path}: {error}") from error


def _decode(path: Path, size: int, csv_path: Path, line: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{csv_path}: line {line}: image file not found: {path}")
    with reading_image(csv_path, line, path):
        return resize_center_crop(load_rgb(path), size)


def file_stats(paths: Iterable[str | os.PathLike]) -> list[tuple[str, int, int]]:
    """(resolved path, size, modification time in ns) of each file: what a cache keyed on files
    compares, so that an edited or replaced file gets a new key."""
    stats = []
    for path in map(Path, paths):
        stat = path.stat()
        stats.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return stats


def check_image_files(table: CaptionTable) -> None:
    """A DataError naming the CSV line of the first image path that is a folder or no file."""
    for path, line in zip(table.image_paths, table.image_lines):
        if path.is_dir():
            raise DataError(f"{table.csv_path}: line {line}: {path} is a folder, not an image file")
        if not path.is_file():
            raise DataError(f"{table.csv_path}: line {line}: image file not found: {path}")


def decode_images(table: CaptionTable, size: int, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> torch.Tensor:
    """Every image of `table` decoded at `size` px as uint8 [N, 3, S, S], memory-mapped from a
    `.npy` file in the cache (decoded once, straight into that file): a set larger than memory
    is read page by page as batches index it. The tensor is copy-on-write: writing to it never
    reaches the file."""
    check_image_files(table)
    key = stable_hash([RESIZE_VERSION, size, file_stats(table.image_paths)])
    cache_file = Path(cache_dir or cache_root() / "images") / f"{key}.npy"
    jobs = list(zip(table.image_paths, table.image_lines))

    def decode_into(images: np.ndarray) -> None:
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool, \
                progress_bar(len(jobs), "image", f"decoding {table.csv_path.name} at {size} px (once; cached)",
                             enabled=progress) as bar:
            for index, array in enumerate(pool.map(lambda job: _decode(job[0], size, table.csv_path, job[1]), jobs)):
                images[index] = array
                bar.update()

    return mapped_uint8(cache_file, (len(jobs), 3, size, size), decode_into)


def duplicate_rows(table: CaptionTable) -> list[tuple[int, int]]:
    """(line, line of its first occurrence) for every row that repeats an earlier row's image and caption."""
    first: dict[tuple[int, str], int] = {}
    repeats = []
    for line, image, caption in zip(table.row_lines, table.row_image, table.captions):
        if (image, caption) in first:
            repeats.append((line, first[(image, caption)]))
        else:
            first[(image, caption)] = line
    return repeats


def load_csv_dataset(csv_path: str | os.PathLike, image_size: int, *, caption_column: str = "caption",
                     max_images: int | None = None, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> PairDataset:
    """Load a dataset CSV; `max_images` keeps only the first images (a slice for quick runs)."""
    table = read_caption_csv(csv_path, caption_column)
    if max_images is not None and max_images < len(table.image_paths):
        keep = [i for i, image in enumerate(table.row_image) if image < max_images]
        table = CaptionTable(table.csv_path, table.image_paths[:max_images], table.image_lines[:max_images],
                             [table.captions[i] for i in keep], [table.row_image[i] for i in keep],
                             [table.row_lines[i] for i in keep])
    images = decode_images(table, image_size, cache_dir, progress)
    return PairDataset(images, table.captions, torch.tensor(table.row_image, dtype=torch.long),
                       name=Path(csv_path).stem, image_paths=[str(p) for p in table.image_paths])


def write_caption_csv(out_csv: str | os.PathLike, pairs: Iterable[tuple], extra_columns: Sequence[str] = ()) -> int:
    """Write `image,caption` rows (image paths made relative to the CSV's folder when possible);
    with `extra_columns`, each pair carries a third item, a dict of those columns' values."""
    out_csv = Path(out_csv)
    count = 0
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption", *extra_columns])
            for image, caption, *extras in pairs:
                image = Path(image)
                if image.is_absolute():
                    try:
                        image = Path(os.path.relpath(image, out_csv.parent.resolve()))
                    except ValueError:
                        pass
                values = extras[0] if extras else {}
                writer.writerow([image.as_posix(), " ".join(str(caption).split()),
                                 *(values.get(name, "") for name in extra_columns)])
                count += 1
    return count


def convert_flickr8k_token(token_file: str | os.PathLike, split_file: str | os.PathLike,
                           images_dir: str | os.PathLike, out_csv: str | os.PathLike) -> int:
    """Flickr8k `Flickr8k.token.txt` + a split list (`Flickr_8k.testImages.txt`) -> dataset CSV."""
    token_file, split_file, images_dir = Path(token_file), Path(split_file), Path(images_dir)
    captions: dict[str, list[tuple[int, str]]] = {}
    for line_no, line in enumerate(token_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line or "#" not in line.split("\t", 1)[0]:
            raise DataError(f"{token_file}: line {line_no}: expected '<image>#<n>\\t<caption>'")
        key, caption = line.split("\t", 1)
        image, index = key.rsplit("#", 1)
        captions.setdefault(image, []).append((int(index), caption.strip()))
    pairs = []
    for line_no, image in enumerate(split_file.read_text(encoding="utf-8").split(), start=1):
        if image not in captions:
            raise DataError(f"{split_file}: line {line_no}: image '{image}' has no captions in {token_file}")
        pairs += [(images_dir.resolve() / image, text) for _, text in sorted(captions[image])]
    return write_caption_csv(out_csv, pairs)


def convert_karpathy_json(json_path: str | os.PathLike, split: str | Sequence[str],
                          images_dir: str | os.PathLike, out_csv: str | os.PathLike) -> int:
    """Karpathy `dataset_{flickr8k,flickr30k,coco}.json` -> dataset CSV of one split.

    `split` is a name or a list of names ("train", "restval", "val", "test"); COCO entries
    carry a `filepath` folder (e.g. `val2014`) that is joined under `images_dir`.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    splits = {split} if isinstance(split, str) else set(split)
    entries = json.loads(json_path.read_text(encoding="utf-8")).get("images")
    if entries is None:
        raise DataError(f"{json_path}: no 'images' list (not a Karpathy split file)")
    pairs = []
    for index, entry in enumerate(entries):
        if entry.get("split") not in splits:
            continue
        if "filename" not in entry or not entry.get("sentences"):
            raise DataError(f"{json_path}: images[{index}]: missing 'filename' or 'sentences'")
        image = images_dir.resolve() / entry.get("filepath", "") / entry["filename"]
        pairs += [(image, sentence.get("raw") or " ".join(sentence["tokens"])) for sentence in entry["sentences"]]
    if not pairs:
        raise DataError(f"{json_path}: no image in split(s) {sorted(splits)}")
    return write_caption_csv(out_csv, pairs)


def convert_coco_captions(captions_json: str | os.PathLike, images_dir: str | os.PathLike,
                          out_csv: str | os.PathLike, captions_per_image: int | None = 5) -> int:
    """COCO `captions_{train,val}2014.json` -> dataset CSV (the first `captions_per_image` per image)."""
    captions_json, images_dir = Path(captions_json), Path(images_dir)
    data = json.loads(captions_json.read_text(encoding="utf-8"))
    if "images" not in data or "annotations" not in data:
        raise DataError(f"{captions_json}: expected 'images' and 'annotations' (COCO captions format)")
    by_image: dict[int, list[tuple[int, str]]] = {}
    for index, annotation in enumerate(data["annotations"]):
        if "image_id" not in annotation or not str(annotation.get("caption", "")).strip():
            raise DataError(f"{captions_json}: annotations[{index}]: missing image_id or empty caption")
        by_image.setdefault(annotation["image_id"], []).append((annotation.get("id", index), annotation["caption"]))
    pairs = []
    for image in sorted(data["images"], key=lambda entry: entry["id"]):
        texts = [text for _, text in sorted(by_image.get(image["id"], []))]
        pairs += [(images_dir.resolve() / image["file_name"], text) for text in texts[:captions_per_image]]
    return write_caption_csv(out_csv, pairs)


SYNTHETIC_COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
SYNTHETIC_BACKGROUNDS = {"black": (15, 15, 15), "gray": (125, 125, 125), "white": (245, 245, 245)}
SYNTHETIC_SHAPES = ("circle", "square", "triangle", "cross")
SYNTHETIC_PLACES = ("top left", "top right", "bottom left", "bottom right")


def _shape_mask(shape: str, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dy ** 2 + dx ** 2 <= radius ** 2
    if shape == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if shape == "triangle":
        return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    arm = radius * 0.35
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _synthetic_captions(background: str, objects: list[tuple[str, str, str]], rng: np.random.Generator,
                        count: int) -> list[str]:
    order = list(objects)
    described = [f"{_article(color)} {color} {shape}" for color, shape, _ in order]
    placed = [f"{_article(color)} {color} {shape} at the {place}" for color, shape, place in order]
    number = {1: "one", 2: "two", 3: "three"}[len(order)]
    plural = "shape" if len(order) == 1 else "shapes"
    templates = [
        f"{' and '.join(described)} on a {background} background",
        f"a {background} picture with {' and '.join(placed)}",
        f"there is {' and '.join(placed)}",
        f"{number} {plural} on {background}: {' and '.join(described)}",
        ", ".join(f"the {place} has {_article(color)} {color} {shape}" for color, shape, place in order),
        f"{' and '.join(reversed(placed))} on {background}",
        f"an image of {' and '.join(reversed(described))}",
    ]
    chosen = rng.permutation(len(templates))[:count]
    return [templates[i] for i in sorted(chosen)]


def make_synthetic_dataset(num_images: int, image_size: int = 32, captions_per_image: int = 5,
                           seed: int = 0, name: str = "synthetic") -> PairDataset:
    """Procedural scenes (1-2 coloured shapes in quadrants on a plain background) with
    templated captions that describe them; a CLIP can learn it, so retrieval is meaningful."""
    if captions_per_image > 7:
        raise ValueError("the synthetic set has at most 7 caption templates per image")
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, 3, image_size, image_size), np.uint8)
    captions: list[str] = []
    row_image: list[int] = []
    for index in range(num_images):
        background = list(SYNTHETIC_BACKGROUNDS)[rng.integers(len(SYNTHETIC_BACKGROUNDS))]
        canvas = np.empty((image_size, image_size, 3), np.float32)
        canvas[:] = SYNTHETIC_BACKGROUNDS[background]
        places = rng.permutation(len(SYNTHETIC_PLACES))[: rng.integers(1, 3)]
        objects = []
        for place in sorted(places):
            color = list(SYNTHETIC_COLORS)[rng.integers(len(SYNTHETIC_COLORS))]
            shape = SYNTHETIC_SHAPES[rng.integers(len(SYNTHETIC_SHAPES))]
            half = image_size / 2
            cy = half * (place // 2) + half / 2 + rng.uniform(-0.12, 0.12) * half
            cx = half * (place % 2) + half / 2 + rng.uniform(-0.12, 0.12) * half
            radius = half * rng.uniform(0.28, 0.42)
            mask = _shape_mask(shape, image_size, cy, cx, radius)
            canvas[mask] = np.array(SYNTHETIC_COLORS[color]) + rng.normal(0, 12, 3)
            objects.append((color, shape, SYNTHETIC_PLACES[place]))
        canvas += rng.normal(0, 6, canvas.shape)
        images[index] = np.clip(canvas, 0, 255).round().astype(np.uint8).transpose(2, 0, 1)
        for caption in _synthetic_captions(background, objects, rng, captions_per_image):
            captions.append(caption)
            row_image.append(index)
    return PairDataset(torch.from_numpy(images), captions, torch.tensor(row_image), name=name)


def count_shared_images(reference: PairDataset, other: PairDataset) -> int:
    """How many of `other`'s images are, pixel for pixel, also images of `reference` (e.g. test
    images that a training set holds)."""
    seen = {hashlib.sha256(image.numpy().tobytes()).digest() for image in reference.images}
    return sum(hashlib.sha256(image.numpy().tobytes()).digest() in seen for image in other.images)


IMAGE_FORMATS = {"png": ("PNG", {}), "jpeg": ("JPEG", {"quality": 95})}
"""Image file formats a dataset folder can be written in: lossless PNG, or JPEG at quality 95."""


def image_file_names(dataset: PairDataset, image_dir: str = "images", image_format: str = "png") -> list[str]:
    """The file of each image that `write_dataset_folder` writes, relative to its folder."""
    return [f"{image_dir}/{index:06d}{f'_{Path(dataset.image_paths[index]).stem}' if dataset.image_paths else ''}"
            f".{image_format}" for index in range(dataset.num_images)]


def write_dataset_folder(dataset: PairDataset, out_dir: str | os.PathLike, csv_name: str = "data.csv",
                         image_dir: str = "images", image_format: str = "png") -> Path:
    """Save a dataset as 8-bit images (lossless PNG, or JPEG: see `IMAGE_FORMATS`) plus a CSV of
    `image,caption`; returns the CSV path. Files are `<image_dir>/<id>.<ext>`, or
    `<image_dir>/<id>_<source stem>.<ext>` when the source paths are known."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    pil_format, options = IMAGE_FORMATS[image_format]
    out_dir = Path(out_dir)
    (out_dir / image_dir).mkdir(parents=True, exist_ok=True)
    names = image_file_names(dataset, image_dir, image_format)
    for index, name in enumerate(names):
        with atomic_path(out_dir / name) as tmp:
            Image.fromarray(dataset.images[index].permute(1, 2, 0).numpy()).save(tmp, format=pil_format, **options)
    out_csv = out_dir / csv_name
    write_caption_csv(out_csv, ((names[int(i)], c) for i, c in zip(dataset.row_image, dataset.captions)))
    return out_csv


def shrink_dataset_folder(source: str | os.PathLike, out_dir: str | os.PathLike, size: int,
                          max_images: dict[str, int | None], image_format: str = "png",
                          progress: bool = True) -> list[Path]:
    """A smaller copy of a dataset folder (`<split>.csv` files), e.g. to carry to another
    machine: per split in `max_images` ({split: first images kept, None for all}), its images
    resized as the loaders do (short side to `size`, centre crop) into `<out_dir>/images/<split>/`
    and its captions into `<out_dir>/<split>.csv`. PNG copies load back pixel for pixel."""
    source = expand_path(source)
    missing = [split for split in max_images if not (source / f"{split}.csv").is_file()]
    if missing:
        raise DataError(f"{source}: no {', '.join(f'{split}.csv' for split in missing)}")
    return [write_dataset_folder(load_csv_dataset(source / f"{split}.csv", size, max_images=limit, progress=progress),
                                 out_dir, f"{split}.csv", f"images/{split}", image_format)
            for split, limit in max_images.items()]


SYNTHETIC_SPLITS = {"train": (800, 0), "val": (100, 1), "test": (100, 2)}


def load_split(source: str, split: str, image_size: int, max_images: int | None = None,
               progress: bool = True) -> PairDataset:
    """One split of a dataset named in params: `synthetic` (the built-in set; `max_images`
    sets its size) or a folder holding `<split>.csv` (`$MMUE_DATA` is expanded)."""
    if source == "synthetic":
        count, seed = SYNTHETIC_SPLITS[split]
        return make_synthetic_dataset(max_images or count, image_size, seed=seed, name=f"synthetic-{split}")
    folder = expand_path(source)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found (params 'data'; is MMUE_DATA set?)")
    return load_csv_dataset(folder / f"{split}.csv", image_size, max_images=max_images, progress=progress)
