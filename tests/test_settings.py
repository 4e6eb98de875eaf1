"""Settings live once, in params/<scale>/: loading, overrides, errors, and the cache keys of the
committed cpu results."""
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from mmue_lib import paper
from mmue_lib.experiments import BY_NOTEBOOK, planned_runs
from mmue_lib.notebooks import notebook_names
from mmue_lib.methods import METHODS, ProtectConfig, SCHEDULES, method_config
from mmue_lib.settings import (EXTENDS, PARAMS_DIR, SHARED_KEYS, SettingsError, base_scale, flat_keys, load_settings,
                               notebook_params, scales)
from mmue_lib.storage import PROJECT_ROOT
from mmue_lib.train import TrainConfig

COMMITTED_RECORDS = {"table1": "02_table1", "table2": "03_table2", "table3_semantic": "07_semantic_triggers",
                     "fraction": "08_poisoning_fraction", "table4_faces": "09_faces", "defenses": "10_defenses",
                     "ablation": "11_ablation", "seeds": "12_seeds", "careful_collector": "13_careful_collector",
                     "scale": "14_scale", "t2ue": "15_t2ue", "informed_collector": "16_informed_collector"}


def test_every_notebook_has_an_experiment_entry_and_params_at_every_scale():
    assert sorted(BY_NOTEBOOK) == notebook_names()
    for scale in scales():
        shared = set(yaml.safe_load((PARAMS_DIR / scale / "shared.yaml").read_text()))
        if base_scale(scale) is None:
            assert sorted(shared) == sorted(SHARED_KEYS)
        else:
            assert EXTENDS in shared and shared <= {EXTENDS, *SHARED_KEYS}
        for name in notebook_names():
            load_settings(name, scale)


def test_every_committed_run_record_is_checked_for_its_keys():
    committed = sorted(path.stem for path in (PROJECT_ROOT / "results" / "cpu" / "runs").glob("*.json"))
    assert committed == sorted(COMMITTED_RECORDS)


@pytest.mark.parametrize("record", sorted(COMMITTED_RECORDS))
def test_committed_cpu_runs_keep_their_cache_keys(record):
    """The committed cpu results took ~17 h: params/cpu through load_settings must rebuild every
    recorded run under its recorded key, so that the cache still serves them."""
    committed = json.loads((PROJECT_ROOT / "results" / "cpu" / "runs" / f"{record}.json").read_text())
    recorded = {entry["key"] for entry in committed.values() if entry["key"]}
    planned = {Path(folder).name for folder in planned_runs(load_settings(COMMITTED_RECORDS[record], "cpu")).runs}
    assert recorded and recorded <= planned


def test_a_run_has_one_record_across_the_committed_files():
    """One set of numbers: a run that several notebooks share is recorded alike in each of their files."""
    first, differing = {}, []
    for path in sorted((PROJECT_ROOT / "results" / "cpu" / "runs").glob("*.json")):
        for label, entry in json.loads(path.read_text()).items():
            seen = first.setdefault(entry["key"], (path.name, label, entry))
            if seen[2] != entry:
                differing.append(f"{path.name} {label!r} differs from {seen[0]} {seen[1]!r}")
    assert not differing, differing


def test_table1_run_specs_equal_the_committed_ones():
    committed = json.loads((PROJECT_ROOT / "results" / "cpu" / "runs" / "table1.json").read_text())
    planned = {Path(folder).name: spec for folder, (_, spec) in
               planned_runs(load_settings("02_table1", "cpu")).runs.items()}
    assert all(planned[entry["key"]] == entry["spec"] for entry in committed.values())


def test_named_schedules_are_what_each_scale_uses():
    assert load_settings("02_table1", "cpu").schedule_name == "calibrated"
    assert load_settings("02_table1", "paper").schedule_name == "official"
    official = method_config("mem-3", **load_settings("02_table1", "paper").schedule)
    assert official == method_config("mem-3", precision="bf16"), "the official schedule is ProtectConfig's defaults"
    calibrated = method_config("mem-3", **load_settings("02_table1", "cpu").schedule)
    assert (calibrated.max_rounds, calibrated.alpha, calibrated.trigger_per) == (3, 2, "image")


