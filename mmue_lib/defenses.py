"""Countermeasures against unlearnable examples (an extension: the paper tests none).

Two kinds. Released-data defenses transform the image-caption pairs a collector downloads,
before any training: JPEG re-compression, grayscale, Gaussian blur (image shortcut
squeezing), a low-pass filter (the noise lives in high frequencies), a denoiser the collector
trains on clean images (purification), and caption cleaning that needs no knowledge of the
method: strip the first words, drop words rare in the corpus, keep only words of a dictionary
built from a clean corpus. Each is a named transform; a list of them (`parse_defenses`) applies in order.
Training-time defenses are `augment_batch` (random resized crop, flip, colour jitter) and
its augmentation-max use in `train` (UEraser-style: the worst of r augmented views per pair),
and `open_clip_crop`, open_clip's own training transform, which a collector applies without
meaning to defend.
"""
from __future__ import annotations

import io
import re
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
import torch
import yaml
from PIL import Image
import open_clip
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import gaussian_blur, resized_crop

from .data import PairDataset
from .collector import flag_protected, nearest_captions, trained_denoiser
from .storage import seeded_generator

_WORD_EDGES = re.compile(r"^\W+|\W+$")


def normalized_word(word: str) -> str:
    """A word as counted and looked up: lower case, punctuation at its ends removed."""
    return _WORD_EDGES.sub("", word.lower())


def word_counts(captions: Iterable[str]) -> Counter:
    """How often each normalized word occurs in `captions`."""
    return Counter(w for caption in captions for w in map(normalized_word, caption.split()) if w)


def luma(images: torch.Tensor) -> torch.Tensor:
    """[B,1,S,S] ITU-R 601 luma of float RGB images [B,3,S,S]."""
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)


def jpeg(dataset: PairDataset, quality: int) -> PairDataset:
    """Every image saved as JPEG at `quality` (1-100) and decoded again (PIL, 4:2:0 as usual)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    out = torch.empty_like(dataset.images)
    for i, image in enumerate(dataset.images):
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        out[i] = torch.from_numpy(np.asarray(decoded).copy()).permute(2, 0, 1)
    return dataset.with_images(out, f"{dataset.name}-jpeg{quality}")


def grayscale(dataset: PairDataset) -> PairDataset:
    """Every image in gray levels (ITU-R 601 luma), kept as 3 equal channels."""
    gray = luma(dataset.images.float()).round().clamp(0, 255).to(torch.uint8)
    return dataset.with_images(gray.expand(-1, 3, -1, -1).contiguous(), f"{dataset.name}-gray")


def blur(dataset: PairDataset, sigma: float, kernel_size: int | None = None) -> PairDataset:
    """Every image blurred by a Gaussian of std `sigma` pixels (kernel: odd, about 4 sigma wide)."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    kernel_size = kernel_size or 2 * max(1, round(2 * sigma)) + 1
    blurred = gaussian_blur(dataset.images.float(), [kernel_size, kernel_size], [sigma, sigma])
    return dataset.with_images(blurred.round().clamp(0, 255).to(torch.uint8), f"{dataset.name}-blur{sigma:g}")


def lowpass(dataset: PairDataset, cutoff: float) -> PairDataset:
    """Every image with the spatial frequencies above `cutoff` removed (a share of the Nyquist
    frequency, in (0, 1]; 1 keeps all): an ideal low-pass filter on each channel's 2-D Fourier
    transform, applied a chunk of images at a time."""
    if not 0 < cutoff <= 1:
        raise ValueError(f"lowpass cutoff must be in (0, 1] (a share of the Nyquist frequency), got {cutoff}")
    size = dataset.image_size
    frequencies = torch.fft.fftfreq(size) / 0.5
    keep = (frequencies.view(-1, 1) ** 2 + frequencies.view(1, -1) ** 2).sqrt() <= cutoff + 1e-9
    out = torch.empty_like(dataset.images)
    for start in range(0, dataset.num_images, 256):
        chunk = dataset.images[start:start + 256].float()
        filtered = torch.fft.ifft2(torch.fft.fft2(chunk) * keep).real
        out[start:start + 256] = filtered.round().clamp(0, 255).to(torch.uint8)
    return dataset.with_images(out, f"{dataset.name}-lowpass{cutoff:g}")


