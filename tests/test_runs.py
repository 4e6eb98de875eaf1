import fcntl
import json
from pathlib import Path

import pytest
import torch

import mmue_lib.runs as runs
from mmue_lib import cache, records
from mmue_lib.storage import save_torch
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


def test_a_runs_model_is_measured_on_another_specs_split(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    base = runs.training_run(data, "RN-tiny", 32, vars(TrainConfig(epochs=1, batch_size=12, device="cpu")),
                             progress=False)
    on_test = runs.run_retrieval(base, data)
    assert {key: on_test[key] for key in ("i2t_MedR", "t2i_MedR", "i2t_R@1")} == \
        {key: base["final"][key] for key in ("i2t_MedR", "t2i_MedR", "i2t_R@1")}, "the training run's own final scores"
    on_val = runs.run_retrieval(base, runs.data_spec("synthetic", 32, max_train_images=24, evaluate_on="val"))
    assert on_val != on_test


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


def test_a_training_run_is_keyed_by_its_settings_written_one_way(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    plan = cache.planning(lambda: [runs.training_run(data, "RN-tiny", 32, {"epochs": 8}),
                                   runs.training_run(data, "RN-tiny", 32, {"epochs": 8, "lr": TrainConfig.lr}),
                                   runs.training_run(data, "RN-tiny", 32, vars(TrainConfig(epochs=8))),
                                   runs.training_run(data, "RN-tiny", 32, {"epochs": 8, "augment": "strong"})])
    assert len(plan.runs) == 2
    keyed = [spec["train"] for _, spec in plan.runs.values()]
    assert "augment" not in keyed[0] and keyed[1]["augment"] == "strong" and keyed[0]["lr"] == TrainConfig.lr


def test_runs_describe_themselves_and_say_how_far_an_interrupted_one_got(fresh_cache, monkeypatch):
    protection, victim = small_runs()

    def killed_after_first_epoch(model, pairs, config, *, test, checkpoint_path, progress):
        save_torch(checkpoint_path, {"epoch": 0, "history": [{"epoch": 1}]})
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "train_clip", killed_after_first_epoch)
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    with pytest.raises(KeyboardInterrupt):
        runs.training_run(data, "RN-tiny", 32, vars(TrainConfig(epochs=3, seed=2, device="cpu")),
                          protection=protection, fraction=0.5, progress=False)
    status = cache.cache_status()
    assert [(row["kind"], row["state"]) for row in status] == [
        ("protect", "done"), ("train", "done"), ("train", "epoch 1 of 3 saved")]
    assert status[0]["run"] == "MEM-3 seed 0 against RN-tiny, synthetic 32 px (24 train images)"
    uap = {**protection["spec"], "method": "uap", "surrogate": victim["spec"]}
    assert cache.describe_run("protect", uap) == "UAP seed 0 against a trained RN-tiny, synthetic 32 px (24 train images)"
    assert status[1]["run"] == "RN-tiny seed 0, 1 epoch, synthetic 32 px (24 train images), on MEM-3 data (seed 0)"
    assert status[2]["run"].startswith("RN-tiny seed 2, 3 epochs") and "on MEM-3 50% data" in status[2]["run"]
    assert status[1]["i2t_MedR"] == victim["final"]["i2t_MedR"] and status[0]["i2t_MedR"] is None
    assert status[1]["seconds"] == victim["seconds"] and status[2]["seconds"] is None


def test_only_a_protection_whose_noise_did_not_bind_is_warned_about(fresh_cache):
    protection, _ = small_runs()
    batch = protection["spec"]["config"]["batch_size"]
    unbound = {**protection, "history": [{"noise_loss": 3.0}, {"noise_loss": 4.6}]}
    warning = runs.convergence_warning(protection["spec"], unbound)
    assert "MEM-3 seed 0 against RN-tiny" in warning and "did not bind" in warning and f"(ln {batch} = " in warning
    assert "protect.surrogate_steps" in warning
    generated = {**protection["spec"], "config": {**protection["spec"]["config"], "generator_steps": 5, "trigger_len": 0}}
    assert "protect.generator_steps" in runs.convergence_warning(generated, unbound), "T2UE's knobs are its generator's"
    missed_stop_loss = {**protection, "history": [{"noise_loss": 2.9}, {"noise_loss": 0.33}]}
    assert runs.convergence_warning(protection["spec"], missed_stop_loss) is None, "the calibrated schedule's end"
    assert protection["provenance"]["device"] == "cpu" and protection["provenance"]["torch"] == torch.__version__


def test_restored_runs_serve_their_records_and_a_protection_is_computed_again_only_for_its_noise(
        fresh_cache, tmp_path, monkeypatch, capsys):
    protection, victim = small_runs()
    records.write_run_records({"victim": victim, "protection": protection}, tmp_path, "victim")
    noise = runs.load_protection(protection).noise.clone()
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty"))
    assert len(records.restore_records(tmp_path / "runs" / "victim.json")) == 2
    real_generate, real_train = runs.generate_protection, runs.train_clip
    monkeypatch.setattr(runs, "train_clip", lambda *a, **k: pytest.fail("a restored run was trained again"))
    monkeypatch.setattr(runs, "generate_protection", lambda *a, **k: pytest.fail("a restored protection was redone"))
    again, again_victim = small_runs()
    assert again_victim["history"] == victim["history"] and again_victim["seconds"] == victim["seconds"]
    assert again["history"] == protection["history"] and again["seconds"] == protection["seconds"]
    monkeypatch.setattr(runs, "generate_protection", real_generate)
    assert torch.equal(runs.load_protection(again).noise, noise), "the noise, computed again, is the same"
    assert "restored from records without its protection.pt" in capsys.readouterr().out
    kept = json.loads((Path(again["folder"]) / "result.json").read_text())
    assert kept["seconds"] == protection["seconds"] and kept["history"] == protection["history"], \
        "the record stays the recorded one: one set of numbers"
    assert kept["files_recomputed"]["provenance"]["torch"] == torch.__version__
    def train_under_the_lock(*args, **kwargs):
        assert Path(again_victim["folder"]) in cache._HELD, "others wait, then read the recorded result"
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train_clip", train_under_the_lock)
    assert runs.pretrained_checkpoint(again_victim).is_file(), "a figure that needs the model gets it trained again"
    kept_victim = json.loads((Path(again_victim["folder"]) / "result.json").read_text())
    assert kept_victim["seconds"] == victim["seconds"] and kept_victim["history"] == victim["history"]

    killed = Path(again["folder"])
    (killed / "result.json").unlink()  # a remaking of its files, killed
    lock_file = killed.parent / f".{killed.name}.lock"
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert records.restore_records(tmp_path / "runs" / "victim.json") == [], "a run being computed is left alone"
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert records.restore_records(tmp_path / "runs" / "victim.json") == [killed]
    assert json.loads((killed / "result.json").read_text())["seconds"] == protection["seconds"]


def test_a_restored_protection_whose_restored_surrogate_has_no_model_trains_the_surrogate_first(
        fresh_cache, tmp_path, monkeypatch, capsys):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    surrogate = runs.training_run(data, "RN-tiny", 32, vars(TrainConfig(epochs=1, batch_size=12, device="cpu")),
                                  progress=False)
    settings = dict(batch_size=12, pgd_steps=1, device="cpu")
    attack = runs.protection_run(data, "uap", "RN-tiny", 32, surrogate=surrogate, progress=False, **settings)
    noise = runs.load_protection(attack).noise.clone()
    records.write_run_records({"surrogate": surrogate, "attack": attack}, tmp_path, "attack")
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty"))
    records.restore_records(tmp_path / "runs" / "attack.json")
    restored = runs.protection_run(data, "uap", "RN-tiny", 32, surrogate=runs.training_run(
        data, "RN-tiny", 32, vars(TrainConfig(epochs=1, batch_size=12, device="cpu")), progress=False),
        progress=False, **settings)
    assert torch.equal(runs.load_protection(restored).noise, noise), "the surrogate trained again, then the noise"
    printed = capsys.readouterr().out
    assert "without its protection.pt" in printed and "without its model.pt" in printed


def test_victims_can_be_scored_on_val_under_their_own_keys():
    on_test = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    on_val = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10, evaluate_on="val")
    assert "evaluate_on" not in on_test and runs.run_folder("train", on_val) != runs.run_folder("train", on_test)
    assert runs.load_data(on_val, "test").name == runs.load_data(on_test, "val").name == "synthetic-val"
    assert runs.load_data(on_val, "train").name == "synthetic-train"
    with pytest.raises(ValueError, match="evaluate_on"):
        runs.data_spec("synthetic", 32, evaluate_on="train")


def test_a_collectors_own_data_skips_the_released_train_images():
    released = runs.data_spec("synthetic", 32, max_train_images=20, max_test_images=10)
    own = runs.data_spec("synthetic", 32, max_train_images=15, max_test_images=10, skip_train_images=20)
    assert "skip_train_images" not in released, "keys of runs without it stay as they were"
    first, rest = runs.load_data(released, "train"), runs.load_data(own, "train")
    every = runs.load_data({**released, "max_train_images": 35}, "train")
    assert rest.num_images == 15 and torch.equal(rest.images, every.images[20:35])
    assert not {bytes(i.numpy()) for i in first.images} & {bytes(i.numpy()) for i in rest.images}
    assert runs.describe_data(own) == "synthetic 32 px (train images after the first 20, 15 of them)"
    with pytest.raises(ValueError, match="skip_train_images"):
        runs.data_spec("synthetic", 32, skip_train_images=-1)
