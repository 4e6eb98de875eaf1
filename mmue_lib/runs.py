"""Experiments computed once and cached on disk, keyed by every parameter they depend on.

A run is a protection (EM / UAP / MEM noise and triggers) or a CLIP training run (a clean
model, a surrogate, a victim trained on protected data). Each lives in
`$MMUE_CACHE/runs/<kind>/<key>/` with `spec.json`, its artifacts and, written last,
`result.json`. The key hashes the run's spec, which embeds the specs of the runs it uses,
so a changed parameter recomputes exactly what depends on it. An interrupted run resumes
from its own checkpoint.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from functools import wraps
from pathlib import Path
from typing import Callable, Mapping

import torch

from . import distributed, progress
from .data import PairDataset, load_split
from .defenses import apply_defenses, defense_label, parse_defenses, parse_settings, settings_label
from .faces import load_named_faces
from .models import create_clip, load_clip, model_context_length, save_clip
from .protect import (METHODS, Protection, ProtectConfig, check_protection_settings, converged, generate_protection,
                      method_config, protected_dataset)
from .storage import cache_root, expand_path, provenance, save_torch, stable_hash, write_json
from .train import TokenizedPairs, TrainConfig, train_clip

CODE_VERSION = 1
"""Bump when a library change makes cached results stale."""


CHECKPOINT_FILES = {"train": "train_state.ckpt", "protect": "state.ckpt"}
"""The checkpoint an unfinished run of each kind resumes from, in its folder."""
PROTECTED_IMAGES = "protected_images.npy"
"""A victim's protected train images, memory-mapped while it trains (removed when it is done)."""


def run_folder(kind: str, spec: dict) -> Path:
    return cache_root() / "runs" / kind / stable_hash({"kind": kind, "spec": spec, "version": CODE_VERSION})


def timing_group(kind: str, spec: dict) -> str:
    """Runs expected to take about as long as each other: the same kind, method, model, data and
    settings, whatever the seed, the protection a victim's data carries or the countermeasure
    applied to it before training (training-time augmentation is a setting)."""
    settings = spec["train"] if kind == "train" else spec["config"]
    same = {key: value for key, value in spec.items()
            if key not in ("train", "config", "seed", "protection", "pretrained", "surrogate", "defenses")}
    return stable_hash({"kind": kind, **same, "settings": {k: v for k, v in settings.items() if k != "seed"},
                        "fine_tuned": bool(spec.get("pretrained")), "trained_surrogate": bool(spec.get("surrogate"))})


@dataclass
class Plan:
    """The runs an experiment needs, listed by a dry pass (`planning`) before any compute, so that
    progress can say "run 3 of 5" and how long the rest may take."""

    dry: bool = True
    runs: dict = field(default_factory=dict)
    """folder -> (kind, spec), in the order the experiment asks for them."""
    todo: list = field(default_factory=list)
    """Folders of the runs not yet in the cache."""
    results: dict = field(default_factory=dict)
    seconds_done: dict = field(default_factory=dict)
    """timing group -> seconds of each run of that group computed so far."""

    def record(self, folder: Path, seconds: float) -> None:
        """Note how long the run in `folder` (one of the plan's) took."""
        if folder in self.runs:
            self.seconds_done.setdefault(timing_group(*self.runs[folder]), []).append(seconds)

    def seconds_left(self, folders: list) -> tuple[float, int]:
        """Estimated seconds for `folders`, each timed as the runs of its group done so far (as the
        average run done so far when none of its group is), and how many were timed that way."""
        every = [seconds for group in self.seconds_done.values() for seconds in group]
        total, unlike = 0.0, 0
        for folder in folders:
            group = self.seconds_done.get(timing_group(*self.runs[folder]))
            unlike += not group
            total += sum(group or every) / len(group or every)
        return total, unlike

    def label(self, folder: Path, description: str) -> str:
        """"run k of n: <what it is>", printing an estimate of the time the plan has left."""
        index = self.todo.index(folder) + 1 if folder in self.todo else 0
        if not index:
            return description
        left = self.todo[index - 1:]
        if self.seconds_done:
            seconds, unlike = self.seconds_left(left)
            basis = f"; {unlike} of them unlike any done yet, timed as the average run" if unlike else ""
            print(f"run {index} of {len(self.todo)}: about {progress.duration(seconds)} left for the {len(left)} "
                  f"run(s) still to compute (from the runs done so far{basis})", flush=True)
        return f"run {index}/{len(self.todo)}: {description}"


