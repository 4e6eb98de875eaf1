"""Execute the project's notebooks with papermill, each with its settings from `params/<scale>/`.

`python -m mmue_lib.notebooks --scale cpu [--only 02_table1 ...] [--part paper|extensions]
[--produces table|figure] [--set train.epochs=2 --set 'methods=[em, mem-3]'] [--output-root DIR]
[--plan]` injects `scale`, `overrides` and `output_root` into each notebook's parameters cell
(the notebook loads its settings with `settings.load_settings`, exactly as Run All in JupyterLab
does) and writes the executed notebook to `<output root>/executed/<scale>/`, its tables to
`results/<scale>/` and figures to `figures/<scale>/`. It first prints what it will run and about
how long that takes here (from `params/<scale>/run_hours.yaml`, for the runs the cache lacks);
`--plan` stops there. A notebook that fails does not stop the others; at the end it prints
each notebook's outcome, time and peak memory, and exits non-zero if any failed. `--set`
overrides a setting (a dotted key; the value is read as YAML) in every notebook that has it;
with overrides, write under another `--output-root` so that the committed results stay as they are.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import yaml
from papermill.exceptions import PapermillExecutionError

from . import progress
from .settings import PARAMS_DIR, SettingsError, applicable_overrides, load_settings, scales
from .storage import PROJECT_ROOT, write_text

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PARTS = {"paper": False, "extensions": True}
"""`--part`: the paper's artefacts (01-09) or the extensions (10-16), by the notebooks' `mmue.extension` flag."""


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def notebook_metadata(name: str) -> dict:
    """A notebook's `mmue` metadata: the files it writes (`outputs`), what it `produces`, `extension`."""
    return read_source(name).metadata.get("mmue", {})


def read_source(name: str):
    """A notebook as its source in git holds it (`notebooks/<name>.py`, jupytext's percent format):
    an nbformat notebook with its cells, tags and metadata, and no outputs."""
    import jupytext

    return jupytext.read(NOTEBOOK_DIR / f"{name}.py")


def parse_overrides(items: list[str]) -> dict:
    """["key=value", ...] (dotted keys, values in YAML: `fractions=[0.5]`) -> {key: value}."""
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE (e.g. train.epochs=2), got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def measured_hours(scale: str) -> dict[str, float]:
    """Hours each notebook adds when all run in order from an empty cache (`params/<scale>/run_hours.yaml`)."""
    path = PARAMS_DIR / scale / "run_hours.yaml"
    hours = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None) or {}
    names = notebook_names()
    for name, value in hours.items():
        if name not in names or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{path}: {name!r}: {value!r} is not a notebook's hours "
                                f"(a notebook name, e.g. {names[0]}, and a number)")
    return hours


def plan_lines(names: list[str], scale: str, overrides: dict[str, dict], output_root: Path) -> list[tuple[str, float | None]]:
    """What running `names` in turn will do: per notebook its runs, how many the cache (or an earlier
    notebook of the list) has, and about how long the rest take here. A run's time is its share of
    the measured hours of the first notebook (in the order 01, 02, ...) that needs it."""
    from .experiments import planned_runs

    hours = measured_hours(scale)
    plans = {name: planned_runs(load_settings(name, scale, overrides.get(name), output_root))
             for name in notebook_names()}
    run_hours, overhead, owned = {}, {}, set()
    for name, plan in plans.items():
        own = [folder for folder in (plan.runs if plan else []) if folder not in owned]
        owned.update(own)
        if name in hours:
            overhead[name] = 0.0 if own else hours[name]
            run_hours.update({folder: hours[name] / len(own) for folder in own})
    lines, planned = [], set()
    for name in names:
        plan = plans[name]
        if plan is None or not plan.runs:
            runs_text, new = "no training runs", []
        else:
            new = [folder for folder in plan.todo if folder not in planned]
            runs_text = f"{len(plan.runs)} runs, {len(plan.runs) - len(new)} in the cache or made by a notebook before it"
            planned.update(new)
        if name not in hours or any(folder not in run_hours for folder in new):
            lines.append((f"{name}: {runs_text}; time not measured at this scale", None))
            continue
        left = overhead[name] + sum(run_hours[folder] for folder in new)
        lines.append((f"{name}: {runs_text}; about {progress.duration(left * 3600)}", left))
    return lines


