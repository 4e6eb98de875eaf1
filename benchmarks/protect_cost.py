"""MEM generation cost beside one victim training run of the same scale, and (with --evaluate)
the protection's strength on the validation split.

    .venv/bin/python benchmarks/protect_cost.py --scale cpu
    .venv/bin/python benchmarks/protect_cost.py --scale cpu --max-images 2000 --set protect.trigger_top_k=4 --evaluate

The data, surrogate, protection schedule and victim training are the scale's shared
experiment (`params/<scale>/`, as the Table 1 notebook runs them); `--set` changes any of its
settings (dotted keys, YAML values, as `python -m mmue_lib.notebooks --set protect.trigger_top_k=4`). Prints the
generation time per round and in all, the peak RAM of the process, the noise state's size
(here and at 224 px), and the time of one victim training run on clean data (with its
per-epoch retrieval scoring, as the notebooks' victims); their ratio is the cost of protection
in victim-run units. With --evaluate it also trains a victim on the protected set and prints
clean and protected val retrieval and the closure C (val, never test, so that schedules can be
chosen on it). Nothing is cached: every run is timed afresh.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from mmue_lib import runs
from mmue_lib.metrics import random_metrics
from mmue_lib.models import create_clip
from mmue_lib.notebooks import parse_overrides
from mmue_lib.protect import generate_protection
from mmue_lib.methods import protection_config
from mmue_lib.release import protected_dataset
from mmue_lib.tables import protection_closure
from mmue_lib.settings import load_settings
from mmue_lib.train import TokenizedPairs, TrainConfig, train_clip


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu", help="params/<scale>/ gives the experiment (Table 1's)")
    parser.add_argument("--method", default="mem-3")
    parser.add_argument("--max-images", type=int, help="the first N train images (default: the scale's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--evaluate", action="store_true", help="train a victim on the protected set; val metrics")
    args = parser.parse_args()

    overrides = parse_overrides(args.set)
    if args.max_images:
        overrides["data.max_train_images"] = args.max_images
    settings = load_settings("02_table1", args.scale, overrides)
    data = {**settings.data, "max_test_images": None}
    train = runs.load_data(data, "train")
    print(f"data: {train.num_images} images, {train.num_rows} rows at {train.image_size} px; "
          f"torch threads {torch.get_num_threads()}; peak RAM after loading {peak_rss_gib():.2f} GiB")
    config = protection_config(args.method, settings.schedule)
    print(config)

    def new_model(name: str, seed: int) -> torch.nn.Module:
        return create_clip(name, image_size=train.image_size, context_length=settings.context_length, seed=seed)

    started = time.perf_counter()
    protection = generate_protection(train, new_model(settings.surrogate_model, config.seed), config)
    generation = time.perf_counter() - started
    for record in protection.history:
        print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
    noise_mib = protection.noise.numel() / 2 ** 20
    at_224_gib = train.num_images * 3 * 224 * 224 / 2 ** 30
    print(f"{args.method} generation: {generation:.0f} s for {len(protection.history)} rounds; "
          f"peak RAM {peak_rss_gib():.2f} GiB; noise state {noise_mib:.0f} MiB (int8), {at_224_gib:.2f} GiB at 224 px "
          f"(float32 per row as the official code: {train.num_rows * 3 * 224 * 224 * 4 / 2 ** 30:.1f} GiB)")

    victim = TrainConfig(**settings.train)
    length = settings.context_length
    val = TokenizedPairs.from_dataset(runs.load_data(data, "val"), length)
    started = time.perf_counter()
    clean = train_clip(new_model(settings.victim_model, victim.seed), TokenizedPairs.from_dataset(train, length),
                       victim, test=val)
    victim_seconds = time.perf_counter() - started
    print(f"victim run ({victim.epochs} epochs, {victim.rows_per_epoch}, val scored every epoch): "
          f"{victim_seconds:.0f} s; generation / victim = {generation / victim_seconds:.2f}")
    if args.evaluate:
        poisoned = train_clip(new_model(settings.victim_model, victim.seed),
                              TokenizedPairs.from_dataset(protected_dataset(train, protection), length), victim,
                              test=val)
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