_PLAN: ContextVar[Plan | None] = ContextVar("mmue run plan", default=None)


def cached(kind: str, spec: dict, compute: Callable[[Path], dict]) -> dict:
    """`result.json` of the run of `kind` with `spec`, computing it (into its folder) if needed.
    In a dry pass (`planning`) nothing is computed: the run is noted, and returned as its spec and folder."""
    folder = run_folder(kind, spec)
    result_file = folder / "result.json"
    plan = _PLAN.get()
    if plan is not None and plan.dry:
        if folder not in plan.runs:
            plan.runs[folder] = (kind, spec)
            if not result_file.is_file():
                plan.todo.append(folder)
        return {"kind": kind, "spec": spec, "folder": str(folder), "planned": True}
    if not result_file.is_file():
        main = distributed.context().is_main
        if main:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "spec.json", spec)
        description = describe_run(kind, spec)
        label = plan.label(folder, description) if plan else description
        started = time.perf_counter()
        with progress.labelled(label):
            if _PROCESSES.get() > 1 and not distributed.context().distributed:
                _compute_in_processes(folder, _PROCESSES.get())
            else:
                computed = compute(folder)
                if main:
                    write_json(result_file, {"kind": kind, "spec": spec, **computed,
                                             "provenance": provenance(spec.get("train", spec.get("config", {}))
                                                                      .get("device"))})
                distributed.barrier()
        if plan:
            plan.record(folder, time.perf_counter() - started)
    result = {**json.loads(result_file.read_text(encoding="utf-8")), "folder": str(folder)}
    if plan:
        plan.results[folder] = result
    return result


_PROCESSES: ContextVar[int] = ContextVar("mmue run processes", default=1)


@contextmanager
def processes(count: int):
    """Compute the runs started inside the block in `count` processes (a `torchrun` subprocess
    per run, when above 1); their results land in the cache as from one process."""
    if count < 1:
        raise ValueError(f"nproc must be at least 1, got {count}")
    token = _PROCESSES.set(count)
    try:
        yield
    finally:
        _PROCESSES.reset(token)


