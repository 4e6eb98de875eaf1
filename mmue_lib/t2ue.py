"""T2UE (Ma et al., "Generating Unlearnable Examples from Text Descriptions", arXiv 2508.03091):
unlearnable noise from a caption alone. A text-conditioned generator is trained once by error
minimisation against a surrogate CLIP, in EM's bi-level loop with the generator's weights in the
place of each image's noise: (a) the surrogate trains a few steps on the current noisy pairs,
(b) the generator trains a few steps to lower the surrogate's contrastive loss on them. Afterwards
an image's noise is one forward pass of its caption: the image never reaches the generator.

Where the paper maps text into the noise space through a pretrained text-to-image model, this
generator is the project's own (nothing pretrained can be loaded offline): a bag of the caption's
BPE tokens with its own embeddings, one per token of the captions it trained on (a token it never
saw is left out of the bag: an unseen word moves nothing), a small projection to a feature map, four x2 upsampling convolution stages (channels
halving from 8 x `generator_width` to `generator_width`, so that the full-resolution stages stay
cheap) to the protection's resolution, and eps * tanh at the output, which bounds |noise| < eps by construction.
"""
from __future__ import annotations

import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import Checkpoint
from .data import PairDataset
from .distributed import context, resolve_device, shard
from .methods import ProtectConfig, checkpoint_differences, converged
from .models import Tokenizer, encode_text, model_context_length, normalize_pixels
from .progress import bar as progress_bar
from .storage import save_torch, seeded_generator
from .train import ClipStepper, TrainConfig, autocast, clip_loss, to_device

MAX_CAPTION_TOKENS = 75
"""Tokens of a caption the generator reads (a CLIP context of 77 less its start and end tokens)."""


class NoiseGenerator(nn.Module):
    """Caption tokens in, noise out: [B, 3, S, S] in 1/255 pixel steps with |noise| < eps.
    `vocabulary`: the BPE ids it has embeddings for (sorted); other tokens are left out of a bag."""

    def __init__(self, image_size: int, eps: int, vocabulary: torch.Tensor, embed_dim: int = 32,
                 width: int = 16) -> None:
        super().__init__()
        self.image_size, self.eps = image_size, eps
        self.start = math.ceil(image_size / 16)
        channels = [8 * width, 4 * width, 2 * width, width, width]
        self.register_buffer("vocabulary", torch.as_tensor(vocabulary, dtype=torch.long).unique())
        self.words = nn.EmbeddingBag(len(self.vocabulary), embed_dim, mode="mean")
        self.project = nn.Sequential(nn.Linear(embed_dim, channels[0]), nn.GELU(),
                                     nn.Linear(channels[0], channels[0] * self.start ** 2))
        stages: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                       nn.GroupNorm(8, c_out), nn.GELU()]
        self.decode = nn.Sequential(*stages, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, bags: "CaptionBags") -> torch.Tensor:
        known = self.known(bags)
        features = self.project(self.words(known.ids, known.offsets))
        maps = self.decode(features.view(len(bags), -1, self.start, self.start))
        return self.eps * torch.tanh(maps[..., :self.image_size, :self.image_size])

    def known(self, bags: "CaptionBags") -> "CaptionBags":
        """The bags with each token replaced by its row in `vocabulary`, unknown tokens left out."""
        rows = torch.searchsorted(self.vocabulary, bags.ids).clamp(max=max(0, len(self.vocabulary) - 1))
        keep = self.vocabulary[rows] == bags.ids if len(self.vocabulary) else torch.zeros_like(bags.ids, dtype=torch.bool)
        bag_of = torch.bucketize(torch.arange(len(bags.ids), device=bags.ids.device), bags.offsets, right=True) - 1
        counts = torch.zeros(len(bags), dtype=torch.long, device=bags.ids.device).index_add_(0, bag_of[keep],
                                                                                                torch.ones_like(rows[keep]))
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]]) if len(bags) else counts
        return CaptionBags(rows[keep], offsets)

    def settings(self) -> dict:
        """What rebuilds this generator's architecture (`NoiseGenerator(**settings)`), its vocabulary aside."""
        return {"image_size": self.image_size, "eps": self.eps, "embed_dim": self.words.embedding_dim,
                "width": self.decode[-1].in_channels}


