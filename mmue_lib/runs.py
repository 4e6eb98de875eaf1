"""The kinds of run the cache holds (`cache.register`): a CLIP training run (a clean model, a
surrogate, a victim trained on protected data, fine-tuning from a pretrained model), a
protection run (EM / UAP / MEM noise and triggers; T2UE noise from a generator's pass over the
captions) and a T2UE generator's training, with what loads their outcomes. Each spec
names every parameter the run depends on, the specs of the runs it uses included, in the one
key policy of `storage.keyed_settings`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import distributed
from .cache import RunKind, cached, compute_from_folder, describe_run, planned, register, run_folder, run_kind, run_lock
from .data import PairDataset, concat_datasets, load_split
from .defenses import REFERENCE_DEFENSES, apply_defenses, defense_label, parse_defenses
from .faces import load_named_faces
from .methods import METHODS, ProtectConfig, batch_pairs, bound, protection_config
from .models import create_clip, load_clip, model_context_length, save_clip
from .protect import Protection, generate_protection
from .release import protected_dataset
from .storage import expand_path, save_torch, write_json
from .t2ue import generated_noise, load_generator, train_generator
from .train import TokenizedPairs, TrainConfig, evaluate_retrieval, train_clip

PROTECTED_IMAGES = "protected_images.npy"
"""A victim's protected train images, memory-mapped while it trains (removed when it is done)."""
TRAIN_CHECKPOINT, PROTECT_CHECKPOINT, GENERATOR_CHECKPOINT = "train_state.ckpt", "state.ckpt", "generator_state.ckpt"
"""The checkpoint an unfinished run of each kind resumes from, in its folder."""


def data_spec(data: str, image_size: int, max_train_images: int | None = None,
              max_test_images: int | None = None, named_faces: dict | None = None,
              evaluate_on: str = "test", skip_train_images: int = 0) -> dict:
    """What a run's data is. `named_faces` (the keyword arguments of `faces.load_named_faces`
    beyond folder, split and size) reads `data` as a face folder captioned from names.
    `evaluate_on: val` scores victims on the val split instead of test, for choosing settings;
    `skip_train_images` leaves the first train images out (a collector's own clean data beside
    a release of those first images). Each enters the spec only when set, so that the keys of
    the runs made before them stay as they were."""
    if evaluate_on not in ("test", "val"):
        raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
    if skip_train_images < 0:
        raise ValueError(f"skip_train_images must be >= 0, got {skip_train_images}")
    spec = {"data": data, "image_size": image_size, "max_train_images": max_train_images,
            "max_test_images": max_test_images, "named_faces": named_faces}
    if evaluate_on != "test":
        spec["evaluate_on"] = evaluate_on
    if skip_train_images:
        spec["skip_train_images"] = skip_train_images
    return spec


def load_data(spec: dict, split: str) -> PairDataset:
    """One split of a run's data (decoded by rank 0 first when several processes share the cache);
    "test" is the split victims are scored on (val under `evaluate_on: val`)."""
    if split == "test":
        split = spec.get("evaluate_on", "test")
    with distributed.main_first():
        if spec.get("named_faces") is not None:
            return load_named_faces(spec["data"], split, spec["image_size"], progress=False, **spec["named_faces"])
        if split in ("val", "test"):
            return load_split(spec["data"], split, spec["image_size"], max_images=spec["max_test_images"],
                              progress=False)
        skip, limit = spec.get("skip_train_images", 0), spec["max_train_images"]
        train = load_split(spec["data"], split, spec["image_size"], max_images=limit and skip + limit, progress=False)
        return train.subset(range(skip, train.num_images), f"{train.name}[{skip}:]") if skip else train


