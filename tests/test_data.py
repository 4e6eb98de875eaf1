import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmue_lib.cli import main
from mmue_lib.data import (DataError, PairDataset, convert_coco_captions, convert_flickr8k_token,
                           convert_karpathy_json, load_csv_dataset, make_synthetic_dataset,
                           read_caption_csv, shrink_dataset_folder, write_dataset_folder)


def save_image(path, mode="RGB", size=(40, 30), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        image = Image.new("L", size, 90)
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (*color, 0))
    elif mode == "P":
        image = Image.new("RGB", size, color).convert("P", palette=Image.ADAPTIVE, colors=4)
    else:
        image = Image.new("RGB", size, color)
    image.save(path)
    return path


def write_csv(path, rows, header="image,caption"):
    path.write_text(header + "\n" + "".join(f"{image},{caption}\n" for image, caption in rows))
    return path


def test_csv_groups_rows_by_image_with_stable_ids(tmp_path):
    save_image(tmp_path / "img" / "a.jpg")
    save_image(tmp_path / "img" / "b.png")
    absolute = save_image(tmp_path / "elsewhere" / "c.png")
    csv_path = write_csv(tmp_path / "data.csv", [
        ("img/a.jpg", "a red thing"), ("img/a.jpg", "another caption"), ("img/b.png", "b caption"),
        (str(absolute), "c caption"), ("img/a.jpg", "late caption of a")])
    data = load_csv_dataset(csv_path, 16, progress=False)
    assert data.num_images == 3 and data.num_rows == 5
    assert data.row_image.tolist() == [0, 0, 1, 2, 0]
    assert data.images.shape == (3, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.rows_of_image() == [[0, 1, 4], [2], [3]]
    assert data.image_paths[2] == str(absolute)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_odd_images_are_converted(tmp_path, mode):
    save_image(tmp_path / "x.png", mode=mode, size=(37, 91))
    data = load_csv_dataset(write_csv(tmp_path / "d.csv", [("x.png", "cap")]), 24, progress=False)
    assert data.images.shape == (1, 3, 24, 24)
    if mode == "RGBA":  # fully transparent -> composited on white
        assert data.images.min() == 255


def test_resize_is_short_side_then_center_crop(tmp_path):
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, 20:40] = 255  # white centre third
    Image.fromarray(image).save(tmp_path / "wide.png")
    data = load_csv_dataset(write_csv(tmp_path / "d.csv", [("wide.png", "cap")]), 20, progress=False)
    assert data.images[0].float().mean() > 250


