import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmue_lib.cli import main
from mmue_lib.data import load_rgb, make_synthetic_dataset, read_caption_csv, resize_center_crop
from mmue_lib.photos import SHIPPED_GENERATOR, Photo, carry_noise, model_view, open_photo, published_names, unbound_advice
from mmue_lib.release import blockiness, ssim
from odd_photos import displayed_size, write_odd_photos


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """The ten kinds of `odd_photos.KINDS` and an 8 x 8 PNG, from synthetic scenes."""
    sources = [image.permute(1, 2, 0).numpy() for image in make_synthetic_dataset(10, 64, seed=5).images]
    return write_odd_photos(sources, tmp_path_factory.mktemp("odd"), ["a red circle", "a blue square"])


def test_photos_are_read_as_displayed_at_8_bits(odd_folder):
    folder = odd_folder.parent
    for path in sorted(folder.glob("*_*.*")):
        photo = open_photo(path)
        assert photo.size == displayed_size(path.name), path.name
        assert photo.pixels.dtype == np.uint8
        kind = path.name.split("_")[0]
        assert photo.gray == (kind in ("gray", "deep", "graya")), path.name
        assert (photo.alpha is not None) == (kind in ("alpha", "graya")), path.name
    deep, gray = open_photo(folder / "deep_6.png"), open_photo(folder / "gray_2.jpg")
    assert "16-bit grayscale scaled to 8 bits" in deep.notes and 20 < deep.pixels.mean() < 235
    rotated = open_photo(folder / "rotated_7.jpg")
    assert rotated.notes == ["EXIF orientation 6 applied"]
    assert gray.pixels.shape[2] == 1


def test_carried_noise_keeps_the_bound_and_comes_back_through_the_collectors_resize(odd_folder):
    generator = torch.Generator().manual_seed(0)
    for path in sorted(odd_folder.parent.glob("*_*.*")):
        photo = open_photo(path)
        noise = (torch.randint(0, 2, (3, 32, 32), generator=generator) * 16 - 8).to(torch.int8).numpy()
        noise = noise.repeat(2, axis=1).repeat(2, axis=2)
        protected = carry_noise(photo, noise, 8)
        assert protected.shape == photo.pixels.shape
        assert np.abs(protected.astype(int) - photo.pixels.astype(int)).max() <= 8
        if path.name.startswith("tiny"):
            continue
        seen = model_view(Photo(path, protected, photo.alpha), 64).astype(int) - model_view(photo, 64)
        expected = noise[:1].repeat(3, 0) if photo.gray else noise
        opaque = slice(None) if photo.alpha is None else slice(12, 52)
        assert np.mean(np.sign(seen[:, opaque]) == np.sign(expected[:, opaque])) > 0.9, path.name


def test_gray_noise_is_tied_across_channels_in_pgd():
    from mmue_lib.protect import pgd

    noise = torch.zeros(2, 3, 4, 4)
    target = torch.randn(2, 3, 4, 4)
    tied, _ = pgd(lambda n: ((n - target) ** 2).sum(), noise, 8, 1, 3, tied_channels=torch.tensor([True, False]))
    assert (tied[0] == tied[0, :1]).all() and not (tied[1] == tied[1, :1]).all()