def test_no_value_is_written_twice():
    """A notebook's params file sets only what differs from shared.yaml; a protect section only what
    differs from its named schedule; a schedule only what differs from ProtectConfig's defaults."""
    defaults = ProtectConfig()
    for name, schedule in SCHEDULES.items():
        same = [key for key, value in schedule.items() if getattr(defaults, key) == value]
        assert not same, f"schedule {name} repeats defaults {same}"
    for scale in filter(lambda scale: base_scale(scale) is None, scales()):
        shared = yaml.safe_load((PARAMS_DIR / scale / "shared.yaml").read_text())
        sections = [("shared.yaml", shared)]
        for name in notebook_names():
            own = yaml.safe_load((PARAMS_DIR / scale / f"{name}.yaml").read_text()) or {}
            sections.append((f"{name}.yaml", own))
            for section, values in own.items():
                if section in SHARED_KEYS and isinstance(values, dict):
                    same = [key for key, value in values.items() if shared[section].get(key) == value]
                    assert not same, f"{scale}/{name}.yaml repeats shared {section} {same}"
                elif section in SHARED_KEYS:
                    assert shared[section] != values, f"{scale}/{name}.yaml repeats shared {section}"
        for file, params in sections:
            protect = dict(params.get("protect", {}))
            named = SCHEDULES[protect.pop("schedule", shared["protect"].get("schedule", "official"))]
            same = [key for key, value in protect.items()
                    if named.get(key, getattr(defaults, key)) == value and key not in shared["protect"]]
            assert not same, f"{scale}/{file} repeats its schedule's {same}"


