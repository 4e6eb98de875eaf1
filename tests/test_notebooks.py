"""Every notebook runs at smoke scale through papermill and writes the files it declares; Run All
in JupyterLab and the papermill runner resolve the same settings and the same runs."""
import ast
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from papermill.parameterize import parameterize_notebook

from mmue_lib.experiments import planned_runs
from mmue_lib.notebooks import (notebook_metadata, notebook_names, notebook_parameters, read_source,
                                run_notebook, tidy_outputs)
from mmue_lib.settings import load_settings, scales
from mmue_lib.storage import PROJECT_ROOT, expand_path

PARAMETER_NAMES = ["scale", "overrides", "output_root"]


def code_cells(notebook: dict) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def read(name: str) -> dict:
    """The notebook as papermill reads what the runner hands it (its source in git, as .ipynb)."""
    import tempfile

    import nbformat
    from papermill.iorw import load_notebook_node

    with tempfile.TemporaryDirectory() as folder:
        nbformat.write(read_source(name), Path(folder) / f"{name}.ipynb")
        return load_notebook_node(str(Path(folder) / f"{name}.ipynb"))


def test_there_are_notebooks_and_every_scale_has_their_params():
    assert notebook_names() and scales() == ["cpu", "gpu-smoke", "paper", "paper-coco", "paper-flickr30k", "smoke"]


@pytest.mark.parametrize("name", notebook_names())
def test_source_notebook_is_clean_and_its_parameters_cell_holds_only_what_papermill_injects(name):
    notebook = read(name)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit notebooks without outputs"
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    assigned = [node.targets[0].id for node in ast.parse("".join(code[0]["source"])).body]
    assert assigned == PARAMETER_NAMES
    assert f'load_settings("{name}", scale, overrides, output_root)' in "".join(code[1]["source"])
    assert notebook["metadata"]["mmue"]["outputs"], "declare the files the notebook writes"
    assert notebook["metadata"]["kernelspec"] == {"display_name": "Python 3 (mmue)", "language": "python",
                                                  "name": "mmue"}, "the kernel make install registers, as the lab saves it"
    assert "language_info" not in notebook["metadata"], "jupytext's metadata filter keeps it out of the source"


