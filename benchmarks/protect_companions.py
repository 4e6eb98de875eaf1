"""Does protecting your photos together with other captioned photos (companions) protect
yours once a collector gathers them among other data?

    .venv/bin/python benchmarks/protect_companions.py --out /tmp/companions     # about 1.5 h on 2 busy CPU cores

From the Flickr8k train split (first caption of each image): "yours" are the first --photos
images, the companions the next ones up to --together images in all, and the collector's other
data the --others images after them. `mmue protect` (default options) runs twice: on yours
alone, and on yours with the companions (only yours are then published). A victim CLIP (the
check's defaults, --epochs) is trained on each collection the collector could gather: the
others plus your photos as published (clean, protected alone, protected with companions), or
without them (absent: what never posting them gives). Each victim then searches a gallery of
your photos and --gallery-others of the others (clean images, clean captions: what anyone
later queries with), and the benchmark prints the median rank of your photos (image -> text
and text -> image) beside the others' and chance, and how far each protection moved your
photos from "clean" toward "absent" (1 = as if never posted). Results resume from --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmue_lib.cli import main as mmue
from mmue_lib.data import load_csv_dataset, read_caption_csv, write_caption_csv
from mmue_lib.metrics import image_to_text_ranks, text_to_image_ranks
from mmue_lib.models import encode_images, encode_texts, load_clip, model_context_length, model_image_size
from mmue_lib.storage import expand_path
from mmue_lib.train import TokenizedPairs

COLLECTIONS = ("absent", "clean", "alone", "together")


def first_captions(train_csv: Path) -> list[tuple[Path, str]]:
    """(image path, first caption) of every image of a dataset CSV, in CSV order."""
    table = read_caption_csv(train_csv)
    first: dict[int, str] = {}
    for image, caption in zip(table.row_image, table.captions):
        first.setdefault(image, caption)
    return [(table.image_paths[index].resolve(), first[index]) for index in range(len(table.image_paths))]


def protect(csv_path: Path, out: Path, options: list[str]) -> list[tuple[Path, str]]:
    """Run `mmue protect` once (kept in `out`), return its published (image, caption) rows."""
    if not (out / "protected.csv").exists():
        started = time.perf_counter()
        if mmue(["protect", "--csv", str(csv_path), "--out", str(out), *options]):
            raise SystemExit(f"mmue protect failed on {csv_path}")
        print(f"protected {csv_path.name} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    table = read_caption_csv(out / "protected.csv")
    return [(table.image_paths[image].resolve(), caption) for image, caption in zip(table.row_image, table.captions)]


def gallery_ranks(checkpoint: Path, gallery_csv: Path, yours: int) -> dict[str, np.ndarray]:
    """Per gallery item, its rank in both directions (one caption per image), split into yours / others."""
    model = load_clip(checkpoint)
    gallery = load_csv_dataset(gallery_csv, model_image_size(model))
    pairs = TokenizedPairs.from_dataset(gallery, model_context_length(model))
    with torch.no_grad():
        images, texts = encode_images(model, pairs.images), encode_texts(model, pairs.tokens)
    ranks = {"i2t": image_to_text_ranks(images, texts, pairs.row_image).numpy(),
             "t2i": text_to_image_ranks(images, texts, pairs.row_image).numpy()}
    return {f"{part}_{direction}": (values[:yours] if part == "yours" else values[yours:])
            for direction, values in ranks.items() for part in ("yours", "others")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--out", required=True, help="folder for every protection, victim and result (resumed)")
    parser.add_argument("--photos", type=int, default=100, help="your photos")
    parser.add_argument("--together", type=int, default=2000, help="your photos plus the companions")
    parser.add_argument("--others", type=int, default=2000, help="the collector's other images")
    parser.add_argument("--gallery-others", type=int, default=400, help="others searched beside your photos")
    parser.add_argument("--epochs", type=int, default=8, help="victim epochs")
    parser.add_argument("options", nargs="*", help="after --: more mmue protect options")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = first_captions(expand_path(args.data) / "train.csv")
    if args.together + args.others > len(rows) or args.gallery_others > args.others:
        raise SystemExit(f"--together + --others is more than the {len(rows)} train images, "
                         "or --gallery-others more than --others")
    yours, others = rows[:args.photos], rows[args.together:args.together + args.others]
    write_caption_csv(out / "yours.csv", yours)
    write_caption_csv(out / "together.csv", rows[:args.together])
    published = {"absent": [], "clean": yours,
                 "alone": protect(out / "yours.csv", out / "protected_alone", args.options),
                 "together": protect(out / "together.csv", out / "protected_together", args.options)[:args.photos]}
    gallery_csv = out / "gallery.csv"
    write_caption_csv(gallery_csv, yours + others[:args.gallery_others])
    results = {}
    for name in COLLECTIONS:
        collection_csv = out / f"collection_{name}.csv"
        write_caption_csv(collection_csv, published[name] + others)
        victim = out / "victims" / name
        if not (victim / "model.pt").exists():
            if mmue(["train", "--csv", str(collection_csv), "--out", str(victim), "--epochs", str(args.epochs),
                     "--rows-per-epoch", "one_per_image"]):
                raise SystemExit(f"training the {name} victim failed")
        results[name] = gallery_ranks(victim / "model.pt", gallery_csv, args.photos)
    chance = (args.photos + args.gallery_others + 1) / 2
    summary = {}
    for direction in ("i2t", "t2i"):
        medians = {name: float(np.median(results[name][f"yours_{direction}"])) for name in COLLECTIONS}
        span = medians["absent"] - medians["clean"]
        summary[direction] = {
            "yours_median_rank": medians,
            "others_median_rank": {name: float(np.median(results[name][f"others_{direction}"])) for name in COLLECTIONS},
            "moved_toward_absent": {name: (medians[name] - medians["clean"]) / span if span else None
                                    for name in ("alone", "together")},
            "chance": chance}
        print(f"{direction}: median rank of your {args.photos} photos among {args.photos + args.gallery_others} "
              f"(chance {chance:.0f}): " + ", ".join(f"{name} {medians[name]:.0f}" for name in COLLECTIONS)
              + "; others' " + ", ".join(f"{name} {value:.0f}"
                                         for name, value in summary[direction]["others_median_rank"].items())
              + "; moved toward absent: " + ", ".join(
                  f"{name} {value:.2f}" if value is not None else f"{name} n/a"
                  for name, value in summary[direction]["moved_toward_absent"].items()), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