@planned
def training_run(data: dict, model: str, context_length: int, train: dict, *, protection: dict | None = None,
                 fraction: float = 1.0, pretrained: dict | None = None, seed: int | None = None,
                 defenses: list | None = None, captioner: dict | None = None, progress: bool = True) -> dict:
    """Train a CLIP (from scratch, or from the `pretrained` training run) on the train split,
    protected by the `protection` run when given and then passed through the released-data
    `defenses` (`defenses.parse_defenses`; what they learn from is the val split, and `recaption`'s
    captioner the `captioner` training run, the collector's own model); logs clean-test retrieval
    every epoch. `seed` initialises the model (default: the training seed, which also seeds the
    batches and which protected rows a `fraction` picks)."""
    config = TrainConfig(**train)
    seed = config.seed if seed is None else seed
    spec = {"data": data, "model": model, "context_length": context_length, "train": config.keyed(),
            "protection": protection and protection["spec"], "fraction": fraction,
            "pretrained": pretrained and pretrained["spec"], "seed": seed}
    if defenses:
        spec["defenses"] = parse_defenses(defenses)
    if captioner:
        spec["captioner"] = captioner["spec"]
    if any(entry["name"] == "recaption" for entry in spec.get("defenses", [])) and not captioner:
        raise ValueError("the recaption defense needs captioner=: the collector's own model (a training run)")

    def compute(folder: Path) -> dict:
        clip = (run_model(pretrained) if pretrained else
                create_clip(model, image_size=data["image_size"], context_length=context_length, seed=seed))
        train_set = load_data(data, "train")
        if protection is not None:
            with distributed.main_first():
                train_set = protected_dataset(train_set, load_protection(protection), fraction, seed,
                                              images_file=folder / PROTECTED_IMAGES)
        if defenses:
            needs_reference = any(entry["name"] in REFERENCE_DEFENSES for entry in spec["defenses"])
            train_set = apply_defenses(train_set, spec["defenses"], load_data(data, "val") if needs_reference else None,
                                       run_model(captioner) if captioner else None)
        length = model_context_length(clip)
        result = train_clip(clip, TokenizedPairs.from_dataset(train_set, length), config,
                            test=TokenizedPairs.from_dataset(load_data(data, "test"), length),
                            checkpoint_path=folder / TRAIN_CHECKPOINT, progress=progress)
        if distributed.context().is_main:
            save_clip(result.model.cpu(), folder / "model.pt", meta={"spec": spec})
            (folder / TRAIN_CHECKPOINT).unlink(missing_ok=True)
            (folder / PROTECTED_IMAGES).unlink(missing_ok=True)
        return {"history": result.history, "final": result.history[-1], "seconds": result.seconds}

    return cached("train", spec, compute)


def pretrained_checkpoint(run: dict) -> Path:
    """The model file of a finished training run (trained again, keeping its recorded numbers, when
    the run was restored from records without it: `artifact`)."""
    return artifact(run, "model.pt")


def artifact(run: dict, name: str) -> Path:
    """The file `name` of a finished run. A run restored from records (`records.restore_records`)
    has its log and cost but no files: it is computed again here, in this process, once, under the
    run's lock, so that another process reads the recorded result before or after, never a fresh
    one. Where the file is missing, the run is first read as the cache holds it now (`run` may be a
    dependency known only by its spec, and another process may be making its files: then this
    waits for it)."""
    folder = Path(run["folder"])
    file = folder / name
    if file.is_file():
        return file
    kind = folder.parent.name
    with run_lock(folder):
        run = run_kind(kind).recompute(run["spec"])
        if file.is_file() or "restored_from" not in run:
            return file
        if distributed.context().distributed:
            raise RuntimeError(f"{describe_run(kind, run['spec'])}: restored from {run['restored_from']} without its "
                               f"{name}; compute it in one process first, or remove {run['folder']}")
        print(f"{describe_run(kind, run['spec'])}: restored from records without its {name}, which is needed here: "
              "computing it again", flush=True)
        result_file = folder / "result.json"
        recorded = json.loads(result_file.read_text(encoding="utf-8"))
        result_file.unlink()
        run_kind(kind).recompute(run["spec"])
        keep_record(folder, recorded)
    return file


def keep_record(folder: Path, recorded: dict) -> None:
    """After a restored run's files were computed again, keep its recorded result (metrics, seconds,
    peak memory: one set of numbers across notebooks and sessions), noting the recomputation's
    own seconds and provenance beside it."""
    again = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    write_json(folder / "result.json", {**recorded, "files_recomputed": {
        "seconds": again.get("seconds"), "provenance": again.get("provenance")}})


def surrogate_clip(surrogate: dict | None, model: str, data: dict, context_length: int, seed: int) -> torch.nn.Module:
    """The surrogate a protection or a generator starts from: the `surrogate` training run's model,
    else a fresh `model` at the data's image size, initialised from `seed`."""
    if surrogate:
        return run_model(surrogate)
    return create_clip(model, image_size=data["image_size"], context_length=context_length, seed=seed)


