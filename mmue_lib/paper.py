"""The paper's published numbers, as data, so that every table can show them beside ours."""
from __future__ import annotations

from .methods import METHODS as _METHOD_REGISTRY

DATASETS = ("flickr8k", "flickr30k", "coco")
METHODS = ("Random", "Clean", *(method.label for method in _METHOD_REGISTRY.values() if method.in_paper))
"""Table 1's rows: random guessing, the clean victim, and the registry's methods the paper reports."""

_TABLE1_TEXT = """
Random | 1.2 727 0.9 490 | 1.0 711 1.0 498 | 0.2 3419 0.2 2491
Clean  | 22.7 58 18.5 60 | 46.5 12 42.7 16 | 65.1 5 58.3 7
EM     | 13.8 117 15.9 86 | 9.6 197 7.9 170 | 1.7 1213 1.6 880
UAP    | 12.9 110 16.5 76 | 36.7 26 35.6 24 | 63.8 5 57.1 7
MEM-3  | 4.1 304 3.7 250 | 3.8 412 2.2 308 | 1.7 1705 1.3 1301
MEM-5  | 3.8 308 3.0 275 | 3.9 445 2.0 325 | 0.8 1883 1.1 1466
"""

_TABLE2_TEXT = """
RN50     | 58 308 60 275 | 12 445 16 325 | 5 1086 7 988
RN101    | 52 236 58 197 | 10 404 17 306 | 5 989 6 844
ViT-B-32 | 53 241 52 194 | 9 343 13 287 | 4 1064 4 920
"""


_TABLE3_TEXT = """
free     | 304 250 | 412 308 | 1705 1301
semantic | 256 213 | 365 278 | 1356 1028
"""

_FRACTION_TEXT = """
MEM-3 | 304 250 | 110 95 | 96 98 | 91 97
MEM-5 | 308 275 | 163 126 | 141 114 | 135 116
"""

_TABLE4_TEXT = """
Pretrained | 2.6 77 | 3.3 83 | 3 87
Fine-tuned | 80.7 1 | 85.3 1 | 94 1
MEM-3      | 6.7 74 | 6 66   | 93.3 1
MEM-5      | 8.7 82 | 12.7 58 | 91.3 1
"""


def _parse(text: str, keys: list[str], columns: tuple = DATASETS) -> dict[tuple, dict[str, float]]:
    """Rows of 'label | numbers | numbers ...' into {(label, column): {key: number}}."""
    table = {}
    for line in text.strip().splitlines():
        label, *cells = [part.split() for part in line.split("|")]
        for column, cell in zip(columns, cells):
            table[(label[0], column)] = dict(zip(keys, map(float, cell)))
    return table


TABLE1 = _parse(_TABLE1_TEXT, ["i2t_R@10", "i2t_MedR", "t2i_R@10", "t2i_MedR"])
"""Table 1: Hit@10 (%) and MedR, victim RN50 trained from scratch; keys (method, dataset)."""

TABLE2 = _parse(_TABLE2_TEXT, ["clean i2t_MedR", "MEM-3 i2t_MedR", "clean t2i_MedR", "MEM-3 t2i_MedR"])
"""Table 2: MedR of victims trained on clean data and on MEM-3 data made on RN50; keys (victim, dataset)."""

TABLE3 = _parse(_TABLE3_TEXT, ["i2t_MedR", "t2i_MedR"])
"""Semantic triggers: MedR of MEM-3 victims with free ('free') and BERT-restricted ('semantic')
trigger vocabulary; keys (vocabulary, dataset)."""

FRACTIONS = (1.0, 0.9, 0.5, 0.2)
FRACTION = _parse(_FRACTION_TEXT, ["i2t_MedR", "t2i_MedR"], FRACTIONS)
"""Draft's poisoning-fraction table (Flickr8k): MedR when a fraction p of the images is protected;
keys (method, p)."""

FACE_VICTIMS = ("RN50", "RN101", "ViT-B-32")
TABLE4 = _parse(_TABLE4_TEXT, ["i2t_R@10", "i2t_MedR"], FACE_VICTIMS)
"""Table 4 (face case study, PubFig, one test photo per person): Hit@10 and MedR image -> text
(the paper's text -> image column is a copy of it, a bug); keys (setting, victim)."""


def table1(method: str, dataset: str) -> dict[str, float]:
    """The paper's Table 1 cell group for a method on a dataset (Hit@10 and MedR, both directions)."""
    if (method, dataset) not in TABLE1:
        raise KeyError(f"Table 1 has no row {method!r} for {dataset!r}; methods {METHODS}, datasets {DATASETS}")
    return TABLE1[(method, dataset)]


def seed_study_rows(victim_model: str, labels: list[str], transfer_victims: dict[str, str], transfer_label: str,
                    dataset: str) -> dict[tuple[str, str], dict[str, float]]:
    """The paper's numbers for the seed study's cells, keyed (our victim, training data): Table 1
    rows for `victim_model` (the paper's RN50), Table 2 MedR for the other victims
    (`transfer_victims` maps ours to the paper's architecture)."""
    rows = {(victim_model, label): TABLE1[(label, dataset)] for label in labels if (label, dataset) in TABLE1}
    for ours, theirs in transfer_victims.items():
        published = TABLE2.get((theirs, dataset), {})
        for label, prefix in (("Clean", "clean"), (transfer_label, "MEM-3")):
            cells = {key: published[f"{prefix} {key}"] for key in ("i2t_MedR", "t2i_MedR") if f"{prefix} {key}" in published}
            if cells and (ours, label) not in rows:
                rows[(ours, label)] = cells
    return rows