def _compute_in_processes(folder: Path, count: int) -> None:
    """Compute the run whose spec.json is in `folder` under torchrun in `count` processes, relaying
    its output (its progress bars) to this process's stdout, e.g. a notebook cell."""
    command = distributed.torchrun_command(count, "mmue_lib.runs", [str(folder)])
    with subprocess.Popen(command, env=distributed.torchrun_environment(count), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as child:
        for chunk in iter(lambda: child.stdout.read1(4096), b""):
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    if child.returncode or not (folder / "result.json").is_file():
        raise RuntimeError(f"the run in {folder} failed in {count} processes (exit {child.returncode}): "
                           f"{distributed.describe(command)}")


def _run_of(kind: str, spec: dict | None) -> dict | None:
    """A run as the run functions take it, from its spec (a checkpoint file stands for itself)."""
    if spec is None:
        return None
    return {"spec": spec} if "checkpoint" in spec else {"spec": spec, "folder": str(run_folder(kind, spec))}


def compute_from_folder(folder: Path) -> dict:
    """Compute (in this process, or as a rank of torchrun) the run whose spec.json is in `folder`,
    through the run function that made that spec; its result."""
    kind, spec = folder.parent.name, json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    main = distributed.context().is_main
    _PLAN.set(Plan(dry=False))  # the launching process has planned, numbered and will warn
    if kind == "protect":
        result = protection_run(spec["data"], spec["method"], spec["surrogate_model"], spec["context_length"],
                                surrogate=_run_of("train", spec["surrogate"]), progress=main, **spec["config"])
    else:
        result = training_run(spec["data"], spec["model"], spec["context_length"], spec["train"],
                              protection=_run_of("protect", spec["protection"]), fraction=spec["fraction"],
                              pretrained=_run_of("train", spec["pretrained"]), seed=spec["seed"],
                              defenses=spec.get("defenses"), progress=main)
    if Path(result["folder"]) != folder:
        raise RuntimeError(f"{folder}: its spec resolves to another run ({result['folder']})")
    return result


def planning(function: Callable, *args, **kwargs) -> Plan:
    """The runs `function(*args, **kwargs)` would use, listed without computing any."""
    plan = Plan()
    token = _PLAN.set(plan)
    try:
        function(*args, **kwargs)
    finally:
        _PLAN.reset(token)
    return plan


def planned(function: Callable) -> Callable:
    """Make an experiment function list its runs first (a dry pass) and say what it will compute,
    then run, numbering the runs it computes; afterwards warn about protections that did not
    converge. Nested experiment calls join the outer plan."""

    @wraps(function)
    def run(*args, **kwargs):
        if _PLAN.get() is not None:
            return function(*args, **kwargs)
        plan = planning(function, *args, **kwargs)
        kinds = [plan.runs[folder][0] for folder in plan.todo]
        if plan.todo:
            print(f"{len(plan.runs)} runs: {len(plan.runs) - len(plan.todo)} from the cache, "
                  f"{kinds.count('protect')} protection(s) and {kinds.count('train')} training run(s) to compute "
                  f"(cache: {cache_root() / 'runs'})", flush=True)
        plan.dry = False
        token = _PLAN.set(plan)
        try:
            result = function(*args, **kwargs)
        finally:
            _PLAN.reset(token)
        if not plan.todo:
            print(f"all {len(plan.runs)} runs from the cache ({cache_root() / 'runs'})", flush=True)
        for folder, (kind, spec) in plan.runs.items():
            if kind == "protect":
                warning = convergence_warning(spec, plan.results[folder]["history"])
                if warning:
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
        return result

    return run


def convergence_warning(spec: dict, history: list[dict]) -> str | None:
    """Why a protection run did not reach its `stop_loss`, or None when it did (or has none)."""
    config = ProtectConfig(**spec["config"])
    if converged(config, history) is not False:
        return None
    return (f"{describe_run('protect', spec)} did not converge: its PGD loss is {history[-1]['noise_loss']:.3g} "
            f"after {len(history)} round(s), above stop_loss {config.stop_loss:g}; such noise protects less "
            "(more rounds: protect.max_rounds)")


def describe_run(kind: str, spec: dict) -> str:
    """One line saying what a cached run is: the method or model, its seed, the data and, for a
    victim, what it was trained on."""
    data = spec["data"]
    on = f"{Path(data['data']).name} {data['image_size']} px"
    if data["max_train_images"]:
        on += f" ({data['max_train_images']} train images)"
    if kind == "protect":
        method = METHODS[spec["method"]].label
        surrogate = f"a trained {spec['surrogate_model']}" if spec["surrogate"] else spec["surrogate_model"]
        return f"{method} seed {spec['config']['seed']} against {surrogate}, {on}"
    epochs = spec["train"]["epochs"]
    parts = [f"{spec['model']} seed {spec['seed']}, {epochs} epoch{'' if epochs == 1 else 's'}", on]
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


def saved_progress(kind: str, spec: dict, folder: Path) -> str:
    """How far an unfinished run has got, from its checkpoint."""
    checkpoint = folder / CHECKPOINT_FILES[kind]
    if not checkpoint.is_file():
        return "no checkpoint yet"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if kind == "train":
        return f"epoch {state['epoch'] + 1} of {spec['train']['epochs']} saved"
    return f"round {len(state['history'])} of {spec['config']['max_rounds']} saved"


def cache_status(kind: str | None = None) -> list[dict]:
    """Every run under `$MMUE_CACHE/runs` (only `kind`, if given), in the order they were last
    started: kind, key, what it is, its state (done, restored from records, or how far an
    interrupted or running one has saved) and, once done, its seconds and, for a training run,
    final MedR (else None)."""
    rows = []
    spec_files = (cache_root() / "runs").glob(f"{kind or '*'}/*/spec.json")
    for spec_file in sorted(spec_files, key=lambda path: path.stat().st_mtime):
        folder, run_kind = spec_file.parent, spec_file.parent.parent.name
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        final = result.get("final", {})
        rows.append({"kind": run_kind, "key": folder.name, "run": describe_run(run_kind, spec),
                     "state": ("restored" if "restored_from" in result else "done") if result
                     else saved_progress(run_kind, spec, folder),
                     "seconds": result.get("seconds"), "i2t_MedR": final.get("i2t_MedR"),
                     "t2i_MedR": final.get("t2i_MedR")})
    return rows


def run_record(run: dict) -> dict:
    """What a results folder keeps of a run: kind, cache key, spec (every parameter and seed),
    seconds, log and final metrics. A local checkpoint standing in for a run has only its spec."""
    record = {"kind": run.get("kind", "checkpoint"), "key": Path(run["folder"]).name if "folder" in run else None,
              "spec": run["spec"]}
    return {**record, **{k: run[k] for k in ("seconds", "final", "history", "provenance") if k in run}}


def flatten_runs(runs: Mapping, prefix: str = "") -> dict[str, dict]:
    """Runs nested in dicts (e.g. `method_runs`' {label: {"protection": run, "victim": run}}) as
    {"label / protection": run, ...}; None entries are skipped."""
    flat = {}
    for name, value in runs.items():
        label = f"{prefix}{name}"
        if isinstance(value, Mapping) and "spec" in value:
            flat[label] = value
        elif isinstance(value, Mapping):
            flat.update(flatten_runs(value, f"{label} / "))
        elif value is not None:
            raise TypeError(f"{label}: expected a run (a dict with 'spec') or a dict of runs, got {type(value).__name__}")
    return flat


def write_run_records(runs: Mapping, results_dir: str | Path, name: str) -> None:
    """Write `results_dir/runs/<name>.json`: the `run_record` of every run in `runs` (nested dicts
    allowed) under its label. Returns nothing, so that a notebook cell ending with it echoes no path."""
    write_json(Path(results_dir) / "runs" / f"{name}.json",
               {label: run_record(run) for label, run in flatten_runs(runs).items()})


def export_records(records_file: str | Path) -> int:
    """Write the `run_record` of every training run this cache finished (not those it restored) to
    `records_file`, in the format of `write_run_records`, so that `restore_records` can carry them
    to another machine before the experiment that uses them is done. Returns how many."""
    records = {}
    for result_file in sorted((cache_root() / "runs" / "train").glob("*/result.json")):
        run = {**json.loads(result_file.read_text(encoding="utf-8")), "folder": str(result_file.parent)}
        if "restored_from" in run:
            continue
        records[f"{describe_run('train', run['spec'])} [{result_file.parent.name}]"] = run_record(run)
    write_json(records_file, records)
    return len(records)


def restore_records(records_file: str | Path) -> list[Path]:
    """Put the training runs of a `write_run_records` file into the run cache as finished, so that
    an experiment reads their recorded metrics instead of training them again (a fresh machine, a
    cache lost). Their models are not recorded: a later use of one (fine-tuning, a trained
    surrogate, an attention map) says so. Protections are skipped (their noise is not recorded),
    as are runs the cache already holds or is computing. Returns the folders written."""
    records_file = Path(records_file)
    records = json.loads(records_file.read_text(encoding="utf-8"))
    written = []
    for label, record in records.items():
        if record["kind"] != "train":
            continue
        folder = run_folder("train", record["spec"])
        if folder.name != record["key"]:
            raise ValueError(f"{records_file}: run {label!r} was recorded under key {record['key']}, but its spec "
                             f"keys {folder.name} now (recorded by another CODE_VERSION or spec format)")
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        write_json(folder / "spec.json", record["spec"])
        write_json(folder / "result.json", {**{k: v for k, v in record.items() if k != "key"},
                                            "restored_from": str(records_file)})
        written.append(folder)
    return written


def data_spec(data: str, image_size: int, max_train_images: int | None = None,
              max_test_images: int | None = None, named_faces: dict | None = None,
              evaluate_on: str = "test") -> dict:
    """What a run's data is. `named_faces` (the keyword arguments of `faces.load_named_faces`
    beyond folder, split and size) reads `data` as a face folder captioned from names.
    `evaluate_on: val` scores victims on the val split instead of test, for choosing settings
    (it enters the spec only then, so that the keys of runs scored on test stay as they were)."""
    if evaluate_on not in ("test", "val"):
        raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
    spec = {"data": data, "image_size": image_size, "max_train_images": max_train_images,
            "max_test_images": max_test_images, "named_faces": named_faces}
    return spec if evaluate_on == "test" else {**spec, "evaluate_on": evaluate_on}


def load_data(spec: dict, split: str) -> PairDataset:
    """One split of a run's data (decoded by rank 0 first when several processes share the cache);
    "test" is the split victims are scored on (val under `evaluate_on: val`)."""
    if split == "test":
        split = spec.get("evaluate_on", "test")
    with distributed.main_first():
        if spec.get("named_faces") is not None:
            return load_named_faces(spec["data"], split, spec["image_size"], progress=False, **spec["named_faces"])
        limit = spec["max_test_images"] if split in ("val", "test") else spec["max_train_images"]
        return load_split(spec["data"], split, spec["image_size"], max_images=limit, progress=False)


@planned
def training_run(data: dict, model: str, context_length: int, train: dict, *, protection: dict | None = None,
                 fraction: float = 1.0, pretrained: dict | None = None, seed: int | None = None,
                 defenses: list | None = None, progress: bool = True) -> dict:
    """Train a CLIP (from scratch, or from the `pretrained` training run) on the train split,
    protected by the `protection` run when given and then passed through the released-data
    `defenses` (`defenses.parse_defenses`; a dictionary filter's words come from the val split);
    logs clean-test retrieval every epoch. `seed` initialises the model (default: the training
    seed, which also seeds the batches and which protected rows a `fraction` picks)."""
    seed = TrainConfig(**train).seed if seed is None else seed
    spec = {"data": data, "model": model, "context_length": context_length, "train": train,
            "protection": protection and protection["spec"], "fraction": fraction,
            "pretrained": pretrained and pretrained["spec"], "seed": seed}
    if defenses:
        spec["defenses"] = parse_defenses(defenses)

    def compute(folder: Path) -> dict:
        clip = (run_model(pretrained) if pretrained else
                create_clip(model, image_size=data["image_size"], context_length=context_length, seed=seed))
        train_set = load_data(data, "train")
        if protection is not None:
            with distributed.main_first():
                train_set = protected_dataset(train_set, load_protection(protection), fraction, seed,
                                              images_file=folder / PROTECTED_IMAGES)
        if defenses:
            needs_reference = any(entry["name"] == "dictionary_filter" for entry in spec["defenses"])
            train_set = apply_defenses(train_set, spec["defenses"],
                                       load_data(data, "val").captions if needs_reference else None)
        length = model_context_length(clip)
        result = train_clip(clip, TokenizedPairs.from_dataset(train_set, length), TrainConfig(**train),
                            test=TokenizedPairs.from_dataset(load_data(data, "test"), length),
                            checkpoint_path=folder / CHECKPOINT_FILES["train"], progress=progress)
        if distributed.context().is_main:
            save_clip(result.model.cpu(), folder / "model.pt", meta={"spec": spec})
            (folder / CHECKPOINT_FILES["train"]).unlink(missing_ok=True)
            (folder / PROTECTED_IMAGES).unlink(missing_ok=True)
        return {"history": result.history, "final": result.history[-1], "seconds": result.seconds}

    return cached("train", spec, compute)


def pretrained_checkpoint(run: dict) -> Path:
    """The model file of a finished training run."""
    file = Path(run["folder"]) / "model.pt"
    if "restored_from" in run and not file.is_file():
        raise FileNotFoundError(f"{describe_run('train', run['spec'])}: restored from {run['restored_from']} "
                                f"without its model; remove {run['folder']} to train it again")
    return file


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


def protection_config(method: str, schedule: dict | None = None, **overrides) -> ProtectConfig:
    """`method`'s preset over the `schedule` shared by all methods, under `overrides`."""
    shared = {k: v for k, v in (schedule or {}).items() if k not in METHODS[method].preset}
    return method_config(method, **{**shared, **overrides})


@planned
def protection_run(data: dict, method: str, surrogate_model: str, context_length: int, *,
                   schedule: dict | None = None, surrogate: dict | None = None, progress: bool = True,
                   **overrides) -> dict:
    """Generate EM / UAP / MEM protection of the train split. `schedule` holds settings shared by
    all methods (the method's preset wins over them); `overrides` win over the preset. The
    surrogate starts from random initialisation, or from the `surrogate` training run (UAP/TAP
    need a clean-trained one)."""
    config = protection_config(method, schedule, **overrides)
    spec = {"data": data, "method": method, "config": config.keyed(), "surrogate_model": surrogate_model,
            "context_length": context_length, "surrogate": surrogate and surrogate["spec"]}

    def compute(folder: Path) -> dict:
        model = (run_model(surrogate) if surrogate else
                 create_clip(surrogate_model, image_size=data["image_size"], context_length=context_length,
                             seed=config.seed))
        protection = generate_protection(load_data(data, "train"), model, config,
                                         checkpoint_path=folder / CHECKPOINT_FILES["protect"], progress=progress)
        if distributed.context().is_main:
            save_torch(folder / "protection.pt", {"config": asdict(config), "noise": protection.noise,
                                                  "triggers": protection.triggers, "history": protection.history,
                                                  "seconds": protection.seconds})
            (folder / CHECKPOINT_FILES["protect"]).unlink(missing_ok=True)
        return {"history": protection.history, "seconds": protection.seconds}

    return cached("protect", spec, compute)


def load_protection(run: dict) -> Protection:
    """The `Protection` of a finished protection run."""
    state = torch.load(Path(run["folder"]) / "protection.pt", map_location="cpu", weights_only=True, mmap=True)
    return Protection(ProtectConfig(**state["config"]), state["noise"], state["triggers"], state["history"],
                      state["seconds"])


def method_variant(item: str) -> tuple[str, dict, str]:
    """"mem-3" or "mem-3(trigger_vocab: captions)" -> (method, protection overrides, label):
    ("mem-3", {}, "MEM-3"), ("mem-3", {"trigger_vocab": "captions"}, "MEM-3 (trigger_vocab: captions)")."""
    name, _, arguments = str(item).partition("(")
    name = name.strip()
    if name not in METHODS or (arguments and not arguments.endswith(")")):
        raise ValueError(f"method {item!r}: expected one of {list(METHODS)}, optionally with protection settings "
                         "in brackets, e.g. 'mem-3(trigger_vocab: captions)'")
    overrides = protection_overrides(arguments[:-1]) if arguments else {}
    label = METHODS[name].label + (f" ({settings_label(overrides)})" if overrides else "")
    return name, overrides, label


@planned
def method_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                methods: list[str], schedule: dict, progress: bool = True) -> dict[str, dict]:
    """Table 1's rows: the clean victim, and per method its protection and the victim trained on it.
    A method may carry protection settings (`method_variant`: "mem-3(trigger_vocab: captions)").
    Error-maximising methods (UAP, TAP) attack the clean victim itself as their surrogate."""
    if not isinstance(methods, list):
        raise ValueError(f"methods must be a list of {list(METHODS)}; got {methods!r}")
    variants = [method_variant(item) for item in methods]
    clean = training_run(data, victim_model, context_length, train, progress=progress)
    experiment = {"Clean": {"protection": None, "victim": clean}}
    for method, overrides, label in variants:
        surrogate = clean if METHODS[method].needs_trained_surrogate else None
        protection = protection_run(data, method, surrogate_model, context_length, schedule=schedule,
                                    surrogate=surrogate, progress=progress, **overrides)
        victim = training_run(data, victim_model, context_length, train, protection=protection, progress=progress)
        experiment[label] = {"protection": protection, "victim": victim}
    return experiment