@pytest.mark.parametrize("rows,header,message", [
    ([("a.png", "ok")], "image,text", "missing column 'caption'"),
    ([("a.png", "ok"), ("a.png", " ")], "image,caption", "line 3: empty caption"),
    ([("a.png", "ok"), ("missing.png", "x")], "image,caption", "line 3: image file not found"),
    ([("a.png", "ok"), ("broken.jpg", "x")], "image,caption", "line 3: cannot read image"),
    ([], "image,caption", "no data rows"),
])
def test_bad_input_names_file_and_row(tmp_path, rows, header, message):
    save_image(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    csv_path = write_csv(tmp_path / "bad.csv", rows, header)
    with pytest.raises(DataError, match=message) as error:
        load_csv_dataset(csv_path, 16, progress=False)
    assert str(csv_path) in str(error.value)


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_caption_csv(tmp_path / "nope.csv")


def test_csvs_as_spreadsheets_write_them_are_read(tmp_path):
    (tmp_path / "trip").mkdir()
    save_image(tmp_path / "trip" / "a.png")
    (tmp_path / "excel.csv").write_bytes("\ufeffimage,caption,credit\r\ntrip\\a.png,a dog, running,Ann\r\n".encode())
    with pytest.raises(DataError, match="line 2: 4 columns where the header names 3: put a caption"):
        read_caption_csv(tmp_path / "excel.csv")
    (tmp_path / "by_hand.csv").write_text("image,caption\ntrip/a.png,a dog, running, jumping\n")
    assert read_caption_csv(tmp_path / "by_hand.csv").captions == ["a dog, running, jumping"]
    (tmp_path / "excel.csv").write_bytes("\ufeffimage,caption,credit\r\ntrip\\a.png,\"a dog, running\",Ann\r\n".encode())
    table = read_caption_csv(tmp_path / "excel.csv")
    assert table.image_paths == [tmp_path / "trip" / "a.png"] and table.captions == ["a dog, running"]
    assert table.extra_columns == ["credit"] and table.row_extras == [{"credit": "Ann"}]
    (tmp_path / "semicolons.csv").write_text("image;caption\ntrip/a.png;a dog, running\n")
    assert read_caption_csv(tmp_path / "semicolons.csv").captions == ["a dog, running"]
    (tmp_path / "tabs.csv").write_text("image\tcaption\ntrip/a.png\ta dog\n")
    assert read_caption_csv(tmp_path / "tabs.csv").captions == ["a dog"]
    (tmp_path / "other.csv").write_text("photo:text\ntrip/a.png:a dog\n")
    with pytest.raises(DataError, match="tried columns separated by comma, semicolon, tab"):
        read_caption_csv(tmp_path / "other.csv")
    (tmp_path / "latin.csv").write_bytes("image,caption\ntrip/a.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text .*save it as CSV UTF-8"):
        read_caption_csv(tmp_path / "latin.csv")


def test_image_cache_is_reused_and_invalidated(tmp_path):
    cache = tmp_path / "cache"
    image = save_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "d.csv", [("a.png", "cap")])
    first = load_csv_dataset(csv_path, 8, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 1
    assert torch.equal(load_csv_dataset(csv_path, 8, cache_dir=cache, progress=False).images, first.images)
    save_image(image, color=(0, 0, 250))
    os.utime(image, ns=(1, 1))
    second = load_csv_dataset(csv_path, 8, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 2 and not torch.equal(second.images, first.images)


def test_decoded_images_are_mapped_from_the_cache_and_copy_on_write(tmp_path):
    cache = tmp_path / "cache"
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png", color=(0, 0, 250))
    csv_path = write_csv(tmp_path / "d.csv", [("a.png", "cap a"), ("b.png", "cap b")])
    images = load_csv_dataset(csv_path, 8, cache_dir=cache, progress=False).images
    cache_file, = cache.glob("*.npy")
    assert isinstance(np.load(cache_file, mmap_mode="r"), np.memmap) and images.shape == (2, 3, 8, 8)
    assert torch.equal(images, torch.from_numpy(np.load(cache_file)))
    images[0] = 0
    assert torch.equal(load_csv_dataset(csv_path, 8, cache_dir=cache, progress=False).images,
                       torch.from_numpy(np.load(cache_file))) and int(np.load(cache_file)[0].max()) > 0


def test_max_images_takes_a_slice(tmp_path):
    for name in "abc":
        save_image(tmp_path / f"{name}.png")
    csv_path = write_csv(tmp_path / "d.csv", [(f"{n}.png", f"{n} {i}") for n in "abc" for i in range(2)])
    data = load_csv_dataset(csv_path, 8, max_images=2, progress=False)
    assert data.num_images == 2 and data.captions == ["a 0", "a 1", "b 0", "b 1"]


def test_flickr8k_token_converter(tmp_path):
    for name in ("1.jpg", "2.jpg"):
        save_image(tmp_path / "Flicker8k_Dataset" / name)
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("1.jpg#1\tsecond of one\n1.jpg#0\tfirst of one\n2.jpg#0\tonly of two\n3.jpg#0\tnot in split\n")
    split = tmp_path / "Flickr_8k.testImages.txt"
    split.write_text("2.jpg\n1.jpg\n")
    out = tmp_path / "out" / "test.csv"
    assert convert_flickr8k_token(token, split, tmp_path / "Flicker8k_Dataset", out) == 3
    data = load_csv_dataset(out, 8, progress=False)
    assert data.captions == ["only of two", "first of one", "second of one"]
    assert data.row_image.tolist() == [0, 1, 1]
    split.write_text("9.jpg\n")
    with pytest.raises(DataError, match="line 1: image '9.jpg' has no captions"):
        convert_flickr8k_token(token, split, tmp_path, out)


def test_karpathy_converter(tmp_path):
    save_image(tmp_path / "imgs" / "val2014" / "a.jpg")
    save_image(tmp_path / "imgs" / "train2014" / "b.jpg")
    spec = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test",
         "sentences": [{"raw": "A first.", "tokens": ["a", "first"]}, {"tokens": ["only", "tokens"]}]},
        {"filepath": "train2014", "filename": "b.jpg", "split": "restval", "sentences": [{"raw": "B."}]},
    ]}
    json_path = tmp_path / "dataset_coco.json"
    json_path.write_text(json.dumps(spec))
    convert_karpathy_json(json_path, "test", tmp_path / "imgs", tmp_path / "test.csv")
    assert load_csv_dataset(tmp_path / "test.csv", 8, progress=False).captions == ["A first.", "only tokens"]
    convert_karpathy_json(json_path, ["train", "restval"], tmp_path / "imgs", tmp_path / "train.csv")
    assert load_csv_dataset(tmp_path / "train.csv", 8, progress=False).captions == ["B."]
    with pytest.raises(DataError, match="no image in split"):
        convert_karpathy_json(json_path, "val", tmp_path / "imgs", tmp_path / "val.csv")


def test_coco_converter_keeps_first_captions(tmp_path):
    save_image(tmp_path / "val2014" / "x.jpg")
    spec = {"images": [{"id": 7, "file_name": "x.jpg"}],
            "annotations": [{"image_id": 7, "id": i, "caption": f"caption {i}"} for i in (5, 1, 3, 2, 4, 6)]}
    json_path = tmp_path / "captions_val2014.json"
    json_path.write_text(json.dumps(spec))
    convert_coco_captions(json_path, tmp_path / "val2014", tmp_path / "coco.csv")
    data = load_csv_dataset(tmp_path / "coco.csv", 8, progress=False)
    assert data.captions == [f"caption {i}" for i in (1, 2, 3, 4, 5)]


