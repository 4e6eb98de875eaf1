"""Looking inside victims: t-SNE of image and text features (Figure 6)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.manifold import TSNE

from .data import PairDataset
from .models import encode_images, encode_texts, model_context_length
from .train import TokenizedPairs


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