@planned
def transfer_runs(data: dict, surrogate_model: str, context_length: int, train: dict, method: str, schedule: dict,
                  victim_models: list[str], progress: bool = True) -> dict:
    """Table 2's runs: `method`'s protection made on `surrogate_model`, and per victim architecture
    a victim trained on clean and one on protected data, as {"protection": run,
    architecture: {"clean": run, "protected": run}}."""
    protection = protection_run(data, method, surrogate_model, context_length, schedule=schedule, progress=progress)
    return {"protection": protection,
            **{victim: {"clean": training_run(data, victim, context_length, train, progress=progress),
                        "protected": training_run(data, victim, context_length, train, protection=protection,
                                                  progress=progress)}
               for victim in victim_models}}


@planned
def vocabulary_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                    methods: list[str], schedule: dict, method: str, mlm_path: str | None = None,
                    progress: bool = True) -> dict:
    """Table 3's runs: `method` with the free trigger vocabulary (Table 1's run) and with a
    semantic one (a local masked LM at `mlm_path`, else the training captions' words), each with
    its victim, beside Table 1's clean victim: {"Clean": run, "protection": {name: run},
    "victim": {name: run}}."""
    experiment = method_runs(data, victim_model, surrogate_model, context_length, train, methods, schedule, progress)
    label, restricted = METHODS[method].label, "mlm" if mlm_path else "captions"
    protections = {f"{label} free": experiment[label]["protection"],
                   f"{label} semantic ({restricted})": protection_run(
                       data, method, surrogate_model, context_length, schedule=schedule, progress=progress,
                       trigger_vocab=restricted, mlm_path=mlm_path)}
    return {"Clean": experiment["Clean"]["victim"], "protection": protections,
            "victim": {name: training_run(data, victim_model, context_length, train, protection=protection,
                                          progress=progress)
                       for name, protection in protections.items()}}


