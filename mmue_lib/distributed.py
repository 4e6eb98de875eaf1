"""Several processes through `torch.distributed`, as launched by `torchrun` (gloo on CPU, NCCL on CUDA).

Conventions, as open_clip_train's: a process learns its rank and the world size from torchrun's
environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`); every rank draws the same global batch from the
same seeded generator and trains on its contiguous share; the contrastive loss is open_clip's
`ClipLoss` over the global batch with features gathered with their gradients, so the gradient
equals one process's on the whole batch; rank 0 alone writes files. In one process every helper
here is a no-op and the library computes exactly as before.
"""
from __future__ import annotations

import os
import shlex
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place among the processes of a run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """The current process group's rank and size (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str = "auto") -> torch.device:
    """The device a `device` setting names: "auto" is the GPU where CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(device: str = "auto") -> Context:
    """Join torchrun's process group once (NCCL when CUDA serves the run, else gloo) and give each
    process its own GPU (`LOCAL_RANK`); outside torchrun, nothing to do."""
    if not launched_by_torchrun() or dist.is_initialized():
        return context()
    use_cuda = torch.cuda.is_available() and resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    return context()


@contextmanager
def process_group(device: str = "auto"):
    """Join torchrun's process group for the block (see `setup`) and leave it after: when the block
    completes, every rank waits for the others (rank 0 may still be writing), then the group is
    destroyed, so that no rank exits with gloo's threads running (which aborts it). A group joined
    before the block is left to whoever joined it. Outside torchrun, `setup`'s context and nothing else."""
    joins = launched_by_torchrun() and not dist.is_initialized()
    ctx = setup(device)
    completed = False
    try:
        yield ctx
        completed = True
    finally:
        if joins and dist.is_initialized():
            if completed:
                dist.barrier()
            dist.destroy_process_group()


def shard(rows: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
    """This rank's contiguous share of a global batch of rows (the whole batch in one process). A
    batch that does not divide evenly (a dataset smaller than one batch) loses its last rows, so
    that every rank holds as many (the gathered features must have one shape)."""
    ctx = ctx or context()
    if not ctx.distributed:
        return rows
    usable = len(rows) - len(rows) % ctx.world_size
    return rows[:usable].tensor_split(ctx.world_size)[ctx.rank]


def check_batch_size(batch_size: int, ctx: Context | None = None) -> None:
    """Refuse a global batch that cannot be split evenly across the processes."""
    ctx = ctx or context()
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} cannot be split evenly across {ctx.world_size} processes: "
                         f"choose a multiple of {ctx.world_size}")


def gathered_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's features on every rank, with gradients flowing back to their ranks
    (open_clip's `gather_features`); unchanged in one process."""
    ctx = context()
    if not ctx.distributed:
        return image_features, text_features
    from open_clip.loss import gather_features

    with _quiet_gather():
        return gather_features(image_features, text_features, gather_with_grad=True, rank=ctx.rank,
                               world_size=ctx.world_size)


def global_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """open_clip's `ClipLoss` over the global batch (features gathered with gradients; every rank
    gets the whole batch's loss). `logit_scale` is the model's parameter (log scale)."""
    from open_clip.loss import ClipLoss

    ctx = context()
    loss = ClipLoss(gather_with_grad=True, rank=ctx.rank, world_size=ctx.world_size)
    with _quiet_gather():
        return loss(torch.nn.functional.normalize(image_features, dim=-1),
                    torch.nn.functional.normalize(text_features, dim=-1), logit_scale.exp())


@contextmanager
def _quiet_gather():
    """Hide torch's FutureWarning about `torch.distributed.nn.all_gather`, which open_clip's loss calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        yield


def barrier() -> None:
    if context().distributed:
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. decoding images into the shared cache), the others after it."""
    ctx = context()
    if not ctx.is_main:
        barrier()
    yield
    if ctx.is_main:
        barrier()


def broadcast_rows(tensor: torch.Tensor, rows_by_rank: Sequence[torch.Tensor]) -> None:
    """Make `tensor[rows_by_rank[r]]` on every rank what rank r holds there (each rank computed
    its own rows); in place. Rows of different ranks must not overlap."""
    ctx = context()
    if not ctx.distributed:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    for source, rows in enumerate(rows_by_rank):
        if not len(rows):
            continue
        values = tensor[rows].contiguous().to(device)
        dist.broadcast(values, src=source)
        tensor[rows] = values.to(tensor.device)


def gather_objects(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    ctx = context()
    if not ctx.distributed:
        return list(items)
    everyone: list = [None] * ctx.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def torchrun_command(nproc: int, module: str, arguments: Sequence[str]) -> list[str]:
    """The command that runs `python -m module arguments` in `nproc` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *arguments]


def torchrun_environment(nproc: int) -> dict[str, str]:
    """This process's environment for a `torchrun_command`, with each process's thread count set
    (the CPU's cores shared among the processes) unless OMP_NUM_THREADS already says it."""
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return {**os.environ, "OMP_NUM_THREADS": threads}


def describe(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
