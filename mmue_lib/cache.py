"""The run cache: experiments computed once and kept on disk, keyed by every parameter they depend on.

A run of a registered kind (`register`; the kinds themselves live in `runs`) lives in
`$MMUE_CACHE/runs/<kind>/<key>/` with `spec.json`, its artifacts and, written last,
`result.json`. The key hashes the run's spec, which embeds the specs of the runs it uses, so a
changed parameter recomputes exactly what depends on it. An interrupted run resumes from its own
checkpoint. Before an experiment computes anything, a dry pass (`planning`) lists its runs, so
that progress can say "run 3 of 5" and how long the rest may take; `processes` computes runs
under torchrun. The engine knows nothing of what a kind computes.
"""
from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Callable

import torch

from . import distributed, progress
from .storage import cache_root, provenance, shown_path, stable_hash, write_json

CODE_VERSION = 1
"""Bump when a library change makes cached results stale."""

TORCHRUN_MODULE = "mmue_lib.runs"
"""The module torchrun starts to compute one run from its folder (it registers the kinds)."""


@dataclass(frozen=True)
class RunKind:
    """What the engine needs to know of a kind of run."""

    noun: str
    """What a run of the kind is called in progress lines ("protection", "training run")."""
    describe: Callable[[dict], str]
    """One line saying what the run of a spec is."""
    recompute: Callable[[dict], dict]
    """Compute the run of a spec (in this process or as a torchrun rank), returning the run."""
    settings_section: str
    """The spec entry holding the run's settings (their `device` names where it runs)."""
    checkpoint_file: str
    """The file in its folder an unfinished run resumes from."""
    saved_progress: Callable[[dict, dict], str]
    """How far a run of a spec got, from its saved checkpoint state ("epoch 3 of 8 saved")."""
    timing: Callable[[dict], dict]
    """What of a spec decides how long its run takes (runs that agree take about as long)."""
    warning: Callable[[dict, dict], str | None] = lambda spec, result: None
    """What is wrong with a finished run's result, once, after the experiment that made it."""
    restorable: bool = False
    """Whether a run record of this kind may stand in for the run (`records.restore_records`): it
    holds the run's metrics and cost; its files are computed again where they are needed."""


KINDS: dict[str, RunKind] = {}
"""The run kinds, filled by `register`."""


def register(name: str, kind: RunKind) -> None:
    KINDS[name] = kind


def run_kind(name: str) -> RunKind:
    if name not in KINDS:
        raise KeyError(f"no run kind {name!r} is registered (import mmue_lib.runs); known: {', '.join(KINDS)}")
    return KINDS[name]


def run_folder(kind: str, spec: dict) -> Path:
    return cache_root() / "runs" / kind / stable_hash({"kind": kind, "spec": spec, "version": CODE_VERSION})


def describe_run(kind: str, spec: dict) -> str:
    return run_kind(kind).describe(spec)


def timing_group(kind: str, spec: dict) -> str:
    """Runs expected to take about as long as each other: the same kind and `RunKind.timing`."""
    return stable_hash({"kind": kind, **run_kind(kind).timing(spec)})


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
_PROCESSES: ContextVar[int] = ContextVar("mmue run processes", default=1)


def cached(kind: str, spec: dict, compute: Callable[[Path], dict]) -> dict:
    """`result.json` of the run of `kind` with `spec`, computing it (into its folder) if needed.
    In a dry pass (`planning`) nothing is computed: the run is noted, and returned as its spec and folder."""
    run_kind(kind)
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
        with run_lock(folder):
            if not result_file.is_file():
                _compute(kind, spec, folder, compute, plan)
    result = {**json.loads(result_file.read_text(encoding="utf-8")), "folder": str(folder)}
    if plan:
        plan.results[folder] = result
    return result


_HELD: set[Path] = set()
"""The run folders whose lock this process holds (`run_lock` is re-entrant within a process)."""


@contextmanager
def run_lock(folder: Path):
    """Hold the run's lock while it is computed (or its files made again), so that another process
    (a second notebook, a test worker) that asks for the same run waits and then reads its result
    instead of computing it too. Re-entrant in one process; the operating system releases the lock
    of a killed process. Ranks of a torchrun job compute together: the process that launched them
    holds the lock."""
    if distributed.context().distributed or folder in _HELD:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _HELD.add(folder)
        try:
            yield
        finally:
            _HELD.discard(folder)
            fcntl.flock(lock, fcntl.LOCK_UN)


