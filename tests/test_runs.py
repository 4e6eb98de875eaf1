import json

import pytest
import torch

import mmue_lib.runs as runs
from mmue_lib.cli import main
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


def test_method_list_is_checked_before_any_run(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    with pytest.raises(ValueError, match="methods must be a list of"):
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


def test_an_experiment_lists_its_runs_first_numbers_them_warns_when_a_protection_did_not_converge_and_records_provenance(
        fresh_cache, capsys):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    schedule = dict(max_rounds=1, surrogate_steps=2, batch_size=12, trigger_top_k=2, device="cpu")
    plan = runs.planning(runs.method_runs, data, "RN-tiny", "RN-tiny", 32, train, ["mem-3"], schedule)
    assert [kind for kind, _ in plan.runs.values()] == ["train", "protect", "train"] and len(plan.todo) == 3
    assert not (fresh_cache / "runs").exists(), "planning computes nothing"
    experiment = runs.method_runs(data, "RN-tiny", "RN-tiny", 32, train, ["mem-3"], schedule)
    out, err = capsys.readouterr()
    assert "3 runs: 0 from the cache, 1 protection(s) and 2 training run(s) to compute" in out
    assert "run 3/3: RN-tiny seed 0, 1 epoch, synthetic 32 px (24 train images), on MEM-3 data (seed 0)" in out
    assert "MEM-3 seed 0 against RN-tiny" in err and "did not converge" in err and "stop_loss 0.01" in err
    runs.method_runs(data, "RN-tiny", "RN-tiny", 32, train, ["mem-3"], schedule)
    out, err = capsys.readouterr()
    assert "all 3 runs from the cache" in out and "did not converge" in err
    provenance = experiment["MEM-3"]["victim"]["provenance"]
    assert len(provenance["git_commit"]) == 40 and isinstance(provenance["git_dirty"], bool)
    assert provenance["torch"] == torch.__version__ and provenance["device"] == "cpu"
    assert provenance["threads"] == torch.get_num_threads() and provenance["processes"] == 1
    assert runs.run_record(experiment["MEM-3"]["protection"])["provenance"]["device"] == "cpu"


def test_run_records_keep_nested_runs_and_restore_their_training_runs_without_models(fresh_cache, tmp_path,
                                                                                      monkeypatch, capsys):
    protection, victim = small_runs()
    checkpoint = tmp_path / "weights.pt"
    torch.save({}, checkpoint)
    stand_in = runs.checkpoint_run(str(checkpoint), "RN-tiny", 32, 32)
    runs.write_run_records({"MEM-3": {"protection": protection, "victim": victim}, "Clean": {"protection": None},
                            "pretrained": stand_in}, tmp_path / "results", "table")
    records_file = tmp_path / "results" / "runs" / "table.json"
    records = json.loads(records_file.read_text())
    assert sorted(records) == ["MEM-3 / protection", "MEM-3 / victim", "pretrained"]
    assert records["MEM-3 / victim"]["spec"]["seed"] == 0 and records["MEM-3 / victim"]["kind"] == "train"
    assert records["MEM-3 / victim"]["final"] == victim["final"]
    assert records["MEM-3 / protection"]["seconds"] == protection["seconds"] > 0
    assert records["MEM-3 / protection"]["key"] == runs.run_folder("protect", protection["spec"]).name
    assert records["pretrained"] == {"kind": "checkpoint", "key": None, "spec": stand_in["spec"]}
    with pytest.raises(TypeError, match="bad"):
        runs.flatten_runs({"bad": 3})

    assert main(["runs", "--export", str(tmp_path / "exported.json")]) == 0
    exported, = json.loads((tmp_path / "exported.json").read_text()).values()
    assert exported == records["MEM-3 / victim"]
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty"))
    assert main(["runs", "--restore", str(records_file)]) == 0
    assert f"{records_file}: 1 training run(s) restored" in capsys.readouterr().out
    assert [(row["kind"], row["state"]) for row in runs.cache_status()] == [("train", "restored")]
    assert runs.restore_records(records_file) == []
    assert runs.export_records(tmp_path / "none.json") == 0

    monkeypatch.setattr(runs, "train_clip", lambda *a, **k: pytest.fail("a restored run was trained again"))
    again = runs.training_run(victim["spec"]["data"], "RN-tiny", 32, victim["spec"]["train"], protection=protection,
                              progress=False)
    assert again["history"] == victim["history"] and again["seconds"] == victim["seconds"]
    assert again["provenance"] == victim["provenance"]
    with pytest.raises(FileNotFoundError, match="restored from .*table.json without its model"):
        runs.pretrained_checkpoint(again)

    records = json.loads(records_file.read_text())
    records["MEM-3 / victim"]["spec"]["seed"] = 5
    records_file.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="table.json: run 'MEM-3 / victim' was recorded under key"):
        runs.restore_records(records_file)
    with pytest.raises(SystemExit, match="--restore: no such file"):
        main(["runs", "--restore", str(tmp_path / "missing.json")])


