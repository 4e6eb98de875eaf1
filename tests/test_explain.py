import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmue_lib import explain
from mmue_lib.data import make_synthetic_dataset
from mmue_lib.models import Tokenizer, create_clip, encode_images, encode_text


@pytest.fixture(scope="module")
def pairs():
    dataset = make_synthetic_dataset(3, 32, seed=4)
    captions = [dataset.captions[rows[0]] for rows in dataset.rows_of_image()]
    return dataset, captions, Tokenizer().tokenize(captions, 32)


@pytest.mark.parametrize("name, stage", [("RN-tiny", 2), ("ViT-tiny", None)])
def test_grad_cam_gives_a_normalised_map_per_image(pairs, name, stage):
    dataset, _, tokens = pairs
    model = create_clip(name, seed=0).train()
    maps = explain.grad_cam(model, dataset.images, tokens, resnet_stage=stage or 4)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert all(m.max() - m.min() > 0.1 for m in maps), "each map should highlight something"
    assert model.training, "the model's mode is restored"


def test_grad_cam_at_the_last_resnet_stage_of_a_32px_model_is_flat(pairs):
    dataset, _, tokens = pairs
    maps = explain.grad_cam(create_clip("RN-tiny", seed=0), dataset.images, tokens, resnet_stage=4)
    assert np.allclose(maps, maps[:, :1, :1]), "a 1x1 feature map cannot localise: the reason for resnet_stage"


def test_integrated_gradients_are_complete(pairs):
    """IG's attributions add up to f(input) - f(baseline) (up to the Riemann error)."""
    dataset, captions, tokens = pairs
    model = create_clip("RN-tiny", seed=1)
    attributions = explain.token_attributions(model, dataset.images, tokens, steps=64)
    tokenizer = Tokenizer()
    baseline = torch.where((tokens == tokenizer.sot) | (tokens == tokenizer.eot), tokens, torch.zeros_like(tokens))
    image_features = encode_images(model, dataset.images)
    model.eval()
    with torch.no_grad():
        def similarity(ids):
            return (F.normalize(encode_text(model, ids), dim=-1) * image_features).sum(-1)
        gap = similarity(tokens) - similarity(baseline)
    for row, caption in enumerate(captions):
        assert len(attributions[row]) == len(tokenizer.encode(caption)), "one score per caption token"
        total = sum(score for _, score in attributions[row])
        assert total == pytest.approx(float(gap[row]), abs=0.02 * max(1.0, abs(float(gap[row]))))


def test_explain_models_covers_every_model(pairs):
    dataset, captions, _ = pairs
    models = {"a": create_clip("RN-tiny", seed=0), "b": create_clip("ViT-tiny", seed=0)}
    got_captions, maps, attributions = explain.explain_models(models, dataset, resnet_stage=2, steps=8)
    assert got_captions == captions and set(maps) == set(attributions) == {"a", "b"}
    assert maps["b"].shape == (3, 32, 32) and len(attributions["a"]) == 3
