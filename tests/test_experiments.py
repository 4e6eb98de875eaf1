"""The recipes' wiring, read off their plans (`cache.planning`): which runs each asks for, with
which settings, sharing what. Nothing is trained here."""
import json
from dataclasses import replace

import pytest

from mmue_lib import cache
from mmue_lib.experiments import (Experiment, ablation_runs, careful_collector, collector_clip, defense_runs,
                                  fine_tuning_selection, informed_runs, method_runs, seed_runs, transfer_runs)
from mmue_lib.methods import method_variant
from mmue_lib.runs import data_spec
from mmue_lib.settings import load_settings
from mmue_lib.train import TrainConfig

EXPERIMENT = Experiment(data_spec("synthetic", 32, max_train_images=24, max_test_images=10), "RN-tiny", "RN-tiny", 32,
                        {"epochs": 1, "batch_size": 12, "device": "cpu"},
                        {"max_rounds": 1, "surrogate_steps": 2, "batch_size": 12, "trigger_top_k": 2, "device": "cpu"},
                        ["mem-3"])


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    assert not (tmp_path / "cache" / "runs").exists(), "planning computes nothing"


def planned(recipe, *args) -> tuple[object, list[tuple[str, dict]]]:
    """What the recipe returns in a dry pass, and its runs as (kind, spec) in the order asked for."""
    outcome = {}
    plan = cache.planning(lambda: outcome.setdefault("runs", recipe(*args)))
    return outcome["runs"], list(plan.runs.values())


def test_methods_are_checked_before_any_run():
    with pytest.raises(ValueError, match="methods must be a list of"):
        Experiment(EXPERIMENT.data, "RN-tiny", "RN-tiny", 32, {}, {}, "[em, mem-3]")
    with pytest.raises(ValueError, match="mem-9"):
        method_runs(EXPERIMENT.using(["em", "mem-9"]))


def test_table1_trains_a_clean_victim_then_per_method_a_protection_and_its_victim():
    runs, plan = planned(method_runs, EXPERIMENT.using(["mem-3", "uap"]))
    assert [(kind, spec.get("method")) for kind, spec in plan] == [
        ("train", None), ("protect", "mem-3"), ("train", None), ("protect", "uap"), ("train", None)]
    assert list(runs) == ["Clean", "MEM-3", "UAP"]
    assert runs["UAP"]["protection"]["spec"]["surrogate"] == runs["Clean"]["victim"]["spec"], "UAP attacks the clean victim"
    assert runs["MEM-3"]["protection"]["spec"]["surrogate"] is None
    assert runs["MEM-3"]["victim"]["spec"]["protection"] == runs["MEM-3"]["protection"]["spec"]
    assert runs["MEM-3"]["protection"]["spec"]["config"]["trigger_len"] == 3


def test_a_method_may_carry_protection_settings():
    assert method_variant("mem-3") == ("mem-3", {}, "MEM-3")
    assert method_variant("mem-3(trigger_vocab: captions)") == (
        "mem-3", {"trigger_vocab": "captions"}, "MEM-3 (trigger_vocab: captions)")
    for bad, message in (("mem-4", "expected one of"), ("mem-3(trigger_vocab: captions", "expected one of"),
                         ("mem-3(trigger_vocabulary: captions)", "not protection settings")):
        with pytest.raises(ValueError, match=message):
            method_variant(bad)
    runs, _ = planned(method_runs, EXPERIMENT.using(["mem-3(trigger_vocab: captions)"]))
    assert runs["MEM-3 (trigger_vocab: captions)"]["protection"]["spec"]["config"]["trigger_vocab"] == "captions"


def test_ablation_flips_each_make_a_protection_and_a_victim():
    with pytest.raises(ValueError, match="noise_granularity"):
        ablation_runs(EXPERIMENT, "mem-3", ["noise_granularity: row"])
    runs, plan = planned(ablation_runs, EXPERIMENT, "mem-3", ["trigger_init: random", "noise_per: row,pgd_rows: all"])
    assert list(runs) == ["Clean", "default", "trigger_init: random", "noise_per: row, pgd_rows: all"]
    assert runs["Clean"]["protection"] is None and len(plan) == 7
    configs = {label: entry["protection"]["spec"]["config"] for label, entry in runs.items() if entry["protection"]}
    assert configs["default"]["trigger_init"] == "the" and configs["trigger_init: random"]["trigger_init"] == "random"
    assert configs["noise_per: row, pgd_rows: all"]["noise_per"] == "row"