def test_ablation_flips_each_make_a_protection_and_a_victim(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    schedule = dict(max_rounds=1, surrogate_steps=2, batch_size=12, trigger_top_k=2, device="cpu")
    with pytest.raises(ValueError, match="noise_granularity"):
        runs.ablation_runs(data, "RN-tiny", "RN-tiny", 32, train, "mem-3", schedule, ["noise_granularity: row"])
    experiment = runs.ablation_runs(data, "RN-tiny", "RN-tiny", 32, train, "mem-3", schedule,
                                    ["trigger_init: random", "noise_per: row,pgd_rows: all"], progress=False)
    assert list(experiment) == ["Clean", "default", "trigger_init: random", "noise_per: row, pgd_rows: all"]
    assert experiment["Clean"]["protection"] is None
    configs = {label: entry["protection"]["spec"]["config"] for label, entry in experiment.items() if entry["protection"]}
    assert configs["default"]["trigger_init"] == "the" and configs["trigger_init: random"]["trigger_init"] == "random"
    assert configs["noise_per: row, pgd_rows: all"]["noise_per"] == "row"
    assert experiment["default"]["victim"]["spec"]["protection"] == experiment["default"]["protection"]["spec"]


def test_seed_runs_seed_every_run_and_share_the_transfer_protection(fresh_cache):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    schedule = dict(max_rounds=1, surrogate_steps=2, batch_size=12, trigger_top_k=2, device="cpu")
    experiment = runs.seed_runs(data, "RN-tiny", "RN-tiny", 32, train, ["mem-3"], schedule, "mem-3",
                                ["RN-tiny", "ViT-tiny"], [0, 1], progress=False)
    assert list(experiment) == ["seed 0", "seed 1"]
    for seed, entry in zip((0, 1), experiment.values()):
        assert list(entry["victims"]) == ["RN-tiny", "ViT-tiny"]
        assert entry["protections"]["MEM-3"]["spec"]["config"]["seed"] == seed
        for victim in entry["victims"].values():
            assert set(victim) == {"Clean", "MEM-3"}
            assert all(run["spec"]["seed"] == seed and run["spec"]["train"]["seed"] == seed for run in victim.values())
        assert entry["victims"]["ViT-tiny"]["MEM-3"]["spec"]["protection"] == entry["protections"]["MEM-3"]["spec"]
    first, second = (e["victims"]["RN-tiny"]["Clean"]["final"] for e in experiment.values())
    assert first != second


def test_cache_status_lists_done_and_interrupted_runs(fresh_cache, monkeypatch, capsys):
    protection, victim = small_runs()

    def killed_after_first_epoch(model, pairs, config, *, test, checkpoint_path, progress):
        save_torch(checkpoint_path, {"epoch": 0, "history": [{"epoch": 1}]})
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "train_clip", killed_after_first_epoch)
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    with pytest.raises(KeyboardInterrupt):
        runs.training_run(data, "RN-tiny", 32, vars(TrainConfig(epochs=3, seed=2, device="cpu")),
                          protection=protection, fraction=0.5, progress=False)

    status = runs.cache_status()
    assert [(row["kind"], row["state"]) for row in status] == [
        ("protect", "done"), ("train", "done"), ("train", "epoch 1 of 3 saved")]
    assert status[0]["run"] == "MEM-3 seed 0 against RN-tiny, synthetic 32 px (24 train images)"
    uap = {**protection["spec"], "method": "uap", "surrogate": victim["spec"]}
    assert runs.describe_run("protect", uap) == "UAP seed 0 against a trained RN-tiny, synthetic 32 px (24 train images)"
    assert status[1]["run"] == "RN-tiny seed 0, 1 epoch, synthetic 32 px (24 train images), on MEM-3 data (seed 0)"
    assert status[2]["run"].startswith("RN-tiny seed 2, 3 epochs") and "on MEM-3 50% data" in status[2]["run"]
    assert status[1]["i2t_MedR"] == victim["final"]["i2t_MedR"] and status[0]["i2t_MedR"] is None
    assert status[1]["seconds"] == victim["seconds"] and status[2]["seconds"] is None
    assert [row["key"] for row in runs.cache_status("protect")] == [status[0]["key"]]

    capsys.readouterr()
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "epoch 1 of 3 saved" in lines[3]
    assert lines[-1].startswith("2 done") and "1 unfinished" in lines[-1]


