"""Looking inside victims: Grad-CAM on the image tower and Integrated Gradients on caption
tokens (Figure 5), t-SNE of image and text features (Figure 6).

Both attributions explain the same score: the cosine similarity of an image with its own
caption under the victim. Grad-CAM (pytorch-grad-cam) reads the last ResNet stage, or the
last ViT block with its patch tokens reshaped to a grid; Integrated Gradients (captum) runs
along the token embeddings from a baseline that keeps the start and end tokens and pads the
words.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.manifold import TSNE

from .data import PairDataset
from .models import Tokenizer, encode_images, encode_text, encode_texts, model_context_length, normalize_pixels
from .train import TokenizedPairs


class _ImageTextScores(torch.nn.Module):
    """Normalised pixels -> cosine similarity with each of a fixed set of text features."""

    def __init__(self, model: torch.nn.Module, text_features: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.text_features = text_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True) @ self.text_features.T


def _patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """ViT block output [B, 1 + H*W, D] -> [B, D, H, W] (class token dropped)."""
    patches = tokens[:, 1:, :]
    side = math.isqrt(patches.shape[1])
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def cam_layer(model: torch.nn.Module, resnet_stage: int = 4) -> tuple[torch.nn.Module, object]:
    """The layer Grad-CAM reads and its reshape transform: the last block of ResNet stage
    `resnet_stage` (4 at 224 px gives a 7x7 map; small images need an earlier stage for a map
    larger than 1x1), or the first norm of the last ViT block (pytorch-grad-cam's ViT recipe)."""
    visual = model.visual
    if hasattr(visual, "layer4"):
        return getattr(visual, f"layer{resnet_stage}")[-1], None
    if hasattr(visual, "transformer"):
        return visual.transformer.resblocks[-1].ln_1, _patch_grid
    raise TypeError(f"no Grad-CAM layer known for the image tower {type(visual).__name__}")


def grad_cam(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
             resnet_stage: int = 4) -> np.ndarray:
    """[B, S, S] Grad-CAM maps in [0, 1] of uint8 `images` [B, 3, S, S], each for its similarity
    with the caption in the same row of `tokens`."""
    was_training = model.training
    model.eval()
    try:
        scorer = _ImageTextScores(model, encode_texts(model, tokens))
        layer, reshape = cam_layer(model, resnet_stage)
        with GradCAM(scorer, [layer], reshape_transform=reshape) as cam:
            maps = cam(normalize_pixels(images), targets=[ClassifierOutputTarget(i) for i in range(len(images))])
    finally:
        model.train(was_training)
    return maps


def token_attributions(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                       steps: int = 32) -> list[list[tuple[str, float]]]:
    """Integrated Gradients of each caption's similarity with its image, per caption token:
    a list (one per row) of (token text, attribution) from the first word to the last."""
    tokenizer = Tokenizer()
    was_training = model.training
    model.eval()
    try:
        image_features = encode_images(model, images)
        baseline = torch.where((tokens == tokenizer.sot) | (tokens == tokenizer.eot), tokens, torch.zeros_like(tokens))

        def similarity(batch_tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            return (F.normalize(encode_text(model, batch_tokens), dim=-1) * features).sum(dim=-1)

        attributions = LayerIntegratedGradients(similarity, model.token_embedding).attribute(
            tokens, baselines=baseline, additional_forward_args=(image_features,), n_steps=steps)
    finally:
        model.train(was_training)
    scores = attributions.sum(dim=-1).detach()
    rows = []
    for row, ids in enumerate(tokens.tolist()):
        end = ids.index(tokenizer.eot)
        rows.append([(tokenizer.decode([ids[i]]), float(scores[row, i])) for i in range(1, end)])
    return rows


def joint_features(model: torch.nn.Module, dataset: PairDataset) -> tuple[np.ndarray, np.ndarray]:
    """Normalised features of every image and every caption row of `dataset`, stacked
    (images first), and the image id of each point."""
    pairs = TokenizedPairs.from_dataset(dataset, model_context_length(model))
    features = torch.cat([encode_images(model, pairs.images), encode_texts(model, pairs.tokens)])
    groups = torch.cat([torch.arange(dataset.num_images), pairs.row_image])
    return features.numpy(), groups.numpy()


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (cosine distance) of feature rows; perplexity adapted to small sets."""
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca",
                random_state=seed).fit_transform(features)


def explain_models(models: dict[str, torch.nn.Module], dataset: PairDataset, resnet_stage: int = 4,
                   steps: int = 32) -> tuple[list[str], dict[str, np.ndarray], dict[str, list]]:
    """Figure 5's data for the same examples under every model: each image's first caption,
    Grad-CAM maps and token attributions per model label."""
    captions = [dataset.captions[rows[0]] for rows in dataset.rows_of_image()]
    maps, attributions = {}, {}
    for label, model in models.items():
        tokens = Tokenizer().tokenize(captions, model_context_length(model))
        maps[label] = grad_cam(model, dataset.images, tokens, resnet_stage)
        attributions[label] = token_attributions(model, dataset.images, tokens, steps)
    return captions, maps, attributions