def test_seed_runs_seed_every_run_and_share_the_transfer_protection():
    runs, _ = planned(seed_runs, EXPERIMENT, "mem-3", ["RN-tiny", "ViT-tiny"], [0, 1])
    assert list(runs) == ["seed 0", "seed 1"]
    for seed, entry in zip((0, 1), runs.values()):
        assert list(entry["victims"]) == ["RN-tiny", "ViT-tiny"]
        assert entry["protections"]["MEM-3"]["spec"]["config"]["seed"] == seed
        for victim in entry["victims"].values():
            assert set(victim) == {"Clean", "MEM-3"}
            assert all(run["spec"]["seed"] == seed and run["spec"]["train"]["seed"] == seed for run in victim.values())
        assert entry["victims"]["ViT-tiny"]["MEM-3"]["spec"]["protection"] == entry["protections"]["MEM-3"]["spec"]


def test_transfer_victims_of_every_architecture_train_on_one_protection():
    runs, plan = planned(transfer_runs, EXPERIMENT, "mem-3", ["RN-tiny", "ViT-tiny"])
    assert [kind for kind, _ in plan].count("protect") == 1
    assert runs["ViT-tiny"]["protected"]["spec"]["model"] == "ViT-tiny"
    assert runs["ViT-tiny"]["protected"]["spec"]["protection"] == runs["protection"]["spec"]


def test_countermeasures_apply_to_clean_and_protected_victims_alike():
    runs, _ = planned(defense_runs, EXPERIMENT, ["jpeg(quality: 30)"], ["augment: strong"])
    assert list(runs) == ["none", "jpeg(quality: 30)", "augment: strong"]
    assert all(run["spec"]["defenses"] == [{"name": "jpeg", "quality": 30}] for run in runs["jpeg(quality: 30)"].values())
    assert all(run["spec"]["train"]["augment"] == "strong" for run in runs["augment: strong"].values())
    assert runs["augment: strong"]["MEM-3"]["spec"]["protection"] == runs["none"]["MEM-3"]["spec"]["protection"]
    with pytest.raises(TypeError):
        defense_runs(EXPERIMENT, [], ["augment_strength: 2"])


def test_the_careful_collector_shares_table1_data_for_persistence_and_reseeds_its_seed_check():
    settings = load_settings("13_careful_collector", "smoke")
    runs, _ = planned(careful_collector, settings)
    persistence = runs["persistence"]["MEM-3"]["victim"]["spec"]
    assert persistence["data"] == load_settings("02_table1", "smoke").data
    assert persistence["train"]["epochs"] == settings.options.persistence["epochs"]
    for seed in settings.options.seed_check["seeds"]:
        checked = runs["seeds"][f"seed {seed}"]
        assert all(run["spec"]["seed"] == seed for run in checked["none"].values())
    single = load_settings("10_defenses", "smoke").options
    assert len(runs["single"]) == 1 + len(single.released_defenses) + len(single.training_defenses)


def test_seeded_experiments_seed_the_victims_and_the_protections():
    seeded = EXPERIMENT.seeded(3)
    assert TrainConfig(**seeded.train).seed == 3 and seeded.schedule["seed"] == 3 and EXPERIMENT.schedule.get("seed") is None


def test_a_ladder_point_changes_one_axis_of_the_experiment():
    from mmue_lib.experiments import ladder_point, point_label

    point = ladder_point(EXPERIMENT, {"image_size": 48, "model": "ViT-tiny"})
    assert point.data["image_size"] == 48 and point.data["max_train_images"] == 24
    assert point.victim_model == point.surrogate_model == "ViT-tiny"
    assert point_label(ladder_point(EXPERIMENT, {"max_train_images": None})) == "32 px, RN-tiny, all images"
    with pytest.raises(ValueError, match="unknown \\['epochs'\\]"):
        ladder_point(EXPERIMENT, {"epochs": 3})


