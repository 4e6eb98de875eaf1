"""Victim training throughput at cpu scale: our trainer against a bare open_clip loop.

    .venv/bin/python benchmarks/train_throughput.py --max-images 1280 --repeats 3

Both train the same architecture, from the same initial weights, on the same batches of
Flickr8k train pairs (one caption per image, as the victims), with AdamW at the same
learning rate. The bare loop is open_clip's own training step: `model(images, texts)`,
`open_clip.ClipLoss`, backward, step; ours is `train.train_clip` (warm-up/cosine schedule,
logit-scale clamp, batches trimmed to their longest caption), without per-epoch test
scoring. The two alternate `--repeats` times, so a busy machine slows both alike; the
best epoch of each is compared. Prints pairs/s of each and ours / bare (goal >= 0.9).
"""
from __future__ import annotations

import argparse
import copy
import time

import open_clip
import torch

from mmue_lib.data import load_split
from mmue_lib.models import create_clip, normalize_pixels
from mmue_lib.train import TokenizedPairs, TrainConfig, epoch_batches, train_clip


def ours_seconds(model: torch.nn.Module, pairs: TokenizedPairs, config: TrainConfig) -> float:
    """Training time of one epoch of `train_clip` (without test scoring)."""
    result = train_clip(model, pairs, config, progress=False)
    return result.history[-1]["train_seconds"]


def bare_seconds(model: torch.nn.Module, pairs: TokenizedPairs, config: TrainConfig) -> float:
    """Time of the same epoch's batches through open_clip's plain forward/backward/step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(config.beta1, config.beta2), eps=config.eps)
    loss_fn = open_clip.ClipLoss()
    model.train()
    started = time.perf_counter()
    for rows in epoch_batches(pairs, config, 0):
        images = normalize_pixels(pairs.images[pairs.row_image[rows]])
        image_features, text_features, logit_scale = model(images, pairs.tokens[rows])
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--model", default="RN-small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pairs = TokenizedPairs.from_dataset(load_split(args.data, "train", args.size, max_images=args.max_images), 32)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=5e-4, rows_per_epoch="one_per_image",
                         device="cpu")
    pairs_per_epoch = len(epoch_batches(pairs, config, 0)) * args.batch_size
    initial = create_clip(args.model, image_size=args.size, seed=0)
    print(f"{args.model} at {args.size} px, {sum(p.numel() for p in initial.parameters()) / 1e6:.1f} M parameters; "
          f"{pairs_per_epoch} pairs per epoch (batch {args.batch_size}); torch threads {torch.get_num_threads()}")
    ours, bare = [], []
    for repeat in range(args.repeats):
        ours.append(ours_seconds(copy.deepcopy(initial), pairs, config))
        bare.append(bare_seconds(copy.deepcopy(initial), pairs, config))
        print(f"  repeat {repeat + 1}: ours {pairs_per_epoch / ours[-1]:.1f} pairs/s, "
              f"bare open_clip {pairs_per_epoch / bare[-1]:.1f} pairs/s")
    ours_rate, bare_rate = pairs_per_epoch / min(ours), pairs_per_epoch / min(bare)
    print(f"best: ours {ours_rate:.1f} pairs/s, bare open_clip {bare_rate:.1f} pairs/s, "
          f"ours / bare = {ours_rate / bare_rate:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
