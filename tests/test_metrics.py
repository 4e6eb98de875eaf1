import numpy as np
import pytest
import torch

from mmue_lib.metrics import retrieval_metrics, random_metrics


def reference_metrics(image_features, text_features, text_image_index):
    """Plain loops: rank = 1 + number of gallery items scoring strictly higher."""
    sims = (image_features.double() @ text_features.double().T).numpy()
    index = text_image_index.numpy()
    i2t, t2i = [], []
    for i in range(sims.shape[0]):
        best = min(1 + int(np.sum(sims[i] > sims[i, j])) for j in np.flatnonzero(index == i))
        i2t.append(best)
    for j in range(sims.shape[1]):
        t2i.append(1 + int(np.sum(sims[:, j] > sims[index[j], j])))
    out = {}
    for prefix, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{prefix}_R@{k}"] = 100.0 * np.mean(ranks <= k)
        out[f"{prefix}_MedR"] = float(np.floor(np.median(ranks - 1)) + 1)
    return out


def random_case(seed, num_images=37, dim=8, quantize=None):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (num_images,), generator=g)
    index = torch.repeat_interleave(torch.arange(num_images), counts)
    images = torch.randn(num_images, dim, generator=g)
    texts = images[index] * 0.3 + torch.randn(len(index), dim, generator=g)
    if quantize:
        images, texts = images.round() / quantize, texts.round() / quantize
    return images, texts, index


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantize", [None, 1])
@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_matches_reference(seed, quantize, chunk_size):
    images, texts, index = random_case(seed, quantize=quantize)
    ours = retrieval_metrics(images, texts, index, chunk_size=chunk_size)
    reference = reference_metrics(images, texts, index)
    assert ours.keys() == reference.keys()
    for key in ours:
        assert ours[key] == pytest.approx(reference[key]), key


def test_ties_are_resolved_in_favour_of_the_query():
    images = torch.ones(3, 2)
    texts = torch.ones(6, 2)
    metrics = retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert metrics["i2t_MedR"] == 1 and metrics["t2i_R@1"] == 100


def test_hand_made_ranks_and_median_formula():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [0.1, 0.9], [0.0, 1.0], [1.0, 0.0]])
    metrics = retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 1]))
    # i2t: image 0's best true caption (0.1) is behind text 3 (1.0): rank 2; image 1: rank 1.
    # 0-based ranks [1, 0]: median 0.5 -> floor 0 -> MedR 1.
    assert metrics["i2t_R@1"] == 50.0 and metrics["i2t_MedR"] == 1.0
    # t2i: texts 0, 1, 3 rank their image 2nd, text 2 ranks it 1st; 0-based [1, 1, 0, 1] -> MedR 2.
    assert metrics["t2i_R@1"] == 25.0 and metrics["t2i_MedR"] == 2.0


def test_rejects_image_without_caption():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.randn(3, 4), torch.randn(2, 4), torch.tensor([0, 1]))


def test_random_row_matches_paper_protocol_and_simulation():
    index = torch.arange(1000).repeat_interleave(5)
    expected = random_metrics(index)
    assert expected["i2t_MedR"] == 647 and expected["t2i_MedR"] == 500
    assert expected["t2i_R@10"] == pytest.approx(1.0)
    assert expected["i2t_R@1"] == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    # Best of 5 true captions among 5,000 in random order.
    best = np.array([rng.choice(5000, 5, replace=False).min() + 1 for _ in range(20000)])
    assert np.mean(best <= 10) * 100 == pytest.approx(expected["i2t_R@10"], abs=0.2)
    assert np.median(best) == pytest.approx(expected["i2t_MedR"], rel=0.03)


def test_random_row_with_uneven_caption_counts():
    index = torch.tensor([0, 0, 0, 1, 2, 2])
    expected = random_metrics(index)
    # Image 1 has one caption among 6: P(rank <= 1) = 1/6; images 0 and 2: 1 - C(5,3)/C(6,3), 1 - C(5,2)/C(6,2).
    p1 = ((1 - 10 / 20) + 1 / 6 + (1 - 10 / 15)) / 3
    assert expected["i2t_R@1"] == pytest.approx(p1 * 100)