def test_the_scale_ladder_shares_runs_between_its_points_and_checks():
    from mmue_lib.experiments import ladder_runs

    runs, plan = planned(ladder_runs, EXPERIMENT, [{}, {"image_size": 48}],
                         {"point": {}, "methods": ["mem-3"]}, {"official": {"seed": 0}}, {"point": {}, "seeds": [0, 1]})
    assert list(runs["ladder"]) == ["32 px, RN-tiny, 24 images", "48 px, RN-tiny, 24 images"]
    base = runs["ladder"]["32 px, RN-tiny, 24 images"]
    assert runs["schedule"]["own"]["MEM-3"]["victim"]["spec"] == base["MEM-3"]["victim"]["spec"]
    assert runs["seeds"]["seed 0"]["MEM-3"]["protection"]["spec"] == base["MEM-3"]["protection"]["spec"]
    official = runs["schedule"]["official"]["MEM-3"]["protection"]["spec"]["config"]
    assert official["max_rounds"] == 20 and official["surrogate_steps"] == 200
    assert runs["seeds"]["seed 1"]["MEM-3"]["victim"]["spec"]["seed"] == 1
    assert len(plan) == 3 * 2 + 2 + 3, "two points, the official protection and victim, seed 1's three runs"


def test_the_informed_collector_fine_tunes_its_own_clip_on_every_release_and_val_selection_shares_it():
    released = EXPERIMENT.using(["mem-3"])
    runs, asked = planned(informed_runs, released, [], {"epochs": 2}, {"lr": 1e-5}, 1, ["mem-3"], [0, 1])
    pretrained = runs["pretrained"]["spec"]
    assert pretrained["data"]["skip_train_images"] == 24 and pretrained["train"]["epochs"] == 2
    held = runs["fine-tuned"]["MEM-3 against the collector's CLIP"]["spec"]["protection"]
    assert held["surrogate"] == pretrained and runs["fine-tuned"]["MEM-3"]["spec"]["protection"]["surrogate"] is None
    for setting, frozen in (("fine-tuned", None), ("fine-tuned, frozen", 1)):
        assert set(runs[setting]) == {"Clean", "MEM-3", "MEM-3 against the collector's CLIP"}
        for victim in runs[setting].values():
            assert victim["spec"]["pretrained"] == pretrained and victim["spec"]["train"]["lr"] == 1e-5
            assert victim["spec"]["train"].get("freeze_image_groups") == frozen
    assert runs["fine-tuning seeds"]["seed 0"] == runs["fine-tuned"], "the experiment's seed: the same runs"
    seed_1 = runs["fine-tuning seeds"]["seed 1"]
    assert set(seed_1) == set(runs["fine-tuned"]) and all(
        victim["spec"] == {**runs["fine-tuned"][label]["spec"], "seed": 1,
                           "train": {**runs["fine-tuned"][label]["spec"]["train"], "seed": 1}}
        for label, victim in seed_1.items()), "only the fine-tuning seed changes: the same CLIP and protections"
    assert len({json.dumps(spec, sort_keys=True) for _, spec in asked}) == len(asked)
    assert len(asked) == len(runs["fine-tuned"]) * 3 + 1 + 3 + 1, ("per release three fine-tunings (seed 0's shared); "
                                                                  "the CLIP; scratch's three runs; MEM-3 against the CLIP")
    on_val = replace(released, data={**released.data, "evaluate_on": "val"})
    assert planned(collector_clip, on_val, {"epochs": 2})[0]["spec"] == pretrained, "its weights do not depend on val"
    selection, _ = planned(fine_tuning_selection, on_val, {"epochs": 2}, {"lr": 1e-5}, 1, True)
    assert selection["pretrained"]["spec"] == pretrained and selection["clean victim"]["spec"] == runs["scratch"]["Clean"]["victim"]["spec"]
    assert selection["protections"]["MEM-3 against the collector's CLIP"]["spec"] == held, "the notebook's protections"
    tuned = selection["fine-tuned, frozen"]["MEM-3"]["spec"]
    assert tuned["data"]["evaluate_on"] == "val" and tuned["train"]["freeze_image_groups"] == 1


def test_the_val_selection_makes_each_protection_as_table1_does():
    table1, _ = planned(method_runs, EXPERIMENT.using(["uap", "mem-3"]))
    on_val = replace(EXPERIMENT.using(["uap", "mem-3"]), data={**EXPERIMENT.data, "evaluate_on": "val"})
    selection, _ = planned(fine_tuning_selection, on_val, {"epochs": 2}, {"lr": 1e-5}, 1, False)
    for label in ("UAP", "MEM-3"):
        assert selection["protections"][label]["spec"] == table1[label]["protection"]["spec"]
    assert selection["protections"]["UAP"]["spec"]["surrogate"] == table1["Clean"]["victim"]["spec"], \
        "an error-maximising method attacks the clean victim"
