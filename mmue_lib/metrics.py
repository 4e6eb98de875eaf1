"""The paper's retrieval metrics (Recall/Hit@K and MedR, both directions) and their random baseline.

Ranks are 1-based and count the gallery items that score strictly higher than the true
item (ties go to the query). Image->text uses, per image, its best-scoring true caption;
text->image ranks each caption's image among all images. R@K is the share of queries with
rank <= K, in percent; MedR = floor(median of 0-based ranks) + 1, as the official code.
Similarities are computed one chunk of queries at a time, so COCO-5K (5,000 x 25,000)
never holds more than `chunk_size` rows of the similarity matrix.
"""
from __future__ import annotations

import math

import numpy as np
import torch

RECALL_KS = (1, 5, 10)


def _summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks = ranks.double()
    metrics = {f"{prefix}_R@{k}": float((ranks <= k).double().mean() * 100) for k in RECALL_KS}
    metrics[f"{prefix}_MedR"] = float(math.floor(float(np.median((ranks - 1).numpy()))) + 1)
    return metrics


def image_to_text_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                        text_image_index: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """[N] rank of each image's best true caption among all M captions."""
    text_image_index = torch.as_tensor(text_image_index, dtype=torch.long)
    if text_image_index.numel() != text_features.shape[0]:
        raise ValueError("text_image_index must give one image index per text feature")
    num_images = image_features.shape[0]
    if torch.bincount(text_image_index, minlength=num_images).min() == 0:
        raise ValueError("every image needs at least one caption for image->text retrieval")
    ranks = torch.empty(num_images, dtype=torch.long)
    text_t = text_features.float().T
    for start in range(0, num_images, chunk_size):
        stop = min(start + chunk_size, num_images)
        sims = image_features[start:stop].float() @ text_t
        is_true = text_image_index.unsqueeze(0) == torch.arange(start, stop).unsqueeze(1)
        best_true = sims.masked_fill(~is_true, float("-inf")).max(dim=1, keepdim=True).values
        ranks[start:stop] = (sims > best_true).sum(dim=1) + 1
    return ranks


def text_to_image_ranks(image_features: torch.Tensor, text_features: torch.Tensor,
                        text_image_index: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """[M] rank of each caption's image among all N images."""
    text_image_index = torch.as_tensor(text_image_index, dtype=torch.long)
    num_texts = text_features.shape[0]
    ranks = torch.empty(num_texts, dtype=torch.long)
    image_t = image_features.float().T
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        sims = text_features[start:stop].float() @ image_t
        true = sims.gather(1, text_image_index[start:stop].unsqueeze(1))
        ranks[start:stop] = (sims > true).sum(dim=1) + 1
    return ranks


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      text_image_index: torch.Tensor, chunk_size: int = 1024) -> dict[str, float]:
    """`i2t_R@{1,5,10}`, `i2t_MedR`, `t2i_R@{1,5,10}`, `t2i_MedR` of features [N, D] and [M, D]."""
    i2t = image_to_text_ranks(image_features, text_features, text_image_index, chunk_size)
    t2i = text_to_image_ranks(image_features, text_features, text_image_index, chunk_size)
    return {**_summary(i2t, "i2t"), **_summary(t2i, "t2i")}


def identity_metrics(image_features: torch.Tensor, name_features: torch.Tensor,
                     image_identity: torch.Tensor) -> dict[str, float]:
    """Retrieval by identity: image -> text ranks the person's text among one text per person;
    text -> image ranks the person's best image among all images. With one image per person
    this is `retrieval_metrics` with the roles of the two sides as usual."""
    image_identity = torch.as_tensor(image_identity, dtype=torch.long)
    present = image_identity.unique()
    i2t = text_to_image_ranks(name_features, image_features, image_identity)
    t2i = image_to_text_ranks(name_features[present], image_features, torch.searchsorted(present, image_identity))
    return {**_summary(i2t, "i2t"), **_summary(t2i, "t2i")}


def _median_rank(survival: np.ndarray) -> float:
    """MedR (1-based, official formula) of a rank distribution given P(rank0 >= r) for r = 0.."""
    cdf = 1.0 - np.append(survival[1:], 0.0)  # P(rank0 <= r)
    return float(np.searchsorted(cdf, 0.5 - 1e-12) + 1)


def random_metrics(text_image_index: torch.Tensor, num_images: int | None = None) -> dict[str, float]:
    """Expected metrics of random guessing (the paper's 'Random' row) for this test set.

    Image->text: the best of an image's m true captions among M has P(rank > r) = C(M-r, m) / C(M, m).
    Text->image: the rank is uniform on 1..N. MedR is the median of the rank distribution.
    """
    index = torch.as_tensor(text_image_index, dtype=torch.long)
    num_images = num_images or int(index.max()) + 1
    num_texts = index.numel()
    counts = torch.bincount(index, minlength=num_images).numpy()
    r = np.arange(num_texts, dtype=np.float64)
    survival = np.zeros(num_texts)
    for m, how_many in zip(*np.unique(counts, return_counts=True)):
        # P(rank0 >= r) = prod_{j<m} (M - r - j) / (M - j)
        terms = np.stack([np.clip(num_texts - r - j, 0, None) / (num_texts - j) for j in range(int(m))])
        survival += how_many * terms.prod(axis=0)
    survival /= num_images
    metrics = {f"i2t_R@{k}": float((1 - survival[k]) * 100) if k < num_texts else 100.0 for k in RECALL_KS}
    metrics["i2t_MedR"] = _median_rank(survival)
    metrics.update({f"t2i_R@{k}": min(k / num_images, 1.0) * 100 for k in RECALL_KS})
    metrics["t2i_MedR"] = _median_rank(1 - np.arange(num_images) / num_images)
    return metrics


def random_identity_metrics(image_identity: torch.Tensor) -> dict[str, float]:
    """Chance level of `identity_metrics`: image -> text is uniform over the people; text -> image
    is a person's best photo among all photos, which is `random_metrics`' image -> text with
    people as the images and photos as their captions."""
    people = torch.searchsorted(image_identity.unique(), torch.as_tensor(image_identity, dtype=torch.long))
    uniform = random_metrics(torch.arange(int(people.max()) + 1))
    best_photo = random_metrics(people)
    return {**{k: v for k, v in uniform.items() if k.startswith("i2t")},
            **{k.replace("i2t", "t2i"): v for k, v in best_photo.items() if k.startswith("i2t")}}