def descendants_resident_bytes() -> int:
    """Resident memory of this process's descendants together (a notebook's kernel and the runs
    it launches under torchrun)."""
    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakMemory:
    """The peak of `measure()` (bytes) while the block runs, sampled by a thread every `interval`
    seconds and once more at its end; `start_bytes` is the first sample."""

    def __init__(self, measure: Callable[[], int] = descendants_resident_bytes, interval: float = 0.5) -> None:
        self.measure, self.interval = measure, interval
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.measure())

    def __enter__(self) -> "PeakMemory":
        self.start_bytes = self.peak_bytes = self.measure()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.measure())


def notebook_parameters(scale: str, overrides: dict | None = None, output_root: Path = PROJECT_ROOT) -> dict:
    """What papermill injects into a notebook's parameters cell."""
    return {"scale": scale, "overrides": overrides or {},
            "output_root": None if Path(output_root) == PROJECT_ROOT else str(output_root)}


KERNEL = "mmue"
"""The kernel the notebooks name (`make install` registers it in the venv as "Python 3 (mmue)")."""


def kernel_name() -> str:
    """`KERNEL` where it is registered, else the environment's own `python3`."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(name: str, scale: str, overrides: dict | None = None, output_root: Path = PROJECT_ROOT) -> Path:
    """Execute one notebook at `scale`; returns the executed notebook's path."""
    import papermill

    import nbformat

    out = output_root / "executed" / scale / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.parent / f".{name}.source.ipynb"
    nbformat.write(read_source(name), source)
    try:
        papermill.execute_notebook(str(source), str(out), parameters=notebook_parameters(scale, overrides, output_root),
                                   kernel_name=kernel_name(), cwd=str(NOTEBOOK_DIR), progress_bar=False)
    finally:
        source.unlink(missing_ok=True)
        if out.exists():
            tidy_outputs(out, output_root, f"notebooks/{name}.py")
    return out


def tidy_outputs(path: Path, output_root: Path = PROJECT_ROOT, source: str | None = None) -> None:
    """Rewrite an executed notebook as a reader sees it in a terminal: each cell's consecutive
    stream outputs merged, and of a line redrawn with carriage returns (a progress bar) only its
    last state kept (nbconvert's `CoalesceStreamsPreprocessor`), where papermill stores every redraw;
    papermill's record of the input (`source`, the notebook in git) and the output relative to
    the project and `output_root`, so that no machine's folders show."""
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    notebook = nbformat.read(path, as_version=4)
    CoalesceStreamsPreprocessor().preprocess(notebook, {})
    record = notebook.metadata.get("papermill", {})
    if source and "input_path" in record:
        record["input_path"] = source
    for key, root in (("input_path", PROJECT_ROOT), ("output_path", output_root)):
        if record.get(key) and Path(record[key]).is_relative_to(root):
            record[key] = Path(record[key]).relative_to(root).as_posix()
    write_text(path, nbformat.writes(notebook) + "\n")


ASK_ABOVE_HOURS = 1.0
"""Above this many planned hours (or where the plan cannot say), the runner asks before it starts."""


