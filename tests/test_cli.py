import json

import torch

from mmue_lib.cli import main
from mmue_lib.data import load_csv_dataset, make_synthetic_dataset
from mmue_lib.report import RETRIEVAL_KEYS


def test_synthetic_train_eval_round_trip(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "syn"), "--train-images", "60", "--test-images", "20"]) == 0
    for split, count, seed in (("train", 60, 0), ("val", 20, 1), ("test", 20, 2)):
        written = load_csv_dataset(tmp_path / "syn" / f"{split}.csv", 32, progress=False)
        assert torch.equal(written.images, make_synthetic_dataset(count, 32, seed=seed).images), f"{split} images"
    out = tmp_path / "run"
    assert main(["train", "--csv", str(tmp_path / "syn" / "train.csv"), "--test-csv", str(tmp_path / "syn" / "test.csv"),
                 "--out", str(out), "--model", "RN-tiny", "--epochs", "1", "--batch-size", "30",
                 "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][0]["epoch"] == 1 and "t2i_MedR" in metrics["history"][0]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--csv", str(tmp_path / "syn" / "test.csv")]) == 0
    assert "i2t_MedR" in capsys.readouterr().out
    assert torch.load(out / "model.pt", weights_only=True)["model_name"] == "RN-tiny"


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("image,caption\nmissing.png,hello\n")
    code = main(["train", "--csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"), "--model", "RN-tiny"])
    assert code == 2
    assert "line 2: image file not found" in capsys.readouterr().err
    assert main(["convert", "flickr8k", "--images", ".", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--token, --split-list" in capsys.readouterr().err


def test_check_scores_clean_and_protected_victims_on_unseen_test_images(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "syn"), "--train-images", "40", "--test-images", "20"]) == 0
    train_csv, test_csv = tmp_path / "syn" / "train.csv", tmp_path / "syn" / "test.csv"
    same_as_clean = tmp_path / "syn" / "copy.csv"
    same_as_clean.write_text(train_csv.read_text())
    common = ["--model", "RN-tiny", "--epochs", "1", "--batch-size", "20", "--device", "cpu"]
    out = tmp_path / "check"
    assert main(["check", "--clean", str(train_csv), "--protected", str(same_as_clean), "--test-csv", str(test_csv),
                 "--out", str(out), *common]) == 0
    rows = json.loads((out / "check.json").read_text())["rows"]
    assert set(rows) == {"Random", "Clean", "Protected"}
    scores = {name: {key: row[key] for key in RETRIEVAL_KEYS} for name, row in rows.items()}
    assert scores["Protected"] == scores["Clean"], "the same data, seed and settings must give the same victim"
    assert scores["Random"]["t2i_MedR"] == 10, "text->image chance MedR of 20 test images (floor of 9.5, plus one)"
    assert (out / "clean" / "model.pt").is_file() and (out / "protected" / "model.pt").is_file()
    assert "Protected" in capsys.readouterr().out
    assert main(["check", "--clean", str(train_csv), "--protected", str(same_as_clean), "--test-csv", str(train_csv),
                 "--out", str(tmp_path / "bad"), *common]) == 2
    assert "40 of the 40 images" in capsys.readouterr().err
