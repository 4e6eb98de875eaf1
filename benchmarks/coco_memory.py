"""Memory of a victim's data path on a COCO-size set, from a scaled proxy.

    .venv/bin/python benchmarks/coco_memory.py                      # 2,000 / 4,000 / 8,000 images
    .venv/bin/python benchmarks/coco_memory.py --images 2000 8000 16000 --workdir /big/disk

For each size N (one fresh process each) it writes N synthetic 224 px images as the decoded-image
cache does (a uint8 .npy, memory-mapped), 5 captions per image, per-image int8 noise saved as a
protection is (`protection.pt`) and loaded as a victim loads it (memory-mapped), makes the
protected set into its .npy (`protect.protected_dataset(images_file=...)`) and forms one epoch of
training batches (batch 128, one caption per image, scaled and normalised). It prints the peak of
the process's own memory (anonymous pages, sampled every 20 ms; file pages are page cache the
kernel can drop) and, from a straight-line fit over N, the figure for COCO's 113,287 train images.
Generating a protection also holds its int8 noise state in RAM: 3 x 224 x 224 bytes an image.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COCO_TRAIN_IMAGES = 113_287
SIZE = 224
CHUNK = 512


def own_memory_bytes() -> int:
    """This process's anonymous resident pages (Linux: /proc/self/status), in bytes."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def measure(count: int, workdir: Path) -> dict:
    """One size, in this process: the peak own memory of the victim's data path and its stages' times."""
    from mmue_lib.data import PairDataset
    from mmue_lib.models import normalize_pixels
    from mmue_lib.notebooks import PeakMemory
    from mmue_lib.methods import ProtectConfig
    from mmue_lib.protect import Protection
    from mmue_lib.release import protected_dataset
    from mmue_lib.train import row_batches

    rng = np.random.default_rng(0)
    clean_file, noise_file, protected_file = (workdir / f"{name}-{count}" for name in ("clean.npy", "noise.pt",
                                                                                        "protected.npy"))
    written = np.lib.format.open_memmap(clean_file, mode="w+", dtype=np.uint8, shape=(count, 3, SIZE, SIZE))
    for start in range(0, count, CHUNK):
        written[start:start + CHUNK] = rng.integers(0, 256, (min(CHUNK, count - start), 3, SIZE, SIZE), dtype=np.uint8)
    written.flush()
    del written
    torch.save({"noise": torch.from_numpy(rng.integers(-8, 9, (count, 3, SIZE, SIZE), dtype=np.int8))}, noise_file)
    started = time.perf_counter()
    with PeakMemory(own_memory_bytes, interval=0.02) as peak:
        images = torch.from_numpy(np.load(clean_file, mmap_mode="c"))
        dataset = PairDataset(images, ["a photo of a thing"] * (5 * count), torch.arange(count).repeat_interleave(5))
        noise = torch.load(noise_file, map_location="cpu", weights_only=True, mmap=True)["noise"]
        protection = Protection(ProtectConfig(), noise, torch.zeros(count, 0, dtype=torch.long))
        protected = protected_dataset(dataset, protection, 1.0, images_file=protected_file)
        made = time.perf_counter()
        for rows in row_batches(protected.row_image, count, 128, "one_per_image", torch.Generator().manual_seed(0)):
            normalize_pixels(protected.images[protected.row_image[rows]].float() / 255)
    for path in (clean_file, noise_file, protected_file):
        path.unlink()
    return {"images": count, "peak_own_gib": peak.peak_bytes / 2 ** 30, "start_own_gib": peak.start_bytes / 2 ** 30,
            "protect_seconds": made - started,
            "epoch_seconds": time.perf_counter() - made}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--workdir", type=Path, help="folder for the proxy's files (default: a temporary one)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.workdir)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        rows = []
        for count in args.images:
            child = subprocess.run([sys.executable, __file__, "--one", str(count), "--workdir", workdir],
                                   capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{count:>7} images ({count * 3 * SIZE * SIZE / 2 ** 30:5.2f} GiB of pixels): peak own memory "
                  f"{row['peak_own_gib']:.2f} GiB (at the start {row['start_own_gib']:.2f}); protected set made in "
                  f"{row['protect_seconds']:.0f} s, "
                  f"an epoch of batches in {row['epoch_seconds']:.0f} s", flush=True)
    counts = np.array([row["images"] for row in rows], dtype=float)
    peaks = np.array([row["peak_own_gib"] for row in rows])
    slope, intercept = np.polyfit(counts, peaks, 1) if len(rows) > 1 else (0.0, peaks[0])
    coco = intercept + slope * COCO_TRAIN_IMAGES
    print(f"fit: {intercept:.2f} GiB + {slope * 1e3 * 2 ** 10:.2f} MiB per 1,000 images -> COCO train "
          f"({COCO_TRAIN_IMAGES:,} images, {COCO_TRAIN_IMAGES * 3 * SIZE * SIZE / 2 ** 30:.1f} GiB of pixels): "
          f"about {coco:.2f} GiB of own memory for a victim's data path; generating its protection adds the "
          f"int8 noise state, {COCO_TRAIN_IMAGES * 3 * SIZE * SIZE / 2 ** 30:.1f} GiB")


if __name__ == "__main__":
    main()