def being_computed(folder: Path) -> bool:
    """Whether a process holds the run's lock (`run_lock`): it is computing the run or making its
    files again."""
    if folder in _HELD:
        return True
    lock_file = folder.parent / f".{folder.name}.lock"
    if not lock_file.is_file():
        return False
    with open(lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def _compute(kind: str, spec: dict, folder: Path, compute: Callable[[Path], dict], plan: Plan | None) -> None:
    """Compute the run into `folder` (in `processes`' count of processes), its result.json last."""
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
            _reset_peak_memory()
            computed = compute(folder)
            if main:
                device = spec[KINDS[kind].settings_section].get("device", "auto")
                write_json(folder / "result.json", {"kind": kind, "spec": spec, **computed, **_peak_memory(),
                                                    "provenance": provenance(str(distributed.resolve_device(device)))})
            distributed.barrier()
    if plan:
        plan.record(folder, time.perf_counter() - started)


def _reset_peak_memory() -> None:
    """Measure this process's peak resident memory afresh from here (Linux), and the GPU's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> dict:
    """This process's peak resident memory since `_reset_peak_memory`, in bytes (None where the
    system does not say), and the GPU's peak allocation where there is one: what a run cost in memory,
    the process's own footprint (Python, torch, decoded data) included."""
    peak = None
    try:
        peak = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return {"peak_rss_bytes": peak, **({"peak_gpu_bytes": torch.cuda.max_memory_allocated()}
                                       if torch.cuda.is_available() else {})}


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
    command = distributed.torchrun_command(count, TORCHRUN_MODULE, [str(folder)])
    with subprocess.Popen(command, env=distributed.torchrun_environment(count), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as child:
        for chunk in iter(lambda: child.stdout.read1(4096), b""):
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    if child.returncode or not (folder / "result.json").is_file():
        raise RuntimeError(f"the run in {folder} failed in {count} processes (exit {child.returncode}): "
                           f"{distributed.describe(command)}")


def compute_from_folder(folder: Path) -> dict:
    """Compute (in this process, or as a rank of torchrun) the run whose spec.json is in `folder`,
    through its kind's `recompute`; its result."""
    kind, spec = folder.parent.name, json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    _PLAN.set(Plan(dry=False))  # the launching process has planned, numbered and will warn
    result = run_kind(kind).recompute(spec)
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
    then run, numbering the runs it computes; afterwards print what is wrong with any run it computed
    (`RunKind.warning`), once, where it was computed: a notebook reading it from the cache does not
    repeat it. Nested experiment calls join the outer plan."""

    @wraps(function)
    def run(*args, **kwargs):
        if _PLAN.get() is not None:
            return function(*args, **kwargs)
        plan = planning(function, *args, **kwargs)
        kinds = [plan.runs[folder][0] for folder in plan.todo]
        if plan.todo:
            counts = " and ".join(f"{kinds.count(name)} {kind.noun}(s)" for name, kind in KINDS.items())
            print(f"{len(plan.runs)} runs: {len(plan.runs) - len(plan.todo)} from the cache, {counts} to compute "
                  f"(cache: {shown_path(cache_root() / 'runs')})", flush=True)
        plan.dry = False
        token = _PLAN.set(plan)
        try:
            result = function(*args, **kwargs)
        finally:
            _PLAN.reset(token)
        if not plan.todo:
            print(f"all {len(plan.runs)} runs from the cache ({shown_path(cache_root() / 'runs')})", flush=True)
        for folder in plan.todo:
            kind, spec = plan.runs[folder]
            warning = KINDS[kind].warning(spec, plan.results[folder])
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        return result

    return run


def saved_progress(kind: str, spec: dict, folder: Path) -> str:
    """How far an unfinished run has got, from its checkpoint."""
    checkpoint = folder / run_kind(kind).checkpoint_file
    if not checkpoint.is_file():
        return "no checkpoint yet"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return KINDS[kind].saved_progress(spec, state)


def cache_status(kind: str | None = None) -> list[dict]:
    """Every run under `$MMUE_CACHE/runs` (only `kind`, if given), in the order they were last
    started: kind, key, what it is, its state (done, restored from records, or how far an
    interrupted or running one has saved) and, once done, its seconds and, for a training run,
    final MedR (else None)."""
    rows = []
    spec_files = (cache_root() / "runs").glob(f"{kind or '*'}/*/spec.json")
    for spec_file in sorted(spec_files, key=lambda path: path.stat().st_mtime):
        folder, run_kind_name = spec_file.parent, spec_file.parent.parent.name
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        final = result.get("final", {})
        rows.append({"kind": run_kind_name, "key": folder.name, "run": describe_run(run_kind_name, spec),
                     "state": ("restored" if "restored_from" in result else "done") if result
                     else saved_progress(run_kind_name, spec, folder),
                     "seconds": result.get("seconds"), "i2t_MedR": final.get("i2t_MedR"),
                     "t2i_MedR": final.get("t2i_MedR")})
    return rows
