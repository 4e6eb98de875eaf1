"""MEM generation cost on Flickr8k at cpu scale, beside one victim training run of the same model,
and (with --evaluate) the protection's strength on the validation split.

    .venv/bin/python benchmarks/protect_cost.py --rounds 5 --surrogate-steps 40 --search-rounds 1 --top-k 8
    .venv/bin/python benchmarks/protect_cost.py --max-images 2000 --rounds 3 --pgd-steps 4 --alpha 2 \\
        --reshuffle batch --search-rows one_per_image --evaluate

Prints the generation time per round and in all, the peak RAM of the process, the noise state's
size (here and at 224 px), and the time of one victim training run (clean data, same model,
same batch size); the ratio of the two is the cost of protection in victim-run units. With
--evaluate it also trains a victim on the protected set and prints clean and protected val
retrieval and the closure C (val, never test, so that schedules can be chosen on it).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from mmue_lib.data import load_split
from mmue_lib.metrics import random_metrics
from mmue_lib.models import create_clip
from mmue_lib.protect import generate_protection, method_config, protected_dataset
from mmue_lib.report import protection_closure
from mmue_lib.train import TokenizedPairs, TrainConfig, train_clip


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="$MMUE_DATA/flickr8k")
    parser.add_argument("--model", default="RN-small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--method", default="mem-3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--surrogate-steps", type=int, default=40)
    parser.add_argument("--surrogate-lr", type=float, default=1e-4)
    parser.add_argument("--pgd-steps", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=1)
    parser.add_argument("--reshuffle", default="step", choices=["step", "batch"])
    parser.add_argument("--search-rounds", type=int, default=1)
    parser.add_argument("--search-rows", default="all", choices=["all", "one_per_image"])
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--trigger-per", default="image")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--victim-epochs", type=int, default=12)
    parser.add_argument("--evaluate", action="store_true", help="train a victim on the protected set; val metrics")
    args = parser.parse_args()

    train = load_split(args.data, "train", args.size, max_images=args.max_images)
    print(f"data: {train.num_images} images, {train.num_rows} rows at {args.size} px; "
          f"torch threads {torch.get_num_threads()}; peak RAM after loading {peak_rss_gib():.2f} GiB")
    config = method_config(args.method, max_rounds=args.rounds, surrogate_steps=args.surrogate_steps,
                           surrogate_lr=args.surrogate_lr, pgd_steps=args.pgd_steps, alpha=args.alpha,
                           reshuffle=args.reshuffle, trigger_search_rounds=args.search_rounds,
                           search_rows=args.search_rows, trigger_top_k=args.top_k, trigger_per=args.trigger_per,
                           batch_size=args.batch_size, stop_loss=None)
    print(config)
    started = time.perf_counter()
    protection = generate_protection(train, create_clip(args.model, image_size=args.size, seed=0), config)
    generation = time.perf_counter() - started
    for record in protection.history:
        print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    noise_mib = protection.noise.numel() / 2 ** 20
    at_224_gib = train.num_images * 3 * 224 * 224 / 2 ** 30
    print(f"{args.method} generation: {generation:.0f} s for {args.rounds} rounds; peak RAM {peak_rss_gib():.2f} GiB; "
          f"noise state {noise_mib:.0f} MiB (int8), {at_224_gib:.2f} GiB at 224 px "
          f"(float32 per row as the official code: {train.num_rows * 3 * 224 * 224 * 4 / 2 ** 30:.1f} GiB)")

    victim = TrainConfig(epochs=args.victim_epochs, batch_size=args.batch_size, lr=5e-4,
                         rows_per_epoch="one_per_image", warmup_steps=50)
    val = TokenizedPairs.from_dataset(load_split(args.data, "val", args.size), 32) if args.evaluate else None
    started = time.perf_counter()
    clean = train_clip(create_clip(args.model, image_size=args.size, seed=0), TokenizedPairs.from_dataset(train, 32),
                       victim, test=val)
    victim_seconds = time.perf_counter() - started
    print(f"victim run ({args.victim_epochs} epochs, one caption per image): {victim_seconds:.0f} s; "
          f"generation / victim = {generation / victim_seconds:.2f}")
    if args.evaluate:
        poisoned = train_clip(create_clip(args.model, image_size=args.size, seed=0),
                              TokenizedPairs.from_dataset(protected_dataset(train, protection), 32), victim, test=val)
        chance = random_metrics(val.row_image, val.num_images)
        for label, result in (("clean", clean), ("protected", poisoned)):
            final = result.history[-1]
            print(f"val {label}: i2t R@10 {final['i2t_R@10']:.1f} MedR {final['i2t_MedR']:.0f}, "
                  f"t2i R@10 {final['t2i_R@10']:.1f} MedR {final['t2i_MedR']:.0f}")
        closure = [protection_closure(poisoned.history[-1], clean.history[-1], chance, d) for d in ("i2t", "t2i")]
        print(f"val closure C: i2t {closure[0]:.2f}, t2i {closure[1]:.2f} (random MedR {chance['i2t_MedR']:.0f} / "
              f"{chance['t2i_MedR']:.0f})")


if __name__ == "__main__":
    main()