@planned
def fraction_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                  methods: list[str], schedule: dict, fraction_methods: list[str], fractions: list[float],
                  progress: bool = True) -> dict:
    """The poisoning-fraction runs: Table 1's clean victim, and per method in `fraction_methods`
    and fraction p a victim trained when a seeded p of the images carry Table 1's protection,
    as {"Clean": run, (label, p): run}."""
    experiment = method_runs(data, victim_model, surrogate_model, context_length, train, methods, schedule, progress)
    seed = TrainConfig(**train).seed
    return {"Clean": experiment["Clean"]["victim"],
            **{(METHODS[method].label, fraction): training_run(
                data, victim_model, context_length, train, protection=experiment[METHODS[method].label]["protection"],
                fraction=fraction, seed=seed, progress=progress)
               for method in fraction_methods for fraction in fractions}}


@planned
def defense_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                 methods: list[str], schedule: dict, released: list[str], training: list[str],
                 progress: bool = True) -> dict[str, dict[str, dict]]:
    """Victims under countermeasures, as {setting: {"Clean": run, method label: run}}: setting
    "none" holds `method_runs`' victims; then one setting per item of `released` (a released-data
    defense or chain, `defenses.parse_defenses`: "jpeg(quality: 30)") and per item of `training`
    (training-config overrides: "augment: strong, augment_views: 4")."""
    experiment = method_runs(data, victim_model, surrogate_model, context_length, train, methods, schedule, progress)
    protections = {label: entry["protection"] for label, entry in experiment.items() if entry["protection"]}
    settings = {"none": {label: entry["victim"] for label, entry in experiment.items()}}

    def victims(train_config: dict, defenses: list | None) -> dict[str, dict]:
        return {"Clean": training_run(data, victim_model, context_length, train_config, defenses=defenses,
                                      progress=progress),
                **{label: training_run(data, victim_model, context_length, train_config, protection=protection,
                                       defenses=defenses, progress=progress)
                   for label, protection in protections.items()}}

    for item in released:
        settings[defense_label(item)] = victims(train, parse_defenses(item))
    for item in training:
        overrides = parse_settings(item)
        defended = {**train, **overrides}
        TrainConfig(**defended)
        settings[settings_label(overrides)] = victims(defended, None)
    return settings