@dataclass
class CaptionBags:
    """Captions as bags of BPE ids, in `nn.EmbeddingBag`'s flat form: ids and each bag's offset."""

    ids: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def of(cls, captions: list[str]) -> CaptionBags:
        tokenizer = Tokenizer()
        bags = [tokenizer.encode(caption)[:MAX_CAPTION_TOKENS] for caption in captions]
        offsets = torch.tensor([0] + [len(bag) for bag in bags[:-1]], dtype=torch.long).cumsum(0)
        return cls(torch.tensor([i for bag in bags for i in bag], dtype=torch.long), offsets[:len(bags)])

    def __len__(self) -> int:
        return len(self.offsets)

    def pick(self, index: torch.Tensor) -> CaptionBags:
        """The bags at `index`, in that order."""
        ends = torch.cat([self.offsets[1:], torch.tensor([len(self.ids)])])
        parts = [self.ids[start:end] for start, end in zip(self.offsets[index].tolist(), ends[index].tolist())]
        lengths = torch.tensor([0] + [len(part) for part in parts[:-1]], dtype=torch.long)
        return CaptionBags(torch.cat(parts) if parts else self.ids[:0], lengths.cumsum(0)[:len(parts)])

    def to(self, device: torch.device) -> CaptionBags:
        return CaptionBags(self.ids.to(device), self.offsets.to(device))


@dataclass
class TrainedGenerator:
    """The outcome of generator training: the generator, the settings it was trained with, its log."""

    generator: NoiseGenerator
    config: ProtectConfig
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: str | os.PathLike, about: dict | None = None) -> None:
        """Write the generator (atomically) with what rebuilds it and what it was trained on."""
        save_torch(path, {"architecture": self.generator.settings(), "state": self.generator.state_dict(),
                          "config": asdict(self.config), "history": self.history, "seconds": self.seconds,
                          "about": about or {}})


def new_generator(image_size: int, config: ProtectConfig, captions: list[str]) -> NoiseGenerator:
    """A generator for `config` at `image_size` knowing the tokens of `captions`, its weights drawn
    from the config's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return NoiseGenerator(image_size, config.eps, CaptionBags.of(captions).ids, config.generator_embed_dim,
                              config.generator_width)


def load_generator(path: str | os.PathLike) -> TrainedGenerator:
    """A generator saved by `TrainedGenerator.save` (a ValueError naming the file if it is not one)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        generator = NoiseGenerator(**state["architecture"], vocabulary=state["state"]["vocabulary"])
        generator.load_state_dict(state["state"])
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a T2UE generator saved by mmue ({error})") from error
    return TrainedGenerator(generator.eval(), ProtectConfig(**state["config"]), state["history"], state["seconds"])