def value_at(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params.get(part, {}) if isinstance(params, dict) else {}
    return params


def test_a_scale_built_on_another_sets_only_what_differs_from_it():
    derived = [scale for scale in scales() if base_scale(scale)]
    assert {"gpu-smoke", "paper-flickr30k", "paper-coco"} <= set(derived)
    for scale in derived:
        for name in notebook_names():
            base, _ = notebook_params(name, base_scale(scale))
            for file in (PARAMS_DIR / scale / "shared.yaml", PARAMS_DIR / scale / f"{name}.yaml"):
                own = yaml.safe_load(file.read_text()) if file.is_file() else {}
                own.pop(EXTENDS, None)
                same = [key for key in flat_keys(own) if value_at(base, key) == value_at(own, key)]
                assert not same, f"{file} repeats {base_scale(scale)}'s {same}"


def test_the_paper_slice_is_the_paper_experiment_cut_short():
    paper_settings, slice_settings = load_settings("02_table1", "paper"), load_settings("02_table1", "gpu-smoke")
    assert slice_settings.sources[:2] == paper_settings.sources
    assert (slice_settings.victim_model, slice_settings.data["image_size"], slice_settings.schedule_name) == \
        (paper_settings.victim_model, 224, "official")
    assert slice_settings.train == {**paper_settings.train, "epochs": 1, "batch_size": 8, "warmup_steps": 1,
                                    "rows_per_epoch": "one_per_image"}
    assert slice_settings.schedule == {**paper_settings.schedule, "max_rounds": 1, "surrogate_steps": 1, "pgd_steps": 2,
                                       "trigger_search_rounds": 1, "trigger_top_k": 2, "batch_size": 8}
    assert load_settings("02_table1", "paper-coco").data["data"] == "$MMUE_DATA/coco"


@pytest.mark.parametrize("extends, message", [("slice", "not another scale"), ("nowhere", "not another scale"),
                                              ("loop", "not another scale")])
def test_a_scale_extending_itself_or_nothing_is_named(tmp_path, monkeypatch, extends, message):
    import mmue_lib.settings as settings_module

    for scale, base in (("slice", extends), ("loop", "slice")):
        (tmp_path / scale).mkdir()
        (tmp_path / scale / "shared.yaml").write_text(f"extends: {base}\n")
    monkeypatch.setattr(settings_module, "PARAMS_DIR", tmp_path)
    with pytest.raises(SettingsError, match=message) as error:
        load_settings("02_table1", "slice")
    assert "shared.yaml" in str(error.value)


def test_overrides_take_dotted_or_nested_keys_and_unknown_ones_are_named(tmp_path):
    dotted = load_settings("02_table1", "smoke", {"train.epochs": 2, "protect.max_rounds": 1, "example_count": 1})
    nested = load_settings("02_table1", "smoke", {"train": {"epochs": 2}, "protect": {"max_rounds": 1},
                                                  "example_count": 1})
    assert dotted == nested and dotted.train["epochs"] == 2 and dotted.schedule["max_rounds"] == 1
    assert dotted.train["lr"] == load_settings("02_table1", "smoke").train["lr"]
    assert load_settings("02_table1", "smoke", {"train.augment": "strong"}).train["augment"] == "strong"
    assert load_settings("02_table1", "smoke", {"data.path": "elsewhere"}).data["data"] == "elsewhere"
    with pytest.raises(SettingsError, match=r"\['train.epoch'\] match no setting of 02_table1 at smoke"):
        load_settings("02_table1", "smoke", {"train.epoch": 2})
    with pytest.raises(SettingsError, match="fractions"):
        load_settings("02_table1", "smoke", {"fractions": [0.5]})
    with pytest.raises(SettingsError, match="overrides"):
        load_settings("02_table1", "smoke", {"methods": ["em", "mem-7"]})
    with pytest.raises(SettingsError, match="unknown scale 'gpu'"):
        load_settings("02_table1", "gpu")


def test_settings_show_the_experiment_and_where_it_comes_from():
    text = load_settings("02_table1", "cpu")._repr_markdown_()
    assert "params/cpu/shared.yaml" in text and "params/cpu/02_table1.yaml" in text
    assert "$MMUE_DATA/flickr8k" in text and "schedule `calibrated`" in text and "EM, UAP, MEM-3, MEM-5" in text


@pytest.mark.parametrize("content, message", [
    ("data: {path: x, image_size: 32}\n", "missing"),
    ("{}", "missing"),
    ("- a list\n", "mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_a_broken_params_file_is_named(tmp_path, monkeypatch, content, message):
    import mmue_lib.settings as settings_module

    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "shared.yaml").write_text(content)
    (tmp_path / "smoke" / "02_table1.yaml").write_text("")
    monkeypatch.setattr(settings_module, "PARAMS_DIR", tmp_path)
    with pytest.raises(SettingsError, match=message) as error:
        load_settings("02_table1", "smoke")
    assert "shared.yaml" in str(error.value)


def test_bad_values_are_refused_before_any_compute(tmp_path, monkeypatch):
    import mmue_lib.settings as settings_module

    shared = yaml.safe_load((PARAMS_DIR / "smoke" / "shared.yaml").read_text())
    cases = {"train": ({**shared, "train": {**shared["train"], "epoks": 3}}, "TrainConfig"),
             "protect": ({**shared, "protect": {"schedule": "fast"}}, "unknown protection schedule 'fast'"),
             "field": ({**shared, "protect": {"pgd_step": 3}}, "not protection settings"),
             "seed": ({**shared, "train": {**shared["train"], "seed": 3}}, "top level"),
             "method": ({**shared, "methods": ["mem-4"]}, "methods must be a list of"),
             "nproc": ({**shared, "nproc": 0}, "nproc must be a whole number"),
             "uneven": ({**shared, "nproc": 3}, r"nproc 3 must divide train.batch_size 50, protect.batch_size 64")}
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "02_table1.yaml").write_text("")
    monkeypatch.setattr(settings_module, "PARAMS_DIR", tmp_path)
    for params, message in cases.values():
        (tmp_path / "smoke" / "shared.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(SettingsError, match=message):
            load_settings("02_table1", "smoke")


def test_train_sections_are_train_config_fields():
    names = {f.name for f in fields(TrainConfig)}
    for scale in scales():
        assert set(load_settings("02_table1", scale).train) <= names


def test_method_registry_feeds_paper_rows_and_the_cli():
    from mmue_lib.cli import build_parser

    assert paper.METHODS == ("Random", "Clean", *(m.label for m in METHODS.values() if m.in_paper))
    assert {label for label, _ in paper.TABLE1} == set(paper.METHODS)
    protect = next(a for a in build_parser()._subparsers._group_actions[0].choices["protect"]._actions
                   if a.dest == "method")
    assert list(protect.choices) == list(METHODS)
    assert [name for name, m in METHODS.items() if m.needs_trained_surrogate] == ["uap", "tap"]


@pytest.mark.parametrize("scale", scales())
def test_setting_strings_in_params_parse_at_every_scale(scale):
    """Ablation flips and countermeasures are strings in params: a typo must fail here, not hours into a run."""
    from mmue_lib import defenses, methods

    for flip in load_settings("11_ablation", scale).options.ablation_flips:
        methods.protection_overrides(flip)
    countermeasures = load_settings("10_defenses", scale).options
    defenses.parse_defenses(countermeasures.released_defenses)
    for setting in countermeasures.training_defenses:
        defenses.parse_settings(setting)
    collector = load_settings("13_careful_collector", scale).options
    for item in [*collector.collector_methods, *collector.robust_methods, collector.seed_check["method"]]:
        methods.method_variant(item)
    defenses.parse_defenses([*collector.collector_released, collector.seed_check["countermeasure"]])
    for setting in collector.collector_training:
        TrainConfig(**defenses.parse_settings(setting))
