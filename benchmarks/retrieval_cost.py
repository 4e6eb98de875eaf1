"""Time and peak RAM of `metrics.retrieval_metrics` on COCO-5K-sized inputs.

    .venv/bin/python benchmarks/retrieval_cost.py --images 5000 --captions-per-image 5 --dim 1024

Random unit features stand in for a model's (the cost does not depend on their values):
5,000 images x 25,000 captions at RN50's embedding width. Prints the time of each direction
and of the whole call, and the process's peak RAM growth over the features themselves,
beside the size a full similarity matrix would need.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from mmue_lib.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    images = F.normalize(torch.randn(args.images, args.dim, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(args.images * args.captions_per_image, args.dim, generator=generator), dim=-1)
    row_image = torch.arange(args.images).repeat_interleave(args.captions_per_image)
    before = peak_rss_mib()
    i2t = timed(image_to_text_ranks, images, texts, row_image)
    t2i = timed(text_to_image_ranks, images, texts, row_image)
    whole = timed(retrieval_metrics, images, texts, row_image)
    full_matrix_mib = images.shape[0] * texts.shape[0] * 4 / 2 ** 20
    print(f"{args.images} images x {texts.shape[0]} captions, dim {args.dim}, torch threads {torch.get_num_threads()}")
    print(f"image->text {i2t:.2f} s, text->image {t2i:.2f} s, retrieval_metrics {whole:.2f} s")
    print(f"peak RAM growth {peak_rss_mib() - before:.0f} MiB over the features "
          f"(a full float32 similarity matrix: {full_matrix_mib:.0f} MiB); process peak {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