@pytest.mark.parametrize("name", notebook_names())
def test_source_notebook_imports_each_name_once_and_uses_it(name):
    tree = ast.parse("\n".join(code_cells(read(name))))
    imported = [(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names]
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert sorted(set(imported) - used) == [], "unused imports"
    assert len(imported) == len(set(imported)), "a name is imported twice"


def settings_as_notebook_resolves_them(notebook: dict) -> object:
    """Execute the parameters cell (and any injected one) and the settings cell, as Run All does."""
    namespace = {}
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    settings_cell = next(i for i, c in enumerate(cells) if "load_settings(" in "".join(c["source"]))
    for cell in cells[:settings_cell + 1]:
        exec("".join(cell["source"]), namespace)
    return namespace["settings"]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper", "gpu-smoke"])
@pytest.mark.parametrize("name", notebook_names())
def test_run_all_in_jupyterlab_and_the_runner_give_the_same_settings_and_run_keys(name, scale):
    in_lab = read(name)
    parameters = in_lab["cells"][[c["cell_type"] for c in in_lab["cells"]].index("code")]
    source = "".join(parameters["source"])
    assert source.startswith('scale = "smoke"')
    parameters["source"] = source.replace('scale = "smoke"', f'scale = "{scale}"', 1)
    by_runner = parameterize_notebook(read(name), notebook_parameters(scale, {}))
    lab, runner = settings_as_notebook_resolves_them(in_lab), settings_as_notebook_resolves_them(by_runner)
    assert lab == runner == load_settings(name, scale)
    lab_plan, runner_plan = planned_runs(lab), planned_runs(runner)
    assert (lab_plan is None) == (runner_plan is None)
    if lab_plan is not None:
        assert list(lab_plan.runs) == list(runner_plan.runs) and lab_plan.runs


def test_runner_overrides_reach_the_notebook_as_in_jupyterlab(tmp_path):
    overrides = {"train.epochs": 1, "data.max_train_images": 40}
    by_runner = parameterize_notebook(read("02_table1"), notebook_parameters("smoke", overrides, tmp_path))
    settings = settings_as_notebook_resolves_them(by_runner)
    assert settings == load_settings("02_table1", "smoke", overrides, tmp_path)
    assert settings.train["epochs"] == 1 and settings.data["max_train_images"] == 40
    assert settings.results_dir == tmp_path / "results" / "smoke"


@pytest.mark.notebook
@pytest.mark.parametrize("name", notebook_names())
def test_notebook_runs_at_smoke_scale(name, tmp_path):
    settings = load_settings(name, "smoke")
    needed = [expand_path(v) for v in (settings.data["data"], *settings.options.values())
              if isinstance(v, str) and "MMUE_DATA" in v]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"{name} at smoke scale reads real data not found at {', '.join(missing)} "
                    "(set MMUE_DATA to the folder holding flickr8k/ and faces20/)")
    executed = run_notebook(name, "smoke", output_root=tmp_path)
    outputs = [output for cell in json.loads(executed.read_text())["cells"] for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    plain_only = [o["data"]["text/plain"] for o in outputs if list(o.get("data", {})) == ["text/plain"]]
    shown = "".join(text if isinstance(text, str) else "".join(text)
                    for text in [o.get("text", "") for o in outputs] + plain_only)
    assert "PosixPath" not in shown and "TqdmWarning" not in shown and "IProgress" not in shown
    notebook = json.loads(executed.read_text())
    notebook["cells"] = [c for c in notebook["cells"] if "injected-parameters" not in c["metadata"].get("tags", [])]
    del notebook["metadata"]["papermill"]["parameters"]
    text = json.dumps(notebook)
    assert str(tmp_path) not in text and str(PROJECT_ROOT) not in text, "no machine's folders in an executed notebook"
    for relative in notebook_metadata(name)["outputs"]:
        folder, file_name = relative.split("/", 1)
        path = tmp_path / folder / "smoke" / file_name
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {relative}"
        if path.suffix == ".csv":
            table = pd.read_csv(path)
            ours = table.select_dtypes("number").drop(columns=[c for c in table if c.endswith("(paper)")])
            numbers = ours.to_numpy(dtype=float)
            assert len(table) and numbers.size and np.isfinite(numbers).all(), f"{relative} has missing or non-finite numbers"


def test_set_reaches_only_the_notebooks_that_have_the_setting(tmp_path, monkeypatch, capsys):
    import papermill

    from mmue_lib import notebooks

    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty-cache"))
    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda source, out, parameters, **kwargs: seen.__setitem__(Path(out).stem, parameters))
    assert notebooks.main(["--scale", "smoke", "--only", "01_data_overview", "08_poisoning_fraction",
                           "--set", "fractions=[0.5]", "--set", "example_count=2", "--set", "train.epochs=1",
                           "--output-root", str(tmp_path)]) == 0
    first, fraction = (seen[n] for n in ("01_data_overview", "08_poisoning_fraction"))
    assert fraction["overrides"] == {"fractions": [0.5], "train.epochs": 1}
    assert first["overrides"] == {"example_count": 2, "train.epochs": 1}
    assert first["output_root"] == str(tmp_path) and first["scale"] == "smoke"
    printed = capsys.readouterr().out
    assert "08_poisoning_fraction: 11 runs, 0 in the cache or made by a notebook before it" in printed and "in all about" in printed
    for bad in (["--set", "no-equals-sign"], ["--set", "train.epoch=2"], ["--only", "01_data_overview", "--set", "fractions=[1]"]):
        with pytest.raises(SystemExit):
            notebooks.main(["--scale", "smoke", *bad])