def test_published_names_keep_each_photos_name_and_keep_same_stem_photos_apart(tmp_path):
    (tmp_path / "trip").mkdir()
    for name in ("a.jpg", "trip/b.png", "a.png", "c.jpg"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    (tmp_path / "photos.csv").write_text("image,caption\na.jpg,one\ntrip/b.png,two\nc.jpg,three\n")
    table = read_caption_csv(tmp_path / "photos.csv")
    assert published_names(table) == (["images/a.png", "images/trip/b.png", "images/c.png"], [])
    assert published_names(table, [False, False, True], "jpeg")[0] == ["images/a.jpg", "images/trip/b.jpg",
                                                                       "images/c.png"], "transparency stays PNG"
    (tmp_path / "photos.csv").write_text("image,caption\na.jpg,one\na.png,two\nc.jpg,three\n")
    names, notes = published_names(read_caption_csv(tmp_path / "photos.csv"))
    assert names == ["images/a-jpg.png", "images/a-png.png", "images/c.png"]
    assert notes[0] == "a.jpg (line 2) is published as images/a-jpg.png: another photo would also be images/a.png"


def test_carried_noise_is_smooth_and_covers_the_whole_photo():
    noise = (torch.randint(0, 2, (3, 64, 64), generator=torch.Generator().manual_seed(1)) * 16 - 8).numpy()
    panorama = Photo("sky.png", np.full((300, 1200, 3), 128, np.uint8))
    assert (carry_noise(panorama, noise, 8) != 128).any(axis=2).mean() > 0.9, "the sides carry noise too"
    snow = Photo("snow.png", np.full((640, 640, 3), 200, np.uint8))
    protected = carry_noise(snow, noise, 8)
    mosaic = (snow.pixels + noise.repeat(10, axis=1).repeat(10, axis=2).transpose(1, 2, 0)).astype(np.uint8)
    assert blockiness(snow.pixels, mosaic) > 0.9, "a mosaic of the model's pixels is all steps"
    assert blockiness(snow.pixels, protected) < 0.1, "the carried noise has no steps"
    assert 0.5 < ssim(snow.pixels, protected) < 1 and ssim(snow.pixels, snow.pixels) == 1


def test_a_small_collection_gets_no_advice_that_does_not_help():
    from types import SimpleNamespace

    from mmue_lib.methods import protection_config, schedule_settings

    config = protection_config("mem-3", schedule_settings("calibrated"))
    protection = SimpleNamespace(history=[{"noise_loss": 4.7}] * 3)
    assert "--max-rounds" not in unbound_advice(protection, config, 41, small=True)
    assert "--max-rounds 6" in unbound_advice(protection, config, 5000, small=False)


def test_protect_publishes_every_photo_at_its_own_size_within_the_bound(odd_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["protect", "--csv", str(odd_folder), "--out", str(out), "--model", "RN-tiny", "--size", "32",
            "--max-rounds", "1", "--surrogate-steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main(args + ["--keep-state"]) == 0
    printed = capsys.readouterr()
    assert "about " in printed.out and "round 1 of 1: noise loss" in printed.out
    assert "tiny_0.png is 8 x 8 px" in printed.err
    assert "11 photos: below about 2000 the protection's loss does not fall" in printed.err
    report = json.loads((out / "report.json").read_text())
    table = read_caption_csv(out / "protected.csv")
    assert len(table.image_paths) == len(report["images"]) == 11
    for entry, path in zip(report["images"], table.image_paths):
        source = open_photo(odd_folder.parent / entry["source"].split("/")[-1])
        published = open_photo(path)
        assert path.stem == source.path.stem and published.size == source.size == tuple(entry["size"])
        assert published.gray == source.gray and (published.alpha is None) == (source.alpha is None)
        delta = np.abs(published.pixels.astype(int) - source.pixels.astype(int))
        assert delta.max() <= 8 and entry["max_abs_delta"] == delta.max() and entry["protected"]
    assert all(caption.split()[0] != "a" or len(caption.split()) > 3 for caption in table.captions)
    assert report["visibility"]["blockiness"] < 0.3 and "visibility (means over the protected photos" in printed.out
    assert main(args[:-6] + ["--max-rounds", "2", "--surrogate-steps", "1", "--batch-size", "4", "--device", "cpu",
                             "--keep-state"]) == 0
    printed = capsys.readouterr().out
    assert "continuing after round 1" in printed and "round 2 of 2" in printed and "round 1 of" not in printed
    assert json.loads((out / "report.json").read_text())["rounds"] == 2
    assert main(args[:-6] + ["--max-rounds", "2", "--surrogate-steps", "1", "--batch-size", "4", "--eps", "4",
                             "--device", "cpu"]) == 2
    assert "has other settings (eps 8 saved, 4 now)" in capsys.readouterr().err


def test_t2ue_protects_odd_photos_from_their_captions_with_a_trained_generator(odd_folder, tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "corpus"), "--train-images", "40", "--test-images", "10",
                 "--size", "32"]) == 0
    generator = tmp_path / "generator.pt"
    train = ["train-generator", "--csv", str(tmp_path / "corpus" / "train.csv"), "--out", str(generator),
             "--model", "RN-tiny", "--size", "32", "--max-rounds", "1", "--surrogate-steps", "1",
             "--generator-steps", "2", "--batch-size", "8", "--device", "cpu"]
    assert main(train) == 0
    assert "round 1 of 1: generator loss" in capsys.readouterr().out and generator.is_file()
    assert main(train) == 2 and "exists: pass --force" in capsys.readouterr().err
    out = tmp_path / "out"
    protect = ["protect", "--csv", str(odd_folder), "--out", str(out), "--method", "t2ue", "--device", "cpu"]
    assert main(protect + ["--generator", str(generator), "--eps", "4"]) == 2
    assert "--eps: set when the generator is trained" in capsys.readouterr().err
    assert not out.exists(), "refused before anything is written"
    assert main(protect + ["--generator", str(generator)]) == 0
    printed = capsys.readouterr().out
    assert "ms per photo" in printed and "post the images with their captions" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "t2ue" and report["generator"] == str(generator) and report["image_size"] == 32
    source_table, table = read_caption_csv(odd_folder), read_caption_csv(out / "protected.csv")
    assert table.captions == source_table.captions, "T2UE adds no trigger"
    for entry, path in zip(report["images"], table.image_paths):
        source = open_photo(odd_folder.parent / entry["source"].split("/")[-1])
        published = open_photo(path)
        assert published.size == source.size and published.gray == source.gray
        assert np.abs(published.pixels.astype(int) - source.pixels.astype(int)).max() <= 8
    shipped = tmp_path / "shipped"
    assert main(["protect", "--csv", str(odd_folder), "--out", str(shipped), "--method", "t2ue", "--device", "cpu"]) == 0
    assert "no --generator: using the project's" in capsys.readouterr().err
    report = json.loads((shipped / "report.json").read_text())
    assert report["generator"] == str(SHIPPED_GENERATOR) and report["image_size"] == 64


def test_model_resolution_output_is_what_the_surrogate_saw(tmp_path):
    folder = tmp_path / "photos"
    sources = [image.permute(1, 2, 0).numpy() for image in make_synthetic_dataset(3, 64, seed=1).images]
    csv_path = write_odd_photos(sources, folder, ["a scene"])
    out = tmp_path / "out"
    assert main(["protect", "--csv", str(csv_path), "--out", str(out), "--model", "RN-tiny", "--size", "32",
                 "--max-rounds", "1", "--surrogate-steps", "1", "--batch-size", "4", "--device", "cpu",
                 "--resolution", "model"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(entry["size"] == [32, 32] for entry in report["images"])
    clean = resize_center_crop(load_rgb(folder / "landscape_0.jpg"), 32)
    published = np.asarray(Image.open(out / report["images"][0]["file"])).transpose(2, 0, 1)
    assert np.abs(published.astype(int) - clean).max() <= 8