def denoise(dataset: PairDataset, reference: PairDataset, sigma: float = 8, steps: int = 500, noise: float = 0,
            seed: int = 0) -> PairDataset:
    """Every image through a denoiser the collector trained on clean `reference` images
    (`trained_denoiser`; `apply_defenses` passes the clean reference split) with Gaussian noise of
    std up to `sigma` pixel steps (1/255), `steps` Adam steps: purification before training. With
    `noise` > 0 (pixel steps, at most `sigma`), Gaussian noise of that std is first added to every
    image, seeded, as ECLIPSE does: noise that drowns the protection, which the denoiser then
    removes with it."""
    if sigma <= 0 or steps < 1:
        raise ValueError(f"denoise needs sigma > 0 and steps >= 1, got sigma {sigma}, steps {steps}")
    if not 0 <= noise <= sigma:
        raise ValueError(f"denoise: noise {noise} must lie in [0, sigma {sigma}], the noise its denoiser learned to remove")
    denoiser = trained_denoiser(reference, sigma, steps, seed)
    draws = seeded_generator(seed, 1)
    out = torch.empty_like(dataset.images)
    with torch.no_grad():
        for start in range(0, dataset.num_images, 256):
            chunk = dataset.images[start:start + 256].float() / 255
            if noise:
                chunk = chunk + noise / 255 * torch.randn(chunk.shape, generator=draws)
            out[start:start + 256] = (denoiser(chunk) * 255).round().clamp(0, 255).to(torch.uint8)
    name = f"{dataset.name}-denoised{sigma:g}" + (f"-noised{noise:g}" if noise else "")
    return dataset.with_images(out, name)


def drop_detected(dataset: PairDataset, reference: PairDataset, examples: int = 500, steps: int = 300,
                  seed: int = 0) -> PairDataset:
    """The released images a detector does not flag, with their captions. The collector labels
    `examples` released images as protected and as many clean `reference` images as clean, trains
    a small classifier on them (`collector.flag_protected`) and drops the released images it flags
    (the labelled ones included). Released images with nothing to find are dropped about half the
    time: what the defense costs a collector whose data was never protected. Where it flags every
    image, none is kept: a victim trained on them takes no step and stays its starting model."""
    flagged = flag_protected(dataset.images, reference.images, examples, steps, seed)
    kept = (~flagged).nonzero().squeeze(1).tolist()
    return dataset.subset(kept, f"{dataset.name}-undetected")


def recaption(dataset: PairDataset, reference: PairDataset, model: torch.nn.Module) -> PairDataset:
    """Every caption replaced by one the collector writes without reading it: each image takes the
    captions of its nearest clean `reference` image under the collector's own `model` (a retrieval
    captioner), row k of an image the neighbour's caption k (cycling)."""
    return dataset.with_captions(nearest_captions(dataset, reference, model), f"{dataset.name}-recaptioned")


def strip_words(dataset: PairDataset, count: int) -> PairDataset:
    """Every caption without its first `count` words (where a trigger would sit)."""
    if count < 0:
        raise ValueError(f"strip_words count must be >= 0, got {count}")
    captions = [" ".join(caption.split()[count:]) for caption in dataset.captions]
    return dataset.with_captions(captions, f"{dataset.name}-strip{count}")


def _keep_words(dataset: PairDataset, keep: Callable[[str], bool], name: str) -> PairDataset:
    captions = [" ".join(w for w in caption.split() if keep(normalized_word(w))) for caption in dataset.captions]
    return dataset.with_captions(captions, f"{dataset.name}-{name}")


def drop_rare_words(dataset: PairDataset, min_count: int) -> PairDataset:
    """Remove the words seen fewer than `min_count` times in the dataset's own captions."""
    counts = word_counts(dataset.captions)
    return _keep_words(dataset, lambda w: counts[w] >= min_count, f"rare{min_count}")


