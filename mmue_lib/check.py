"""`mmue check`: does the protection keep a collector's CLIP from learning your photos?

A collector never trains on your photos alone: it gathers them among many others. So three
victims train on a background corpus (captioned photos like a collector's; by default the first
2,000 Flickr8k train images where `$MMUE_DATA` holds them) with your photos as posted clean, as
protected (`protected.csv` and its images, read through the victim's own resize), or without
them (never posted). Each victim then searches a gallery of your photos among background photos
it trained on, with clean images and clean captions (what anyone later queries with). The
median rank of your photos says how well a victim learnt them; the protection works when the
protected victim ranks them as badly as the one that never saw them (moved 1 of the way from
posted clean toward never posted).
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .data import (DataError, PairDataset, check_image_files, concat_datasets, count_shared_images, file_stats,
                   load_csv_dataset, read_caption_csv)
from .metrics import image_to_text_ranks, text_to_image_ranks
from .models import create_clip, encode_images, encode_texts, model_context_length, model_image_size
from .progress import labelled
from .storage import expand_path, stable_hash, write_json
from .train import TokenizedPairs, TrainConfig, train_clip

DEFAULT_BACKGROUND = "$MMUE_DATA/flickr8k/train.csv"

VICTIMS = {"never_posted": "never posted (background only)",
           "posted_clean": "posted clean (background + your photos)",
           "protected": "protected (background + your protected photos)"}
"""The three victims, by what the collector gathered."""


@dataclass
class CheckRequest:
    """What a person asks of `mmue check` (the CLI's options; their help says what each means)."""

    clean: str
    protected: str
    out: str
    background: str | None = None
    background_images: int = 2000
    gallery_others: int = 400
    model: str = "RN-small"
    size: int | None = None
    context_length: int | None = None
    pretrained: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, rows_per_epoch="one_per_image"))


def background_csv(request: CheckRequest) -> Path:
    """The background corpus: --background, else the project's Flickr8k train split where present."""
    path = expand_path(request.background or DEFAULT_BACKGROUND)
    if not path.is_file():
        if request.background:
            raise DataError(f"--background {request.background}: dataset CSV not found")
        raise DataError(f"no --background given and no Flickr8k at {path}: pass --background CSV, captioned photos "
                        f"like those a collector gathers beside yours (image,caption), or set MMUE_DATA")
    return path


def collection_key(collection: PairDataset) -> str:
    """A short key of what a victim trains on (its image files as they are on disk, and captions),
    so that a victim's saved state serves only a rerun on the same photos."""
    return stable_hash([file_stats(path for path in collection.image_paths or [] if path),
                        collection.captions])[:12]


def gallery_ranks(model: torch.nn.Module, gallery: PairDataset) -> dict[str, np.ndarray]:
    """Rank of every gallery item (one caption per image) in both directions (1 = first)."""
    pairs = TokenizedPairs.from_dataset(gallery, model_context_length(model))
    model.eval()
    with torch.no_grad():
        images, texts = encode_images(model, pairs.images), encode_texts(model, pairs.tokens)
    return {"i2t": image_to_text_ranks(images, texts, pairs.row_image).numpy(),
            "t2i": text_to_image_ranks(images, texts, pairs.row_image).numpy()}


def protected_size(protected_csv: Path) -> int | None:
    """The image size a protection was made at, from the report.json beside its CSV (None if absent)."""
    try:
        return json.loads((protected_csv.parent / "report.json").read_text(encoding="utf-8")).get("image_size")
    except (OSError, ValueError):
        return None