@planned
def collector_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                   methods: list[str], schedule: dict, released: list[str], training: list[str],
                   robust_methods: list[str], single_released: list[str], single_training: list[str],
                   persistence_data: dict, persistence_methods: list[str], persistence_epochs: int,
                   seed_method: str, seed_countermeasure: str, seeds: list[int], progress: bool = True) -> dict:
    """The careful collector's runs: {"methods": `method_runs` of `methods` (variants welcome:
    "mem-3(trigger_vocab: captions)"); "countermeasures": `defense_runs` of them under each of
    `released` and `training`; "single": `defense_runs` of `robust_methods` under each of
    `single_released` and `single_training`; "persistence": `method_runs` of `persistence_methods`
    on `persistence_data` with victims trained `persistence_epochs` epochs (each epoch's test
    metrics in their histories); "seeds": {"seed s": `defense_runs` of `seed_method` under
    `seed_countermeasure` alone, with seed s}}."""
    def under(methods_: list[str], released_: list[str], training_: list[str], seed: int | None = None) -> dict:
        seeded_train, seeded_schedule = (train, schedule) if seed is None else (
            {**train, "seed": seed}, {**schedule, "seed": seed})
        return defense_runs(data, victim_model, surrogate_model, context_length, seeded_train, methods_,
                            seeded_schedule, released_, training_, progress)

    return {"methods": method_runs(data, victim_model, surrogate_model, context_length, train, methods, schedule,
                                   progress),
            "countermeasures": under(methods, released, training),
            "single": under(robust_methods, single_released, single_training),
            "persistence": method_runs(persistence_data, victim_model, surrogate_model, context_length,
                                       {**train, "epochs": persistence_epochs}, persistence_methods, schedule,
                                       progress),
            "seeds": {f"seed {seed}": under([seed_method], [seed_countermeasure], [], seed) for seed in seeds}}