def dictionary_filter(dataset: PairDataset, dictionary: set[str] | frozenset[str]) -> PairDataset:
    """Keep only the words of `dictionary` (normalized words, e.g. from a clean corpus)."""
    if not dictionary:
        raise ValueError("dictionary_filter needs a non-empty dictionary")
    return _keep_words(dataset, lambda w: w in dictionary, "dict")


CAPTION_DEFENSES = ("strip_words", "drop_rare_words", "dictionary_filter", "recaption")
"""The released-data defenses that change captions only."""

RELEASED_DATA_DEFENSES: dict[str, Callable[..., PairDataset]] = {
    "jpeg": jpeg, "grayscale": grayscale, "blur": blur, "lowpass": lowpass, "denoise": denoise,
    "drop_detected": drop_detected, "recaption": recaption,
    "strip_words": strip_words, "drop_rare_words": drop_rare_words, "dictionary_filter": dictionary_filter,
}
"""Name -> transform(dataset, **arguments). What a defense learns from (`dictionary_filter`'s
words, `denoise`'s and `drop_detected`'s clean images, `recaption`'s captioned pool) is the clean
reference split `apply_defenses` supplies, and `recaption`'s model the collector's own: neither is
written in params."""

REFERENCE_DEFENSES = ("dictionary_filter", "denoise", "drop_detected", "recaption")
"""The released-data defenses that learn from a clean reference split (`apply_defenses`' `reference`)."""


def parse_settings(text: str) -> dict:
    """"key: value, key: value" (a YAML flow mapping without braces) -> {key: value}."""
    try:
        settings = yaml.safe_load("{" + text + "}")
    except yaml.YAMLError as error:
        raise ValueError(f"expected 'key: value, key: value', got {text!r}: {error}") from None
    names_ok = all(isinstance(k, str) and k.isidentifier() for k in settings)
    values_ok = all(v is None or isinstance(v, (str, int, float, bool)) for v in settings.values())
    if not (names_ok and values_ok):
        raise ValueError(f"expected 'key: value, key: value' with plain values, got {text!r}")
    return settings


def settings_label(settings: dict) -> str:
    """{key: value} -> "key: value, key: value", the form `parse_settings` reads (null, true, false)."""
    def plain(value) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return ", ".join(f"{key}: {plain(value)}" for key, value in settings.items())


def parse_defenses(spec: list | str | None) -> list[dict]:
    """Params -> a list of {"name": ..., **arguments}, applied in order. Items are strings, as in
    flat params: "grayscale", "jpeg(quality: 30)", "strip_words(count: 3) + dictionary_filter" (a
    "+" chains defenses), or dicts such as {"name": "jpeg", "quality": 30}. Unknown names or
    arguments are errors."""
    items = [spec] if isinstance(spec, (str, dict)) else list(spec or [])
    parsed = []
    for item in items:
        if isinstance(item, str):
            for part in filter(None, (p.strip() for p in item.split("+"))):
                name, _, arguments = part.partition("(")
                if arguments and not arguments.endswith(")"):
                    raise ValueError(f"defense {part!r}: expected name(key: value, ...)")
                parsed.append({"name": name.strip(), **parse_settings(arguments[:-1])})
        elif isinstance(item, dict):
            parsed.append(dict(item))
        else:
            raise ValueError(f"defense {item!r}: expected a string like 'jpeg(quality: 30)' or a dict with 'name'")
    for position, entry in enumerate(parsed):
        if entry.get("name") not in RELEASED_DATA_DEFENSES:
            raise ValueError(f"defense #{position + 1} {entry.get('name')!r}: unknown; one of "
                             f"{sorted(RELEASED_DATA_DEFENSES)}")
        function = RELEASED_DATA_DEFENSES[entry["name"]]
        allowed = (set(function.__code__.co_varnames[1:function.__code__.co_argcount])
                   - {"dictionary", "reference", "model"})
        unknown = set(entry) - {"name"} - allowed
        if unknown:
            raise ValueError(f"defense #{position + 1} {entry['name']}: unknown argument(s) {sorted(unknown)}; "
                             f"it takes {sorted(allowed)}")
    return parsed


