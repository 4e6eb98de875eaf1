"""Memory-mapped against in-memory images: what the training data path costs, and the RAM it holds.

    .venv/bin/python benchmarks/memmap_images.py --size 224        # Flickr8k train, 6,091 images

Loads the split as the runs do (decoded once into the cache's .npy, memory-mapped from it), and
an in-memory copy of it; for each, times an epoch of batches as `train_clip` forms them (one
caption per image, batch 128: gather the rows' images, scale to [0, 1], normalise) and prints
images/s, their ratio (goal >= 0.95) and the process's resident memory after each stage.
"""
from __future__ import annotations

import argparse
import time

import torch

from mmue_lib.data import load_split
from mmue_lib.models import normalize_pixels
from mmue_lib.train import row_batches


def resident() -> str:
    """This process's resident memory now (Linux: /proc/self/status): its own (anonymous) pages, and
    the file pages it maps (memory-mapped images: page cache the kernel can drop and reread)."""
    fields = {}
    for line in open("/proc/self/status", encoding="ascii"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 2 ** 20
    return f"resident {fields['RssAnon']:.2f} GiB own + {fields['RssFile']:.2f} GiB mapped files"


def epoch_seconds(images: torch.Tensor, row_image: torch.Tensor, batch_size: int) -> float:
    batches = row_batches(row_image, len(images), batch_size, "one_per_image", torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for rows in batches:
        normalize_pixels(images[row_image[rows]].float() / 255)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(f"start: {resident()}", flush=True)
    dataset = load_split(args.data, "train", args.size)
    mapped = dataset.images
    print(f"{dataset.num_images} images at {args.size} px ({mapped.numel() / 2 ** 30:.2f} GiB of pixels) mapped: "
          f"{resident()}", flush=True)
    first = epoch_seconds(mapped, dataset.row_image, args.batch_size)
    mapped_seconds = min(first, epoch_seconds(mapped, dataset.row_image, args.batch_size))
    print(f"memory-mapped: {dataset.num_images / mapped_seconds:.0f} images/s (first epoch, pages from disk or "
          f"cache: {dataset.num_images / first:.0f}); {resident()}", flush=True)
    in_memory = mapped.clone()
    print(f"in-memory copy: {resident()}", flush=True)
    memory_seconds = min(epoch_seconds(in_memory, dataset.row_image, args.batch_size) for _ in range(2))
    print(f"in memory: {dataset.num_images / memory_seconds:.0f} images/s; memory-mapped / in memory = "
          f"{memory_seconds / mapped_seconds:.2f} (goal >= 0.95)", flush=True)


if __name__ == "__main__":
    main()
