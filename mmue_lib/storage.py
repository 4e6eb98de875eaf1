"""Where data and caches live, and atomic writes (nothing is ever half-written)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from dataclasses import fields
from typing import Any, Callable, Iterator

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


def data_root() -> Path:
    """Root of the real datasets: `$MMUE_DATA`, else `../shared/data` beside the project."""
    env = os.environ.get("MMUE_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


def cache_root() -> Path:
    """Root of on-disk caches (decoded images, runs): `$MMUE_CACHE`, else `~/.cache/mmue`."""
    env = os.environ.get("MMUE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mmue"


def shown_path(path: str | os.PathLike) -> str:
    """`path` as printed in outputs that others read: the home folder as `~`."""
    path, home = Path(path), Path.home()
    return f"~/{path.relative_to(home).as_posix()}" if path.is_relative_to(home) else str(path)


def expand_path(value: str | os.PathLike) -> Path:
    """Expand `$MMUE_DATA`, `$MMUE_CACHE`, other environment variables and `~` in a path."""
    text = str(value)
    text = text.replace("$MMUE_DATA", str(data_root())).replace("${MMUE_DATA}", str(data_root()))
    text = text.replace("$MMUE_CACHE", str(cache_root())).replace("${MMUE_CACHE}", str(cache_root()))
    return Path(os.path.expanduser(os.path.expandvars(text)))


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short hex digest of a JSON-serialisable object (keys sorted), used as a cache key."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def keyed_settings(config: Any) -> dict:
    """A settings dataclass as a cache key sees it (the one key policy of every run): each field,
    except those named in the class's `OPTIONAL_KEYS`, which enter only when set away from their
    default. Fields added after runs were keyed go there, so old keys stay valid; two ways of
    writing the same settings ({epochs: 8} and {epochs: 8, lr: <the default>}) give one key."""
    optional = getattr(type(config), "OPTIONAL_KEYS", ())
    return {field.name: getattr(config, field.name) for field in fields(config)
            if field.name not in optional or getattr(config, field.name) != field.default}


def seeded_generator(seed: int, stream: int = 0, rank: int = 0, world_size: int = 1) -> torch.Generator:
    """The random stream number `stream` of a run seeded `seed`, for process `rank` of
    `world_size` (epochs, rounds and steps each draw their own stream, so a resumed run draws
    exactly what an uninterrupted one would). The one way seeds are mixed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * world_size + rank)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def mapped_uint8(path: str | os.PathLike, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> torch.Tensor:
    """The uint8 array of `shape` in the `.npy` file `path`, memory-mapped copy-on-write (writing to
    the tensor never reaches the file). A missing file is made first: `fill(array)` writes straight
    into a memory-mapped temporary file, which replaces `path` only once it is complete."""
    path = Path(path)
    if not path.is_file():
        with atomic_path(path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            fill(array)
            array.flush()
            del array
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


CODE_PATHS = ("mmue_lib", "params", "pyproject.toml")
"""What a run's result depends on in the project tree, for `provenance`'s `git_dirty`."""


def provenance(device: str) -> dict:
    """Where a result came from: the project's git commit (and whether the library, params or
    pyproject had local changes), the versions of mmue, torch, Python and the packages that decide
    pixels and models, the device (as `distributed.resolve_device` names it) and its name, the thread count
    and the process count. Floats differ a little across CPUs and package versions, so the same
    spec can end at a slightly different MedR elsewhere."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS) if commit else None

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes), "mmue": package("mmue"),
            "torch": torch.__version__, "python": platform.python_version(),
            "packages": {name: package(name) for name in ("open_clip_torch", "pillow", "numpy")},
            "device": device, "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda")
            else _cpu_name(), "threads": torch.get_num_threads(), "processes": int(os.environ.get("WORLD_SIZE", "1"))}


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the machine type."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
