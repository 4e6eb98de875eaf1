"""What an informed collector brings against unlearnable examples, beyond transforms (used by
`defenses`): a denoiser trained on clean images (purification, as ECLIPSE and D-VAE do with far
larger models), a detector telling protected from clean images (UDP's question), and a retrieval
captioner that writes a caption without reading the released one."""
from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from .data import PairDataset
from .models import encode_images
from .storage import cache_root, save_torch, seeded_generator, stable_hash


class Denoiser(torch.nn.Module):
    """A small DnCNN-style denoiser: convolutions that predict the noise, subtracted from the input."""

    def __init__(self, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(depth - 2):
            layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(width, 3, 3, padding=1))
        self.residual = torch.nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images in, denoised [0, 1] images out."""
        return images - self.residual(images)


def train_denoiser(clean: torch.Tensor, sigma: float, steps: int, batch_size: int = 32, seed: int = 0) -> Denoiser:
    """A `Denoiser` trained on clean uint8 images [N, 3, S, S] to remove Gaussian noise of a std
    drawn per image in [0, `sigma`] pixel steps (1/255), the blind-denoising recipe; seeded."""
    draws = seeded_generator(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser = Denoiser()
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    for _ in range(steps):
        picked = clean[torch.randint(len(clean), (min(batch_size, len(clean)),), generator=draws)].float() / 255
        std = torch.rand(len(picked), 1, 1, 1, generator=draws) * sigma / 255
        noisy = picked + std * torch.randn(picked.shape, generator=draws)
        loss = torch.nn.functional.mse_loss(denoiser(noisy), picked)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return denoiser.eval()


def trained_denoiser(reference: PairDataset, sigma: float, steps: int, seed: int) -> Denoiser:
    """`train_denoiser` on the reference images, kept in the cache (`denoisers/`) so that the
    victims of one experiment share one denoiser."""
    key = stable_hash({"reference": reference.name, "images": reference.num_images, "size": reference.image_size,
                       "first": reference.images[:4].float().mean().item(), "sigma": sigma, "steps": steps, "seed": seed})
    path = cache_root() / "denoisers" / f"{key[:16]}.pt"
    if path.is_file():
        denoiser = Denoiser()
        denoiser.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return denoiser.eval()
    denoiser = train_denoiser(reference.images, sigma, steps, seed=seed)
    save_torch(path, denoiser.state_dict())
    return denoiser


class Detector(torch.nn.Module):
    """A small convolutional classifier: the logit that an image is protected. It reads the image's
    high frequencies (the image less its 3 x 3 mean), where unlearnable noise lives."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4 * width, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images [B, 3, S, S] in, logits [B] out."""
        detail = images - torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        return self.features(detail * 10).squeeze(1)


def train_detector(protected: torch.Tensor, clean: torch.Tensor, steps: int, batch_size: int = 32,
                   seed: int = 0) -> Detector:
    """A `Detector` trained on uint8 images labelled protected (1) and clean (0), balanced batches; seeded."""
    draws = seeded_generator(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector = Detector()
    optimizer = torch.optim.Adam(detector.parameters(), lr=1e-3)
    half = max(1, batch_size // 2)
    for _ in range(steps):
        images = torch.cat([protected[torch.randint(len(protected), (half,), generator=draws)],
                            clean[torch.randint(len(clean), (half,), generator=draws)]]).float() / 255
        labels = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(detector(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return detector.eval()


@torch.no_grad()
def detector_scores(detector: Detector, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The probability that each uint8 image is protected."""
    return torch.cat([torch.sigmoid(detector(images[i:i + batch_size].float() / 255))
                      for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0)


def flag_protected(released: torch.Tensor, clean: torch.Tensor, examples: int, steps: int, seed: int = 0
                   ) -> torch.Tensor:
    """Which released images a collector flags: a detector trained on the first `examples` released
    images (labelled protected) and the first `examples` clean ones; the labelled ones are flagged,
    the rest where the detector says protected (probability above 1/2)."""
    if examples < 1 or examples >= len(released) or examples > len(clean):
        raise ValueError(f"examples {examples}: needs 1 to {min(len(released) - 1, len(clean))} (released images "
                         f"{len(released)}, clean {len(clean)})")
    detector = train_detector(released[:examples], clean[:examples], steps, seed=seed)
    flagged = torch.ones(len(released), dtype=torch.bool)
    flagged[examples:] = detector_scores(detector, released[examples:]) > 0.5
    return flagged


def detection_auc(protected: torch.Tensor, clean: torch.Tensor, examples: int, steps: int, seed: int = 0) -> float:
    """How well a detector trained on `examples` protected and `examples` clean images (their first)
    tells the held-out rest apart: the ROC AUC (0.5: chance, 1: every protected image above every clean one)."""
    detector = train_detector(protected[:examples], clean[:examples], steps, seed=seed)
    held_protected, held_clean = protected[examples:], clean[examples:]
    if not len(held_protected) or not len(held_clean):
        raise ValueError(f"examples {examples}: nothing is left out to score (protected {len(protected)}, "
                         f"clean {len(clean)})")
    scores = torch.cat([detector_scores(detector, held_protected), detector_scores(detector, held_clean)])
    labels = torch.cat([torch.ones(len(held_protected)), torch.zeros(len(held_clean))])
    return float(roc_auc_score(labels.numpy(), scores.numpy()))


def nearest_captions(dataset: PairDataset, pool: PairDataset, model: torch.nn.Module) -> list[str]:
    """A caption for every row of `dataset` written without reading it: the captions of the pool
    image nearest to its image under `model`'s image features (cosine), row k of an image taking
    the neighbour's caption k (cycling through the neighbour's captions)."""
    neighbours = (encode_images(model, dataset.images) @ encode_images(model, pool.images).T).argmax(1)
    pool_rows = pool.rows_of_image()
    seen: dict[int, int] = {}
    captions = []
    for image in dataset.row_image.tolist():
        k = seen.get(image, 0)
        seen[image] = k + 1
        rows = pool_rows[int(neighbours[image])]
        captions.append(pool.captions[rows[k % len(rows)]])
    return captions
