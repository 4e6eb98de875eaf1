import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mmue_lib.check import check_verdict
from mmue_lib.cli import main
from mmue_lib.data import load_csv_dataset, make_synthetic_dataset
from mmue_lib.outfolder import state_path
from mmue_lib.train import TrainConfig


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


def test_check_trains_three_victims_on_a_background_and_ranks_your_photos(tmp_path, capsys, monkeypatch):
    assert main(["synthetic", "--out", str(tmp_path / "syn"), "--train-images", "40", "--test-images", "20"]) == 0
    background, yours = tmp_path / "syn" / "train.csv", tmp_path / "syn" / "test.csv"
    same_as_clean = tmp_path / "syn" / "copy.csv"
    same_as_clean.write_text(yours.read_text())
    (tmp_path / "syn" / "report.json").write_text(json.dumps({"image_size": 48}))
    common = ["--model", "RN-tiny", "--epochs", "1", "--batch-size", "20", "--device", "cpu"]
    out = tmp_path / "check"
    assert main(["check", "--clean", str(yours), "--protected", str(same_as_clean), "--background", str(background),
                 "--gallery-others", "10", "--out", str(out), *common]) == 0
    printed, warned = capsys.readouterr()
    assert "was protected at 48 px and is checked at 32 px" in warned, "without --size too: the model's own size"
    assert "victim 1 of 3, never posted (background only): 40 photos" in printed
    assert "victim 3 of 3, protected (background + your protected photos): 60 photos" in printed
    check = json.loads((out / "check.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert check["chance_median_rank"] == 15.5 and set(check["verdict"]) == {"i2t", "t2i"}
    for direction in ("i2t", "t2i"):
        medians = check["yours_median_rank"][direction]
        assert medians["protected"] == medians["posted_clean"], "the same data, seed and settings: the same victim"
        assert check["verdict"][direction] in printed
    assert main(["check", "--clean", str(yours), "--protected", str(same_as_clean), "--background", str(yours),
                 "--gallery-others", "10", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "20 of your 20 photos are also in the background" in capsys.readouterr().err
    monkeypatch.setenv("MMUE_DATA", str(tmp_path / "nowhere"))
    assert main(["check", "--clean", str(yours), "--protected", str(same_as_clean), "--out", str(tmp_path / "bad"),
                 *common]) == 2
    assert "no --background given and no Flickr8k at" in capsys.readouterr().err


def test_check_against_a_pretrained_collector_fine_tunes_its_own_clip(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "syn"), "--train-images", "40", "--test-images", "20"]) == 0
    background, yours = tmp_path / "syn" / "train.csv", tmp_path / "syn" / "test.csv"
    common = ["--clean", str(yours), "--protected", str(yours), "--background", str(background), "--gallery-others",
              "10", "--model", "RN-tiny", "--epochs", "2", "--batch-size", "20", "--device", "cpu"]
    assert main(["check", *common, "--out", str(tmp_path / "bad"), "--frozen-groups", "1"]) == 2
    assert "are for --collector pretrained" in capsys.readouterr().err
    assert main(["check", *common, "--out", str(tmp_path / "bad"), "--collector", "pretrained",
                 "--background-images", "40"]) == 2
    assert "none beyond --background-images 40 for the collector's own CLIP" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists(), "refused before anything is written"
    out = tmp_path / "check"
    assert main(["check", *common, "--out", str(out), "--collector", "pretrained", "--background-images", "25",
                 "--frozen-groups", "1"]) == 0
    printed = capsys.readouterr().out
    assert "the collector's own CLIP: RN-tiny trained on 15 clean background photos" in printed
    assert "victim 1 of 3, never posted (background only): 25 photos" in printed
    check = json.loads((out / "check.json").read_text())
    assert check["collector"].startswith("pretrained") and check["collector_clip"]["background_images"] == 15
    assert check["train"]["epochs"] == 1 and check["train"]["lr"] == pytest.approx(5e-5)
    assert check["train"]["freeze_image_groups"] == 1 and check["collector_clip"]["train"]["epochs"] == 2
    assert torch.load(check["collector_clip"]["file"], weights_only=True)["model_name"] == "RN-tiny"
    for medians in check["yours_median_rank"].values():
        assert medians["protected"] == medians["posted_clean"], "the same data and start: the same victim"


def test_the_pretrained_collector_of_check_fine_tunes_as_the_informed_collector_does():
    from mmue_lib.check import fine_tuning
    from mmue_lib.settings import load_settings

    settings = load_settings("16_informed_collector", "cpu")
    tuned = asdict(fine_tuning(TrainConfig(**settings.train_with(settings.options.own_train))))
    assert {name: tuned[name] for name in settings.options.finetune} == settings.options.finetune


def test_check_says_in_words_what_the_protection_did():
    medians = {"never_posted": 136.0, "posted_clean": 6.0, "protected": 57.0}
    assert check_verdict("i2t", medians, 51 / 130, 100, 500) == (
        "image -> text: the protection works partly: median rank of your 100 photos among 500: 6 posted clean, 57 "
        "protected, 136 never posted; it moved your photos 0.39 of the way from posted clean to never posted")
    unlearnt = {"never_posted": 240.0, "posted_clean": 230.0, "protected": 250.0}
    assert check_verdict("t2i", unlearnt, 2.0, 100, 500).startswith(
        "text -> image: no verdict: a collector's CLIP did not learn your photos better for having seen them")


def test_a_small_collection_draws_its_triggers_from_the_study_vocabulary(tmp_path, capsys):
    from mmue_lib.triggers import study_word_counts

    out = tmp_path / "out"
    assert main(protect_args(small_photo_csv(tmp_path / "photos"), out, "--method", "rmem-8")) == 0
    assert "too few for a trigger of 8 words: its words are drawn from the study's Flickr8k caption vocabulary" \
        in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["trigger_vocab"] == "study"
    triggers = [line.split(",", 1)[1].split()[:8] for line in (out / "protected.csv").read_text().splitlines()[1:]]
    common = study_word_counts()
    assert all(common[word] >= 20 for trigger in triggers for word in trigger)
    assert len({word for trigger in triggers for word in trigger}) > 3


def test_check_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000)" in text and "(default: 8)" in text and "flickr8k/train.csv" in text


def small_photo_csv(folder):
    """Four 40 px photos p0..p3.png with a caption each, in `folder/photos.csv`."""
    csv_path = folder / "photos.csv"
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(make_synthetic_dataset(4, 40, seed=3).images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"p{index}.png")
    csv_path.write_text("image,caption\n" + "".join(f"p{index}.png,photo number {index}\n" for index in range(4)))
    return csv_path


@pytest.mark.parametrize("options, message", [
    (["--eps", "300"], "--eps 300: allowed 1 to 32"),
    (["--eps", "0"], "--eps 0: allowed 1 to 32"),
    (["--fraction", "0"], "--fraction 0.0: allowed above 0"),
    (["--fraction", "1.5"], "--fraction 1.5: allowed above 0 and at most 1"),
    (["--max-rounds", "0"], "--max-rounds 0: allowed 1 to"),
    (["--batch-size", "1"], "--batch-size 1: allowed 2 to"),
    (["--size", "4"], "--size 4: allowed 16 to"),
    (["--trigger-min-count", "0"], "--trigger-min-count 0: allowed 1 to"),
    (["--model", "RN5O"], "--model RN5O: unknown architecture; did you mean RN50"),
    (["--surrogate", "nowhere.pt"], "--surrogate nowhere.pt: file not found"),
])
def test_bad_protect_options_are_refused_before_anything_is_written(tmp_path, capsys, options, message):
    csv_path = small_photo_csv(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["protect", "--csv", str(csv_path), "--out", str(out), *options]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_protect_names_a_folder_in_the_image_column_and_warns_about_duplicate_rows(tmp_path, capsys):
    csv_path = small_photo_csv(tmp_path / "photos")
    (tmp_path / "photos" / "album").mkdir()
    with open(csv_path, "a") as f:
        f.write("p1.png,photo number 1\nalbum,a folder\n")
    assert main(["protect", "--csv", str(csv_path), "--out", str(tmp_path / "out"), "--model", "RN-tiny"]) == 2
    err = capsys.readouterr().err
    assert "line 6 repeats line 3 (same image and caption)" in err
    assert "line 7: " in err and "album is a folder, not an image file" in err
    assert not (tmp_path / "out").exists()


def protect_args(csv_path, out, *options):
    """`mmue protect` of `csv_path` into `out` with a tiny surrogate and one short round."""
    return ["protect", "--csv", str(csv_path), "--out", str(out), "--model", "RN-tiny", "--size", "32",
            "--max-rounds", "1", "--surrogate-steps", "1", "--batch-size", "4", "--device", "cpu", *options]


def test_force_removes_only_what_mmue_protect_wrote(tmp_path, capsys):
    csv_path = small_photo_csv(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(protect_args(csv_path, out)) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"p{i}.png" for i in range(4)]
    assert main(protect_args(csv_path, out)) == 2 and "holds an earlier mmue protect output" in capsys.readouterr().err
    three = tmp_path / "photos" / "three.csv"
    three.write_text("".join(csv_path.read_text().splitlines(keepends=True)[:4]))
    assert main(protect_args(three, out, "--force")) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"p{i}.png" for i in range(3)]
    report = json.loads((out / "report.json").read_text())
    assert all(entry["protected"] and 0 < entry["max_abs_delta"] <= 8 and entry["size"] == [40, 40]
               for entry in report["images"])
    (out / "images" / "notes.txt").write_text("mine")
    assert main(protect_args(csv_path, out, "--force")) == 2
    assert "holds images/notes.txt, which mmue protect did not write there" in capsys.readouterr().err
    assert (out / "images" / "notes.txt").is_file() and (out / "report.json").is_file()
    assert len(list((out / "images").iterdir())) == 4


def test_an_out_that_could_lose_a_photo_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch):
    album = tmp_path / "album" / "images"
    small_photo_csv(album)
    outside = tmp_path / "album.csv"
    outside.write_text("image,caption\n" + "".join(f"album/images/p{i}.png,photo {i}\n" for i in range(4)))
    originals = {p: p.read_bytes() for p in album.iterdir()}
    (tmp_path / "notes.txt").write_text("mine")
    for out, message in ((tmp_path / "album", "holds the photo"), (album, "holds the photo"),
                         (album / "protected", "is inside"), (tmp_path / "notes.txt", "is a file"),
                         (tmp_path / "notes.txt" / "out", "is a file, so the folder cannot be created")):
        assert main(protect_args(outside, out, "--force")) == 2
        assert message in capsys.readouterr().err, out
    assert {p: p.read_bytes() for p in album.iterdir()} == originals and not (album / "protected").exists()
    out = tmp_path / "out"
    assert main(protect_args(outside, out)) == 0
    published = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(protect_args(out / "protected.csv", out, "--force")) == 2, "re-protecting an output into itself"
    assert "holds the photo" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == published
    import mmue_lib.outfolder as outfolder

    monkeypatch.setattr(outfolder.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))
    assert main(protect_args(outside, tmp_path / "full")) == 2
    assert "published photos need about" in capsys.readouterr().err and not (tmp_path / "full").exists()


