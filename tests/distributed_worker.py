"""What tests/test_distributed.py runs under `torchrun` (and in one process for reference):
`distributed_worker.py train|protect OUT [CHECKPOINT]` trains ViT-tiny on a synthetic set,
or protects one with MEM-3, and rank 0 saves the outcome to OUT."""
from __future__ import annotations

import sys

import torch

from mmue_lib import distributed
from mmue_lib.data import make_synthetic_dataset
from mmue_lib.models import create_clip
from mmue_lib.methods import method_config
from mmue_lib.protect import generate_protection
from mmue_lib.train import TokenizedPairs, TrainConfig, train_clip

TRAIN = TrainConfig(epochs=6, batch_size=16, device="cpu")
PROTECT = method_config("mem-3", pgd_steps=2, max_rounds=2, surrogate_steps=3, trigger_search_rounds=1,
                        trigger_top_k=2, batch_size=16, trigger_per="image", search_rows="one_per_image",
                        reshuffle="batch", stop_loss=None, device="cpu")


def train(checkpoint: str | None) -> dict:
    data = TokenizedPairs.from_dataset(make_synthetic_dataset(64, 32, seed=1), 32)
    test = TokenizedPairs.from_dataset(make_synthetic_dataset(32, 32, seed=2), 32)
    model = create_clip("ViT-tiny", image_size=32, context_length=32, seed=0)
    result = train_clip(model, data, TRAIN, test=test, checkpoint_path=checkpoint, progress=False)
    return {"parameters": [p.detach().clone() for p in model.parameters()], "history": result.history}


def protect(checkpoint: str | None) -> dict:
    model = create_clip("ViT-tiny", image_size=32, context_length=32, seed=0)
    protection = generate_protection(make_synthetic_dataset(48, 32, seed=1), model, PROTECT,
                                     checkpoint_path=checkpoint, progress=False)
    return {"noise": protection.noise, "triggers": protection.triggers, "history": protection.history}


if __name__ == "__main__":
    task, out, *checkpoint = sys.argv[1:]
    with distributed.process_group("cpu") as ctx:
        outcome = {"train": train, "protect": protect}[task](checkpoint[0] if checkpoint else None)
        if ctx.is_main:
            torch.save({**outcome, "world_size": ctx.world_size}, out)
    assert not torch.distributed.is_initialized(), "the process group outlived its block"
