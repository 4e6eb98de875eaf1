"""Experiment settings: `params/<scale>/` is the one place where their values live.

`load_settings("02_table1", "cpu", {"train.epochs": 2})` reads `params/cpu/shared.yaml` (the
experiment several notebooks share), then `params/cpu/02_table1.yaml` (what is particular to
the notebook; a section there, such as `data: {max_train_images: 2000}`, merges into the
shared one), then the overrides (dotted keys, or nested mappings), and returns a `Settings`.
Notebooks call it with the `scale` and `overrides` of their parameters cell, and so does the
papermill runner (`mmue_lib.notebooks`): Run All in JupyterLab and `make nb` run the same
experiment, under the same cache keys.

A params file:

    data: {path: $MMUE_DATA/flickr8k, image_size: 64, max_train_images: null, max_test_images: null}
    paper_dataset: flickr8k        # whose published numbers stand beside ours
    context_length: 32
    victim_model: RN-small
    surrogate_model: RN-small
    methods: [em, uap, mem-3, mem-5]
    seed: 0                        # seeds the training runs and the protections
    device: auto
    nproc: 1                       # processes per run (above 1: torchrun, DDP)
    train: {epochs: 8, ...}        # `TrainConfig` fields
    protect: {schedule: calibrated, ...}   # a named schedule (`methods.SCHEDULES`), `ProtectConfig` fields over it
    example_count: 4               # anything else: the notebook's own options

A scale can be built on another: `params/gpu-smoke/shared.yaml` says `extends: paper` and sets
only what differs (the slice), so the paper's values stay written once.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from .storage import PROJECT_ROOT

PARAMS_DIR = PROJECT_ROOT / "params"

DATA_KEYS = ("path", "image_size", "max_train_images", "max_test_images")
SHARED_KEYS = ("data", "paper_dataset", "context_length", "victim_model", "surrogate_model", "methods", "seed",
               "device", "nproc", "train", "protect")
"""The sections of `shared.yaml`, the same at every scale; a notebook file may set any of them."""

EXTENDS = "extends"
"""In a scale's shared.yaml: the scale it is built on (`extends: paper`), whose values it changes."""

SEEDED = ("seed", "device")
"""Top-level settings that both the training runs and the protections take."""


class SettingsError(ValueError):
    """A params file or override that cannot describe an experiment; says which file or key."""


