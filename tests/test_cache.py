"""The run cache engine on a toy run kind: keys, only dependents recompute, dry planning, progress
and time left, warnings, status of unfinished runs, records exported and restored. No model is
trained here; the real run kinds are tested in test_runs.py."""
import fcntl
import json
import multiprocessing
import time

import pytest

from mmue_lib import cache, progress, records
from mmue_lib.cli import main
from mmue_lib.storage import PROJECT_ROOT, save_torch


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def toy(monkeypatch):
    """A registered run kind "toy" whose run multiplies two numbers; its computations are listed."""
    computed = []

    def recompute(spec: dict) -> dict:
        return toy_run(spec["n"], spec["settings"]["size"])

    monkeypatch.setitem(cache.KINDS, "toy", cache.RunKind(
        noun="toy run", describe=lambda spec: f"toy {spec['n']} x {spec['settings']['size']}", recompute=recompute,
        settings_section="settings", checkpoint_file="toy.ckpt",
        saved_progress=lambda spec, state: f"step {state['step']} of {spec['settings']['size']} saved",
        timing=lambda spec: {"size": spec["settings"]["size"]},
        warning=lambda spec, result: f"toy {spec['n']} is large" if result["final"]["value"] > 50 else None,
        restorable=True))

    @cache.planned
    def toy_run(n: int, size: int = 1, uses: dict | None = None) -> dict:
        spec = {"n": n, "settings": {"size": size, "device": "cpu"}, "uses": uses and uses["spec"]}

        def compute(folder):
            progress.bar(1, "step").close()
            computed.append((n, size))
            return {"final": {"value": n * size + (uses["final"]["value"] if uses else 0)}, "seconds": float(size)}

        return cache.cached("toy", spec, compute)

    toy_run.computed = computed
    return toy_run


def chain(toy_run, size: int = 1) -> dict:
    """Two toy runs, the second using the first."""
    first = toy_run(2, size)
    return {"first": first, "second": toy_run(3, 1, uses=first)}


def test_a_run_is_computed_once_and_a_changed_parameter_recomputes_exactly_its_dependents(fresh_cache, toy):
    runs = cache.planned(chain)(toy)
    assert runs["second"]["final"]["value"] == 5 and toy.computed == [(2, 1), (3, 1)]
    assert (fresh_cache / "runs" / "toy").is_dir() and len(list(fresh_cache.glob("runs/toy/*/result.json"))) == 2
    again = cache.planned(chain)(toy)
    assert toy.computed == [(2, 1), (3, 1)] and again["second"]["folder"] == runs["second"]["folder"]
    cache.planned(chain)(toy, size=4)
    assert toy.computed == [(2, 1), (3, 1), (2, 4), (3, 1)], "the second run embeds the first's spec"
    result = json.loads((cache.run_folder("toy", runs["first"]["spec"]) / "result.json").read_text())
    assert result["provenance"]["device"] == "cpu" and result["provenance"]["processes"] == 1
    assert result["peak_rss_bytes"] is None or result["peak_rss_bytes"] > 2 ** 20
    if (PROJECT_ROOT / ".git").exists():
        assert len(result["provenance"]["git_commit"]) == 40
    with pytest.raises(KeyError, match="no run kind 'nothing'"):
        cache.cached("nothing", {}, lambda folder: {})


def test_planning_lists_runs_in_order_and_computes_nothing(fresh_cache, toy):
    plan = cache.planning(chain, toy)
    assert [spec["n"] for _, spec in plan.runs.values()] == [2, 3] and plan.todo == list(plan.runs)
    assert not (fresh_cache / "runs").exists() and toy.computed == []


def test_an_experiment_says_what_it_computes_numbers_its_runs_and_warns_once_where_computed(fresh_cache, toy, capsys):
    cache.planned(chain)(toy, size=30)
    out, err = capsys.readouterr()
    assert "2 runs: 0 from the cache" in out and "2 toy run(s) to compute" in out
    assert "run 1/2: toy 2 x 30" in out and "run 2/2: toy 3 x 1" in out
    assert err.count("warning: toy 2 is large") == 1 and err.count("warning: toy 3 is large") == 1
    cache.planned(chain)(toy, size=3)
    out, err = capsys.readouterr()
    assert "1 from the cache, 1 toy run(s) to compute" not in out and err == ""
    cache.planned(chain)(toy, size=30)
    out, err = capsys.readouterr()
    assert "all 2 runs from the cache" in out and err == "", "a run read from the cache warned where it was made"


def test_time_left_is_estimated_from_runs_of_the_same_timing_group(fresh_cache, toy, capsys):
    plan = cache.planning(lambda: [toy(1, 10), toy(2, 10), toy(3, 20), toy(4, 30)])
    folders = list(plan.runs)
    assert cache.timing_group(*plan.runs[folders[0]]) == cache.timing_group(*plan.runs[folders[1]])
    assert cache.timing_group(*plan.runs[folders[0]]) != cache.timing_group(*plan.runs[folders[2]])
    plan.record(folders[0], 100.0)
    plan.record(folders[2], 10.0)
    assert plan.seconds_left(folders[1:]) == (100.0 + 10.0 + 55.0, 1)
    plan.dry = False
    plan.label(folders[1], "a toy")
    out = capsys.readouterr().out
    assert "run 2 of 4: about 3 min left for the 3 run(s) still to compute" in out
    assert "1 of them unlike any done yet, timed as the average run" in out