def defense_label(spec: list | str | dict) -> str:
    """A short name for one defense or a chain, in the params' own syntax: "jpeg(quality: 10) + grayscale"."""
    labels = []
    for entry in parse_defenses(spec):
        arguments = settings_label({k: v for k, v in entry.items() if k != "name"})
        labels.append(f"{entry['name']}({arguments})" if arguments else entry["name"])
    return " + ".join(labels)


def apply_defenses(dataset: PairDataset, spec: list | None, reference: PairDataset | None = None,
                   model: torch.nn.Module | None = None) -> PairDataset:
    """`dataset` after each defense of `spec` in order; `reference` (a clean split, e.g. val) is what
    the defenses that learn learn from (`REFERENCE_DEFENSES`), `model` the collector's own CLIP
    (`recaption`'s captioner)."""
    for entry in parse_defenses(spec):
        arguments = {k: v for k, v in entry.items() if k != "name"}
        if entry["name"] in REFERENCE_DEFENSES and reference is None:
            raise ValueError(f"{entry['name']} needs a clean reference split to learn from")
        if entry["name"] == "dictionary_filter":
            arguments["dictionary"] = frozenset(word_counts(reference.captions))
        elif entry["name"] in REFERENCE_DEFENSES:
            arguments["reference"] = reference
        if entry["name"] == "recaption":
            if model is None:
                raise ValueError("recaption needs the collector's own model (a pretrained CLIP) as its captioner")
            arguments["model"] = model
        dataset = RELEASED_DATA_DEFENSES[entry["name"]](dataset, **arguments)
    return dataset


def augment_batch(images: torch.Tensor, generator: torch.Generator, min_scale: float = 0.25,
                  jitter: float = 0.4) -> torch.Tensor:
    """Strong augmentation of uint8 or [0,1] images [B,3,S,S] -> [0,1] floats: per image a random
    resized crop (area share in [min_scale, 1], aspect ratio in [3/4, 4/3]), a horizontal flip
    with probability 1/2, and brightness, contrast and saturation factors in [1 - jitter, 1 + jitter].
    All randomness comes from `generator` (on the CPU), so a seeded run repeats exactly."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images
    batch, _, size, _ = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(batch, generator=generator)).to(x.device)

    area = uniform(min_scale, 1.0)
    ratio = torch.exp(uniform(torch.log(torch.tensor(3 / 4)).item(), torch.log(torch.tensor(4 / 3)).item()))
    width = (size * torch.sqrt(area * ratio)).clamp(max=size)
    height = (size * torch.sqrt(area / ratio)).clamp(max=size)
    left, top = uniform(0, 1) * (size - width), uniform(0, 1) * (size - height)
    boxes = torch.stack([torch.arange(batch, device=x.device, dtype=x.dtype), left, top, left + width, top + height], 1)
    x = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = (uniform(0, 1) < 0.5).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    brightness, contrast, saturation = (uniform(1 - jitter, 1 + jitter).view(-1, 1, 1, 1) for _ in range(3))
    x = x * brightness
    mean_gray = luma(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean_gray) * contrast + mean_gray
    gray = luma(x)
    x = gray + (x - gray) * saturation
    return x.clamp(0, 1)



@lru_cache(maxsize=None)
def open_clip_train_crop(size: int) -> RandomResizedCrop:
    """The random resized crop that opens open_clip's training transform at `size` px
    (`open_clip.image_transform(is_train=True)`: area share 0.9-1.0, aspect 3/4-4/3, bicubic)."""
    crop = open_clip.image_transform(size, is_train=True).transforms[0]
    if not isinstance(crop, RandomResizedCrop):
        raise RuntimeError(f"open_clip's training transform no longer opens with a RandomResizedCrop: {crop}")
    return crop


def open_clip_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """open_clip's training transform on uint8 or [0,1] images [B,3,S,S] -> [0,1] floats: each
    image cropped and resized back as `open_clip_train_crop` does, its crop drawn by torchvision's
    own rule from a seed that `generator` gives (a seeded run repeats exactly)."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images
    crop = open_clip_train_crop(x.shape[-1])
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        boxes = [crop.get_params(image, list(crop.scale), list(crop.ratio)) for image in x]
    return torch.stack([resized_crop(image, *box, list(crop.size), crop.interpolation, antialias=True)
                        for image, box in zip(x, boxes)]).clamp(0, 1)


