"""`mmue protect` as a person runs it on their own photos, timed, and its output checked.

    .venv/bin/python benchmarks/protect_photos.py                      # 40 odd photos, default options
    .venv/bin/python benchmarks/protect_photos.py --photos 40 100 250 500 -- --max-rounds 8
    .venv/bin/python benchmarks/protect_photos.py --check --out /tmp/pp   # and the strength (about 15 min more)

For each collection size, makes a folder of photos of every kind people post (`tests/odd_photos.py`:
sizes 333 to 1200 px, portrait, grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated, an 8 x 8
one) from the first Flickr8k test images, one caption each, runs `mmue protect` on it with the
default options (plus any given after `--`), and prints the wall time, the peak RAM, the PGD
loss of every round beside ln(N) (a contrastive loss at chance), and whether every published
photo has its source's displayed size and stays within the bound on every pixel at full
resolution. It prints how visible the change is (PSNR, SSIM, blockiness: `release.blockiness`)
as published (noise carried smoothly over the whole photo) beside the earlier way (the noise's
cells repeated by nearest-neighbour upsampling over the centre square), on the same noise. With
--check it runs `mmue check` (its defaults: three victims on the Flickr8k train background) on
both ways and prints how far each moved the photos toward never posted. Nothing is cached
between sizes but the check's victims, which resume from --out.
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

import torch

from mmue_lib.cli import main as mmue
from mmue_lib.data import center_crop_geometry, read_caption_csv, write_caption_csv
from mmue_lib.outfolder import state_path
from mmue_lib.photos import Photo, open_photo, save_photo
from mmue_lib.release import blockiness, psnr, ssim
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


def nearest_carry(photo: Photo, noise: np.ndarray) -> np.ndarray:
    """The earlier way to carry noise [3, S, S] to a photo: each model pixel's value repeated over
    the photo pixels it came from (nearest neighbour), over the centre square only."""
    size = noise.shape[-1]
    width, height = photo.size
    new_w, new_h, left, top = center_crop_geometry(width, height, size)

    def cells(length: int, resized: int, offset: int) -> np.ndarray:
        index = np.floor((np.arange(length) + 0.5) * resized / length).astype(np.int64) - offset
        return np.where((index >= 0) & (index < size), index, -1)

    rows, cols = cells(height, new_h, top), cells(width, new_w, left)
    channels = noise[:1] if photo.gray else noise
    full = channels[:, np.clip(rows, 0, None)][:, :, np.clip(cols, 0, None)].transpose(1, 2, 0).astype(np.int16)
    full *= ((rows >= 0)[:, None] & (cols >= 0)[None, :])[..., None]
    return np.clip(photo.pixels.astype(np.int16) + full, 0, 255).astype(np.uint8)


def publish_nearest(csv_path: Path, out: Path, before: Path) -> dict:
    """`out`'s protection published the earlier way into `before` (same noise, same captions);
    returns the visibility means of both ways."""
    noise = torch.load(state_path(out), map_location="cpu", weights_only=True)["noise"].numpy()
    sources = read_caption_csv(csv_path).image_paths
    table = read_caption_csv(out / "protected.csv")
    names = [path.relative_to(out).as_posix() for path in table.image_paths]
    measures = {"published": [], "earlier": []}
    for index, (source, name) in enumerate(zip(sources, names)):
        photo = open_photo(source)
        earlier = nearest_carry(photo, noise[index % len(noise)])
        save_photo(photo, earlier, before / name)
        for way, pixels in (("published", open_photo(out / name).pixels), ("earlier", earlier)):
            measures[way].append((psnr(torch.from_numpy(photo.pixels), torch.from_numpy(pixels)),
                                  ssim(photo.pixels, pixels), blockiness(photo.pixels, pixels)))
    write_caption_csv(before / "protected.csv", zip((names[i] for i in table.row_image), table.captions))
    return {way: np.mean(np.array(values, dtype=float), axis=0) for way, values in measures.items()}


def check(csv_path: Path, protected_csv: Path, out: Path) -> dict:
    """`mmue check` of one published way (victims shared through `out`): moved toward never posted."""
    if mmue(["check", "--clean", str(csv_path), "--protected", str(protected_csv), "--out", str(out)]):
        raise SystemExit(f"mmue check failed on {protected_csv}")
    return json.loads((out / "check.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", default=[40], help="collection sizes (one photo is added: 8 x 8)")
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--out", help="folder for the photos and outputs (default: a temporary one)")
    parser.add_argument("--check", action="store_true", help="also measure the strength of both ways with mmue check")
    parser.add_argument("options", nargs="*", help="after --: more mmue protect options")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="protect_photos_"))
    for count in args.photos:
        sources, captions = first_test_photos(expand_path(args.data), count)
        csv_path = write_odd_photos(sources, root / f"photos{count}", captions)
        out = root / f"protected{count}"
        started = time.perf_counter()
        code = mmue(["protect", "--csv", str(csv_path), "--out", str(out), "--force", "--keep-state", *args.options])
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
              f"{report['config']['eps']} on every pixel", flush=True)
        before = root / f"earlier{count}"
        visibility = publish_nearest(csv_path, out, before)
        for way, (db, similarity, steps) in visibility.items():
            print(f"  {way:9}: PSNR {db:.1f} dB, SSIM {similarity:.3f}, blockiness {steps:.2f}", flush=True)
        if args.check:
            for way, protected_csv in (("published", out / "protected.csv"), ("earlier", before / "protected.csv")):
                result = check(csv_path, protected_csv, root / f"check{count}")
                moved = result["moved_toward_never_posted"]
                print(f"  {way:9}: moved toward never posted {moved['i2t']} / {moved['t2i']} (i2t / t2i); "
                      + "; ".join(result["verdict"].values()), flush=True)
        state_path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