def test_cache_status_lists_done_and_interrupted_runs(fresh_cache, toy, capsys):
    done = toy(2, 1)
    unfinished = {"n": 5, "settings": {"size": 9, "device": "cpu"}, "uses": None}
    folder = cache.run_folder("toy", unfinished)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(unfinished))
    started = {**unfinished, "n": 6}
    cache.run_folder("toy", started).mkdir(parents=True)
    (cache.run_folder("toy", started) / "spec.json").write_text(json.dumps(started))
    save_torch(folder / "toy.ckpt", {"step": 4})
    status = cache.cache_status("toy")
    assert [(row["run"], row["state"]) for row in status] == [
        ("toy 2 x 1", "done"), ("toy 5 x 9", "step 4 of 9 saved"), ("toy 6 x 9", "no checkpoint yet")]
    assert status[0]["key"] == cache.run_folder("toy", done["spec"]).name
    assert status[0]["seconds"] == 1.0 and status[1]["seconds"] is None
    assert cache.cache_status("train") == []


def test_run_records_keep_nested_runs_and_travel_between_caches(fresh_cache, toy, tmp_path, monkeypatch):
    runs = cache.planned(chain)(toy)
    stand_in = {"spec": {"checkpoint": "weights.pt"}}
    records.write_run_records({"chain": runs, "none": None, "pretrained": stand_in}, tmp_path / "results", "toys")
    records_file = tmp_path / "results" / "runs" / "toys.json"
    written = json.loads(records_file.read_text())
    assert sorted(written) == ["chain / first", "chain / second", "pretrained"]
    assert written["chain / second"]["key"] == cache.run_folder("toy", runs["second"]["spec"]).name
    assert written["chain / second"]["seconds"] == 1.0 and written["chain / first"]["spec"]["n"] == 2
    assert written["pretrained"] == {"kind": "checkpoint", "key": None, "spec": stand_in["spec"]}
    with pytest.raises(TypeError, match="bad"):
        records.flatten_runs({"bad": 3})

    assert records.export_records(tmp_path / "exported.json") == 2
    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "elsewhere"))
    assert len(records.restore_records(tmp_path / "exported.json")) == 2
    assert [row["state"] for row in cache.cache_status("toy")] == ["restored", "restored"]
    assert records.restore_records(records_file) == [], "runs the cache holds are skipped"
    assert records.export_records(tmp_path / "none.json") == 0, "restored runs are not exported again"
    cache.planned(chain)(toy)
    assert toy.computed == [(2, 1), (3, 1)], "restored runs are not computed again"

    tampered = {**written["chain / first"], "key": "0" * 16}
    (tmp_path / "tampered.json").write_text(json.dumps({"first": tampered}))
    with pytest.raises(ValueError, match="recorded under key 0000000000000000"):
        records.restore_records(tmp_path / "tampered.json")


def test_the_runs_command_lists_restores_and_exports(fresh_cache, toy, tmp_path, capsys):
    toy(2, 1)
    assert main(["runs", "--export", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'out.json'}: 1 finished run(s) written" in out
    assert "toy 2 x 1" in out and out.splitlines()[-1].startswith("1 done (0.0 h), 0 unfinished")
    assert main(["runs", "--export", str(tmp_path / "of.json"), "--notebook", "02_table1", "--scale", "smoke"]) == 0
    assert "0 finished run(s) written (those of 02_table1 at smoke scale)" in capsys.readouterr().out
    key = next((fresh_cache / "runs" / "toy").iterdir()).name
    assert records.export_records(tmp_path / "kept.json", {key}) == 1 and records.export_records(tmp_path / "no.json", set()) == 0
    earlier = {"an earlier session's run": {"kind": "toy", "key": "0123456789abcdef", "spec": {"n": 9}}}
    (tmp_path / "grown.json").write_text(json.dumps(earlier))
    assert records.export_records(tmp_path / "grown.json") == 1
    grown = json.loads((tmp_path / "grown.json").read_text())
    assert len(grown) == 2 and grown["an earlier session's run"] == earlier["an earlier session's run"], "kept"
    with pytest.raises(SystemExit, match="--restore: no such file"):
        main(["runs", "--restore", str(tmp_path / "missing.json")])


def test_a_run_asked_for_by_two_processes_at_once_is_computed_once(fresh_cache, toy, tmp_path):
    log = tmp_path / "computed.txt"

    @cache.planned
    def slow_toy() -> dict:
        def compute(folder):
            with open(log, "a") as out:
                out.write("computed\n")
            time.sleep(1.0)
            return {"final": {"value": 1}, "seconds": 1.0}

        return cache.cached("toy", {"n": 1, "settings": {"size": 1, "device": "cpu"}}, compute)

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=slow_toy) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert log.read_text().splitlines() == ["computed"]


def test_a_runs_lock_is_reentrant_in_its_process_and_keeps_others_out(fresh_cache):
    folder = fresh_cache / "runs" / "toy" / "0123"

    def others_can_lock() -> bool:
        with open(folder.parent / f".{folder.name}.lock", "a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    with cache.run_lock(folder):
        with cache.run_lock(folder):
            assert not others_can_lock()
        assert not others_can_lock(), "the inner block leaves the outer one's lock held"
    assert others_can_lock()


def test_nproc_below_one_is_refused():
    with pytest.raises(ValueError, match="nproc must be at least 1"):
        with cache.processes(0):
            pass