_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_JPEG_CHROMA = torch.full((8, 8), 99.0)
_JPEG_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                                    dtype=torch.float32)
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _jpeg_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,8,8] luma and chroma quantisation tables at IJG `quality` (1-100), as libjpeg scales them."""
    quality = quality.float().clamp(1, 100).view(-1, 1, 1)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    return tuple(((table * scale + 50) / 100).floor().clamp(1, 255) for table in (_JPEG_LUMA, _JPEG_CHROMA))


def _dct_matrix() -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (JPEG's block transform)."""
    k, n = torch.arange(8.0).view(-1, 1), torch.arange(8.0).view(1, -1)
    matrix = torch.cos(torch.pi * (2 * n + 1) * k / 16) * (2 / 8) ** 0.5
    matrix[0] /= 2 ** 0.5
    return matrix


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding whose gradient is not zero everywhere (Shin & Song 2017): round(x) + (x - round(x))^3."""
    return torch.round(x) + (x - torch.round(x)) ** 3


def differentiable_jpeg(images: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """JPEG compression and decoding of [0,1] images [B,3,H,W] as libjpeg does it at `quality` (a
    number or one per image): YCbCr, 4:2:0 chroma, 8x8 DCT, quantisation by the IJG tables, with a
    rounding that lets gradients through, so that noise can be optimised to survive the `jpeg`
    countermeasure. Sides that are not multiples of 16 are padded by repeating the edge, as
    encoders fill partial blocks. [0,1] images out."""
    batch, _, height, width = images.shape
    pad_bottom, pad_right = -height % 16, -width % 16
    if pad_bottom or pad_right:
        padded = torch.nn.functional.pad(images, (0, pad_right, 0, pad_bottom), mode="replicate")
        return differentiable_jpeg(padded, quality)[..., :height, :width]
    quality = torch.as_tensor(quality, dtype=torch.float32).expand(batch)
    luma_table, chroma_table = (t.to(images.device) for t in _jpeg_tables(quality))
    dct = _dct_matrix().to(images.device)
    ycbcr = torch.einsum("ij,bjhw->bihw", _RGB_TO_YCBCR.to(images.device), images * 255)
    ycbcr[:, 1:] += 128
    channels = [ycbcr[:, :1], torch.nn.functional.avg_pool2d(ycbcr[:, 1:], 2)]
    decoded = []
    for channel, table in zip(channels, (luma_table, chroma_table)):
        b, c, h, w = channel.shape
        blocks = (channel - 128).reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
        coefficients = dct @ blocks @ dct.T
        table = table.view(b, 1, 1, 1, 8, 8)
        coefficients = _soft_round(coefficients / table) * table
        blocks = dct.T @ coefficients @ dct + 128
        decoded.append(blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w))
    chroma = torch.nn.functional.interpolate(decoded[1], scale_factor=2, mode="bilinear", align_corners=False)
    ycbcr = torch.cat([decoded[0], chroma - 128], dim=1)
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_YCBCR).to(images.device), ycbcr)
    return (rgb / 255).clamp(0, 1)


COLLECTOR_JPEG_QUALITY = (10, 75)
"""The JPEG qualities a collector's re-compression is drawn from in `collector_view`."""


def collector_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a careful collector's pipeline may make of [0,1] images [B,3,S,S], differentiably: half
    of them (at random) JPEG-compressed at a quality drawn from `COLLECTOR_JPEG_QUALITY`, then every
    one through open_clip's training crop and a horizontal flip at probability 1/2. Noise optimised
    in expectation over these views (`ProtectConfig.noise_eot`) is made to survive them."""
    batch = images.shape[0]
    compress = (torch.rand(batch, generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    low, high = COLLECTOR_JPEG_QUALITY
    quality = low + (high - low) * torch.rand(batch, generator=generator)
    x = torch.where(compress, differentiable_jpeg(images, quality.to(images.device)), images)
    x = open_clip_crop(x, generator)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)