def checkpoint_run(path: str, model: str, image_size: int, context_length: int) -> dict:
    """A local open_clip / OpenAI state-dict file standing in for a training run (as `pretrained`
    or `surrogate`); its spec names the file by path, size and modification time."""
    file = expand_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {file} (no downloads are made)")
    stat = file.stat()
    return {"spec": {"checkpoint": str(file), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "model": model,
                     "image_size": image_size, "context_length": context_length}}


def run_model(run: dict) -> torch.nn.Module:
    """The model a finished training run (or a `checkpoint_run`) ends with, on the CPU."""
    spec = run["spec"]
    if "checkpoint" in spec:
        return create_clip(spec["model"], image_size=spec["image_size"], context_length=spec["context_length"],
                           pretrained=spec["checkpoint"])
    return load_clip(pretrained_checkpoint(run))


def run_retrieval(run: dict, data: dict) -> dict[str, float]:
    """Retrieval of a finished training run's model on the split `data` scores victims on (test, or
    val under `evaluate_on: val`): a model made under one spec, measured on another's split."""
    model = run_model(run)
    return evaluate_retrieval(model, TokenizedPairs.from_dataset(load_data(data, "test"), model_context_length(model)))


@planned
def protection_run(data: dict, method: str, surrogate_model: str, context_length: int, *,
                   schedule: dict | None = None, surrogate: dict | None = None, progress: bool = True,
                   **overrides) -> dict:
    """Generate EM / UAP / MEM / T2UE protection of the train split. `schedule` holds settings
    shared by all methods (the method's preset wins over them); `overrides` win over the preset.
    The surrogate starts from random initialisation, or from the `surrogate` training run (UAP/TAP
    need a clean-trained one). T2UE's noise is its generator's (`generator_run`) pass over each
    image's first caption; its seconds are the generator's training and that pass together."""
    config = protection_config(method, schedule, **overrides)
    spec = {"data": data, "method": method, "config": config.keyed(), "surrogate_model": surrogate_model,
            "context_length": context_length, "surrogate": surrogate and surrogate["spec"]}
    if config.generator_steps:
        return _generated_protection(spec, config, generator_run(data, config, surrogate_model, context_length,
                                                                 surrogate=surrogate, progress=progress))

    def compute(folder: Path) -> dict:
        model = surrogate_clip(surrogate, surrogate_model, data, context_length, config.seed)
        protection = generate_protection(load_data(data, "train"), model, config,
                                         checkpoint_path=folder / PROTECT_CHECKPOINT, progress=progress)
        if distributed.context().is_main:
            _save_protection(folder, protection)
            (folder / PROTECT_CHECKPOINT).unlink(missing_ok=True)
        return {"history": protection.history, "seconds": protection.seconds}

    return cached("protect", spec, compute)


def _save_protection(folder: Path, protection: Protection) -> None:
    save_torch(folder / "protection.pt", {"config": asdict(protection.config), "noise": protection.noise,
                                          "triggers": protection.triggers, "history": protection.history,
                                          "seconds": protection.seconds})


def _generated_protection(spec: dict, config: ProtectConfig, generator: dict) -> dict:
    """The protection run of a T2UE generator: its noise for every released image, from the image's
    first caption in one batched forward pass."""
    spec = {**spec, "generator": generator["spec"]}

    def compute(folder: Path) -> dict:
        trained = load_generator(artifact(generator, "generator.pt"))
        captions = load_data(spec["data"], "train").first_captions().captions
        started = time.perf_counter()
        noise = generated_noise(trained.generator, captions, device=distributed.resolve_device(config.device))
        seconds = time.perf_counter() - started
        if distributed.context().is_main:
            _save_protection(folder, Protection(config, noise, torch.zeros(0, 0, dtype=torch.long),
                                                trained.history, trained.seconds + seconds))
        return {"history": trained.history, "seconds": trained.seconds + seconds,
                "generator_seconds": trained.seconds, "noise_seconds": seconds,
                "noise_ms_per_image": 1000 * seconds / max(1, len(captions))}

    return cached("protect", spec, compute)