def check_photos(request: CheckRequest) -> dict:
    """Train the three victims (each resumable from its state in `request.out`, named by the photos it
    trains on, so that checks of several protections share the other two), score your photos and
    write check.json;
    returns its content. Every input is checked before any training."""
    out = Path(request.out)
    clean_table, protected_table = read_caption_csv(request.clean), read_caption_csv(request.protected)
    background_path = background_csv(request)
    for table in (clean_table, protected_table, read_caption_csv(background_path)):
        check_image_files(table)
    if len(protected_table.image_paths) != len(clean_table.image_paths):
        raise DataError(f"{request.protected} has {len(protected_table.image_paths)} photos and {request.clean} "
                        f"{len(clean_table.image_paths)}: give the CSV you protected and the protected.csv it gave")
    if not 1 <= request.gallery_others <= request.background_images:
        raise ValueError(f"--gallery-others {request.gallery_others}: allowed 1 to --background-images "
                         f"({request.background_images})")
    def victim_model() -> torch.nn.Module:
        return create_clip(request.model, image_size=request.size, context_length=request.context_length,
                           pretrained=request.pretrained, seed=request.train.seed)

    probe = victim_model()
    size = model_image_size(probe)
    made_at = protected_size(Path(request.protected))
    if made_at is not None and made_at != size:
        print(f"warning: {request.protected} was protected at {made_at} px and is checked at {size} px: its images "
              f"are rescaled, which may weaken the noise; pass --size {made_at} to check it as it was made",
              file=sys.stderr)
    with distributed.main_first():
        yours = load_csv_dataset(request.clean, size)
        protected = load_csv_dataset(request.protected, size)
        background = load_csv_dataset(background_path, size, max_images=request.background_images)
    shared = count_shared_images(background, yours)
    if shared:
        raise DataError(f"{shared} of your {yours.num_images} photos are also in the background {background_path}: "
                        f"give a background without them")
    if background.num_images < request.gallery_others:
        raise DataError(f"the background {background_path} has {background.num_images} images, fewer than "
                        f"--gallery-others {request.gallery_others}")
    collections = {"never_posted": [background], "posted_clean": [background, yours],
                   "protected": [background, protected]}
    gallery = concat_datasets([yours.first_captions(), background.subset(range(request.gallery_others)).first_captions()],
                              "gallery")
    ranks = {}
    for number, (name, parts) in enumerate(collections.items(), start=1):
        collection = concat_datasets(parts, name)
        label = f"victim {number} of {len(collections)}, {VICTIMS[name]}: {collection.num_images} photos"
        print(label, flush=True)
        model = victim_model()
        with labelled(f"victim {number} of {len(collections)} ({name.replace('_', ' ')})"):
            result = train_clip(model, TokenizedPairs.from_dataset(collection, model_context_length(model)),
                                request.train, checkpoint_path=out / f"{name}-{collection_key(collection)}.ckpt")
        ranks[name] = gallery_ranks(result.model, gallery)
    if not distributed.context().is_main:
        return {}
    summary = check_summary(ranks, yours.num_images, gallery.num_images)
    report = {"clean_csv": str(request.clean), "protected_csv": str(request.protected),
              "background_csv": str(background_path), "background_images": background.num_images,
              "gallery": f"your {yours.num_images} photos and {request.gallery_others} background photos, one "
                         f"clean caption each", "model": request.model, "image_size": size,
              "train": asdict(request.train), **summary}
    write_json(out / "check.json", report)
    return report


def check_summary(ranks: dict[str, dict[str, np.ndarray]], yours: int, gallery: int) -> dict:
    """Median ranks of your photos (the first `yours` gallery items) and of the others, per victim
    and direction, how far the protection moved yours toward never posted, and the verdicts."""
    summary = {"chance_median_rank": (gallery + 1) / 2, "yours_median_rank": {}, "others_median_rank": {},
               "moved_toward_never_posted": {}, "verdict": {}}
    for direction in ("i2t", "t2i"):
        mine = {name: float(np.median(values[direction][:yours])) for name, values in ranks.items()}
        summary["yours_median_rank"][direction] = mine
        summary["others_median_rank"][direction] = {name: float(np.median(values[direction][yours:]))
                                                    for name, values in ranks.items()}
        span = mine["never_posted"] - mine["posted_clean"]
        moved = (mine["protected"] - mine["posted_clean"]) / span if span > 0 else None
        summary["moved_toward_never_posted"][direction] = moved
        summary["verdict"][direction] = check_verdict(direction, mine, moved, yours, gallery)
    return summary


LEARNT = 1.5
"""A collector's victim learnt your photos when posting them clean improved their median rank by
at least this factor over never posting them; below, there is nothing to measure."""


def check_verdict(direction: str, medians: dict[str, float], moved: float | None, yours: int, gallery: int) -> str:
    """One sentence, with the numbers, on what the protection did in `direction` ("i2t" / "t2i")."""
    name = {"i2t": "image -> text", "t2i": "text -> image"}[direction]
    clean, never, protected = medians["posted_clean"], medians["never_posted"], medians["protected"]
    ranks = (f"median rank of your {yours} photos among {gallery}: {clean:.0f} posted clean, {protected:.0f} "
             f"protected, {never:.0f} never posted")
    if moved is None or never < LEARNT * clean:
        return (f"{name}: no verdict: a collector's CLIP did not learn your photos better for having seen them "
                f"({ranks}); train the victims longer (--epochs) or give more photos")
    if moved >= 0.5:
        strength = "the protection works"
    elif moved >= 0.2:
        strength = "the protection works partly"
    else:
        strength = "the protection barely works"
    return (f"{name}: {strength}: {ranks}; it moved your photos {moved:.2f} of the way from posted clean to "
            f"never posted")


def print_check(report: dict) -> None:
    """The check's median ranks and verdicts, as `mmue check` prints them."""
    stream = sys.stdout
    print(f"median rank of your photos (lower: the collector's CLIP knows them better; chance "
          f"{report['chance_median_rank']:.0f}):", file=stream)
    for direction, medians in report["yours_median_rank"].items():
        print(f"  {direction}: " + ", ".join(f"{name.replace('_', ' ')} {value:.0f}" for name, value in medians.items())
              + f" (the background photos: {report['others_median_rank'][direction]['posted_clean']:.0f})",
              file=stream)
    for text in report["verdict"].values():
        print(text, file=stream)

