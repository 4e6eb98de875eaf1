"""The output folder of `mmue protect`, checked before any compute so that no photo is lost and
nothing fails late: an `--out` that is a file, holds or sits inside a folder of input photos, is
not writable or lacks room is refused. Its manifest lists what the protector wrote there, all
that `--force` may remove. The resumable state lives outside it, in the cache: it holds the
exact noise and triggers, the key that removes the protection, and a published folder must not.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .data import DataError
from .storage import cache_root, stable_hash, write_json

MANIFEST = ".mmue-protect.json"
"""The list of files `mmue protect` wrote in its output folder."""


def state_path(out: Path) -> Path:
    """Where the resumable state of a protection into `out` lives: in the cache, outside `out`."""
    return cache_root() / "protect-state" / f"{stable_hash(str(out.resolve()))[:16]}.ckpt"


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def mib(count: int) -> str:
    return f"{count / 2 ** 20:,.0f} MiB" if count >= 2 ** 20 else f"{count / 2 ** 10:,.0f} KiB"


def check_output_folder(out: Path, photos: list[Path], lines: list[int], csv_path: Path) -> None:
    """Refuse an `--out` that is a file, cannot be written, holds an input photo or lies inside
    the folder of one (where --force or a rerun could reach the originals)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: give a folder (it is created if missing)")
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise DataError(f"--out {out}: {existing} is a file, so the folder cannot be created")
    resolved = out.resolve()
    for photo, line in zip(photos, lines):
        folder = photo.resolve().parent
        where = f"{photo} ({csv_path}, line {line})"
        if resolved == folder or resolved in folder.parents:
            raise DataError(f"--out {out} holds the photo {where}: choose a folder outside it, for example "
                            f"{resolved.parent / (resolved.name + '-protected')}, so that no photo is overwritten")
        if folder in resolved.parents:
            raise DataError(f"--out {out} is inside {folder}, the folder of the photo {where}: choose a folder "
                            f"beside it, for example {folder.parent / (folder.name + '-protected')}")
    try:
        handle, name = tempfile.mkstemp(prefix=".mmue-write-check.", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise DataError(f"--out {out}: cannot write in {existing} ({error.strerror}): choose a folder you can "
                        f"write to") from error


def check_room(folder: Path, need: int, what: str) -> None:
    """Refuse to start when the disk holding `folder` has less than `need` bytes free."""
    existing = nearest_existing(folder)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise DataError(f"{what} need about {mib(need)} in {existing}, whose disk has {mib(free)} free: "
                        f"make room there or choose another --out")


def read_manifest(out: Path) -> list[str] | None:
    """The files an earlier `mmue protect` wrote in `out` (relative POSIX paths), or None."""
    try:
        return list(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _leftover(relative: str, ours: set[str]) -> bool:
    """Whether `relative` is a temporary file that a kill left beside one of `ours` (`.NAME.*.tmp`)."""
    path = Path(relative)
    if not (path.name.startswith(".") and path.name.endswith(".tmp")):
        return False
    return any(Path(name).parent == path.parent and path.name.startswith(f".{Path(name).name}.") for name in ours)


def prepare_output(out: Path, planned: list[str], force: bool, resuming: bool) -> None:
    """Make `out` ready before any compute and list `planned` (relative paths) in its manifest.
    A folder holding files that no manifest lists is refused untouched. An earlier output is
    removed file by file with `force`, kept when `resuming` an interrupted run of the same
    protection, and otherwise refused."""
    listed = read_manifest(out) if out.is_dir() else None
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
    ours = set(listed or ()) | {MANIFEST}
    foreign = sorted(name for name in present if name not in ours and not _leftover(name, ours))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"--out {out} holds {shown}, which mmue protect did not write there (no {MANIFEST} lists "
                        f"{'them' if len(foreign) > 1 else 'it'}): choose another --out; --force only removes "
                        f"what mmue protect wrote")
    earlier = present - {MANIFEST}
    if earlier and not force and not resuming:
        raise DataError(f"--out {out} holds an earlier mmue protect output ({len(earlier)} files): pass --force to "
                        f"replace it, or choose another --out")
    if force:
        for name in sorted(earlier):
            (out / name).unlink()
        for folder in sorted({(out / name).parent for name in earlier}, key=lambda p: len(p.parts), reverse=True):
            while folder != out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    _write_manifest(out, set(planned) | (set() if force else earlier))


def add_to_manifest(out: Path, names: list[str]) -> None:
    """List `names` (relative paths) in `out`'s manifest before they are written."""
    _write_manifest(out, set(read_manifest(out) or ()) | set(names))


def _write_manifest(out: Path, names: set[str]) -> None:
    write_json(out / MANIFEST, {"written_by": "mmue protect", "files": sorted(names),
                                "note": "the files mmue protect wrote in this folder: --force removes these, "
                                        "and nothing else"})