class Options(dict):
    """A notebook's own options (`settings.options.example_count`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no option '{name}' in the params of this notebook; options: {sorted(self)}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a notebook's experiment depends on, resolved from `params/<scale>/`."""

    notebook: str
    scale: str
    data: dict
    """`runs.data_spec` of the shared experiment's data."""
    paper_dataset: str
    context_length: int
    victim_model: str
    surrogate_model: str
    methods: list
    seed: int
    device: str
    nproc: int
    """Processes per run: above 1, each run the cache lacks is computed under torchrun (DDP)."""
    train: dict
    """The training settings of every victim (`TrainConfig` fields), seed and device included."""
    schedule: dict
    """The protection settings shared by every method (`ProtectConfig` fields), the named schedule resolved."""
    schedule_name: str
    options: Options
    output_root: Path
    sources: tuple = field(default=(), compare=False)

    @property
    def results_dir(self) -> Path:
        return self.output_root / "results" / self.scale

    @property
    def figures_dir(self) -> Path:
        return self.output_root / "figures" / self.scale

    def train_with(self, overrides: Mapping) -> dict:
        """The victims' training settings under `overrides` (e.g. a fine-tuning schedule)."""
        return _checked_train({**self.train, **overrides}, "train_with")

    def schedule_with(self, overrides: Mapping) -> dict:
        """The shared protection settings under `overrides` (`ProtectConfig` fields)."""
        from .methods import check_protection_settings

        try:
            return {**self.schedule, **check_protection_settings(dict(overrides))}
        except ValueError as error:
            raise SettingsError(f"schedule_with: {error}") from None

    def named_schedule(self, name: str) -> dict:
        """The protection settings of another named schedule (`methods.SCHEDULES`) as they stand,
        with this experiment's seed and device (none of this scale's `protect` changes)."""
        from .methods import schedule_settings

        try:
            return {**schedule_settings(name), **{key: self.schedule[key] for key in SEEDED}}
        except ValueError as error:
            raise SettingsError(f"named_schedule: {error}") from None

    def _repr_markdown_(self) -> str:
        from .methods import METHODS

        data = self.data
        limits = ", ".join(f"first {data[key]} {split} images" for key, split in
                           (("max_train_images", "train"), ("max_test_images", "val/test")) if data[key])
        lines = [f"**{self.notebook} at scale `{self.scale}`** (from {', '.join(self.sources)})", "",
                 f"- data: `{data['data']}` at {data['image_size']} px{f' ({limits})' if limits else ''}; "
                 f"the paper's numbers for {self.paper_dataset}",
                 f"- victim {self.victim_model}, surrogate {self.surrogate_model}, context {self.context_length}, "
                 f"seed {self.seed}, device {self.device}{f', {self.nproc} processes per run' if self.nproc > 1 else ''}",
                 f"- methods: {', '.join(METHODS[m].label for m in self.methods)}",
                 f"- training: {_inline(self.train, SEEDED)}",
                 f"- protection: schedule `{self.schedule_name}` ({_inline(self.schedule, SEEDED)})"]
        if self.options:
            lines.append(f"- this notebook: {_inline(self.options)}")
        root = "" if self.output_root == PROJECT_ROOT else " under `output_root`"
        lines.append(f"- results to `{self.results_dir.relative_to(self.output_root)}`, figures to "
                     f"`{self.figures_dir.relative_to(self.output_root)}`{root}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Settings({self.notebook!r}, scale {self.scale!r}, from {' + '.join(self.sources)})"


def _inline(mapping: Mapping, skip: tuple = ()) -> str:
    return ", ".join(f"{key} {value}" for key, value in mapping.items() if key not in skip)


def _checked_train(train: dict, where: str) -> dict:
    from .train import TrainConfig

    try:
        TrainConfig(**train)
    except TypeError as error:
        raise SettingsError(f"{where}: {error}; training settings are `TrainConfig` fields") from None
    except ValueError as error:
        raise SettingsError(f"{where}: {error}") from None
    return train


def scales() -> list[str]:
    return sorted(p.name for p in PARAMS_DIR.iterdir() if (p / "shared.yaml").is_file())


def read_params_file(path: Path) -> dict:
    """A params YAML file as a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise SettingsError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(params, dict):
        raise SettingsError(f"{path}: params must be a mapping of name: value")
    return params


def merge(base: dict, update: Mapping) -> dict:
    """`update` over `base`, mappings merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _open_sections() -> dict[str, set]:
    """Sections whose keys may be set even when no params file names them: dataclass fields."""
    from .methods import ProtectConfig
    from .train import TrainConfig

    return {"train": {f.name for f in fields(TrainConfig)} - set(SEEDED),
            "protect": ({f.name for f in fields(ProtectConfig)} | {"schedule"}) - set(SEEDED)}


def known_keys(params: Mapping, prefix: str = "") -> set[str]:
    """Every dotted key an override may set in `params`."""
    keys = set()
    open_sections = _open_sections() if not prefix else {}
    for key, value in params.items():
        keys.add(prefix + key)
        if isinstance(value, Mapping):
            keys |= known_keys(value, f"{prefix}{key}.")
        if key in open_sections:
            keys |= {f"{key}.{name}" for name in open_sections[key]}
    return keys


def nested_overrides(overrides: Mapping) -> dict:
    """{"train.epochs": 2, "data": {"image_size": 32}} -> {"train": {"epochs": 2}, "data": {"image_size": 32}}."""
    nested: dict = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested


def flat_keys(nested: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys that a nested overrides mapping sets."""
    keys = []
    for key, value in nested.items():
        if isinstance(value, Mapping) and value:
            keys += flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + str(key))
    return keys


def base_scale(scale: str) -> str | None:
    """The scale that `scale` extends (`extends:` in its shared.yaml), or None."""
    return read_params_file(PARAMS_DIR / scale / "shared.yaml").get(EXTENDS)


def notebook_params(notebook: str, scale: str, _seen: tuple = ()) -> tuple[dict, list[Path]]:
    """`params/<scale>/shared.yaml` under `params/<scale>/<notebook>.yaml`, and the files read.

    A scale whose shared.yaml says `extends: <base>` starts from everything the base resolves to
    for the notebook; its shared.yaml and its (optional) notebook file then go over that."""
    folder = PARAMS_DIR / scale
    if not folder.is_dir():
        raise SettingsError(f"unknown scale '{scale}': no folder {folder}; scales: {', '.join(scales())}")
    shared_file, own_file = folder / "shared.yaml", folder / f"{notebook}.yaml"
    shared = read_params_file(shared_file)
    base = shared.pop(EXTENDS, None)
    unknown = [key for key in shared if key not in SHARED_KEYS]
    if base is not None:
        if base == scale or base in _seen or not (PARAMS_DIR / str(base) / "shared.yaml").is_file():
            raise SettingsError(f"{shared_file}: extends {base!r}, which is not another scale; scales: "
                                f"{', '.join(s for s in scales() if s != scale)}")
        if unknown:
            raise SettingsError(f"{shared_file}: unknown {unknown} (the shared sections are {', '.join(SHARED_KEYS)})")
        params, files = notebook_params(notebook, base, (*_seen, scale))
        own = read_params_file(own_file) if own_file.is_file() else {}
        return merge(merge(params, shared), own), [*files, shared_file, *([own_file] if own_file.is_file() else [])]
    missing = [key for key in SHARED_KEYS if key not in shared]
    if missing or unknown:
        raise SettingsError(f"{shared_file}: " + "; ".join(
            part for part in (missing and f"missing {missing}", unknown and f"unknown {unknown}") if part)
            + f" (the shared sections are {', '.join(SHARED_KEYS)})")
    return merge(shared, read_params_file(own_file)), [shared_file, own_file]


def applicable_overrides(notebook: str, scale: str, overrides: Mapping) -> dict:
    """The part of `overrides` (dotted keys) whose keys this notebook's params have."""
    params, _ = notebook_params(notebook, scale)
    known = known_keys(params)
    return {key: value for key, value in overrides.items() if key in known}


def load_settings(notebook: str, scale: str = "smoke", overrides: Mapping | None = None,
                  output_root: str | os.PathLike | None = None) -> Settings:
    """The settings of `notebook` at `scale` under `overrides` (dotted keys such as "train.epochs",
    or nested mappings); results and figures go under `output_root` (default: the project)."""
    from .methods import METHODS, protection_config, schedule_settings
    from .runs import data_spec

    params, files = notebook_params(notebook, scale)
    sources = tuple(os.path.relpath(path, PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else str(path)
                    for path in files)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise SettingsError(f"overrides must be a mapping such as {{'train.epochs': 2}}, got {overrides!r}")
        known = known_keys(params)
        unknown = [key for key in flat_keys(nested_overrides(overrides)) if key not in known]
        if unknown:
            raise SettingsError(f"override(s) {unknown} match no setting of {notebook} at {scale}; "
                                f"settings: {', '.join(sorted(known))}")
        params = merge(params, nested_overrides(overrides))
        sources += ("overrides",)
    where = " + ".join(sources)

    data = params["data"]
    if not isinstance(data, Mapping) or sorted(data) != sorted(DATA_KEYS):
        raise SettingsError(f"{where}: data must have exactly {', '.join(DATA_KEYS)}; got {data!r}")
    methods = params["methods"]
    if not isinstance(methods, list) or any(m not in METHODS for m in methods):
        raise SettingsError(f"{where}: methods must be a list of {', '.join(METHODS)}; got {methods!r}")
    for section in ("train", "protect"):
        if not isinstance(params[section], Mapping):
            raise SettingsError(f"{where}: {section} must be a mapping of settings")
        clashes = [key for key in SEEDED if key in params[section]]
        if clashes:
            raise SettingsError(f"{where}: set {clashes} at the top level, not in {section} (both runs take them)")
    seeded = {key: params[key] for key in SEEDED}
    train = _checked_train({**params["train"], **seeded}, where)
    protect = dict(params["protect"])
    schedule_name = protect.pop("schedule", "official")
    try:
        schedule = {**schedule_settings(schedule_name, **protect), **seeded}
        for method in methods:
            protection_config(method, schedule)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{where}: protect: {error}") from None

    nproc = params["nproc"]
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise SettingsError(f"{where}: nproc must be a whole number of processes, got {nproc!r}")
    batch_sizes = {"train.batch_size": train.get("batch_size"), "protect.batch_size": schedule.get("batch_size")}
    uneven = [f"{key} {size}" for key, size in batch_sizes.items() if size and size % nproc]
    if uneven:
        raise SettingsError(f"{where}: nproc {nproc} must divide {', '.join(uneven)} (each batch is split evenly)")
    options = Options({key: value for key, value in params.items() if key not in SHARED_KEYS})
    return Settings(notebook=notebook, scale=scale,
                    data=data_spec(data["path"], data["image_size"], data["max_train_images"], data["max_test_images"]),
                    paper_dataset=params["paper_dataset"], context_length=params["context_length"],
                    victim_model=params["victim_model"], surrogate_model=params["surrogate_model"], methods=methods,
                    seed=params["seed"], device=params["device"], nproc=nproc, train=train, schedule=schedule,
                    schedule_name=schedule_name, options=options,
                    output_root=Path(output_root).resolve() if output_root else PROJECT_ROOT, sources=sources)
