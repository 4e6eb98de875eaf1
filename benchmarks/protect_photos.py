"""`mmue protect` as a person runs it on their own photos, timed, and its output checked.

    .venv/bin/python benchmarks/protect_photos.py                      # 40 odd photos, default options
    .venv/bin/python benchmarks/protect_photos.py --photos 40 100 250 500 -- --max-rounds 8

For each collection size, makes a folder of photos of every kind people post (`tests/odd_photos.py`:
sizes 333 to 1200 px, portrait, grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated, an 8 x 8
one) from the first Flickr8k test images, one caption each, runs `mmue protect` on it with the
default options (plus any given after `--`), and prints the wall time, the peak RAM, the PGD
loss of every round beside ln(N) (a contrastive loss at chance), and whether every published
photo has its source's displayed size and stays within the bound on every pixel at full
resolution. Nothing is cached between sizes.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmue_lib.cli import main as mmue
from mmue_lib.data import read_caption_csv
from mmue_lib.photos import open_photo
from mmue_lib.storage import expand_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from odd_photos import write_odd_photos  # noqa: E402


def first_test_photos(data: Path, count: int) -> tuple[list[np.ndarray], list[str]]:
    """The first `count` images of `data/test.csv` and the first caption of each."""
    images, captions = {}, []
    with open(data / "test.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["image"] not in images and len(images) < count:
                images[row["image"]] = np.asarray(Image.open(data / row["image"]).convert("RGB"))
                captions.append(row["caption"])
    return list(images.values()), captions


def check_output(csv_path: Path, out: Path, eps: int) -> tuple[int, int]:
    """(photos whose published size equals the displayed source size, photos within the bound everywhere)."""
    sources = read_caption_csv(csv_path).image_paths
    published = read_caption_csv(out / "protected.csv").image_paths
    same_size = within = 0
    for source, result in zip(sources, published):
        before, after = open_photo(source), open_photo(result)
        same_size += before.size == after.size and before.gray == after.gray
        within += before.size == after.size and int(np.abs(after.pixels.astype(int) - before.pixels).max()) <= eps
    return same_size, within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", default=[40], help="collection sizes (one photo is added: 8 x 8)")
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--out", help="folder for the photos and outputs (default: a temporary one)")
    parser.add_argument("options", nargs="*", help="after --: more mmue protect options")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="protect_photos_"))
    for count in args.photos:
        sources, captions = first_test_photos(expand_path(args.data), count)
        csv_path = write_odd_photos(sources, root / f"photos{count}", captions)
        out = root / f"protected{count}"
        started = time.perf_counter()
        code = mmue(["protect", "--csv", str(csv_path), "--out", str(out), "--force", *args.options])
        seconds = time.perf_counter() - started
        if code:
            raise SystemExit(f"mmue protect failed on {count} photos")
        report = json.loads((out / "report.json").read_text())
        same_size, within = check_output(csv_path, out, report["config"]["eps"])
        losses = ", ".join(f"{entry['noise_loss']:.2f}" for entry in report["history"])
        surrogate = ", ".join(f"{entry.get('surrogate_loss', float('nan')):.2f}" for entry in report["history"])
        print(f"{count + 1} photos: {seconds / 60:.1f} min, peak RAM {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB; "
              f"PGD loss per round {losses} (ln N = {math.log(count + 1):.2f}, stop_loss {report['config']['stop_loss']}), "
              f"surrogate training loss {surrogate}; "
              f"{same_size}/{count + 1} at their displayed size, {within}/{count + 1} within eps "
              f"{report['config']['eps']} on every pixel; PSNR {report['psnr_db_mean']:.1f} dB", flush=True)


if __name__ == "__main__":
    main()
