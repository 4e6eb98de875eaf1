"""Named face photos as image-caption pairs, for the face-privacy case study (paper Table 4).

A face folder holds `train.csv` and `test.csv` with columns `image,name` (like faces20).
Every person gets a fixed pseudonym (the paper renames the celebrities so that a pretrained
CLIP cannot already know them), and every photo captions from templates ("a photo of
{name}."). People are those of `train.csv`, sorted by name; a test row naming someone
else is an error. Retrieval is by identity: image -> text ranks the person's caption among
one caption per person; text -> image ranks that person's best photo among all photos.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .data import CaptionTable, DataError, PairDataset, decode_images, read_caption_csv
from .metrics import identity_metrics, random_identity_metrics
from .models import Tokenizer, encode_images, encode_texts, model_context_length
from .storage import expand_path

PSEUDONYMS = (
    "Alma Verhoef", "Bruno Castellan", "Cora Lindqvist", "Dario Moretti", "Edda Brandt", "Felix Okafor",
    "Greta Halvorsen", "Hugo Delacroix", "Ines Quaresma", "Jonas Weber", "Kira Novak", "Lars Eriksen",
    "Maya Santoro", "Nico Albrecht", "Olga Petrova", "Pablo Ferreira", "Quinn Harlow", "Rosa Kowalski",
    "Soren Dahl", "Tessa Marchetti", "Umar Siddiqui", "Vera Lindgren", "Wim Janssen", "Xenia Pavlova",
    "Yusuf Demir", "Zoe Whitfield", "Anton Rask", "Bianca Ortega", "Cyril Fontaine", "Dalia Haddad",
    "Emil Novotny", "Flora Baptiste", "Gideon Mbeki", "Hana Takeda", "Ivo Rossi", "Jana Horvat",
    "Kofi Mensah", "Lena Strand", "Marco Bellini", "Nadia Farouk",
)
CAPTION_TEMPLATES = (
    "a photo of {name}.",
    "a close-up portrait of {name}.",
    "{name} looking at the camera.",
    "a picture of {name}'s face.",
    "this is {name}, photographed at an event.",
)
"""The first template captions evaluation queries; training photos draw from all of them."""


def face_people(folder: str | os.PathLike, people: int | None = None) -> list[str]:
    """The real names of the people in `train.csv` (sorted), the first `people` of them."""
    table = read_caption_csv(expand_path(folder) / "train.csv", caption_column="name")
    return sorted(set(table.captions))[:people]


def pseudonyms(names: list[str], seed: int = 0) -> dict[str, str]:
    """A fixed pseudonym per real name (a seeded draw without repeats)."""
    if len(names) > len(PSEUDONYMS):
        raise ValueError(f"{len(names)} people but only {len(PSEUDONYMS)} pseudonyms")
    order = np.random.default_rng(seed).permutation(len(PSEUDONYMS))
    return {name: PSEUDONYMS[i] for name, i in zip(sorted(names), order)}


def load_named_faces(folder: str | os.PathLike, split: str, image_size: int, *, people: int | None = None,
                     captions_per_image: int = 1, seed: int = 0, progress: bool = True) -> PairDataset:
    """One split of a face folder as pairs: train photos get `captions_per_image` captions from
    distinct random templates, other splits the first template. `extra` holds `identity` (person id
    per image) and `people` (pseudonym per person id)."""
    folder = expand_path(folder)
    names = face_people(folder, people)
    renamed = pseudonyms(names, seed)
    person_id = {name: index for index, name in enumerate(names)}
    table = read_caption_csv(folder / f"{split}.csv", caption_column="name")
    image_name: dict[int, str] = {}
    for name, image in zip(table.captions, table.row_image):
        line = table.image_lines[image]
        if image_name.setdefault(image, name) != name:
            raise DataError(f"{table.csv_path}: line {line}: image {table.image_paths[image]} is named twice")
        if people is None and name not in person_id:
            raise DataError(f"{table.csv_path}: line {line}: '{name}' is not a person of train.csv")
    kept = [image for image in range(len(table.image_paths)) if image_name[image] in person_id]
    table = CaptionTable(table.csv_path, [table.image_paths[i] for i in kept], [table.image_lines[i] for i in kept],
                         [image_name[i] for i in kept], list(range(len(kept))))
    rng = np.random.default_rng(seed)
    captions, row_image = [], []
    for image, name in enumerate(table.captions):
        chosen = rng.permutation(len(CAPTION_TEMPLATES))[:captions_per_image] if split == "train" else [0]
        captions += [CAPTION_TEMPLATES[t].format(name=renamed[name]) for t in sorted(chosen)]
        row_image += [image] * len(chosen)
    images = decode_images(table, image_size, progress=progress)
    return PairDataset(images, captions, torch.tensor(row_image), name=f"{folder.name}-{split}",
                       image_paths=[str(p) for p in table.image_paths],
                       extra={"identity": torch.tensor([person_id[n] for n in table.captions]),
                              "people": [renamed[n] for n in names]})


def first_photo_per_person(identity: torch.Tensor) -> torch.Tensor:
    """Image ids of each person's first photo (the paper tests on one photo per person)."""
    return torch.tensor([int((identity == person).nonzero()[0]) for person in identity.unique().tolist()])


def face_retrieval(model: torch.nn.Module, dataset: PairDataset) -> dict[str, float]:
    """Identity retrieval of a face split against one first-template caption per person: on each
    person's first photo (as the paper), and on every photo (keys prefixed `all `)."""
    identity = dataset.extra["identity"]
    names = [CAPTION_TEMPLATES[0].format(name=person) for person in dataset.extra["people"]]
    name_features = encode_texts(model, Tokenizer().tokenize(names, model_context_length(model)))
    image_features = encode_images(model, dataset.images)
    one = first_photo_per_person(identity)
    every = identity_metrics(image_features, name_features, identity)
    return {**identity_metrics(image_features[one], name_features, identity[one]),
            **{f"all {key}": value for key, value in every.items()}}


def face_study_metrics(models: dict[str, dict[str, torch.nn.Module]], test_set: PairDataset) -> list[dict]:
    """One row of `face_retrieval` per (victim, setting) of `{victim: {setting: model}}`."""
    return [{"victim": victim, "setting": setting, **face_retrieval(model, test_set)}
            for victim, settings in models.items() for setting, model in settings.items()]


def chance_levels(test_set: PairDataset, paper_people: int = 200) -> list[dict]:
    """Random-guessing identity retrieval on our test photos (one per person, and all) and on
    the paper's PubFig test (one photo each of `paper_people` people)."""
    identity = test_set.extra["identity"]
    one_each = first_photo_per_person(identity)
    return [{"test set": "ours, one photo per person", "people": len(one_each), "photos": len(one_each),
             **random_identity_metrics(identity[one_each])},
            {"test set": "ours, all test photos", "people": len(one_each), "photos": len(identity),
             **random_identity_metrics(identity)},
            {"test set": "paper (PubFig), one photo per person", "people": paper_people, "photos": paper_people,
             **random_identity_metrics(torch.arange(paper_people))}]