def test_synthetic_set_is_deterministic_and_descriptive():
    first = make_synthetic_dataset(20, 32, seed=3)
    again = make_synthetic_dataset(20, 32, seed=3)
    other = make_synthetic_dataset(20, 32, seed=4)
    assert torch.equal(first.images, again.images) and first.captions == again.captions
    assert not torch.equal(first.images, other.images)
    assert first.num_rows == 100 and first.row_image.tolist() == [i // 5 for i in range(100)]
    for rows in first.rows_of_image():
        captions = [first.captions[r] for r in rows]
        assert len(set(captions)) == 5
        colours = {w for c in captions for w in c.replace(",", " ").replace(":", " ").split()
                   if w in ("red", "green", "blue", "yellow", "purple", "orange")}
        assert 1 <= len(colours) <= 2
    red_image = first.captions.index(next(c for c in first.captions if c.startswith("a red")))
    image = first.images[first.row_image[red_image]].float()
    assert (image[0] - image[2]).max() > 100  # some pixels are strongly red


def test_dataset_folder_round_trip_is_lossless(tmp_path):
    data = make_synthetic_dataset(6, 32, seed=1)
    csv_path = write_dataset_folder(data, tmp_path / "synthetic")
    loaded = load_csv_dataset(csv_path, 32, progress=False)
    assert torch.equal(loaded.images, data.images)
    assert loaded.captions == data.captions and torch.equal(loaded.row_image, data.row_image)


def test_shrunk_folder_holds_the_first_images_resized_as_the_loader_resizes_them(tmp_path):
    for split, seed in (("train", 0), ("test", 1)):
        write_dataset_folder(make_synthetic_dataset(8, 48, seed=seed), tmp_path / "source", f"{split}.csv",
                             f"images/{split}")
    assert main(["shrink", "--data", str(tmp_path / "source"), "--out", str(tmp_path / "small"), "--size", "24",
                 "--max-images", "5", "--max-test-images", "3", "--splits", "train,test"]) == 0
    for split, count in (("train", 5), ("test", 3)):
        expected = load_csv_dataset(tmp_path / "source" / f"{split}.csv", 24, max_images=count, progress=False)
        small = load_csv_dataset(tmp_path / "small" / f"{split}.csv", 24, progress=False)
        assert torch.equal(small.images, expected.images), "PNG copies load back pixel for pixel"
        assert small.captions == expected.captions and torch.equal(small.row_image, expected.row_image)

    shrink_dataset_folder(tmp_path / "source", tmp_path / "jpeg", 24, {"test": None}, "jpeg", progress=False)
    jpeg = load_csv_dataset(tmp_path / "jpeg" / "test.csv", 24, progress=False)
    exact = load_csv_dataset(tmp_path / "source" / "test.csv", 24, progress=False)
    assert jpeg.num_images == 8 and (jpeg.images.float() - exact.images.float()).abs().mean() < 8
    with pytest.raises(DataError, match="no val.csv"):
        shrink_dataset_folder(tmp_path / "source", tmp_path / "x", 24, {"val": None}, progress=False)


def test_subset_renumbers_images():
    data = make_synthetic_dataset(5, 16, captions_per_image=2, seed=0)
    part = data.subset([3, 1])
    assert torch.equal(part.images[0], data.images[3])
    assert part.captions == [data.captions[6], data.captions[7], data.captions[2], data.captions[3]]
    assert part.row_image.tolist() == [0, 0, 1, 1]


def test_pair_dataset_checks_its_shape():
    with pytest.raises(ValueError, match="uint8"):
        PairDataset(torch.zeros(1, 3, 4, 4), ["x"], torch.tensor([0]))
    with pytest.raises(ValueError, match="outside"):
        PairDataset(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["x"], torch.tensor([1]))


def test_real_flickr8k_split(shared_data):
    test = read_caption_csv(shared_data / "flickr8k" / "test.csv")
    assert len(test.image_paths) == 1000 and len(test.captions) == 5000
    assert test.row_image == [i // 5 for i in range(5000)]
    train = read_caption_csv(shared_data / "flickr8k" / "train.csv")
    assert len(train.image_paths) == 6091
    assert not set(train.image_paths) & set(test.image_paths)
    data = load_csv_dataset(shared_data / "flickr8k" / "test.csv", 64, max_images=12, progress=False)
    assert data.images.shape == (12, 3, 64, 64) and data.images.float().std() > 20


def test_real_faces20_names(shared_data):
    faces = read_caption_csv(shared_data / "faces20" / "train.csv", caption_column="name")
    assert len(set(faces.captions)) == 20
