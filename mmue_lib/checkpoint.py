"""Resume after a kill: the state a long run (training, protection) saves after each epoch or
round, and the check that a saved state belongs to the run that finds it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .distributed import barrier, context
from .storage import save_torch


class Checkpoint:
    """The resume state of one run in one file (`path` None: the run is not resumable). `load`
    returns what a killed run saved, after `differences` found nothing that sets it apart from
    this run; `save` writes atomically from rank 0 and waits for every process."""

    def __init__(self, path: str | os.PathLike | None, what: str) -> None:
        self.path = None if path is None else Path(path)
        self.what = what

    def load(self, differences: Callable[[dict], list[str]], map_location: str | torch.device = "cpu") -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=map_location, weights_only=True)
        found = differences(state)
        if found:
            raise ValueError(f"{self.path}: checkpoint of another {self.what} ({'; '.join(found)}); "
                             "remove it or change the path")
        return state

    def save(self, state: dict) -> None:
        if self.path is not None and context().is_main:
            save_torch(self.path, state)
        barrier()


def setting_differences(saved: dict, now: dict, free: tuple[str, ...] = ()) -> list[str]:
    """Settings that differ between a saved run and this one, in words ('eps 8 saved, 16 now'),
    but those in `free` (which a rerun may change, such as more rounds)."""
    return [f"{key} {saved.get(key)!r} saved, {value!r} now" for key, value in now.items()
            if key not in free and saved.get(key) != value]
