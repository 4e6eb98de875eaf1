"""`mmue` command line: convert datasets, make the synthetic set, train and evaluate CLIPs, run notebooks."""
from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

from . import data, distributed
from .check import COLLECTORS, DEFAULT_BACKGROUND
from .methods import METHODS, SCHEDULES, ProtectConfig
from .photos import (DEVICE_SURROGATES, OUTPUT_FORMATS, GeneratorRequest, ProtectRequest, protect_photos,
                     train_photo_generator)
from .train import TrainConfig
from .storage import write_json


def _convert(args: argparse.Namespace) -> None:
    needed = {"flickr8k": ["token", "split_list"], "karpathy": ["json"], "coco": ["json"]}[args.format]
    missing = [f"--{name.replace('_', '-')}" for name in needed if not getattr(args, name)]
    if missing:
        raise ValueError(f"convert {args.format} needs {', '.join(missing)}")
    if args.format == "flickr8k":
        count = data.convert_flickr8k_token(args.token, args.split_list, args.images, args.out)
    elif args.format == "karpathy":
        count = data.convert_karpathy_json(args.json, args.split.split(","), args.images, args.out)
    else:
        count = data.convert_coco_captions(args.json, args.images, args.out, args.captions_per_image)
    print(f"wrote {count} rows to {args.out}")


def _synthetic(args: argparse.Namespace) -> None:
    for split, (count, seed) in {"train": (args.train_images, args.seed), "val": (args.test_images, args.seed + 1),
                                 "test": (args.test_images, args.seed + 2)}.items():
        dataset = data.make_synthetic_dataset(count, args.size, seed=seed, name=split)
        print(f"wrote {data.write_dataset_folder(dataset, args.out, f'{split}.csv', image_dir=f'images/{split}')}")


def _shrink(args: argparse.Namespace) -> None:
    limits = {split: args.max_images if split == "train" else args.max_test_images for split in args.splits.split(",")}
    for csv_path in data.shrink_dataset_folder(args.data, args.out, args.size, limits, args.format):
        print(f"wrote {csv_path}")


def _victim_model(args: argparse.Namespace):
    from .models import create_clip

    return create_clip(args.model, image_size=args.size, context_length=args.context_length,
                       pretrained=args.pretrained, seed=args.seed)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The training settings of `mmue train` / `mmue check` (`_add_training_arguments`)."""
    return TrainConfig(**{name: getattr(args, name) for name in TRAINING_OPTIONS})


def _train_victim(args: argparse.Namespace, model, train_csv: str, train: data.PairDataset,
                  test: data.PairDataset | None, out: Path) -> dict:
    """Train `model` on `train` with the training arguments of `args`; write model.pt and
    metrics.json to `out` (resuming its checkpoint); return the last epoch's log."""
    from .models import model_context_length, model_image_size, save_clip
    from .train import TokenizedPairs, train_clip

    size, length = model_image_size(model), model_context_length(model)
    config = _train_config(args)
    result = train_clip(model, TokenizedPairs.from_dataset(train, length), config,
                        test=None if test is None else TokenizedPairs.from_dataset(test, length),
                        checkpoint_path=out / "train_state.ckpt")
    if not distributed.context().is_main:
        return result.history[-1]
    save_clip(result.model.cpu(), out / "model.pt", meta={"config": asdict(config), "csv": str(train_csv)})
    write_json(out / "metrics.json", {"model": args.model, "image_size": size, "context_length": length,
                                      "config": asdict(config), "train_csv": str(train_csv),
                                      "test_csv": args.test_csv, "history": result.history,
                                      "seconds": result.seconds})
    return result.history[-1]


def _train(args: argparse.Namespace) -> None:
    from .models import model_image_size

    model = _victim_model(args)
    size = model_image_size(model)
    with distributed.main_first():
        train = data.load_csv_dataset(args.csv, size, max_images=args.max_images)
        test = data.load_csv_dataset(args.test_csv, size) if args.test_csv else None
    final = _train_victim(args, model, args.csv, train, test, Path(args.out))
    print({k: round(v, 2) for k, v in final.items()})


def _check(args: argparse.Namespace) -> None:
    from .check import CheckRequest, check_photos, print_check

    request = CheckRequest(clean=args.clean, protected=args.protected, out=args.out, background=args.background,
                           background_images=args.background_images, gallery_others=args.gallery_others,
                           model=args.model, size=args.size, context_length=args.context_length,
                           pretrained=args.pretrained, collector=args.collector, pretrain_images=args.pretrain_images,
                           frozen_groups=args.frozen_groups, train=_train_config(args))
    report = check_photos(request)
    if report:
        print_check(report)