@torch.no_grad()
def generated_noise(generator: NoiseGenerator, captions: list[str], batch_size: int = 256,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """int8 noise [N, 3, S, S] in whole pixel steps for each caption: one forward pass per batch."""
    generator = generator.to(device).eval()
    bags = CaptionBags.of(captions)
    parts = [generator(bags.pick(torch.arange(start, min(start + batch_size, len(bags)))).to(device)).round().cpu()
             for start in range(0, len(bags), batch_size)]
    size = generator.image_size
    return torch.cat(parts).to(torch.int8) if parts else torch.zeros(0, 3, size, size, dtype=torch.int8)


def train_generator(corpus: PairDataset, surrogate: nn.Module, config: ProtectConfig, *,
                    checkpoint_path: str | os.PathLike | None = None, progress: bool = True,
                    on_round: Callable[[dict], None] | None = None) -> TrainedGenerator:
    """Train a T2UE generator on `corpus` (each image's noise from its first caption) against
    `surrogate` (trained in place between generator updates) for `max_rounds` rounds of
    `surrogate_steps` surrogate steps and `generator_steps` generator steps, stopping early when
    a round's generator loss falls below `stop_loss`. With `checkpoint_path` the state is saved
    after every round and a rerun resumes, ending exactly as an uninterrupted run. Every process
    of a torchrun job computes the generator's steps on the whole batch (they stay identical)."""
    if not config.generator_steps:
        raise ValueError("generator_steps must be > 0 to train a T2UE generator")
    device = resolve_device(config.device)
    first_captions = corpus.first_captions().captions
    generator = new_generator(corpus.image_size, config, first_captions).to(device)
    surrogate.to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.generator_lr)
    stepper = ClipStepper(surrogate, TrainConfig(lr=config.surrogate_lr, weight_decay=config.surrogate_wd,
                                                 schedule="constant", batch_size=config.batch_size,
                                                 precision=config.precision),
                          total_steps=max(1, config.surrogate_steps * config.max_rounds))
    outcome = TrainedGenerator(generator, config)
    checkpoint = Checkpoint(checkpoint_path, "T2UE generator")
    state = checkpoint.load(lambda saved: checkpoint_differences(saved, config, corpus.num_images, corpus.num_rows))
    if state is not None:
        generator.load_state_dict(state["generator"])
        optimizer.load_state_dict(state["optimizer"])
        surrogate.load_state_dict(state["surrogate"])
        stepper.load_state_dict(state["stepper"])
        outcome.history, outcome.seconds = state["history"], state["seconds"]
        if state["stopped"] or len(outcome.history) >= config.max_rounds:
            return _finished(outcome)
    tokens = Tokenizer().tokenize(corpus.captions, model_context_length(surrogate))
    bags = CaptionBags.of(first_captions)
    start_round = len(outcome.history)
    per_round = config.surrogate_steps + config.generator_steps
    ctx = context()
    bar = progress_bar(per_round * config.max_rounds, "step", "T2UE generator", enabled=progress and ctx.is_main,
                       initial=per_round * start_round)

    def noisy_pixels(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, 255] float pixels of `rows` under the generator's noise, and that noise (both
        differentiable in its weights)."""
        images = corpus.row_image[rows]
        noise = generator(bags.pick(images).to(device))
        return (to_device(corpus.images[images], device).float() + noise).clamp(0, 255), noise

    for round_index in range(start_round, config.max_rounds):
        started = time.perf_counter()
        record: dict = {"round": round_index + 1}
        draws = seeded_generator(config.seed, round_index)
        if config.surrogate_steps:
            generator.eval()
            losses = []
            for _ in range(config.surrogate_steps):
                rows = shard(torch.randperm(corpus.num_rows, generator=draws)[:config.batch_size], ctx)
                with torch.no_grad():
                    pixels = noisy_pixels(rows)[0].round().to(torch.uint8)
                losses.append(stepper.step(pixels, tokens[rows]))
                bar.set_postfix_str(f"round {round_index + 1}/{config.max_rounds} surrogate", refresh=False)
                bar.update()
            record["surrogate_loss"] = sum(losses) / len(losses)
        surrogate.eval()
        generator.train()
        losses, similarities = [], []
        for _ in range(config.generator_steps):
            rows = torch.randperm(corpus.num_rows, generator=draws)[:config.batch_size]
            with autocast(device, config.precision):
                pixels, noise = noisy_pixels(rows)
                loss = clip_loss(surrogate.encode_image(normalize_pixels(pixels / 255)),
                                 encode_text(surrogate, tokens[rows].to(device)), surrogate.logit_scale)
            similarity = noise_similarity(noise.float(), corpus.row_image[rows].to(device))
            similarities.append(float(similarity.detach()))
            total = loss + config.generator_diversity * similarity if config.generator_diversity else loss
            optimizer.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(total, list(generator.parameters()))
            for parameter, grad in zip(generator.parameters(), grads):
                parameter.grad = grad
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix_str(f"round {round_index + 1}/{config.max_rounds} generator", refresh=False)
            bar.update()
        record["noise_loss"] = sum(losses) / len(losses)
        record["noise_similarity"] = sum(similarities) / len(similarities)
        record["seconds"] = time.perf_counter() - started
        outcome.seconds += record["seconds"]
        outcome.history.append(record)
        if on_round is not None and ctx.is_main:
            on_round(record)
        stopped = bool(converged(config, outcome.history))
        checkpoint.save({"config": config.keyed(), "dataset": [corpus.num_images, corpus.num_rows],
                         "generator": generator.state_dict(), "optimizer": optimizer.state_dict(),
                         "surrogate": surrogate.state_dict(), "stepper": stepper.state_dict(),
                         "history": outcome.history, "seconds": outcome.seconds, "stopped": stopped})
        if stopped:
            bar.set_postfix_str(f"stopped after round {round_index + 1}: loss below stop_loss", refresh=True)
            break
    bar.close()
    return _finished(outcome)


def noise_similarity(noise: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the noises of a batch's rows of different images (0: orthogonal
    noises, 1: one pattern up to sign), the term `generator_diversity` weighs."""
    unit = torch.nn.functional.normalize(noise.flatten(1), dim=1)
    others = images[:, None] != images[None, :]
    return ((unit @ unit.T) ** 2)[others].mean() if bool(others.any()) else noise.new_zeros(())


def _finished(outcome: TrainedGenerator) -> TrainedGenerator:
    outcome.generator.cpu().eval()
    return outcome