def protection_overrides(text: str) -> dict:
    """"noise_per: row, pgd_rows: all" -> protection settings, checked against `ProtectConfig`."""
    try:
        return check_protection_settings(parse_settings(text))
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None


@planned
def ablation_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
                  method: str, schedule: dict, flips: list[str], progress: bool = True) -> dict[str, dict]:
    """One protection of `method` per setting, each with the victim trained on it, as
    {"Clean": {"protection": None, "victim": clean run}, "default": {...}, flip label: {...}}.
    A flip is a string of protection settings that override the schedule and the method's
    preset ("noise_per: row, pgd_rows: all"); its label is that string, normalised."""
    parsed = [protection_overrides(item) for item in flips]
    clean = training_run(data, victim_model, context_length, train, progress=progress)
    experiment = {"Clean": {"protection": None, "victim": clean}}
    for label, overrides in {"default": {}, **{settings_label(o): o for o in parsed}}.items():
        protection = protection_run(data, method, surrogate_model, context_length, schedule=schedule,
                                    progress=progress, **overrides)
        victim = training_run(data, victim_model, context_length, train, protection=protection, progress=progress)
        experiment[label] = {"protection": protection, "victim": victim}
    return experiment


@planned
def seed_runs(data: dict, victim_model: str, surrogate_model: str, context_length: int, train: dict,
              methods: list[str], schedule: dict, transfer_method: str, transfer_victims: list[str],
              seeds: list[int], progress: bool = True) -> dict[str, dict]:
    """Tables 1 and 2 once per seed (the seed initialises the surrogate and the victims and
    orders their batches), as {"seed s": {"protections": {label: run},
    "victims": {architecture: {"Clean": run, label: run}}}}."""
    experiment = {}
    for seed in seeds:
        seeded_train, seeded_schedule = {**train, "seed": seed}, {**schedule, "seed": seed}
        table1 = method_runs(data, victim_model, surrogate_model, context_length, seeded_train, methods,
                             seeded_schedule, progress)
        protections = {label: entry["protection"] for label, entry in table1.items() if entry["protection"]}
        victims = {victim_model: {label: entry["victim"] for label, entry in table1.items()}}
        transfer_label = METHODS[transfer_method].label
        if transfer_label not in protections:
            protections[transfer_label] = protection_run(data, transfer_method, surrogate_model, context_length,
                                                         schedule=seeded_schedule, progress=progress)
        for victim in transfer_victims:
            victims.setdefault(victim, {})
            victims[victim]["Clean"] = training_run(data, victim, context_length, seeded_train, progress=progress)
            victims[victim][transfer_label] = training_run(data, victim, context_length, seeded_train,
                                                           protection=protections[transfer_label],
                                                           progress=progress)
        experiment[f"seed {seed}"] = {"protections": protections, "victims": victims}
    return experiment


