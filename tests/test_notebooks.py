"""Every notebook runs at smoke scale through papermill and writes the files it declares."""
import ast
import json

import numpy as np
import pandas as pd
import pytest

from mmue_lib.notebooks import (NOTEBOOK_DIR, PARAMS_DIR, declared_parameters, load_params, notebook_names,
                                notebook_params, run_notebook)
from mmue_lib.storage import expand_path

SCALES = ("smoke", "cpu", "paper")


def test_there_are_notebooks():
    assert notebook_names()


@pytest.mark.parametrize("name", notebook_names())
def test_source_notebook_is_clean_and_has_params_at_every_scale(name):
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit notebooks without outputs"
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    assert notebook["metadata"]["mmue"]["outputs"], "declare the files the notebook writes"
    declared = declared_parameters(name)
    for scale in SCALES:
        own = load_params(PARAMS_DIR / scale / f"{name}.yaml")
        assert set(own) <= declared, f"{scale}/{name}.yaml sets {sorted(set(own) - declared)}, not declared"
        assert set(notebook_params(name, scale)) <= declared


@pytest.mark.parametrize("name", notebook_names())
def test_source_notebook_imports_each_name_once_and_uses_it(name):
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    tree = ast.parse("\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"))
    imported = [(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names]
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert sorted(set(imported) - used) == [], "unused imports"
    assert len(imported) == len(set(imported)), "a name is imported twice"


def test_shared_params_have_the_same_keys_at_every_scale():
    keys = [set(load_params(PARAMS_DIR / scale / "shared.yaml")) for scale in SCALES]
    assert keys[0] == keys[1] == keys[2]


def test_params_must_be_flat(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 1\nb:\n  c: 2\n")
    with pytest.raises(ValueError, match="key 'b' is nested"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.notebook
@pytest.mark.parametrize("name", notebook_names())
def test_notebook_runs_at_smoke_scale(name, tmp_path):
    needed = [expand_path(v) for v in notebook_params(name, "smoke").values()
              if isinstance(v, str) and "MMUE_DATA" in v]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"{name} at smoke scale reads real data not found at {', '.join(missing)} "
                    "(set MMUE_DATA to the folder holding flickr8k/ and faces20/)")
    executed = run_notebook(name, "smoke", output_root=tmp_path)
    assert executed.is_file()
    outputs = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["metadata"]["mmue"]["outputs"]
    for relative in outputs:
        folder, file_name = relative.split("/", 1)
        path = tmp_path / folder / "smoke" / file_name
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {relative}"
        if path.suffix == ".csv":
            table = pd.read_csv(path)
            ours = table.select_dtypes("number").drop(columns=[c for c in table if c.endswith("(paper)")])
            numbers = ours.to_numpy(dtype=float)
            assert len(table) and numbers.size and np.isfinite(numbers).all(), f"{relative} has missing or non-finite numbers"


def test_overrides_reach_only_the_notebooks_that_declare_them(tmp_path, monkeypatch):
    import papermill

    from mmue_lib import notebooks

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda source, out, parameters, **kwargs: seen.__setitem__(source, parameters))
    assert notebooks.main(["--scale", "smoke", "--only", "01_data_overview", "08_poisoning_fraction",
                           "--set", "fractions=[0.5]", "--set", "example_count=2",
                           "--output-root", str(tmp_path)]) == 0
    first, fraction = (seen[str(NOTEBOOK_DIR / f"{n}.ipynb")] for n in ("01_data_overview", "08_poisoning_fraction"))
    assert fraction["fractions"] == [0.5] and "fractions" not in first
    assert first["example_count"] == 2 and first["results_dir"] == str(tmp_path / "results" / "smoke")
    with pytest.raises(SystemExit):
        notebooks.main(["--scale", "smoke", "--set", "no-equals-sign"])


@pytest.mark.parametrize("scale", SCALES)
def test_setting_strings_in_params_parse_at_every_scale(scale):
    """Ablation flips and countermeasures are strings in params: a typo must fail here, not hours into a run."""
    from mmue_lib import defenses, runs

    ablation = notebook_params("11_ablation", scale)
    for flip in ablation["ablation_flips"]:
        runs.protection_overrides(flip)
    countermeasures = notebook_params("10_defenses", scale)
    defenses.parse_defenses(countermeasures["released_defenses"])
    for setting in countermeasures["training_defenses"]:
        defenses.parse_settings(setting)
