"""The checks a machine with a GPU runs in one go (about 10 minutes on one H100-class GPU).

    mmue shrink --data $MMUE_DATA/flickr8k --out /tmp/f8k224 --size 224 --max-images 1000 \\
                --max-test-images 500 --format jpeg                    # on the machine that has the data
    python benchmarks/gpu_check.py --data /tmp/f8k224                 # on the GPU machine
    python benchmarks/gpu_check.py --data /tmp/f8k224 --quick --device cpu   # the script's own smoke test

Prints, one block each:
1. CUDA against CPU at smoke scale: the same RN-tiny victim (synthetic set, 32 px, fp32 on both)
   trained on each; per-epoch losses and final MedR. Stated tolerance: losses within 1e-3
   relative (cuBLAS/cuDNN sum in other orders than the CPU), MedR within 2.
2. Trainer throughput: `train.train_clip` against a bare open_clip loop (`model(images, texts)`,
   `ClipLoss`, AdamW) on the same batches, RN50 at 224 px, fp32 and bf16 autocast; pairs/s, ratio.
3. MEM-3 generation (calibrated schedule, RN50 surrogate at 224 px, the 1,000-image slice) against
   one victim training run (RN50, 8 epochs, one caption per image), in fp32 and in bf16 autocast:
   minutes each, the ratio, and the peak GPU memory of each.
4. Where there are two GPUs or more: the same victim under `mmue train --nproc 2` (DDP, NCCL)
   against one GPU: pairs/s and final MedR.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from mmue_lib.data import load_split, make_synthetic_dataset
from mmue_lib.models import create_clip, model_context_length, normalize_pixels
from mmue_lib.methods import SCHEDULES, protection_config
from mmue_lib.protect import generate_protection
from mmue_lib.train import TokenizedPairs, TrainConfig, epoch_batches, to_device, train_clip

LOSS_TOLERANCE = 1e-3
MEDR_TOLERANCE = 2


def peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_against_cpu(device: torch.device, epochs: int) -> None:
    pairs = TokenizedPairs.from_dataset(make_synthetic_dataset(400, 32, seed=0), 32)
    test = TokenizedPairs.from_dataset(make_synthetic_dataset(100, 32, seed=2), 32)
    logs = {}
    for name in ("cpu", device.type):
        config = TrainConfig(epochs=epochs, batch_size=50, lr=2e-3, warmup_steps=4, rows_per_epoch="one_per_image",
                             device=name)
        model = create_clip("RN-tiny", image_size=32, context_length=32, seed=0)
        logs[name] = train_clip(model, pairs, config, test=test, progress=False).history
    cpu, other = logs["cpu"], logs[device.type]
    losses_agree = all(abs(a["train_loss"] - b["train_loss"]) <= LOSS_TOLERANCE * abs(a["train_loss"])
                       for a, b in zip(cpu, other))
    medr_agree = all(abs(cpu[-1][key] - other[-1][key]) <= MEDR_TOLERANCE for key in ("i2t_MedR", "t2i_MedR"))
    print(f"[1] {device.type} against cpu, RN-tiny 32 px, {epochs} epochs: losses cpu "
          f"{[round(h['train_loss'], 4) for h in cpu]}, {device.type} {[round(h['train_loss'], 4) for h in other]}; "
          f"MedR cpu {cpu[-1]['i2t_MedR']:.0f}/{cpu[-1]['t2i_MedR']:.0f}, {device.type} "
          f"{other[-1]['i2t_MedR']:.0f}/{other[-1]['t2i_MedR']:.0f}; "
          f"{'SAME' if losses_agree and medr_agree else 'DIFFERENT'} within losses {LOSS_TOLERANCE:g} relative, "
          f"MedR {MEDR_TOLERANCE}", flush=True)


def bare_seconds(model: torch.nn.Module, pairs: TokenizedPairs, config: TrainConfig, device: torch.device) -> float:
    """One epoch of the same batches through open_clip's plain forward / ClipLoss / backward / step."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(config.beta1, config.beta2), eps=config.eps)
    loss_fn = open_clip.ClipLoss()
    bf16 = config.precision == "bf16" and device.type == "cuda"
    reset_peak(device)
    started = time.perf_counter()
    for rows in epoch_batches(pairs, config, 0):
        images = normalize_pixels(to_device(pairs.images[pairs.row_image[rows]], device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features, logit_scale = model(images, to_device(pairs.tokens[rows], device))
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def throughput(pairs: TokenizedPairs, model_name: str, size: int, batch_size: int, device: torch.device) -> None:
    initial = create_clip(model_name, image_size=size, seed=0)
    for precision in ("fp32", "bf16"):
        config = TrainConfig(epochs=1, batch_size=batch_size, rows_per_epoch="one_per_image", device=str(device),
                             precision=precision)
        pairs_per_epoch = len(epoch_batches(pairs, config, 0)) * batch_size
        bare_seconds(copy.deepcopy(initial), pairs, config, device)  # warm-up: cuDNN autotuning, allocator
        bare = bare_seconds(copy.deepcopy(initial), pairs, config, device)
        reset_peak(device)
        ours = train_clip(copy.deepcopy(initial), pairs, config, progress=False).history[-1]["train_seconds"]
        print(f"[2] {model_name} {size} px batch {batch_size} {precision}: ours {pairs_per_epoch / ours:.0f} pairs/s, "
              f"bare open_clip {pairs_per_epoch / bare:.0f} pairs/s, ours / bare = {bare / ours:.2f}; "
              f"peak GPU memory {peak_memory_gib(device):.1f} GiB", flush=True)


def generation_against_victim(pairs: TokenizedPairs, dataset, model_name: str, size: int, victim_epochs: int,
                              batch_size: int, device: torch.device) -> None:
    for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
        config = protection_config("mem-3", SCHEDULES["calibrated"], batch_size=batch_size, device=str(device),
                                   precision=precision)
        reset_peak(device)
        started = time.perf_counter()
        protection = generate_protection(dataset, create_clip(model_name, image_size=size, seed=0), config,
                                         progress=False)
        protect_seconds, protect_memory = time.perf_counter() - started, peak_memory_gib(device)
        reset_peak(device)
        victim = TrainConfig(epochs=victim_epochs, batch_size=batch_size, rows_per_epoch="one_per_image",
                             device=str(device), precision=precision)
        victim_seconds = train_clip(create_clip(model_name, image_size=size, seed=0), pairs, victim,
                                    progress=False).seconds
        print(f"[3] MEM-3 calibrated on {dataset.num_images} images, {model_name} {size} px, {precision}: "
              f"{protect_seconds / 60:.1f} min (losses {[round(h['noise_loss'], 2) for h in protection.history]}), "
              f"peak GPU memory {protect_memory:.1f} GiB; one victim of {victim_epochs} epochs "
              f"{victim_seconds / 60:.1f} min, peak {peak_memory_gib(device):.1f} GiB; generation / victim = "
              f"{protect_seconds / victim_seconds:.2f}", flush=True)


def two_gpus(data: Path, model_name: str, epochs: int, batch_size: int) -> None:
    if torch.cuda.device_count() < 2:
        print(f"[4] DDP: skipped, {torch.cuda.device_count()} GPU(s)", flush=True)
        return
    finals = {}
    with tempfile.TemporaryDirectory() as folder:
        for nproc in (1, 2):
            out = Path(folder) / str(nproc)
            command = [sys.executable, "-m", "mmue_lib.cli", "train", "--csv", str(data / "train.csv"),
                       "--test-csv", str(data / "test.csv"), "--out", str(out), "--model", model_name,
                       "--epochs", str(epochs), "--batch-size", str(batch_size), "--rows-per-epoch", "one_per_image",
                       "--nproc", str(nproc)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            history = json.loads((out / "metrics.json").read_text())["history"]
            finals[nproc] = (history[-1], min(h["train_seconds"] for h in history))
    (one, one_seconds), (two, two_seconds) = finals[1], finals[2]
    print(f"[4] DDP {model_name}, batch {batch_size}: 2 GPUs {one_seconds / two_seconds:.2f}x one GPU's speed; "
          f"final MedR one {one['i2t_MedR']:.0f}/{one['t2i_MedR']:.0f}, two {two['i2t_MedR']:.0f}/{two['t2i_MedR']:.0f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of train.csv / test.csv (the 224 px slice)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script itself, on any device")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, size, batch, images, epochs = ("RN-tiny", 32, 16, 64, 1) if args.quick else ("RN50", 224, 128, 1000, 8)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.cuda.device_count()} GPU(s)", flush=True)
    cuda_against_cpu(device, 1 if args.quick else 4)
    train_set = load_split(str(args.data), "train", size, max_images=images, progress=False)
    pairs = TokenizedPairs.from_dataset(train_set, model_context_length(create_clip(model, image_size=size)))
    throughput(pairs, model, size, batch, device)
    generation_against_victim(pairs, train_set, model, size, epochs, batch, device)
    two_gpus(Path(args.data), model, 1 if args.quick else 2, batch)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