def _evaluate(args: argparse.Namespace) -> None:
    from .models import load_clip, model_context_length, model_image_size
    from .train import TokenizedPairs, evaluate_retrieval

    model = load_clip(args.checkpoint)
    test = data.load_csv_dataset(args.csv, model_image_size(model))
    print(evaluate_retrieval(model, TokenizedPairs.from_dataset(test, model_context_length(model))))


PROTECT_SETTINGS = ("eps", "seed", "device", "batch_size", "precision", "trigger_len", "max_rounds", "surrogate_steps",
                    "pgd_steps", "trigger_per", "noise_per", "trigger_min_count")
"""`mmue protect` options that are `ProtectConfig` fields (unset: the method's and the schedule's)."""


def _protect(args: argparse.Namespace) -> None:
    _check_protect_options(args)
    protect_photos(ProtectRequest(
        csv=args.csv, out=args.out, method=args.method, schedule=args.schedule, resolution=args.resolution,
        model=args.model, size=args.size, surrogate=args.surrogate, fraction=args.fraction, force=args.force,
        keep_state=args.keep_state, output_format=args.output_format, quality=args.quality, generator=args.generator,
        settings={name: getattr(args, name) for name in PROTECT_SETTINGS if getattr(args, name) is not None}))


GENERATOR_OPTIONS = ("eps", "seed", "device", "batch_size", "precision", "max_rounds", "surrogate_steps",
                     "generator_steps", "generator_width")
"""`mmue train-generator` options that are `ProtectConfig` fields (unset: T2UE's preset and the schedule's)."""


def _train_generator(args: argparse.Namespace) -> None:
    _check_ranges(args, GENERATOR_OPTIONS + ("size", "max_images"))
    if not Path(args.csv).is_file():
        raise ValueError(f"--csv {args.csv}: file not found")
    train_photo_generator(GeneratorRequest(
        csv=args.csv, out=args.out, schedule=args.schedule, model=args.model, size=args.size,
        max_images=args.max_images, force=args.force,
        settings={name: getattr(args, name) for name in GENERATOR_OPTIONS if getattr(args, name) is not None}))


PROTECT_RANGES = {"eps": (1, 32, "the L-inf bound in 1/255 pixel steps; the paper uses 8"),
                  "max_rounds": (1, 1000, "rounds of surrogate training + trigger search + PGD"),
                  "surrogate_steps": (0, 100_000, "surrogate training steps per round"),
                  "pgd_steps": (1, 1000, "PGD steps per batch"),
                  "batch_size": (2, 65_536, "a contrastive batch needs at least 2 pairs"),
                  "trigger_len": (0, 16, "trigger tokens after the start token"),
                  "trigger_min_count": (1, 1_000_000, "times a caption word must occur to be a trigger word"),
                  "size": (16, 1024, "the surrogate's image size in px"),
                  "quality": (50, 100, "JPEG quality of --output-format jpeg"),
                  "generator_steps": (1, 100_000, "generator training steps per round"),
                  "generator_width": (8, 512, "channels of the generator's full-resolution stages, a multiple of 8"),
                  "max_images": (2, 10_000_000, "images to train on")}
"""`mmue protect` and `mmue train-generator` options with integer ranges: (lowest, highest, what the option is)."""


def _check_ranges(args: argparse.Namespace, names) -> None:
    """Refuse an option outside its range (`PROTECT_RANGES`) before anything is read or computed."""
    for name in names:
        value = getattr(args, name, None)
        if name in PROTECT_RANGES and value is not None and not PROTECT_RANGES[name][0] <= value <= PROTECT_RANGES[name][1]:
            low, high, meaning = PROTECT_RANGES[name]
            raise ValueError(f"--{name.replace('_', '-')} {value}: allowed {low} to {high} ({meaning})")


def _check_protect_options(args: argparse.Namespace) -> None:
    """Refuse bad `mmue protect` options before anything is read, computed or written."""
    from .models import list_model_names

    _check_ranges(args, PROTECT_RANGES)
    if args.generator and not Path(args.generator).is_file():
        raise ValueError(f"--generator {args.generator}: file not found (one made by mmue train-generator)")
    if not 0 < args.fraction <= 1:
        raise ValueError(f"--fraction {args.fraction}: allowed above 0 and at most 1 (the share of images to protect)")
    if args.surrogate and not Path(args.surrogate).is_file():
        raise ValueError(f"--surrogate {args.surrogate}: file not found (a local CLIP checkpoint; nothing is downloaded)")
    if not args.surrogate and args.model != "auto" and args.model not in list_model_names():
        close = difflib.get_close_matches(args.model, list_model_names(), n=3)
        raise ValueError(f"--model {args.model}: unknown architecture"
                         f"{'; did you mean ' + ' or '.join(close) + '?' if close else ''} (`mmue models` lists them)")