@planned
def face_study_runs(pretrain_data: dict, face_data: dict, victim_models: list[str], surrogate_model: str,
                    context_length: int, pretrain: dict, finetune: dict, methods: list[str], schedule: dict,
                    checkpoints: dict[str, str] | None = None,
                    progress: bool = True) -> tuple[dict[str, dict[str, dict]], dict[str, dict]]:
    """Table 4's runs: per victim architecture, its pretrained model (a local checkpoint from
    `checkpoints`, else our own CLIP trained on `pretrain_data`), that model fine-tuned on clean
    face pairs, and fine-tuned on each method's protected pairs; and the protection runs per
    method label, made once, starting from the surrogate architecture's pretrained model."""
    checkpoints = checkpoints or {}

    def base(model: str) -> dict:
        if model in checkpoints:
            return checkpoint_run(checkpoints[model], model, face_data["image_size"], context_length)
        return training_run(pretrain_data, model, context_length, pretrain, progress=progress)

    bases = {model: base(model) for model in dict.fromkeys([surrogate_model, *victim_models])}
    protections = {METHODS[method].label: protection_run(face_data, method, surrogate_model, context_length,
                                                         schedule=schedule, surrogate=bases[surrogate_model],
                                                         progress=progress)
                   for method in methods}
    study = {}
    for model in victim_models:
        study[model] = {"Pretrained": bases[model],
                        "Fine-tuned": training_run(face_data, model, context_length, finetune,
                                                   pretrained=bases[model], progress=progress)}
        for label, protection in protections.items():
            study[model][label] = training_run(face_data, model, context_length, finetune, protection=protection,
                                               pretrained=bases[model], progress=progress)
    return study, protections


def main(argv: list[str] | None = None) -> int:
    """`python -m mmue_lib.runs FOLDER`: compute a cached run from its spec.json (what `processes`
    launches under torchrun; rank 0 prints and writes)."""
    folder, = argv if argv is not None else sys.argv[1:]
    if distributed.setup().distributed and not distributed.context().is_main:
        sys.stdout = open(os.devnull, "w")
    compute_from_folder(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
