import pytest
import torch

import mmue_lib.runs as runs
from mmue_lib.train import TrainConfig


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_runs(**protect_overrides):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    settings = dict(max_rounds=1, surrogate_steps=2, batch_size=12, trigger_top_k=2, device="cpu")
    settings.update(protect_overrides)
    protection = runs.protection_run(data, "mem-3", "RN-tiny", 32, progress=False, **settings)
    victim = runs.training_run(data, "RN-tiny", 32, train, protection=protection, progress=False)
    return protection, victim


def test_runs_are_cached_and_only_dependents_recompute(fresh_cache, monkeypatch):
    protection, victim = small_runs()
    assert victim["final"]["epoch"] == 1 and "t2i_MedR" in victim["final"]
    assert len(list((fresh_cache / "runs").glob("*/*/result.json"))) == 2

    calls = []
    real_generate, real_train = runs.generate_protection, runs.train_clip
    monkeypatch.setattr(runs, "generate_protection", lambda *a, **k: calls.append("protect") or real_generate(*a, **k))
    monkeypatch.setattr(runs, "train_clip", lambda *a, **k: calls.append("train") or real_train(*a, **k))
    again_protection, again_victim = small_runs()
    assert calls == [] and again_victim["history"] == victim["history"]

    small_runs(eps=4)
    assert calls == ["protect", "train"]
    loaded = runs.load_protection(runs.protection_run(runs.data_spec("synthetic", 32, 24, 10), "mem-3", "RN-tiny", 32,
                                                      max_rounds=1, surrogate_steps=2, batch_size=12,
                                                      trigger_top_k=2, device="cpu", eps=4))
    assert loaded.noise.abs().max() <= 4 and loaded.triggers.shape == (120, 3)


def test_fine_tuning_starts_from_a_cached_model(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    base = runs.training_run(data, "RN-tiny", 32, train, progress=False)
    tuned = runs.training_run(data, "RN-tiny", 32, {**train, "lr": 1e-5}, pretrained=base, progress=False)
    assert tuned["spec"]["pretrained"] == base["spec"]
    before = torch.load(runs.pretrained_checkpoint(base), weights_only=True)["state_dict"]
    after = torch.load(runs.pretrained_checkpoint(tuned), weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_method_list_is_checked_before_any_run(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    with pytest.raises(ValueError, match="-y 'methods"):
        runs.method_runs(data, "RN-tiny", "RN-tiny", 32, {}, "[em, mem-3]", {})
    with pytest.raises(ValueError, match="mem-9"):
        runs.method_runs(data, "RN-tiny", "RN-tiny", 32, {}, ["em", "mem-9"], {})
    assert not (fresh_cache / "runs").exists()


def test_a_local_state_dict_stands_in_for_a_pretraining_run(fresh_cache, tmp_path):
    from mmue_lib.models import create_clip

    model = create_clip("RN-tiny", seed=3)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    run = runs.checkpoint_run(str(path), "RN-tiny", 32, 32)
    loaded = runs.run_model(run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    data = runs.data_spec("synthetic", 32, max_train_images=12, max_test_images=6)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    tuned = runs.training_run(data, "RN-tiny", 32, train, pretrained=run, progress=False)
    assert tuned["spec"]["pretrained"]["checkpoint"] == str(path)
    with pytest.raises(FileNotFoundError, match="no downloads"):
        runs.checkpoint_run(str(tmp_path / "missing.pt"), "RN-tiny", 32, 32)