def generator_corpus(data: dict, corpus: str) -> PairDataset:
    """What a T2UE generator learns from: the train split of `data` ('released'), or 'disjoint':
    the val split and the train images beyond the first `max_train_images` (the released ones)."""
    if corpus == "released":
        return load_data(data, "train")
    parts = [load_data(data, "val")]
    if data["max_train_images"]:
        every = load_data({**data, "max_train_images": None}, "train")
        if every.num_images > data["max_train_images"]:
            parts.append(every.subset(range(data["max_train_images"], every.num_images)))
    return concat_datasets(parts, f"{Path(data['data']).name}-disjoint")


@planned
def generator_run(data: dict, config: ProtectConfig, surrogate_model: str, context_length: int, *,
                  surrogate: dict | None = None, progress: bool = True) -> dict:
    """Train a T2UE generator (`t2ue.train_generator`) on `data`'s corpus `config.generator_corpus`
    against a surrogate from random initialisation (or the `surrogate` training run)."""
    spec = {"data": data, "config": config.keyed(), "surrogate_model": surrogate_model,
            "context_length": context_length, "surrogate": surrogate and surrogate["spec"]}

    def compute(folder: Path) -> dict:
        model = surrogate_clip(surrogate, surrogate_model, data, context_length, config.seed)
        corpus = generator_corpus(data, config.generator_corpus)
        trained = train_generator(corpus, model, config, checkpoint_path=folder / GENERATOR_CHECKPOINT,
                                  progress=progress)
        if distributed.context().is_main:
            trained.save(folder / "generator.pt", {"corpus": corpus.name, "images": corpus.num_images,
                                                   "captions": corpus.num_rows})
            (folder / GENERATOR_CHECKPOINT).unlink(missing_ok=True)
        return {"history": trained.history, "seconds": trained.seconds, "corpus_images": corpus.num_images}

    return cached("generator", spec, compute)


def load_protection(run: dict) -> Protection:
    """The `Protection` of a finished protection run (computed again first when it was restored from
    records, which hold its log and cost but not its noise)."""
    state = torch.load(artifact(run, "protection.pt"), map_location="cpu", weights_only=True, mmap=True)
    return Protection(ProtectConfig(**state["config"]), state["noise"], state["triggers"], state["history"],
                      state["seconds"])


def describe_data(data: dict) -> str:
    """"flickr8k 64 px (2000 train images)": the data of a run, in words."""
    on = f"{Path(data['data']).name} {data['image_size']} px"
    limit, skip = data["max_train_images"], data.get("skip_train_images", 0)
    if skip:
        return on + f" (train images after the first {skip}{f', {limit} of them' if limit else ''})"
    return on + (f" ({limit} train images)" if limit else "")


def describe_training(spec: dict) -> str:
    """One line saying what a training run is: the model, its seed, the data, and what it was trained on."""
    epochs = spec["train"]["epochs"]
    parts = [f"{spec['model']} seed {spec['seed']}, {epochs} epoch{'' if epochs == 1 else 's'}",
             describe_data(spec["data"])]
    if spec["pretrained"]:
        parts.append("fine-tuned")
    if spec["protection"]:
        protection = spec["protection"]
        share = "" if spec["fraction"] == 1 else f" {spec['fraction']:.0%}"
        parts.append(f"on {METHODS[protection['method']].label}{share} data "
                     f"(seed {protection['config']['seed']})")
    if spec.get("defenses"):
        parts.append(defense_label(spec["defenses"]))
    return ", ".join(parts)


def describe_generator(spec: dict) -> str:
    """One line saying what a generator training is: its seed, the surrogate, the corpus and data."""
    config = spec["config"]
    return (f"T2UE generator seed {config['seed']} against {spec['surrogate_model']}, "
            f"{config.get('generator_corpus', 'released')} images of {describe_data(spec['data'])}")


def describe_protection(spec: dict) -> str:
    """One line saying what a protection run is: the method, its seed, the surrogate and the data."""
    surrogate = f"a trained {spec['surrogate_model']}" if spec["surrogate"] else spec["surrogate_model"]
    return (f"{METHODS[spec['method']].label} seed {spec['config']['seed']} against {surrogate}, "
            f"{describe_data(spec['data'])}")


