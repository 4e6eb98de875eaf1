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

The victims train from scratch, or (`collector="pretrained"`, as `16_informed_collector`'s
collector) fine-tune the collector's own CLIP, first trained on clean background photos that the
victims' background does not hold: does fine-tuning from a model that already learnt clean data
undo the protection?
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .data import (DataError, PairDataset, check_image_files, concat_datasets, count_shared_images, file_stats,
                   load_csv_dataset, read_caption_csv)
from .metrics import image_to_text_ranks, text_to_image_ranks
from .models import create_clip, encode_images, encode_texts, model_context_length, model_image_size, save_clip
from .progress import labelled
from .storage import expand_path, stable_hash, write_json
from .train import TokenizedPairs, TrainConfig, train_clip

DEFAULT_BACKGROUND = "$MMUE_DATA/flickr8k/train.csv"

VICTIMS = {"never_posted": "never posted (background only)",
           "posted_clean": "posted clean (background + your photos)",
           "protected": "protected (background + your protected photos)"}
"""The three victims, by what the collector gathered."""

COLLECTORS = {"scratch": "trains each victim from scratch",
              "pretrained": "fine-tunes its own CLIP, trained first on clean background photos the victims' "
                            "background does not hold"}
"""How the collector's victims start (`mmue check --collector`)."""

FINE_TUNING_EPOCHS_SHARE, FINE_TUNING_LR_SHARE, FINE_TUNING_WARMUP_STEPS = 0.5, 0.1, 10
"""A pretrained collector fine-tunes for this share of the check's epochs, at this share of its
learning rate, after this many warm-up steps (16_informed_collector's cpu settings: 4 epochs at
5e-5 after 8 at 5e-4)."""


def fine_tuning(train: TrainConfig, frozen_groups: int = 0) -> TrainConfig:
    """The settings a pretrained collector fine-tunes with, from the check's training settings."""
    return replace(train, epochs=max(1, round(train.epochs * FINE_TUNING_EPOCHS_SHARE)),
                   lr=train.lr * FINE_TUNING_LR_SHARE, warmup_steps=FINE_TUNING_WARMUP_STEPS,
                   freeze_image_groups=frozen_groups)


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
    collector: str = "scratch"
    pretrain_images: int | None = None
    """With collector "pretrained": the background images after the first `background_images` that
    the collector's own CLIP trains on (None: all of them)."""
    frozen_groups: int = 0
    """With collector "pretrained": image-tower groups kept frozen while fine-tuning (SSC)."""
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


def check_collector(request: CheckRequest) -> None:
    """Refuse collector options that do not go together, naming them, before any compute."""
    if request.collector not in COLLECTORS:
        raise ValueError(f"--collector {request.collector}: choose one of {', '.join(COLLECTORS)}")
    if request.collector == "scratch" and (request.frozen_groups or request.pretrain_images is not None):
        raise ValueError("--frozen-groups and --pretrain-images are for --collector pretrained")
    if request.collector == "pretrained" and request.pretrained:
        raise ValueError("--pretrained and --collector pretrained: the pretrained collector trains its own CLIP on "
                         "the background; give one of them")
    if request.pretrain_images is not None and request.pretrain_images < 1:
        raise ValueError(f"--pretrain-images {request.pretrain_images}: must be at least 1")


def collector_clip(request: CheckRequest, background: PairDataset) -> Path:
    """Train (resumably) the pretrained collector's own CLIP on `background`, clean photos the victims
    never see, and save it in `request.out`; returns its file."""
    out = Path(request.out)
    key = f"{collection_key(background)}-{stable_hash(asdict(request.train))[:8]}"
    path = out / f"collector-{key}.pt"
    print(f"the collector's own CLIP: {request.model} trained on {background.num_images} clean background photos "
          f"the victims do not train on", flush=True)
    if not path.is_file():
        model = create_clip(request.model, image_size=request.size, context_length=request.context_length,
                            seed=request.train.seed)
        with labelled("the collector's own CLIP"):
            result = train_clip(model, TokenizedPairs.from_dataset(background, model_context_length(model)),
                                request.train, checkpoint_path=out / f"collector-{key}.ckpt")
        with distributed.main_first():
            if distributed.context().is_main and not path.is_file():
                save_clip(result.model, path, {"background": background.num_images, "train": asdict(request.train)})
    return path