def test_a_method_may_carry_protection_settings():
    assert runs.method_variant("mem-3") == ("mem-3", {}, "MEM-3")
    assert runs.method_variant("mem-3(trigger_vocab: captions)") == (
        "mem-3", {"trigger_vocab": "captions"}, "MEM-3 (trigger_vocab: captions)")
    for bad, message in (("mem-4", "expected one of"), ("mem-3(trigger_vocab: captions", "expected one of"),
                         ("mem-3(trigger_vocabulary: captions)", "not protection settings")):
        with pytest.raises(ValueError, match=message):
            runs.method_variant(bad)


def test_victims_can_be_scored_on_val_under_their_own_keys():
    on_test = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    on_val = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10, evaluate_on="val")
    assert "evaluate_on" not in on_test and runs.run_folder("train", on_val) != runs.run_folder("train", on_test)
    assert runs.load_data(on_val, "test").name == runs.load_data(on_test, "val").name == "synthetic-val"
    assert runs.load_data(on_val, "train").name == "synthetic-train"
    with pytest.raises(ValueError, match="evaluate_on"):
        runs.data_spec("synthetic", 32, evaluate_on="train")


def test_time_left_is_estimated_from_runs_of_the_same_kind_and_settings(fresh_cache, capsys):
    data = runs.data_spec("synthetic", 32, max_train_images=24, max_test_images=10)
    train = vars(TrainConfig(epochs=1, batch_size=12, device="cpu"))
    schedule = dict(max_rounds=1, surrogate_steps=2, batch_size=12, trigger_top_k=2, device="cpu")
    plan = runs.planning(runs.method_runs, data, "RN-tiny", "RN-tiny", 32, train, ["mem-3", "em"], schedule)
    kinds = [(kind, spec.get("method")) for kind, spec in plan.runs.values()]
    assert kinds == [("train", None), ("protect", "mem-3"), ("train", None), ("protect", "em"), ("train", None)]
    folders = list(plan.runs)
    kind, spec = plan.runs[folders[0]]
    reseeded = {**spec, "seed": 7, "train": {**spec["train"], "seed": 7}}
    assert runs.timing_group(kind, reseeded) == runs.timing_group(kind, spec)
    jpeg = {**spec, "defenses": [{"name": "jpeg", "quality": 30}]}
    assert runs.timing_group(kind, jpeg) == runs.timing_group(kind, spec)
    longer = {**spec, "train": {**spec["train"], "epochs": 8}}
    assert runs.timing_group(kind, longer) != runs.timing_group(kind, spec)
    assert runs.timing_group(*plan.runs[folders[2]]) == runs.timing_group(kind, spec), "victims of any data alike"
    plan.record(folders[0], 100.0)
    plan.record(folders[1], 10.0)
    assert plan.seconds_left(folders[2:]) == (100.0 + 55.0 + 100.0, 1)
    plan.dry = False
    plan.label(folders[2], "a victim")
    out = capsys.readouterr().out
    assert "run 3 of 5: about 4 min left for the 3 run(s) still to compute" in out
    assert "1 of them unlike any done yet, timed as the average run" in out
