"""CLIP models through one open_clip factory, the tokenizer, and feature extraction.

Architectures are data: the paper's RN50 / RN101 / ViT-B-32 come from open_clip's own
configs, our small ones from `model_configs/*.json` (RN-tiny, ViT-tiny for 32 px smoke
runs; RN-small, RN-medium, ViT-small for 64 px CPU runs). Image size and text context
length can be overridden per run. Weights are never downloaded: `pretrained` is a path.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .storage import save_torch

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_FORMAT = "mmue-clip/1"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def list_model_names() -> list[str]:
    """Every architecture name `create_clip` accepts."""
    return open_clip.list_models()


def create_clip(name: str, *, image_size: int | None = None, context_length: int | None = None,
                pretrained: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                seed: int | None = None) -> torch.nn.Module:
    """Build a CLIP by architecture name; `pretrained` is a local checkpoint (ours or open_clip/OpenAI
    state-dict files). `seed` makes random initialisation reproducible."""
    if name not in list_model_names():
        raise ValueError(f"unknown model '{name}'; known: {', '.join(list_model_names())}")
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained} (no downloads are made)")
    if seed is not None:
        torch.manual_seed(seed)
    with _quiet_root_logger():
        model = open_clip.create_model(name, pretrained=str(pretrained) if pretrained else None,
                                       force_image_size=image_size, force_context_length=context_length,
                                       device=device)
    model.mmue_name = name
    return model


@contextmanager
def _quiet_root_logger():
    """Hide open_clip's 'initialized randomly' warning: training from scratch is our normal case."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def image_groups(model: torch.nn.Module) -> list[list]:
    """The image tower's modules and parameters in groups from input to output, as open_clip's
    `lock` counts them: a ResNet's stem, layer1-4 and attention pool; a ViT's patch embedding
    (with the class and position embeddings and the first norm), each transformer block (the last
    with the final norm) and the projection."""
    visual = model.visual
    if hasattr(visual, "layer1"):
        stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
        return [stem, [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4], [visual.attnpool]]
    blocks = list(visual.transformer.resblocks)
    return [[visual.conv1, visual.class_embedding, visual.positional_embedding, visual.ln_pre],
            *[[block] for block in blocks[:-1]], [blocks[-1], visual.ln_post], [visual.proj]]


def freeze_image_groups(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """Stop training the first `count` groups of `image_groups` (SSC's frozen shallow layers):
    their parameters take no gradient; the modules returned are to be kept in eval mode while the
    rest trains, so that their batch-norm statistics stay as they were."""
    groups = image_groups(model)
    if not 0 <= count <= len(groups):
        raise ValueError(f"freeze_image_groups {count}: this image tower has {len(groups)} groups")
    frozen = []
    for item in (item for group in groups[:count] for item in group):
        for parameter in [item] if isinstance(item, torch.nn.Parameter) else item.parameters():
            parameter.requires_grad_(False)
        if isinstance(item, torch.nn.Module):
            frozen.append(item)
    return frozen


def model_image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def model_context_length(model: torch.nn.Module) -> int:
    return int(model.context_length)


def save_clip(model: torch.nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write a checkpoint that `load_clip` (and open_clip's `load_checkpoint`) can read."""
    save_torch(path, {
        "format": CHECKPOINT_FORMAT,
        "model_name": model.mmue_name,
        "image_size": model_image_size(model),
        "context_length": model_context_length(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    })


def load_clip(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a checkpoint written by `save_clip`, with its architecture, size and context length."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an mmue checkpoint; use create_clip(name, pretrained=path)")
    model = create_clip(checkpoint["model_name"], image_size=checkpoint["image_size"],
                        context_length=checkpoint["context_length"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device)


class Tokenizer:
    """CLIP BPE tokenizer with explicit control of the tokens after the start token
    (where MEM's trigger goes)."""

    def __init__(self) -> None:
        self.bpe = _simple_tokenizer()
        self.sot = self.bpe.sot_token_id
        self.eot = self.bpe.eot_token_id
        self.vocab_size = self.bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without start/end tokens."""
        return self.bpe.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of BPE ids (start/end/padding dropped)."""
        ids = [int(i) for i in ids if int(i) not in (0, self.sot, self.eot)]
        return self.bpe.decode(ids).strip()

    def tokenize(self, captions: Sequence[str], context_length: int,
                 prefix: torch.Tensor | None = None, at: Sequence[int] | None = None) -> torch.Tensor:
        """[M, context_length] ids: start, `prefix[i]` (if given, [M, k]), caption, end, zeros; with
        `at`, `prefix[i]` goes before word `at[i]` of caption i instead (0: right after the start).
        Long captions are truncated so that the prefix and the end token always fit."""
        return self.place(captions, context_length, prefix, at)[0]

    def place(self, captions: Sequence[str], context_length: int, prefix: torch.Tensor | None = None,
              at: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`tokenize`'s ids, and [M] the column where each caption's prefix starts (1 without `at`)."""
        tokens = torch.zeros(len(captions), context_length, dtype=torch.long)
        slots = torch.ones(len(captions), dtype=torch.long)
        for row, (before, inserted, after) in enumerate(self._parts(captions, context_length, prefix, at)):
            ids = [self.sot] + before + inserted + after + [self.eot]
            tokens[row, :len(ids)] = torch.tensor(ids)
            slots[row] += len(before)
        return tokens, slots

    def _parts(self, captions: Sequence[str], context_length: int, prefix: torch.Tensor | None,
               at: Sequence[int] | None):
        k = 0 if prefix is None else int(prefix.shape[1])
        room = context_length - 2 - k
        if room < 1:
            raise ValueError(f"context length {context_length} leaves no room for a caption after {k} prefix tokens")
        for row, caption in enumerate(captions):
            words = caption.split()
            split = 0 if at is None else min(int(at[row]), len(words))
            before = self.encode(" ".join(words[:split]))[:room] if split else []
            after = self.encode(" ".join(words[split:]) if split else caption)[:room - len(before)]
            yield before, ([] if prefix is None else prefix[row].tolist()), after


@lru_cache(maxsize=1)
def _simple_tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer()


PIXEL_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or float images in [0, 1], to the model's normalised input."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    return (images - PIXEL_MEAN.to(images.device)) / PIXEL_STD.to(images.device)


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image features [N, D] (eval mode, on the model's device, returned on CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = [model.encode_image(normalize_pixels(images[i:i + batch_size].to(device)), normalize=True).float().cpu()
              for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised text features [M, D] of token ids (eval mode, returned on CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = [F.normalize(encode_text(model, tokens[i:i + batch_size].to(device)), dim=-1).float().cpu()
              for i in range(0, len(tokens), batch_size)]
    model.train(was_training)
    return torch.cat(chunks)


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` (unnormalised features [B, D]) on the batch trimmed to its
    longest caption: attention is causal and pooling reads the end token, so the padding after
    it never matters. `embeddings` [B, L, W] replaces the token embeddings (for gradients at
    token inputs); `tokens` still locates the end token."""
    from open_clip.transformer import text_global_pool

    length = int(tokens.argmax(dim=1).max()) + 1  # the end token has the highest id
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) if embeddings is None else embeddings[:, :length]
    x = x + model.positional_embedding[:length].to(x.dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