def _models(_: argparse.Namespace) -> None:
    from .models import list_model_names

    print("\n".join(list_model_names()))


def _runs(args: argparse.Namespace) -> None:
    import pandas as pd

    from .cache import cache_status
    from .records import export_records, restore_records
    from .runs import register_kinds
    from .storage import cache_root

    register_kinds()
    for records_file in args.restore or []:
        if not records_file.is_file():
            raise SystemExit(f"--restore: no such file {records_file}")
    for records_file in args.restore or []:
        print(f"{records_file}: {len(restore_records(records_file))} run(s) restored")
    if args.export:
        keys = None
        if args.notebook:
            from .experiments import planned_runs
            from .settings import load_settings

            plan = planned_runs(load_settings(args.notebook, args.scale))
            keys = {Path(folder).name for folder in plan.runs} if plan else set()
        written = export_records(args.export, keys)
        print(f"{args.export}: {written} finished run(s) written"
              f"{f' (those of {args.notebook} at {args.scale} scale)' if args.notebook else ''}")
    rows = cache_status(args.kind)
    if not rows:
        print(f"no {f'{args.kind} ' if args.kind else ''}runs in {cache_root() / 'runs'}")
        return
    table = pd.DataFrame(rows).astype({"seconds": float, "i2t_MedR": float, "t2i_MedR": float})
    done = table["state"].isin(["done", "restored"])
    hours = table["seconds"].sum() / 3600
    print(table.to_string(index=False, na_rep="", float_format=lambda value: f"{value:.0f}"))
    print(f"{done.sum()} done ({hours:.1f} h), {(~done).sum()} unfinished, in {cache_root() / 'runs'}")


def _config_option(parser: argparse.ArgumentParser, config: type, name: str, flag: str | None = None,
                   default: object = True, **options) -> None:
    """An option for the dataclass field `config.name`: its type, its choices (a `Literal`) and, unless
    `default` is None (the value comes from elsewhere, e.g. a schedule), its default, all from the field."""
    field = next(f for f in fields(config) if f.name == name)
    kind = get_type_hints(config)[name]
    if get_origin(kind) is Literal:
        options.setdefault("choices", list(get_args(kind)))
    else:
        options.setdefault("type", type(field.default))
    parser.add_argument(flag or f"--{name.replace('_', '-')}", dest=name,
                        default=field.default if default is True else default, **options)


TRAINING_OPTIONS = {"epochs": "passes over the images", "batch_size": "pairs per contrastive batch",
                    "lr": "peak learning rate (AdamW, cosine decay)", "weight_decay": "AdamW weight decay",
                    "warmup_steps": "linear warm-up steps", "rows_per_epoch": "captions per image and epoch",
                    "seed": "seed of the model's initialisation and the batch order",
                    "device": "auto: a GPU when there is one", "precision": None}
"""`TrainConfig` fields that `mmue train` and `mmue check` take as options, with their help."""


def _add_training_arguments(parser: argparse.ArgumentParser, max_images: bool = True) -> None:
    parser.add_argument("--model", default="RN-small", help="architecture (mmue models lists them)")
    parser.add_argument("--pretrained", help="local checkpoint to fine-tune")
    parser.add_argument("--size", type=int, help="image size (default: the model's)")
    parser.add_argument("--context-length", type=int, help="caption tokens (default: the model's)")
    if max_images:
        parser.add_argument("--max-images", type=int, help="train on the first N images only")
    for name, meaning in TRAINING_OPTIONS.items():
        _config_option(parser, TrainConfig, name, "--wd" if name == "weight_decay" else None,
                       help=meaning or PRECISION_HELP)
    parser.add_argument("--nproc", type=int, default=1, help=NPROC_HELP)