def check_photos(request: CheckRequest) -> dict:
    """Train the three victims (each resumable from its state in `request.out`, named by the photos it
    trains on, so that checks of several protections share the other two), score your photos and
    write check.json;
    returns its content. Every input is checked before any training."""
    out = Path(request.out)
    check_collector(request)
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
    size = model_image_size(create_clip(request.model, image_size=request.size, context_length=request.context_length,
                                        pretrained=request.pretrained, seed=request.train.seed))
    made_at = protected_size(Path(request.protected))
    if made_at is not None and made_at != size:
        print(f"warning: {request.protected} was protected at {made_at} px and is checked at {size} px: its images "
              f"are rescaled, which may weaken the noise; pass --size {made_at} to check it as it was made",
              file=sys.stderr)
    with distributed.main_first():
        yours = load_csv_dataset(request.clean, size)
        protected = load_csv_dataset(request.protected, size)
        own_images = None if request.pretrain_images is None else request.background_images + request.pretrain_images
        everything = load_csv_dataset(background_path, size,
                                      max_images=request.background_images if request.collector == "scratch" else own_images)
    background = everything.subset(range(min(request.background_images, everything.num_images)))
    own = everything.subset(range(background.num_images, everything.num_images))
    if request.collector == "pretrained" and not own.num_images:
        raise DataError(f"the background {background_path} has {everything.num_images} images, none beyond "
                        f"--background-images {request.background_images} for the collector's own CLIP: give a "
                        f"larger --background or a smaller --background-images")
    for part, where in ((background, f"in the background {background_path}"),
                        (own, "among the background photos the collector's own CLIP trains on")):
        shared = count_shared_images(part, yours)
        if shared:
            raise DataError(f"{shared} of your {yours.num_images} photos are also {where}: give a background without "
                            f"them")
    if background.num_images < request.gallery_others:
        raise DataError(f"the background {background_path} has {background.num_images} images, fewer than "
                        f"--gallery-others {request.gallery_others}")
    collections = {"never_posted": [background], "posted_clean": [background, yours],
                   "protected": [background, protected]}
    gallery = concat_datasets([yours.first_captions(), background.subset(range(request.gallery_others)).first_captions()],
                              "gallery")
    pretrained, train, start = request.pretrained, request.train, ""
    if request.collector == "pretrained":
        pretrained = collector_clip(request, own)
        train, start = fine_tuning(request.train, request.frozen_groups), f"-from-{Path(pretrained).stem}"
        if request.frozen_groups:
            start += f"-frozen{request.frozen_groups}"

    def victim_model() -> torch.nn.Module:
        return create_clip(request.model, image_size=request.size, context_length=request.context_length,
                           pretrained=pretrained, seed=request.train.seed)

    ranks = {}
    for number, (name, parts) in enumerate(collections.items(), start=1):
        collection = concat_datasets(parts, name)
        label = f"victim {number} of {len(collections)}, {VICTIMS[name]}: {collection.num_images} photos"
        print(label, flush=True)
        model = victim_model()
        with labelled(f"victim {number} of {len(collections)} ({name.replace('_', ' ')})"):
            result = train_clip(model, TokenizedPairs.from_dataset(collection, model_context_length(model)),
                                train, checkpoint_path=out / f"{name}-{collection_key(collection)}{start}.ckpt")
        ranks[name] = gallery_ranks(result.model, gallery)
    if not distributed.context().is_main:
        return {}
    summary = check_summary(ranks, yours.num_images, gallery.num_images)
    report = {"clean_csv": str(request.clean), "protected_csv": str(request.protected),
              "background_csv": str(background_path), "background_images": background.num_images,
              "gallery": f"your {yours.num_images} photos and {request.gallery_others} background photos, one "
                         f"clean caption each", "model": request.model, "image_size": size,
              "collector": f"{request.collector}: {COLLECTORS[request.collector]}", "train": asdict(train),
              **({"collector_clip": {"file": str(pretrained), "background_images": own.num_images,
                                     "train": asdict(request.train)}} if request.collector == "pretrained" else {}),
              **summary}
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

