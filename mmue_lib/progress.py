"""Progress of long runs: one text bar per run, named after the run ("run 3/5: MEM-3 seed 0
against RN-small, flickr8k 64 px"), with its own time left.

Bars are plain text on stdout: in JupyterLab they update in place and leave one finished line
(no widget, no red stderr box), in a terminal they behave as usual, and in a log file (nohup, CI)
they are written at most every `LOG_INTERVAL` seconds.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from tqdm import tqdm

LOG_INTERVAL = 30.0
"""Seconds between bar updates when stdout is not a terminal or a notebook."""

_LABEL: ContextVar[str | None] = ContextVar("mmue run label", default=None)


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Bars opened inside this block are named `label`."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def bar(total: int, unit: str, desc: str | None = None, enabled: bool = True, initial: int = 0) -> tqdm:
    """A text bar over `total` steps, described by the current run's label and `desc`."""
    label = _LABEL.get()
    description = ": ".join(part for part in (label, desc) if part)
    interactive = sys.stdout.isatty() or _in_notebook()
    return tqdm(total=total, initial=initial, unit=unit, desc=description, disable=not enabled, file=sys.stdout,
                leave=label is not None, mininterval=0.5 if interactive else LOG_INTERVAL,
                dynamic_ncols=sys.stdout.isatty())


def duration(seconds: float) -> str:
    """"42 s", "17 min", "2.3 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
