"""CLIP training for victims and surrogates: one stepper, an epoch loop with per-epoch
retrieval on a clean test set, atomic checkpoints and resume.

Optimiser as open_clip's trainer: AdamW without weight decay on norms, biases and
logit_scale; linear warm-up then cosine (or constant) learning rate per step; the logit
scale is clamped to [0, ln 100] after every step. Batches are drawn from a generator
seeded by (seed, epoch), so a resumed run sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel

from .checkpoint import Checkpoint, setting_differences
from .data import PairDataset
from .distributed import check_batch_size, context, gathered_features, global_clip_loss, resolve_device, shard
from .defenses import augment_batch, open_clip_crop
from .progress import bar as progress_bar
from .metrics import retrieval_metrics
from .models import (Tokenizer, encode_images, encode_text, encode_texts, freeze_image_groups, model_context_length,
                     normalize_pixels)
from .storage import keyed_settings, seeded_generator

MAX_LOGIT_SCALE = math.log(100)


@dataclass
class TokenizedPairs:
    """What a CLIP trains or is evaluated on: uint8 images [N,3,S,S], token ids [M,L], row->image [M]."""

    images: torch.Tensor
    tokens: torch.Tensor
    row_image: torch.Tensor

    @classmethod
    def from_dataset(cls, dataset: PairDataset, context_length: int,
                     prefix: torch.Tensor | None = None) -> "TokenizedPairs":
        """Tokenize every caption row; `prefix` [M, k] puts k token ids after the start token."""
        tokens = Tokenizer().tokenize(dataset.captions, context_length, prefix)
        return cls(dataset.images, tokens, dataset.row_image)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])


def check_choices(config) -> None:
    """A ValueError naming the field, the value and the choices where a dataclass field typed
    `Literal[...]` holds another value (a typo would otherwise pass as some other setting)."""
    for name, kind in get_type_hints(type(config)).items():
        if get_origin(kind) is Literal and getattr(config, name) not in get_args(kind):
            raise ValueError(f"{type(config).__name__}.{name} must be one of {', '.join(map(repr, get_args(kind)))}; "
                             f"got {getattr(config, name)!r}")


@dataclass
class TrainConfig:
    """Hyper-parameters of one CLIP training run (all plain values, so a run is keyed by them)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    rows_per_epoch: Literal["all", "one_per_image"] = "all"
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    augment: Literal["none", "strong", "open_clip"] = "none"
    augment_views: int = 1
    freeze_image_groups: int = 0
    """The first groups of the image tower not trained (`models.image_groups`: a ResNet's stem is 1,
    with layer1 2, ...), as a collector fine-tuning a pretrained model with SSC's frozen shallow layers."""

    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("schedule", "beta1", "beta2", "eps", "precision", "augment",
                                                "augment_views", "freeze_image_groups")
    """Fields that key a training run only when set away from their default (as the committed
    cpu runs were keyed)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.augment_views < 1 or (self.augment_views > 1 and self.augment == "none"):
            raise ValueError(f"augment_views={self.augment_views} needs augment='strong' or 'open_clip' "
                             "and must be >= 1")
        if self.freeze_image_groups < 0:
            raise ValueError(f"freeze_image_groups must be >= 0, got {self.freeze_image_groups}")

    def keyed(self) -> dict:
        """These settings as a training run's cache key (`storage.keyed_settings`)."""
        return keyed_settings(self)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast of the forward passes on CUDA when `precision` is "bf16"; fp32 elsewhere
    (on the CPU bf16 is slower than fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`; to a GPU through pinned memory, without blocking. Datasets stay where
    they are (memory-mapped on the host) and only batches travel."""
    if device.type != "cuda" or batch.device.type == "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def per_pair_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """[B] symmetric InfoNCE of each pair of a batch whose i-th image and i-th text match: the
    mean of its image->text and text->image cross-entropy terms."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")) / 2


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of a batch whose i-th image and i-th text are the positive pair."""
    return per_pair_clip_loss(image_features, text_features, logit_scale).mean()


class PairEncoder(torch.nn.Module):
    """A CLIP's features of a batch in one forward pass (what DistributedDataParallel wraps): one
    image-feature tensor per view of the images (uint8 or [0,1] float), the text features, and
    the logit scale."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, views: list[torch.Tensor], tokens: torch.Tensor):
        text_features = encode_text(self.clip, tokens)
        return [self.clip.encode_image(normalize_pixels(view)) for view in views], text_features, self.clip.logit_scale


AUGMENTATIONS = {"strong": augment_batch, "open_clip": open_clip_crop}
"""`TrainConfig.augment` -> the transform of a batch of images (`defenses`)."""


def augmented_max_loss(encoder: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, views: int,
                       generator: torch.Generator, augment: str = "strong") -> torch.Tensor:
    """Mean over the global batch's pairs of the worst of `views` augmented versions of each
    image (`AUGMENTATIONS[augment]`; UEraser's augmentation-max with strong augmentation); with
    one view, plain augmentation. `encoder` is a `PairEncoder` (or its DDP wrapper)."""
    transform = AUGMENTATIONS[augment]
    image_views, text_features, logit_scale = encoder([transform(pixels, generator) for _ in range(views)], tokens)
    losses = []
    for image_features in image_views:
        all_images, all_texts = gathered_features(image_features, text_features)
        losses.append(per_pair_clip_loss(all_images, all_texts, logit_scale))
    return torch.stack(losses).max(dim=0).values.mean()


def batch_loss(encoder: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP loss over the global batch of uint8 or [0,1]-float images and token ids (this rank's
    share of them in several processes; the model's own logit scale). `encoder`: a `PairEncoder`."""
    (image_features,), text_features, logit_scale = encoder([pixels], tokens)
    if context().distributed:
        return global_clip_loss(image_features, text_features, logit_scale)
    return clip_loss(image_features, text_features, logit_scale)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on gains, biases, norms and logit_scale (as open_clip)."""
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


class ClipStepper:
    """One optimiser step at a time on a CLIP: used by `train_clip` and by surrogate training.
    In several processes the model is wrapped in DistributedDataParallel and each step takes
    this rank's share of the global batch (`distributed.shard`)."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, total_steps: int) -> None:
        self.model = model
        self.frozen = freeze_image_groups(model, config.freeze_image_groups)
        self.encoder = PairEncoder(model)
        if context().distributed:
            self.encoder = DistributedDataParallel(self.encoder)
        self.config = config
        self.total_steps = max(1, total_steps)
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                           betas=(config.beta1, config.beta2), eps=config.eps)
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.lr
        progress = (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * c.lr

    def step(self, pixels: torch.Tensor, tokens: torch.Tensor) -> float:
        """Train on one batch (uint8 or [0,1] float images, token ids: this rank's share of the global
        batch); returns the global batch's loss."""
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        for module in self.frozen:
            module.eval()
        with autocast(self.device, self.config.precision):
            pixels, tokens = to_device(pixels, self.device), to_device(tokens, self.device)
            if self.config.augment == "none":
                loss = batch_loss(self.encoder, pixels, tokens)
            else:
                ctx = context()
                generator = seeded_generator(self.config.seed, self.step_count, ctx.rank, ctx.world_size)
                loss = augmented_max_loss(self.encoder, pixels, tokens, self.config.augment_views, generator,
                                          self.config.augment)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.step_count += 1
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step_count"]


def row_batches(row_image: torch.Tensor, num_images: int, batch_size: int, rows: Literal["all", "one_per_image"],
                generator: torch.Generator, drop_last: bool = True) -> list[torch.Tensor]:
    """Shuffled row ids in batches: every row, or one random row per image."""
    if rows == "all":
        order = torch.randperm(len(row_image), generator=generator)
    else:
        by_image = torch.argsort(row_image, stable=True)
        counts = torch.bincount(row_image, minlength=num_images)
        starts = torch.cumsum(counts, 0) - counts
        images = torch.randperm(num_images, generator=generator)
        images = images[counts[images] > 0]
        offsets = (torch.rand(len(images), generator=generator) * counts[images]).long()
        order = by_image[starts[images] + offsets]
    batches = [batch for batch in order.split(batch_size) if len(batch)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def epoch_batches(pairs: TokenizedPairs, config: TrainConfig, epoch: int) -> list[torch.Tensor]:
    """Row ids of every batch of one training epoch (seeded by seed and epoch; last partial batch
    dropped, and a batch of one pair, which has nothing to contrast with: what is left of a data
    set a defense dropped all but one image of)."""
    generator = seeded_generator(config.seed, epoch)
    batches = row_batches(pairs.row_image, pairs.num_images, config.batch_size, config.rows_per_epoch, generator)
    return [rows for rows in batches if len(rows) > 1]


def evaluate_retrieval(model: torch.nn.Module, pairs: TokenizedPairs) -> dict[str, float]:
    """Retrieval metrics of `model` on a (clean) test set."""
    return retrieval_metrics(encode_images(model, pairs.images), encode_texts(model, pairs.tokens), pairs.row_image)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train_clip(model: torch.nn.Module, train: TokenizedPairs, config: TrainConfig, *,
               test: TokenizedPairs | None = None, checkpoint_path: str | os.PathLike | None = None,
               progress: bool = True) -> TrainResult:
    """Train `model` for `config.epochs`; log mean train loss (and test retrieval) per epoch.

    With `checkpoint_path`, state is written atomically after every epoch and a rerun resumes
    from it (a finished run returns at once); a checkpoint of another config is an error.
    Under torchrun every rank trains on its share of each global batch (DDP), evaluates the
    same model, and rank 0 alone writes the checkpoint.
    """
    if train.tokens.shape[1] != model_context_length(model):
        raise ValueError(f"tokens have length {train.tokens.shape[1]}, the model expects {model_context_length(model)}")
    check_batch_size(config.batch_size)
    device = resolve_device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    steps_per_epoch = len(epoch_batches(train, config, 0))
    stepper = ClipStepper(model, config, steps_per_epoch * config.epochs)
    result = TrainResult(model)
    start_epoch = 0
    checkpoint = Checkpoint(checkpoint_path, "training config")
    state = checkpoint.load(lambda saved: setting_differences({**asdict(TrainConfig()), **saved["config"]},
                                                              asdict(config)), map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        stepper.load_state_dict(state["stepper"])
        result.history, result.seconds, start_epoch = state["history"], state["seconds"], state["epoch"] + 1
    ctx = context()
    bar = progress_bar(steps_per_epoch * config.epochs, "step", "training", enabled=progress and ctx.is_main,
                       initial=steps_per_epoch * start_epoch)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        losses = []
        for rows in epoch_batches(train, config, epoch):
            rows = shard(rows, ctx)
            losses.append(stepper.step(train.images[train.row_image[rows]], train.tokens[rows]))
            bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs}, loss {losses[-1]:.3f}", refresh=False)
            bar.update()
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
                  "lr": stepper.lr_at(stepper.step_count - 1), "steps": stepper.step_count,
                  "train_seconds": time.perf_counter() - started}
        if test is not None:
            record.update(evaluate_retrieval(model, test))
        result.seconds += time.perf_counter() - started
        result.history.append(record)
        checkpoint.save({"config": asdict(config), "model": model.state_dict(), "stepper": stepper.state_dict(),
                         "history": result.history, "seconds": result.seconds, "epoch": epoch})
    bar.close()
    return result