def test_plan_lists_the_parts_without_running_anything(tmp_path, monkeypatch, capsys):
    import papermill

    from mmue_lib import notebooks

    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: pytest.fail("--plan ran a notebook"))
    assert notebooks.main(["--scale", "cpu", "--part", "extensions", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "will run 7 notebook(s)" in printed and "16_informed_collector: " in printed and "12_seeds: 33 runs" in printed and "15_t2ue: " in printed and "02_table1" not in printed
    assert notebooks.main(["--scale", "cpu", "--part", "paper", "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "will run 9 notebook(s)" in printed and "10_defenses" not in printed and "about 5.2 h" in printed


def test_measured_hours_name_notebooks_and_a_stray_line_is_refused(tmp_path, monkeypatch):
    from mmue_lib import notebooks
    from mmue_lib.settings import SettingsError

    assert all(set(notebooks.measured_hours(scale)) <= set(notebook_names()) for scale in scales())
    assert notebooks.measured_hours("cpu")["14_scale"] > 0
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "run_hours.yaml").write_text("02_table1: 1.7\n(13's runs) were timed alike: half of that\n")
    monkeypatch.setattr(notebooks, "PARAMS_DIR", tmp_path)
    with pytest.raises(SettingsError, match=r"run_hours.yaml: \"\(13's runs\) were timed alike\""):
        notebooks.measured_hours("cpu")


def test_gpu_workflow_parses_and_runs_the_make_target_that_runs_every_notebook_at_gpu_smoke():
    """The GPU workflow cannot run here: its YAML must parse, its make commands must exist and expand
    to the notebook runner at the gpu-smoke scale, and it must keep what that scale writes."""
    workflow = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "gpu-notebooks.yml").read_text())
    job = workflow["jobs"]["notebooks"]
    assert "self-hosted" in job["runs-on"] and True in workflow  # YAML reads the key `on` as True
    commands = [line.strip() for step in job["steps"] if "run" in step for line in step["run"].splitlines()]
    make_commands = [line for line in commands if line.startswith("make ")]
    assert any(command.startswith("make paper-slice") for command in make_commands)
    for command in make_commands:
        words = [word.replace('"$NPROC"', "2") for word in shlex.split(command, posix=False)]
        dry = subprocess.run(["make", "-n", *words[1:]], cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        if words[1] == "paper-slice":
            assert "-m mmue_lib.notebooks --scale gpu-smoke --yes --set nproc=2" in dry.stdout
    kept = next(step for step in job["steps"] if "upload-artifact" in step.get("uses", ""))["with"]["path"].split()
    assert kept == [f"{folder}/gpu-smoke/" for folder in ("executed", "results", "figures")]


def test_executed_notebooks_keep_only_the_last_state_of_progress_bars(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rrun 1/2: 10%"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rrun 1/2: 100%\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="done\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="MedR 12\n")]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    tidy_outputs(path)
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [(output.name, output.text) for output in outputs] == [("stderr", "run 1/2: 100%\n"),
                                                                  ("stdout", "done\nMedR 12\n")]


def test_a_long_run_is_started_only_when_asked_for(tmp_path, monkeypatch, capsys):
    import papermill

    from mmue_lib import notebooks

    monkeypatch.setenv("MMUE_CACHE", str(tmp_path / "empty-cache"))
    started = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, out, **kwargs: started.append(source))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert notebooks.main(["--scale", "cpu", "--only", "02_table1", "--output-root", str(tmp_path)]) == 1
    assert "start about" in capsys.readouterr().out and started == []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "n")
    assert notebooks.main(["--scale", "cpu", "--only", "02_table1", "--output-root", str(tmp_path)]) == 1
    assert started == []
    assert notebooks.main(["--scale", "cpu", "--only", "02_table1", "--output-root", str(tmp_path), "--yes"]) == 0
    assert len(started) == 1
    assert notebooks.main(["--scale", "smoke", "--only", "01_data_overview", "--output-root", str(tmp_path)]) == 0
    assert len(started) == 2, "a run of minutes starts without a question"


def test_the_report_is_a_page_per_executed_notebook_and_an_index(tmp_path):
    import nbformat

    from mmue_lib.notebooks import write_report

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Table 1: the headline\n\ntext"),
                                               nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
                                                   "execute_result", {"text/plain": "2"}, execution_count=1)])])
    (tmp_path / "executed" / "smoke").mkdir(parents=True)
    nbformat.write(notebook, tmp_path / "executed" / "smoke" / "02_table1.ipynb")
    index = write_report("smoke", tmp_path, tmp_path / "site")
    text = index.read_text()
    assert '<a href="smoke/02_table1.html">02_table1</a>: Table 1: the headline' in text
    assert "Not executed at this scale yet: 01_data_overview" in text
    assert "the headline" in (tmp_path / "site" / "smoke" / "02_table1.html").read_text()
    with pytest.raises(FileNotFoundError, match="make repro SCALE=cpu"):
        write_report("cpu", tmp_path, tmp_path / "site")
