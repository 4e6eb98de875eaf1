import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from mmue_lib import faces
from mmue_lib.data import DataError
from mmue_lib.metrics import identity_metrics, random_identity_metrics, random_metrics, retrieval_metrics


def face_folder(tmp_path, train_rows, test_rows):
    (tmp_path / "images").mkdir(exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        lines = ["image,name"]
        for index, name in enumerate(rows):
            path = f"images/{split}_{index}.png"
            shade = (37 * index) % 255
            Image.new("RGB", (20, 24), (shade, 255 - shade, 90)).save(tmp_path / path)
            lines.append(f"{path},{name}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_named_faces_use_one_pseudonym_per_person_in_every_split(tmp_path):
    folder = face_folder(tmp_path, ["Ann Real", "Bob Real", "Ann Real", "Cy Real"], ["Bob Real", "Ann Real"])
    train = faces.load_named_faces(folder, "train", 16, captions_per_image=2, progress=False)
    test = faces.load_named_faces(folder, "test", 16, progress=False)
    assert train.num_images == 4 and train.num_rows == 8 and test.num_rows == 2
    assert train.extra["people"] == test.extra["people"] and len(set(train.extra["people"])) == 3
    assert not any("Real" in caption for caption in train.captions + test.captions)
    assert train.extra["identity"].tolist() == [0, 1, 0, 2] and test.extra["identity"].tolist() == [1, 0]
    ann = train.extra["people"][0]
    assert test.captions[1] == faces.CAPTION_TEMPLATES[0].format(name=ann)
    assert all(ann in c for c in train.captions[0:2] + train.captions[4:6])
    assert train.captions[0] != train.captions[1], "an image's captions come from distinct templates"
    again = faces.load_named_faces(folder, "train", 16, captions_per_image=2, progress=False)
    assert again.captions == train.captions


def test_face_people_can_be_limited(tmp_path):
    folder = face_folder(tmp_path, ["Ann", "Bob", "Cy", "Ann"], ["Cy", "Ann"])
    train = faces.load_named_faces(folder, "train", 16, people=2, progress=False)
    test = faces.load_named_faces(folder, "test", 16, people=2, progress=False)
    assert train.num_images == 3 and test.num_images == 1 and len(test.extra["people"]) == 2


def test_unknown_test_person_is_an_error_naming_file_and_line(tmp_path):
    folder = face_folder(tmp_path, ["Ann", "Bob"], ["Ann", "Zed"])
    with pytest.raises(DataError, match=r"test\.csv: line 3: 'Zed' is not a person of train\.csv"):
        faces.load_named_faces(folder, "test", 16, progress=False)


def test_identity_metrics_match_retrieval_metrics_with_one_photo_each():
    generator = torch.Generator().manual_seed(0)
    photos, names = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    identity = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    got = identity_metrics(photos, names, identity)
    assert got == retrieval_metrics(photos, names[identity], torch.arange(7))


def test_identity_metrics_rank_a_person_by_the_best_photo():
    names = torch.eye(3)
    photos = torch.tensor([[1.0, 0, 0], [0, 0.2, 0.9], [0, 1.0, 0], [0.1, 0.9, 0]])
    identity = torch.tensor([0, 1, 1, 2])
    got = identity_metrics(photos, names, identity)
    # photo -> name ranks: 1, 2, 1, 3; name -> best photo ranks: 1, 1, 2 (photo 1 beats photo 3 for name 2)
    assert got["i2t_R@1"] == 50.0 and got["i2t_MedR"] == 1
    assert got["t2i_R@1"] == pytest.approx(200 / 3) and got["t2i_MedR"] == 1


def test_random_identity_metrics_are_exact():
    assert random_identity_metrics(torch.arange(20)) == pytest.approx(random_metrics(torch.arange(20)))
    identity = torch.tensor([0, 0, 1, 2, 2, 2])
    best_ranks = []
    for order in itertools.permutations(range(6)):  # every ordering of the photos under one name query
        for person in range(3):
            best_ranks.append(min(order.index(i) for i in range(6) if identity[i] == person) + 1)
    ranks = np.array(best_ranks)
    chance = random_identity_metrics(identity)
    assert chance["t2i_R@1"] == pytest.approx((ranks <= 1).mean() * 100)
    assert chance["t2i_R@5"] == pytest.approx((ranks <= 5).mean() * 100)
    assert chance["t2i_MedR"] == np.floor(np.median(ranks - 1)) + 1
    assert chance["i2t_R@1"] == pytest.approx(100 / 3) and chance["i2t_MedR"] == 2


def test_face_retrieval_reports_one_photo_per_person_and_all_photos(tmp_path):
    from mmue_lib.models import create_clip

    folder = face_folder(tmp_path, ["Ann", "Bob", "Cy"], ["Bob", "Ann", "Bob", "Cy"])
    test = faces.load_named_faces(folder, "test", 32, progress=False)
    metrics = faces.face_retrieval(create_clip("RN-tiny", seed=0), test)
    assert {"i2t_MedR", "t2i_R@1", "all i2t_MedR", "all t2i_R@10"} <= set(metrics)
    assert metrics["i2t_R@10"] == 100.0 and 1 <= metrics["all t2i_MedR"] <= 4