def convergence_warning(spec: dict, result: dict) -> str | None:
    """What it means for the result when a protection run's noise did not bind (`methods.bound`),
    or None when it bound (whether or not it reached its early-stop `stop_loss`)."""
    config, history = ProtectConfig(**spec["config"]), result["history"]
    if bound(config, history) is not False:
        return None
    remedy = ("more rounds or generator steps: protect.max_rounds, protect.generator_steps" if config.generator_steps
              else "more rounds or surrogate steps: protect.max_rounds, protect.surrogate_steps")
    return (f"{describe_protection(spec)}: the noise did not bind to the captions: its PGD loss ended at "
            f"{history[-1]['noise_loss']:.3g} after {len(history)} round(s), not below half a contrastive loss "
            f"at chance (ln {batch_pairs(config)} = {math.log(batch_pairs(config)):.2f}); victims trained on it "
            f"measure a weak protection ({remedy})")


def _run_of(kind: str, spec: dict | None) -> dict | None:
    """A run as the run functions take it, from its spec (a checkpoint file stands for itself)."""
    if spec is None:
        return None
    return {"spec": spec} if "checkpoint" in spec else {"spec": spec, "folder": str(run_folder(kind, spec))}


def _main_process() -> bool:
    return distributed.context().is_main


def register_kinds() -> None:
    """Tell the cache engine of the two run kinds (done when this module is imported)."""
    register("protect", PROTECTION_RUNS)
    register("train", TRAINING_RUNS)
    register("generator", GENERATOR_RUNS)


PROTECTION_RUNS = RunKind(
    noun="protection", describe=describe_protection, settings_section="config", checkpoint_file=PROTECT_CHECKPOINT,
    recompute=lambda spec: protection_run(spec["data"], spec["method"], spec["surrogate_model"],
                                          spec["context_length"], surrogate=_run_of("train", spec["surrogate"]),
                                          progress=_main_process(), **spec["config"]),
    saved_progress=lambda spec, state: f"round {len(state['history'])} of {spec['config']['max_rounds']} saved",
    timing=lambda spec: {"data": spec["data"], "method": spec["method"], "model": spec["surrogate_model"],
                         "settings": {k: v for k, v in spec["config"].items() if k != "seed"},
                         "trained_surrogate": bool(spec["surrogate"])},
    warning=convergence_warning, restorable=True)
TRAINING_RUNS = RunKind(
    noun="training run", describe=describe_training, settings_section="train", checkpoint_file=TRAIN_CHECKPOINT,
    recompute=lambda spec: training_run(spec["data"], spec["model"], spec["context_length"], spec["train"],
                                        protection=_run_of("protect", spec["protection"]), fraction=spec["fraction"],
                                        pretrained=_run_of("train", spec["pretrained"]), seed=spec["seed"],
                                        defenses=spec.get("defenses"), captioner=_run_of("train", spec.get("captioner")),
                                        progress=_main_process()),
    saved_progress=lambda spec, state: f"epoch {state['epoch'] + 1} of {spec['train']['epochs']} saved",
    timing=lambda spec: {"data": spec["data"], "model": spec["model"], "fraction": spec["fraction"],
                         "settings": {k: v for k, v in spec["train"].items() if k != "seed"},
                         "fine_tuned": bool(spec["pretrained"])},
    restorable=True)
GENERATOR_RUNS = RunKind(
    noun="generator training", describe=describe_generator, settings_section="config",
    checkpoint_file=GENERATOR_CHECKPOINT,
    recompute=lambda spec: generator_run(spec["data"], ProtectConfig(**spec["config"]), spec["surrogate_model"],
                                         spec["context_length"], surrogate=_run_of("train", spec["surrogate"]),
                                         progress=_main_process()),
    saved_progress=lambda spec, state: f"round {len(state['history'])} of {spec['config']['max_rounds']} saved",
    timing=lambda spec: {"data": spec["data"], "model": spec["surrogate_model"],
                         "settings": {k: v for k, v in spec["config"].items() if k != "seed"}},
    restorable=True)
register_kinds()


def main(argv: list[str] | None = None) -> int:
    """`python -m mmue_lib.runs FOLDER`: compute a cached run from its spec.json (what
    `cache.processes` launches under torchrun; rank 0 prints and writes)."""
    folder, = argv if argv is not None else sys.argv[1:]
    with distributed.process_group() as ctx:
        if not ctx.is_main:
            sys.stdout = open(os.devnull, "w")
        compute_from_folder(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