def confirmed(question: str) -> bool:
    """The answer to a yes/no question on the terminal; no when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        print(f"{question} (no terminal to ask on: pass --yes, or YES=1 to make)", flush=True)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", required=True, choices=scales())
    parser.add_argument("--only", nargs="*", help="notebook names (without .py or .ipynb)")
    parser.add_argument("--part", choices=sorted(PARTS), help="the paper's artefacts (01-09) or the extensions (10-16)")
    parser.add_argument("--produces", choices=["table", "figure"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (dotted key, YAML value) in every notebook that has it")
    parser.add_argument("--output-root", type=Path, default=PROJECT_ROOT,
                        help="folder that receives executed/, results/ and figures/")
    parser.add_argument("--plan", action="store_true", help="print what would run and how long, and stop")
    parser.add_argument("--yes", action="store_true",
                        help=f"start without asking, even when the plan says more than {ASK_ABOVE_HOURS:g} h or "
                             f"cannot say (make repro YES=1)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as error:
        parser.error(str(error))
    names = args.only or notebook_names()
    unknown = sorted(set(names) - set(notebook_names()))
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; known: {notebook_names()}")
    if args.part:
        names = [n for n in names if bool(notebook_metadata(n).get("extension")) == PARTS[args.part]]
    if args.produces:
        names = [n for n in names if args.produces in notebook_metadata(n).get("produces", [])]
    output_root = args.output_root.resolve()
    try:
        per_notebook = {name: applicable_overrides(name, args.scale, overrides) for name in names}
        unused = sorted(set(overrides) - {key for chosen in per_notebook.values() for key in chosen})
        if unused:
            parser.error(f"--set {unused}: no chosen notebook has such a setting at {args.scale}")
        lines = plan_lines(names, args.scale, per_notebook, output_root)
    except SettingsError as error:
        parser.error(str(error))
    print(f"[{args.scale}] will run {len(names)} notebook(s) into {output_root}:")
    for line, _ in lines:
        print(f"  {line}")
    known = [left for _, left in lines if left is not None]
    if known:
        print(f"  in all about {progress.duration(sum(known) * 3600)} on this kind of machine"
              f"{'' if len(known) == len(lines) else ' for the notebooks with a measured time'}; "
              "runs are cached, so a stopped run resumes where it was", flush=True)
    if args.plan:
        return 0
    unknown = len(known) < len(lines)
    if (unknown or sum(known) > ASK_ABOVE_HOURS) and not args.yes and not confirmed(
            f"start {'computing whose time is not measured' if unknown else f'about {progress.duration(sum(known) * 3600)} of computing'}?"):
        print(f"[{args.scale}] nothing started; make plan says what it would run, YES=1 (--yes) starts without "
              "asking", flush=True)
        return 1
    measured = []
    for name in names:
        started = time.perf_counter()
        print(f"[{args.scale}] {name} ...", flush=True)
        with PeakMemory() as memory:
            try:
                out, outcome = run_notebook(name, args.scale, per_notebook[name], output_root), "done"
            except PapermillExecutionError as error:
                out, outcome = f"{error.ename}: {error.evalue} (cell {error.exec_count})", "FAILED"
        seconds, peak = time.perf_counter() - started, memory.peak_bytes / 2 ** 30
        measured.append((name, outcome, seconds, peak))
        print(f"[{args.scale}] {name} {outcome} in {progress.duration(seconds)}, peak memory {peak:.1f} GiB -> {out}",
              flush=True)
    print(f"[{args.scale}] time and peak memory (the kernel and the runs it launched) per notebook:")
    for name, outcome, seconds, peak in measured:
        print(f"  {name:<24} {outcome:<6} {progress.duration(seconds):>10} {peak:6.1f} GiB")
    failed = [name for name, outcome, _, _ in measured if outcome == "FAILED"]
    if failed:
        print(f"[{args.scale}] {len(failed)} notebook(s) failed: {', '.join(failed)} (their executed copies show "
              f"the error under the failing cell)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def notebook_title(notebook) -> str:
    """The first Markdown heading of a notebook (its title), else an empty string."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def write_report(scale: str, executed_root: Path = PROJECT_ROOT, site: Path = PROJECT_ROOT / "site") -> Path:
    """A static HTML site of the executed notebooks of `scale` (nbconvert's lab template, figures
    embedded): one page per notebook under `site/<scale>/` and an index linking them with their
    titles; returns the index."""
    import html

    import nbformat
    from nbconvert import HTMLExporter

    folder = executed_root / "executed" / scale
    names = [name for name in notebook_names() if (folder / f"{name}.ipynb").is_file()]
    if not names:
        raise FileNotFoundError(f"no executed notebooks in {folder}: make repro SCALE={scale} writes them")
    exporter = HTMLExporter(template_name="lab")
    rows = []
    for name in names:
        notebook = nbformat.read(folder / f"{name}.ipynb", as_version=4)
        body, _ = exporter.from_notebook_node(notebook)
        write_text(site / scale / f"{name}.html", body)
        rows.append(f'<li><a href="{scale}/{name}.html">{html.escape(name)}</a>: '
                    f"{html.escape(notebook_title(notebook))}</li>")
    missing = [name for name in notebook_names() if name not in names]
    note = (f"<p>Not executed at this scale yet: {html.escape(', '.join(missing))}.</p>" if missing else "")
    index = site / "index.html"
    write_text(index, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mmue: executed notebooks"
                      f"</title></head><body><h1>mmue: the executed notebooks at scale {scale}</h1>"
                      f"<p>Multimodal Unlearnable Examples, reproduced: every table and figure as the notebooks "
                      f"computed them.</p><ol>{''.join(rows)}</ol>{note}</body></html>\n")
    return index
