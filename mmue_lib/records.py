"""Run records: what a results folder keeps of the runs behind its tables (`results/<scale>/runs/`),
and how they travel between caches (`mmue runs --export` / `--restore`), so that a fresh machine
or a lost cache need not recompute what is committed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from .cache import KINDS, being_computed, describe_run, run_folder
from .storage import cache_root, write_json


def run_record(run: dict) -> dict:
    """What a results folder keeps of a run: kind, cache key, spec (every parameter and seed),
    seconds, peak memory, log and final metrics. A local checkpoint standing in for a run has only its spec."""
    record = {"kind": run.get("kind", "checkpoint"), "key": Path(run["folder"]).name if "folder" in run else None,
              "spec": run["spec"]}
    kept = ("seconds", "peak_rss_bytes", "peak_gpu_bytes", "final", "history", "provenance", "generator_seconds",
            "noise_seconds", "noise_ms_per_image", "corpus_images")
    return {**record, **{k: run[k] for k in kept if k in run}}


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
    allowed) under its label, and of the T2UE generator each protection was made with, where the
    cache holds its result (`<label> / generator`). Returns nothing, so that a notebook cell ending
    with it echoes no path."""
    flat = flatten_runs(runs)
    for label, run in list(flat.items()):
        generator = run.get("spec", {}).get("generator")
        result_file = run_folder("generator", generator) / "result.json" if generator else None
        if result_file is not None and result_file.is_file():
            flat[f"{label} / generator"] = {**json.loads(result_file.read_text(encoding="utf-8")),
                                            "folder": str(result_file.parent)}
    write_json(Path(results_dir) / "runs" / f"{name}.json", {label: run_record(run) for label, run in flat.items()})


def _restorable() -> list[str]:
    return [name for name, kind in KINDS.items() if kind.restorable]


def export_records(records_file: str | Path, keys: set[str] | None = None) -> int:
    """Write the `run_record` of every restorable run (every kind) this cache finished (not those
    it restored) to `records_file`, in the format of `write_run_records`, so that `restore_records`
    can carry them to another machine before the experiment that uses them is done; with `keys`, only
    the runs whose cache key is one of them (a notebook's). The records an existing `records_file`
    holds of other runs are kept (those a session restored from it among them), so that exporting
    at the end of each session grows one file. Returns how many runs were written from this cache."""
    records_file = Path(records_file)
    records = {}
    for kind in _restorable():
        for result_file in sorted((cache_root() / "runs" / kind).glob("*/result.json")):
            run = {**json.loads(result_file.read_text(encoding="utf-8")), "folder": str(result_file.parent)}
            if "restored_from" not in run and (keys is None or result_file.parent.name in keys):
                records[f"{describe_run(kind, run['spec'])} [{result_file.parent.name}]"] = run_record(run)
    fresh = {record["key"] for record in records.values()}
    kept = json.loads(records_file.read_text(encoding="utf-8")) if records_file.is_file() else {}
    write_json(records_file, {**{label: record for label, record in kept.items() if record.get("key") not in fresh},
                              **records})
    return len(records)


def restore_records(records_file: str | Path) -> list[Path]:
    """Put the restorable runs of a `write_run_records` file into the run cache as finished, so that
    an experiment reads their recorded metrics and costs instead of computing them again (a fresh
    machine, a cache lost). Their files are not recorded: a protection's noise or a generator is
    computed again where a victim still to train needs it (`runs.artifact`); a later use of a model
    (fine-tuning, a trained surrogate, an attention map) says so. Runs the cache already holds or a
    process is computing are skipped; a run folder without a result (a computation, or a remaking
    of a restored run's files, that was killed) gets its record, its checkpoints kept for the next
    remaking. Returns the folders written."""
    records_file = Path(records_file)
    records = json.loads(records_file.read_text(encoding="utf-8"))
    restorable, written = _restorable(), []
    for label, record in records.items():
        if record["kind"] not in restorable:
            continue
        folder = run_folder(record["kind"], record["spec"])
        if folder.name != record["key"]:
            raise ValueError(f"{records_file}: run {label!r} was recorded under key {record['key']}, but its spec "
                             f"keys {folder.name} now (recorded by another CODE_VERSION or spec format)")
        if (folder / "result.json").is_file() or being_computed(folder):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "spec.json", record["spec"])
        write_json(folder / "result.json", {**{k: v for k, v in record.items() if k != "key"},
                                            "restored_from": str(records_file)})
        written.append(folder)
    return written
