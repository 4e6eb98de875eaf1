"""Execute the project's notebooks with papermill, one flat YAML params file per notebook and scale.

`python -m mmue_lib.notebooks --scale smoke [--only 01_data_overview] [--produces table]
[--set epochs=2 --set 'methods=[em, mem-3]'] [--output-root DIR]`
runs `notebooks/<name>.ipynb` with `params/<scale>/shared.yaml` (the experiment that several
notebooks share) and `params/<scale>/<name>.yaml` into `executed/<scale>/`, and points the
notebook at `results/<scale>/` and `figures/<scale>/` for its outputs. `--set` overrides a
parameter (the value is read as YAML) in every notebook that declares it; with overrides,
write under another `--output-root` so that the committed results stay as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from .storage import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "params"


def load_params(path: str | Path) -> dict:
    """A flat YAML mapping of scalars (or lists of scalars); anything nested is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: params must be a mapping of name: value")
    scalar = (str, int, float, bool, type(None))
    for key, value in params.items():
        if isinstance(value, list) and all(isinstance(v, scalar) for v in value):
            continue
        if not isinstance(value, scalar):
            raise ValueError(f"{path}: key '{key}' is nested; params files are flat")
    return params


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def declared_parameters(name: str) -> set[str]:
    """Names assigned in the notebook's `parameters` cell."""
    cells = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return {line.split("=", 1)[0].strip() for line in source.splitlines() if "=" in line and not line.startswith("#")}


def notebook_params(name: str, scale: str) -> dict:
    """`params/<scale>/shared.yaml` (the experiment several notebooks share; only the keys this
    notebook declares) under `params/<scale>/<name>.yaml`."""
    shared_file = PARAMS_DIR / scale / "shared.yaml"
    shared = load_params(shared_file) if shared_file.is_file() else {}
    declared = declared_parameters(name)
    return {**{k: v for k, v in shared.items() if k in declared}, **load_params(PARAMS_DIR / scale / f"{name}.yaml")}


def notebook_produces(name: str) -> list[str]:
    """What a notebook writes ('table', 'figure'), from its `mmue.produces` metadata."""
    metadata = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8")).get("metadata", {})
    return metadata.get("mmue", {}).get("produces", [])


def parse_overrides(items: list[str]) -> dict:
    """["key=value", ...] (values in YAML: `fractions=[0.5]`) -> {key: value}."""
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_notebook(name: str, scale: str, overrides: dict | None = None, output_root: Path = PROJECT_ROOT) -> Path:
    """Execute one notebook at `scale`; returns the executed notebook's path."""
    import papermill

    params = notebook_params(name, scale)
    params.update({"scale": scale,
                   "results_dir": str(output_root / "results" / scale),
                   "figures_dir": str(output_root / "figures" / scale)})
    params.update({k: v for k, v in (overrides or {}).items() if k in declared_parameters(name)})
    out = output_root / "executed" / scale / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=params,
                               kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", required=True, choices=sorted(p.name for p in PARAMS_DIR.iterdir() if p.is_dir()))
    parser.add_argument("--only", nargs="*", help="notebook names (without .ipynb)")
    parser.add_argument("--produces", choices=["table", "figure"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (YAML value) in every notebook that declares it")
    parser.add_argument("--output-root", type=Path, default=PROJECT_ROOT,
                        help="folder that receives executed/, results/ and figures/")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as error:
        parser.error(str(error))
    names = args.only or notebook_names()
    unknown = sorted(set(names) - set(notebook_names()))
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; known: {notebook_names()}")
    if args.produces:
        names = [n for n in names if args.produces in notebook_produces(n)]
    for name in names:
        started = time.perf_counter()
        print(f"[{args.scale}] {name} ...", flush=True)
        out = run_notebook(name, args.scale, overrides, args.output_root.resolve())
        print(f"[{args.scale}] {name} done in {time.perf_counter() - started:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
