"""Two gloo processes (DDP, one thread each) against one process with two threads, on this CPU.

    .venv/bin/python benchmarks/ddp_throughput.py --max-images 1280 --epochs 3

Both train the same model from the same weights on the same global batches of Flickr8k train
pairs (one caption per image, as the victims) with `train.train_clip`, and score the test
split after the fixed schedule. Prints each one's training pairs/s (best epoch), the ratio
two processes / one (goal >= 0.85), and the final retrieval metrics of both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mmue_lib import distributed
from mmue_lib.data import load_split
from mmue_lib.models import create_clip
from mmue_lib.train import TokenizedPairs, TrainConfig, epoch_batches, train_clip


def train(args: argparse.Namespace) -> dict:
    """One training run in this process (a rank of the group under torchrun); its log."""
    ctx = distributed.context()
    with distributed.main_first():
        train_set = load_split(args.data, "train", args.size, max_images=args.max_images, progress=False)
        test_set = load_split(args.data, "test", args.size, max_images=args.max_test_images, progress=False)
    pairs = TokenizedPairs.from_dataset(train_set, 32)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=5e-4, rows_per_epoch="one_per_image",
                         device="cpu")
    model = create_clip(args.model, image_size=args.size, seed=0)
    result = train_clip(model, pairs, config, test=TokenizedPairs.from_dataset(test_set, 32), progress=False)
    pairs_per_epoch = len(epoch_batches(pairs, config, 0)) * args.batch_size
    return {"world_size": ctx.world_size, "threads": torch.get_num_threads(),
            "pairs_per_second": pairs_per_epoch / min(h["train_seconds"] for h in result.history),
            "final": {k: v for k, v in result.history[-1].items() if "R@" in k or "MedR" in k}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--model", default="RN-small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=1280)
    parser.add_argument("--max-test-images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        with distributed.process_group("cpu") as ctx:
            outcome = train(args)
            if ctx.is_main:
                Path(args.worker_out).write_text(json.dumps(outcome))
        return
    options = sys.argv[1:]
    outcomes = []
    with tempfile.TemporaryDirectory() as folder:
        for nproc, threads in ((1, 2), (2, 1)):
            out = Path(folder) / f"{nproc}.json"
            command = [sys.executable, __file__, *options, "--worker-out", str(out)]
            if nproc > 1:
                command = distributed.torchrun_command(nproc, "benchmarks.ddp_throughput", command[2:])
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads),
                           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            subprocess.run(command, env=environment, check=True, cwd=Path(__file__).resolve().parents[1])
            outcomes.append(json.loads(out.read_text()))
            print(f"{nproc} process(es) x {threads} thread(s): {outcomes[-1]['pairs_per_second']:.1f} pairs/s; "
                  f"after {args.epochs} epochs {outcomes[-1]['final']}", flush=True)
    print(f"{args.model} at {args.size} px, batch {args.batch_size}: two processes / one = "
          f"{outcomes[1]['pairs_per_second'] / outcomes[0]['pairs_per_second']:.2f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