def test_a_failed_write_keeps_the_protection_and_a_rerun_publishes_it(tmp_path, capsys, monkeypatch):
    import mmue_lib.photos as photos

    csv_path = small_photo_csv(tmp_path / "photos")
    out = tmp_path / "out"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(photos, "save_photo", full_disk)
        assert main(protect_args(csv_path, out)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command to publish it without computing" in err
    assert "Traceback" not in err
    assert main(protect_args(csv_path, out)) == 0
    printed = capsys.readouterr().out
    assert "continuing after round 1" in printed and "round 1 of 1" not in printed
    assert len(list((out / "images").iterdir())) == 4 and not state_path(out).exists()


def test_ctrl_c_says_in_one_line_how_to_continue(tmp_path, capsys, monkeypatch):
    import mmue_lib.photos as photos

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(photos, "generate_protection", interrupted)
    assert main(protect_args(small_photo_csv(tmp_path / "photos"), tmp_path / "out")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "mmue: interrupted: rerun the same command to continue"


def test_a_spreadsheet_csv_is_read_and_its_columns_kept_and_jpeg_says_what_it_keeps(tmp_path, capsys):
    csv_path = small_photo_csv(tmp_path / "photos" / "trip")
    excel = tmp_path / "photos" / "excel.csv"
    excel.write_bytes("\ufeffimage;caption;credit\r\n".encode() + "".join(
        f"trip\\p{i}.png;photo number {i}, taken by me;Ann {i}\r\n" for i in range(4)).encode())
    out = tmp_path / "out"
    assert main(protect_args(excel, out, "--output-format", "jpeg", "--quality", "90")) == 0
    printed = capsys.readouterr().out
    assert "JPEG at quality 90 keeps" in printed
    lines = (out / "protected.csv").read_text().splitlines()
    assert lines[0] == "image,caption,credit" and lines[1].startswith("images/trip/p0.jpg,") and lines[1].endswith(",Ann 0")
    report = json.loads((out / "report.json").read_text())
    assert 0.3 < report["visibility"]["noise_kept"] < 1 and all(e["file"].endswith(".jpg") for e in report["images"])


def test_training_options_take_their_defaults_and_choices_from_train_config(capsys):
    from dataclasses import fields

    from mmue_lib.cli import TRAINING_OPTIONS, build_parser
    from mmue_lib.train import TrainConfig

    args = build_parser().parse_args(["train", "--csv", "a.csv", "--out", "o"])
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert {name: getattr(args, name) for name in TRAINING_OPTIONS} == {name: defaults[name] for name in TRAINING_OPTIONS}
    with pytest.raises(SystemExit):
        main(["train", "--csv", "a.csv", "--out", "o", "--rows-per-epoch", "every"])
    assert "choose from 'all', 'one_per_image'" in capsys.readouterr().err


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch):
    import mmue_lib.outfolder as outfolder

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outfolder.tempfile, "mkstemp", read_only)
    assert main(protect_args(small_photo_csv(tmp_path / "photos"), tmp_path / "out")) == 2
    assert "cannot write in" in capsys.readouterr().err and not (tmp_path / "out").exists()
