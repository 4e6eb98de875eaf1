"""Several processes (torchrun, gloo, one thread each) compute what one process computes.

Tolerances: two processes sum the gradient of each half batch and average them (DDP), where one
process takes the gradient of the whole batch in one pass; the sums differ in the last bits of
fp32, and Adam, which divides by the gradient's running RMS, carries such differences into
parameters at ~1e-3 relative after a hundred steps. Losses agree to 1e-4 relative and retrieval
metrics within one query; the protection's int8 noise and its triggers agree on all but a
1e-3 share (its PGD and trigger search run the same batches on the same surrogate, split by batch).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmue_lib import cache, runs
from mmue_lib.cli import main as mmue

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402


def run_worker(task: str, out: Path, checkpoint: Path | None = None, wait: bool = True):
    """The worker's `task` in two processes under torchrun (what rank 0 saved), or the running process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               task, str(out)] + ([str(checkpoint)] if checkpoint else [])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=environment, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def two_process_training(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    return run_worker("train", folder / "two.pt", folder / "two.ckpt")


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path, two_process_training):
    one = distributed_worker.train(None)
    two = two_process_training
    assert two["world_size"] == 2
    one_query = 100 / 32
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for key in a:
            if "_R@" in key:
                assert abs(a[key] - b[key]) <= one_query + 1e-6, key
    for a, b in zip(one["parameters"], two["parameters"]):
        assert float((a - b).abs().max()) <= 1e-2 * float(a.abs().max()) + 1e-6


@pytest.mark.slow
def test_killed_two_process_training_resumes_to_the_same_result(tmp_path, two_process_training):
    checkpoint = tmp_path / "killed.ckpt"
    process = run_worker("train", tmp_path / "killed.pt", checkpoint, wait=False)
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] + 1 < len(two_process_training["history"]), "the run ended before it was killed"
    resumed = run_worker("train", tmp_path / "resumed.pt", checkpoint)
    for a, b in zip(resumed["parameters"], two_process_training["parameters"]):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in two_process_training["history"]]


@pytest.mark.slow
def test_two_processes_protect_as_one(tmp_path):
    one = distributed_worker.protect(None)
    two = run_worker("protect", tmp_path / "two.pt")
    assert float((one["noise"] != two["noise"]).float().mean()) <= 1e-3
    assert float((one["triggers"] != two["triggers"]).float().mean()) <= 1e-3
    for a, b in zip(one["history"], two["history"]):
        assert a["noise_loss"] == pytest.approx(b["noise_loss"], rel=1e-3)


def test_nproc_must_divide_the_batch(capsys):
    assert mmue(["train", "--csv", "x.csv", "--out", "o", "--batch-size", "15", "--nproc", "2"]) == 2
    assert "--nproc 2" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_computed_in_two_processes_land_in_the_cache_as_from_one(tmp_path, monkeypatch):
    data = runs.data_spec("synthetic", 32, 64, 32)
    train = {"epochs": 3, "batch_size": 16, "lr": 1e-3, "rows_per_epoch": "one_per_image", "device": "cpu"}
    protect = {"max_rounds": 1, "surrogate_steps": 2, "pgd_steps": 1, "trigger_search_rounds": 1, "trigger_top_k": 2,
               "batch_size": 16, "trigger_per": "image", "search_rows": "one_per_image", "device": "cpu"}
    victims = {}
    for nproc in (2, 1):
        monkeypatch.setenv("MMUE_CACHE", str(tmp_path / f"cache{nproc}"))
        with cache.processes(nproc):
            protection = runs.protection_run(data, "mem-3", "ViT-tiny", 32, progress=False, **protect)
            victims[nproc] = runs.training_run(data, "ViT-tiny", 32, train, protection=protection, progress=False)
    two, one = victims[2], victims[1]
    assert Path(two["folder"]).name == Path(one["folder"]).name and str(tmp_path / "cache2") in two["folder"]
    assert (Path(two["folder"]) / "model.pt").is_file() and not (Path(two["folder"]) / "train_state.ckpt").exists()
    assert [h["train_loss"] for h in two["history"]] == pytest.approx([h["train_loss"] for h in one["history"]], rel=1e-3)
    assert abs(two["final"]["i2t_MedR"] - one["final"]["i2t_MedR"]) <= 1