PRECISION_HELP = "bf16: autocast of the forward passes on a GPU (ignored on the CPU)"
NPROC_HELP = ("processes: above 1 the command reruns itself under torchrun (DDP; one GPU per process on CUDA, "
              "gloo on CPU); the global batch is split across them, so --batch-size must divide by it")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def _schedule_default(field: str) -> str:
    """'default: the schedule's (calibrated 3, official 20)' for a `ProtectConfig` field."""
    values = ", ".join(f"{name} {overrides.get(field, getattr(ProtectConfig, field))}"
                       for name, overrides in SCHEDULES.items())
    return f"default: the schedule's ({values})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="build an image,caption CSV from a standard download")
    convert.add_argument("format", choices=["flickr8k", "karpathy", "coco"])
    convert.add_argument("--out", required=True, help="CSV to write")
    convert.add_argument("--images", required=True, help="folder of the images")
    convert.add_argument("--token", help="flickr8k: Flickr8k.token.txt")
    convert.add_argument("--split-list", help="flickr8k: e.g. Flickr_8k.testImages.txt")
    convert.add_argument("--json", help="karpathy: dataset_*.json; coco: captions_*.json")
    convert.add_argument("--split", default="test", help="karpathy: split name(s), comma-separated")
    convert.add_argument("--captions-per-image", type=int, default=5, help="coco: captions kept per image")
    convert.set_defaults(run=_convert)

    synthetic = sub.add_parser("synthetic", help="write the built-in synthetic set as PNG + train/val/test CSVs")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--train-images", type=int, default=800)
    synthetic.add_argument("--test-images", type=int, default=100)
    synthetic.add_argument("--size", type=int, default=32)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=_synthetic)

    shrink = sub.add_parser("shrink", help="a smaller copy of a dataset folder: first images of each split, resized")
    shrink.add_argument("--data", required=True, help="folder with <split>.csv files (e.g. $MMUE_DATA/flickr8k)")
    shrink.add_argument("--out", required=True)
    shrink.add_argument("--size", type=int, required=True, help="image px (short side, then centre crop)")
    shrink.add_argument("--max-images", type=int, help="train images kept (default: all)")
    shrink.add_argument("--max-test-images", type=int, help="val and test images kept (default: all)")
    shrink.add_argument("--splits", default="train,val,test", help="comma-separated; all but train take --max-test-images")
    shrink.add_argument("--format", choices=sorted(data.IMAGE_FORMATS), default="png",
                        help="png: lossless; jpeg: quality 95, lossy, 2-4x smaller")
    shrink.set_defaults(run=_shrink)

    train = sub.add_parser("train", help="train a CLIP on a CSV dataset", formatter_class=_DefaultsFormatter)
    train.add_argument("--csv", required=True)
    train.add_argument("--test-csv")
    train.add_argument("--out", required=True, help="folder for model.pt, metrics.json and the resumable state")
    _add_training_arguments(train)
    train.set_defaults(run=_train)

    check = sub.add_parser("check", help="does a protection work? a collector's CLIP trained on a background corpus "
                                         "with your photos posted clean, protected, or not at all, and how well "
                                         "each finds your photos", formatter_class=_DefaultsFormatter)
    check.add_argument("--clean", required=True, help="the CSV you protected")
    check.add_argument("--protected", required=True, help="protected.csv written by mmue protect")
    check.add_argument("--out", required=True, help="folder for the three victims' resumable states and check.json")
    check.add_argument("--background", help=f"image,caption CSV of photos a collector gathers beside yours (default: "
                                             f"{DEFAULT_BACKGROUND}, the project's Flickr8k train split)")
    check.add_argument("--background-images", type=int, default=2000, help="background images each victim trains on")
    check.add_argument("--gallery-others", type=int, default=400,
                       help="background photos searched beside yours (all of them trained on)")
    check.add_argument("--collector", default="scratch", choices=list(COLLECTORS),
                       help="scratch: victims train from scratch; pretrained: the collector first trains its own CLIP "
                            "on clean background photos after the first --background-images (with the training "
                            "options below), then each victim fine-tunes it for half the epochs at a tenth of the "
                            "learning rate: does fine-tuning a model that knows clean data undo the protection?")
    check.add_argument("--pretrain-images", type=int,
                       help="with --collector pretrained: background images its own CLIP trains on (default: all "
                            "after the first --background-images)")
    check.add_argument("--frozen-groups", type=int, default=0,
                       help="with --collector pretrained: image-tower groups kept frozen while fine-tuning, as SSC "
                            "does (a ResNet's stem is 1, with its first stage 2, ...)")
    _add_training_arguments(check, max_images=False)
    check.set_defaults(run=_check, epochs=8, rows_per_epoch="one_per_image")

    evaluate = sub.add_parser("eval", help="retrieval metrics of a checkpoint on a CSV test set")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--csv", required=True)
    evaluate.set_defaults(run=_evaluate)

    protect = sub.add_parser("protect", help="protect your own image,caption CSV (EM, UAP, TAP, MEM, T2UE)",
                             formatter_class=_DefaultsFormatter)
    protect.add_argument("--csv", required=True, help="image,caption CSV of your photos (paths relative to it)")
    protect.add_argument("--out", required=True, help="folder for images/, protected.csv, report.json and the state "
                                                      "that lets a rerun continue")
    protect.add_argument("--method", default="mem-3", choices=list(METHODS),
                         help="protection method (mmue_lib.methods.METHODS)")
    protect.add_argument("--schedule", default="calibrated", choices=list(SCHEDULES),
                         help="protection schedule (mmue_lib.methods.SCHEDULES): calibrated = the cpu schedule chosen "
                              "on Flickr8k val; official = the official code's; the options below override it and "
                              "give each schedule's value")
    protect.add_argument("--resolution", choices=["photo", "model"], default="photo",
                         help="photo: publish each photo at its own size and orientation, as PNG under its own name; "
                              "model: the square crop the surrogate saw")
    _config_option(protect, ProtectConfig, "trigger_len", default=None,
                   help="override the method's trigger length (MEM-k)")
    _config_option(protect, ProtectConfig, "trigger_min_count", default=None,
                   help="with caption-vocabulary triggers: how often a word must occur in the captions to be "
                        "used (default: the method's; lower it for a small collection)")
    _config_option(protect, ProtectConfig, "eps", help="L-inf bound in 1/255 steps")
    protect.add_argument("--model", default="auto",
                         help=f"architecture of the fresh surrogate when no --surrogate is given; auto: "
                              f"{DEVICE_SURROGATES['cuda']} on a GPU, {DEVICE_SURROGATES['cpu']} elsewhere")
    protect.add_argument("--size", type=int, help="surrogate image size in px (default: the model's own)")
    protect.add_argument("--surrogate", help="local checkpoint of the surrogate CLIP (required for uap/tap)")
    protect.add_argument("--generator", help="a T2UE generator file (mmue train-generator) for --method t2ue: each photo's "
                                             "noise from its first caption in one forward pass, no training "
                                             "(default: the generator the project ships)")
    _config_option(protect, ProtectConfig, "max_rounds", default=None, help=_schedule_default("max_rounds"))
    _config_option(protect, ProtectConfig, "surrogate_steps", default=None, help=_schedule_default("surrogate_steps"))
    _config_option(protect, ProtectConfig, "pgd_steps", default=None, help=_schedule_default("pgd_steps"))
    _config_option(protect, ProtectConfig, "trigger_per", default=None, help=_schedule_default("trigger_per"))
    _config_option(protect, ProtectConfig, "noise_per", default=None, help="default: the method's")
    protect.add_argument("--fraction", type=float, default=1.0, help="share of images to protect")
    _config_option(protect, ProtectConfig, "batch_size", help="pairs per contrastive batch")
    _config_option(protect, ProtectConfig, "seed", help="seed of the surrogate, the noise and the trigger search")
    _config_option(protect, ProtectConfig, "device", help="auto: a GPU when there is one")
    _config_option(protect, ProtectConfig, "precision", help=PRECISION_HELP)
    protect.add_argument("--nproc", type=int, default=1, help=NPROC_HELP)
    protect.add_argument("--output-format", choices=list(OUTPUT_FORMATS), default="png",
                         help="png: lossless; jpeg: smaller, as most sites re-encode uploads anyway, but the "
                              "compression removes part of the noise (the end message says how much is kept); photos "
                              "with transparency stay PNG")
    protect.add_argument("--quality", type=int, default=92, help="JPEG quality with --output-format jpeg")
    protect.add_argument("--force", action="store_true",
                         help="replace an earlier mmue protect output in --out (only the files it wrote there, as its "
                              ".mmue-protect.json lists them) and start over")
    protect.add_argument("--keep-state", action="store_true",
                         help="keep the resumable state (in the cache, never in --out) after the protection "
                              "finishes, so that a rerun with a larger --max-rounds continues it; it holds the "
                              "exact noise and triggers: never publish it")
    protect.set_defaults(run=_protect)

    generator = sub.add_parser("train-generator", formatter_class=_DefaultsFormatter,
                               help="train a T2UE generator on an image,caption CSV, to protect photos from their "
                                    "captions alone (mmue protect --method t2ue --generator FILE)")
    generator.add_argument("--csv", required=True, help="image,caption CSV to learn from (for zero contact: images "
                                                        "other than the ones you will protect)")
    generator.add_argument("--out", required=True, help="the generator file to write, e.g. generator.pt")
    generator.add_argument("--schedule", default="calibrated", choices=list(SCHEDULES),
                           help="rounds and surrogate steps of the schedule; the options below override it")
    generator.add_argument("--model", default="auto",
                           help=f"architecture of the surrogate trained alongside; auto: {DEVICE_SURROGATES['cuda']} "
                                f"on a GPU, {DEVICE_SURROGATES['cpu']} elsewhere")
    generator.add_argument("--size", type=int, help="image size in px of the noise (default: the model's own)")
    generator.add_argument("--max-images", type=int, help="learn from the first N images only")
    _config_option(generator, ProtectConfig, "eps", default=None, help="L-inf bound in 1/255 steps (default: 8)")
    _config_option(generator, ProtectConfig, "max_rounds", default=None, help=_schedule_default("max_rounds"))
    _config_option(generator, ProtectConfig, "surrogate_steps", default=None, help=_schedule_default("surrogate_steps"))
    _config_option(generator, ProtectConfig, "generator_steps", default=None,
                   help=f"generator steps per round (default: t2ue's {METHODS['t2ue'].preset['generator_steps']})")
    _config_option(generator, ProtectConfig, "generator_width", default=None,
                   help=f"generator width (default: {ProtectConfig.generator_width})")
    _config_option(generator, ProtectConfig, "batch_size", default=None, help="pairs per contrastive batch")
    _config_option(generator, ProtectConfig, "seed", default=None, help="seed of the surrogate and the generator")
    _config_option(generator, ProtectConfig, "device", default=None, help="auto: a GPU when there is one")
    _config_option(generator, ProtectConfig, "precision", default=None, help=PRECISION_HELP)
    generator.add_argument("--force", action="store_true", help="replace --out if it is a T2UE generator")
    generator.set_defaults(run=_train_generator)

    sub.add_parser("models", help="list model architectures").set_defaults(run=_models)
    listing = sub.add_parser("runs", help="list the cached runs of the notebooks: what each is, done or how far it got")
    listing.add_argument("--kind", choices=["train", "protect", "generator"])
    listing.add_argument("--restore", nargs="+", metavar="RECORDS", type=Path,
                         help="first put the runs of these results/<scale>/runs/*.json files into the cache as "
                              "done (their metrics and costs, not their files), so that notebooks do not compute "
                              "them again")
    listing.add_argument("--export", metavar="RECORDS", type=Path,
                         help="write the runs this cache finished (not restored ones) to this file, "
                              "for --restore on another machine")
    listing.add_argument("--notebook", help="with --export: only the runs of this notebook (its params at --scale)")
    listing.add_argument("--scale", default="cpu", help="with --notebook: the scale of its params")
    listing.set_defaults(run=_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    nproc = getattr(args, "nproc", 1)
    if nproc < 1 or (args.__dict__.get("batch_size") or nproc) % nproc:
        print(f"mmue: error: --nproc {nproc}: a positive number that divides --batch-size "
              f"{args.__dict__.get('batch_size')}", file=sys.stderr)
        return 2
    if nproc > 1 and not distributed.launched_by_torchrun():
        return _run_in_processes(nproc, argv)
    try:
        with distributed.process_group(getattr(args, "device", "auto")) as ctx:
            if not ctx.is_main:
                sys.stdout = sys.stderr = open(os.devnull, "w")
            args.run(args)
    except (data.DataError, OSError, ValueError) as error:
        print(f"mmue: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupted:
        print(f"mmue: {interrupted or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


def _run_in_processes(nproc: int, argv: list[str]) -> int:
    """This command again in `nproc` processes under torchrun (rank 0 prints and writes), without
    --nproc (which torchrun would take for an abbreviation of its own --nproc-per-node)."""
    kept, skip = [], False
    for argument in argv:
        if not skip and not argument.startswith("--nproc"):
            kept.append(argument)
        skip = argument == "--nproc"
    command = distributed.torchrun_command(nproc, "mmue_lib.cli", kept)
    print(f"running in {nproc} processes: {distributed.describe(command)}", file=sys.stderr, flush=True)
    return subprocess.run(command, env=distributed.torchrun_environment(nproc)).returncode


if __name__ == "__main__":
    sys.exit(main())
