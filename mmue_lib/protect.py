"""Protection of image-caption data: EM, UAP and MEM as one bi-level loop over one PGD core
(`pgd`) and one trigger-search core (`hotflip_candidates` + `beam_search`).

A round is: (a) train the surrogate CLIP a few steps on the current protected pairs,
(b) in the first `trigger_search_rounds` rounds, a HotFlip/beam search over the text
triggers of every row, (c) one PGD pass over the data that updates the image noise.
Rounds stop at `max_rounds` or when the PGD objective falls below `stop_loss`.

Noise is kept in whole pixel steps (1/255) as int8, so a protected image is exactly a
uint8 image: saving it as 8-bit PNG loses nothing and |x' - x| <= eps holds on saved pixels.
EM = no trigger, error-minimising; UAP = error-maximising against a fixed (clean-trained)
surrogate; MEM-k = error-minimising noise plus a k-token trigger after the start token,
with captions shuffled inside the batch during PGD so the noise binds to the trigger.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import torch

from .data import PairDataset, image_file_names, write_dataset_folder
from .defenses import collector_view, normalized_word, word_counts
from .distributed import Context, barrier, broadcast_rows, check_batch_size, context, gather_objects, shard
from .progress import bar as progress_bar
from .models import Tokenizer, encode_text, model_context_length, normalize_pixels
from .storage import mapped_uint8, save_torch, write_json
from .train import ClipStepper, TrainConfig, autocast, check_choices, clip_loss, row_batches, to_device


LATER_FIELDS = {"precision": "fp32", "noise_eot": "none", "eot_samples": 1, "trigger_position": "start",
                "trigger_min_count": 1}
"""`ProtectConfig` fields added after the committed cpu runs were keyed, with their defaults."""


@dataclass
class ProtectConfig:
    """Every knob of EM / UAP / MEM, including each point where the official code differs from the paper."""

    eps: int = 8
    alpha: int = 1
    pgd_steps: int = 8
    direction: Literal["minimize", "maximize"] = "minimize"
    noise_per: Literal["image", "row", "universal"] = "image"
    pgd_rows: Literal["one_per_image", "all"] = "one_per_image"
    shuffle_pgd: bool = True
    reshuffle: Literal["step", "batch"] = "step"
    trigger_len: int = 0
    trigger_per: Literal["row", "image", "universal"] = "row"
    trigger_init: Literal["the", "random"] = "the"
    trigger_vocab: Literal["words", "captions", "mlm", "all"] = "words"
    mlm_path: str | None = None
    trigger_top_k: int = 16
    beam_size: int = 1
    trigger_search_rounds: int = 5
    search_rows: Literal["all", "one_per_image"] = "all"
    shuffle_search: bool = False
    max_rounds: int = 20
    stop_loss: float | None = 0.01
    surrogate_steps: int = 200
    surrogate_lr: float = 1e-4
    surrogate_wd: float = 0.2
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: autocast of the surrogate's forward passes on CUDA (surrogate steps, PGD, trigger search)."""
    noise_eot: Literal["none", "collector"] = "none"
    """collector: each PGD step's loss is the mean over `eot_samples` views of the noisy images through
    a careful collector's transforms (`defenses.collector_view`: JPEG, open_clip's crop, flips)."""
    eot_samples: int = 1
    trigger_position: Literal["start", "random", "end"] = "start"
    """start: the trigger opens the caption (the paper's). random: it goes before a word drawn once
    per image (seeded, never the first), out of reach of stripping a fixed number of leading words.
    end: it closes the caption (after its last word)."""
    trigger_min_count: int = 1
    """With trigger_vocab 'captions': only words seen at least this often in the training captions
    (common words, which a dictionary built from other captions of the domain keeps)."""

    def keyed(self) -> dict:
        """The settings that key a protection run and its checkpoint: every field, less those added
        after the committed runs were keyed (`LATER_FIELDS`) while they hold their default."""
        settings = asdict(self)
        return {key: value for key, value in settings.items()
                if key not in LATER_FIELDS or value != LATER_FIELDS[key]}

    def __post_init__(self) -> None:
        check_choices(self)
        if self.direction == "maximize" and self.trigger_len:
            raise ValueError("triggers are searched to minimise the loss; use direction='minimize' with trigger_len > 0")
        if self.trigger_vocab == "mlm" and not self.mlm_path:
            raise ValueError("trigger_vocab='mlm' needs mlm_path: a local masked language model folder")
        if self.search_rows == "one_per_image" and self.trigger_len and self.trigger_per == "row":
            raise ValueError("search_rows='one_per_image' would leave most per-row triggers unsearched; "
                             "use it with trigger_per='image' or 'universal'")
        if self.trigger_min_count < 1:
            raise ValueError(f"trigger_min_count must be >= 1, got {self.trigger_min_count}")
        if self.eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {self.eot_samples}")
        if self.eps < 0 or self.alpha < 1 or self.pgd_steps < 0:
            raise ValueError("eps, alpha and pgd_steps are in whole 1/255 steps: eps >= 0, alpha >= 1, pgd_steps >= 0")


@dataclass(frozen=True)
class Method:
    """A named protection method: its label in tables, its `ProtectConfig` preset, whether it
    attacks a clean-trained surrogate, and whether the paper reports it (Tables 1-3 rows)."""

    label: str
    preset: dict
    needs_trained_surrogate: bool = False
    in_paper: bool = True


METHODS: dict[str, Method] = {
    "em": Method("EM", {"trigger_len": 0, "shuffle_pgd": False}),
    "uap": Method("UAP", {"trigger_len": 0, "direction": "maximize", "noise_per": "universal", "shuffle_pgd": False,
                          "surrogate_steps": 0, "max_rounds": 1, "stop_loss": None}, needs_trained_surrogate=True),
    "tap": Method("TAP", {"trigger_len": 0, "direction": "maximize", "noise_per": "image", "shuffle_pgd": False,
                          "surrogate_steps": 0, "max_rounds": 1, "stop_loss": None}, needs_trained_surrogate=True,
                  in_paper=False),
    "mem-3": Method("MEM-3", {"trigger_len": 3}),
    "mem-5": Method("MEM-5", {"trigger_len": 5}),
    "rmem-8": Method("R-MEM-8", {"trigger_len": 8, "trigger_vocab": "captions", "trigger_min_count": 20,
                                 "trigger_top_k": 4}, in_paper=False),
}
"""The method registry, read by the runs, the notebooks, the CLI and the paper tables. UAP and
TAP (the official code's "UAP" script) maximise the loss of a clean-trained surrogate. R-MEM-8
(ours, `13_careful_collector`, chosen on val) is MEM made for a careful collector: an 8-word
trigger at the start of each caption, of words seen at least 20 times in the captions, so that an
in-domain dictionary keeps them and stripping fewer than 8 leading words leaves a trigger;
top-4 candidates per slot keep its search near MEM-3's cost (`11_ablation`: top-4 protects as top-8)."""

SCHEDULES: dict[str, dict] = {
    "official": {},
    "calibrated": {"pgd_steps": 4, "alpha": 2, "reshuffle": "batch", "search_rows": "one_per_image",
                   "max_rounds": 3, "surrogate_steps": 40, "trigger_search_rounds": 1, "trigger_per": "image",
                   "trigger_top_k": 8},
}
"""Named protection schedules as overrides of `ProtectConfig`. `official`: the official code's
(the dataclass defaults: 20 rounds x (200 surrogate steps + 8 PGD steps of 1/255), trigger search
in rounds 1-5, top-16, per-row triggers). `calibrated`: the cpu schedule, chosen on the val split
(first 2,000 Flickr8k train images at 64 px; `benchmarks/protect_cost.py`): 3 rounds x (40
surrogate steps + 4 PGD steps of 2/255, captions shuffled once per batch), per-image triggers
searched once (top-8) on one caption per image."""


def check_protection_settings(settings: dict) -> dict:
    """`settings`, once every name is a `ProtectConfig` field (else a ValueError naming the others)."""
    unknown = sorted(set(settings) - set(ProtectConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{unknown} are not protection settings; known: {', '.join(ProtectConfig.__dataclass_fields__)}")
    return settings


def schedule_settings(name: str, **overrides) -> dict:
    """The protection settings of the named schedule under `overrides`, checked against `ProtectConfig`."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown protection schedule '{name}'; known: {', '.join(SCHEDULES)}")
    return {**SCHEDULES[name], **check_protection_settings(overrides)}


def method_config(method: str, **overrides) -> ProtectConfig:
    """`ProtectConfig` of a named method (`em`, `uap`, `tap`, `mem-3`, `mem-5`) with overrides;
    fields the method cannot use are reset to their defaults, so equal runs have equal configs."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    config = ProtectConfig(**{**METHODS[method].preset, **overrides})
    unused = []
    if not config.trigger_len:
        unused += ["trigger_position", "trigger_per", "trigger_init", "trigger_vocab", "mlm_path", "trigger_top_k",
                   "beam_size", "trigger_search_rounds", "search_rows", "shuffle_search"]
    if not config.trigger_len or config.trigger_vocab != "captions":
        unused += ["trigger_min_count"]
    if not config.shuffle_pgd:
        unused += ["reshuffle"]
    if not config.surrogate_steps:
        unused += ["surrogate_lr", "surrogate_wd"]
    if config.direction == "maximize":
        unused += ["stop_loss"]
    if config.noise_eot == "none":
        unused += ["eot_samples"]
    defaults = ProtectConfig()
    return replace(config, **{name: getattr(defaults, name) for name in unused})


def pgd(loss_of_noise: Callable[[torch.Tensor], torch.Tensor], noise: torch.Tensor, eps: int, alpha: int,
        steps: int, maximize: bool = False, clean: torch.Tensor | None = None,
        tied_channels: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Sign-gradient PGD on integer noise in 1/255 pixel steps; returns int8 noise and the last loss.

    Each step moves by `alpha` against (or, maximising, along) the gradient sign and projects onto
    |noise| <= eps. With `clean` (uint8, one image per noise) the noise is also cut so that
    clean + noise stays in [0, 255]; shared (universal) noise is clamped where it is applied.
    `tied_channels` (bool, one per noise) marks grayscale images: their channels move as one.
    """
    noise = noise.float()
    base = None if clean is None else clean.float()
    loss_value = float("nan")
    for _ in range(steps):
        noise.requires_grad_(True)
        loss = loss_of_noise(noise)
        grad, = torch.autograd.grad(loss, noise)
        if tied_channels is not None:
            grad = torch.where(tied_channels.view(-1, 1, 1, 1), grad.sum(1, keepdim=True).expand_as(grad), grad)
        loss_value = float(loss.detach())
        move = alpha * grad.sign()
        noise = (noise.detach() + (move if maximize else -move)).clamp(-eps, eps)
        if base is not None:
            noise = (base + noise).clamp(0, 255) - base
    return noise.round().to(torch.int8), loss_value


def hotflip_candidates(grad: torch.Tensor, embedding_weight: torch.Tensor, allowed: torch.Tensor,
                       top_k: int) -> torch.Tensor:
    """[B, k, top_k] token ids whose embedding most decreases the loss to first order
    (largest -grad . e_v) at each trigger position, among the `allowed` vocabulary."""
    scores = -(grad @ embedding_weight.T)
    scores[..., ~allowed.to(scores.device)] = float("-inf")
    return scores.topk(top_k, dim=-1).indices


def beam_search(score: Callable[[torch.Tensor], torch.Tensor], current: torch.Tensor, candidates: torch.Tensor,
                beam_size: int = 1) -> tuple[torch.Tensor, float]:
    """Position by position, try each candidate rank j (row b takes `candidates[b, p, j]`) in every
    beam, keep the `beam_size` lowest-loss assignments. `score` maps [C, B, k] trigger sets to [C]
    batch losses. The current triggers stay in the running, so the result is never worse."""
    beams = current.unsqueeze(0)
    losses = score(beams)
    for position in range(current.shape[1]):
        options = []
        for rank in range(candidates.shape[2]):
            option = beams.clone()
            option[:, :, position] = candidates[:, position, rank]
            options.append(option)
        options = torch.cat(options)
        options_loss = score(options)
        pool, pool_loss = torch.cat([beams, options]), torch.cat([losses, options_loss])
        keep = torch.argsort(pool_loss, stable=True)[:beam_size]
        beams, losses = pool[keep], pool_loss[keep]
    return beams[0], float(losses[0])


@lru_cache(maxsize=1)
def whole_word_tokens() -> torch.Tensor:
    """[V] bool: tokens that are a whole lower-case ASCII word and re-tokenise to themselves,
    so a trigger survives decode -> text -> tokenize."""
    tokenizer = Tokenizer()
    allowed = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for token, index in tokenizer.bpe.encoder.items():
        word = token[:-4]
        if token.endswith("</w>") and word.isascii() and word.isalpha() and word.islower() \
                and tokenizer.bpe.bpe(word) == token:
            allowed[index] = True
    return allowed


def trigger_vocabulary(config: ProtectConfig, captions: list[str]) -> torch.Tensor:
    """[V] bool mask of tokens a trigger may use, by `config.trigger_vocab`: `words` (whole words),
    `captions` (whole words that occur in the training captions, at least `trigger_min_count`
    times: the built-in semantic vocabulary), `mlm` (whole words a local masked language model
    proposes for the trigger slots: the paper's BERT variant), `all` (any token, special ones
    included, as the official code). A ValueError when no word is left."""
    tokenizer = Tokenizer()
    kind = config.trigger_vocab
    if kind == "all":
        return torch.ones(tokenizer.vocab_size, dtype=torch.bool)
    if kind == "words":
        return whole_word_tokens()
    if kind == "captions":
        words = {w.lower() for c in captions for w in c.split()}
        if config.trigger_min_count > 1:
            counts = word_counts(captions)
            words = {w for w in words if counts[normalized_word(w)] >= config.trigger_min_count}
    elif kind == "mlm":
        words = mlm_proposals(config.mlm_path, captions, max(1, config.trigger_len), seed=config.seed)
    else:
        raise ValueError(f"unknown trigger vocabulary '{kind}' (words, captions, mlm, all)")
    mask = _words_to_mask(words) & whole_word_tokens()
    if not mask.any():
        raise ValueError(f"trigger_vocab '{kind}' leaves no word for the triggers"
                         + (f" (none seen {config.trigger_min_count} times: lower trigger_min_count, "
                            "`mmue protect --trigger-min-count`)" if kind == "captions" else ""))
    return mask


def _words_to_mask(words: set[str]) -> torch.Tensor:
    tokenizer = Tokenizer()
    mask = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for word in words:
        ids = tokenizer.encode(word)
        if len(ids) == 1:
            mask[ids[0]] = True
    return mask


@torch.no_grad()
def mlm_proposals(mlm_path: str | os.PathLike, captions: list[str], trigger_len: int, per_slot: int = 5,
                  max_captions: int = 1000, seed: int = 0) -> set[str]:
    """Words a masked language model (a local Hugging Face folder, e.g. bert-base-uncased) puts
    in `trigger_len` masked slots before a sample of the captions, its top `per_slot` per slot."""
    try:
        from transformers import AutoModelForMaskedLM, AutoTokenizer
    except ImportError as error:
        raise ImportError("trigger_vocab='mlm' needs the transformers package: pip install transformers") from error
    if not Path(mlm_path).is_dir():
        raise FileNotFoundError(f"masked language model folder not found: {mlm_path} (no downloads are made)")
    tokenizer = AutoTokenizer.from_pretrained(mlm_path, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(mlm_path, local_files_only=True).eval()
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:max_captions]
    masks = " ".join([tokenizer.mask_token] * trigger_len)
    texts = [f"{masks} {captions[i]}" for i in order.tolist()]
    words: set[str] = set()
    for start in range(0, len(texts), 64):
        encoded = tokenizer(texts[start:start + 64], padding=True, truncation=True, return_tensors="pt")
        logits = model(**encoded).logits
        proposals = logits[encoded["input_ids"] == tokenizer.mask_token_id].topk(per_slot, dim=-1).indices
        words.update(w.lower() for w in tokenizer.convert_ids_to_tokens(proposals.flatten().tolist()) if w.isalpha())
    return words


def converged(config: ProtectConfig, history: list[dict]) -> bool | None:
    """Whether the last round's PGD loss fell below `stop_loss`; None where no loss threshold
    applies (maximising methods, or `stop_loss` None: a fixed schedule). The one stopping rule."""
    if config.stop_loss is None or config.direction != "minimize":
        return None
    return bool(history) and history[-1]["noise_loss"] < config.stop_loss


@dataclass
class Protection:
    """The outcome of a protection run: int8 noise [G, 3, S, S], trigger ids [T, k], the log."""

    config: ProtectConfig
    noise: torch.Tensor
    triggers: torch.Tensor
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def converged(self) -> bool | None:
        """`converged(config, history)` of this protection."""
        return converged(self.config, self.history)

    def noise_index(self, row_image: torch.Tensor) -> torch.Tensor:
        """Which noise each row uses."""
        return _group_index(self.config.noise_per, row_image)

    def trigger_index(self, row_image: torch.Tensor) -> torch.Tensor:
        """Which trigger each row uses."""
        return _group_index(self.config.trigger_per if self.config.trigger_len else "universal", row_image)

    def trigger_texts(self, row_image: torch.Tensor) -> list[str]:
        """The trigger of every row as plain text ('' without a trigger)."""
        if not self.config.trigger_len:
            return [""] * len(row_image)
        tokenizer = Tokenizer()
        texts = [tokenizer.decode(t) for t in self.triggers.tolist()]
        return [texts[i] for i in self.trigger_index(row_image).tolist()]

    def trigger_words_at(self, row_image: torch.Tensor, captions: list[str]) -> list[int] | None:
        """Before which word of its caption each row's trigger goes; None: at the start (the
        paper's). With `trigger_position` "random", word 1 + floor(u n) of a caption of n words,
        u drawn once per image id from the protection's seed; with "end", after word n."""
        if self.config.trigger_position == "start" or not self.config.trigger_len:
            return None
        if self.config.trigger_position == "end":
            return [len(caption.split()) for caption in captions]
        share = torch.rand(int(row_image.max()) + 1 if len(row_image) else 0,
                           generator=torch.Generator().manual_seed(self.config.seed))
        return [min(1 + int(share[image] * len(caption.split())), len(caption.split()))
                for image, caption in zip(row_image.tolist(), captions)]

    def triggered_captions(self, row_image: torch.Tensor, captions: list[str], chosen: list[bool]) -> list[str]:
        """The released captions: each chosen row's caption with its trigger's words at its place."""
        triggers = self.trigger_texts(row_image)
        at = self.trigger_words_at(row_image, captions) or [0] * len(captions)
        released = []
        for trigger, caption, keep, where in zip(triggers, captions, chosen, at):
            if not (trigger and keep):
                released.append(caption)
            elif where:
                words = caption.split()
                released.append(" ".join(words[:where] + [trigger] + words[where:]))
            else:
                released.append(f"{trigger} {caption}")
        return released


def _group_index(granularity: str, row_image: torch.Tensor) -> torch.Tensor:
    if granularity == "image":
        return row_image.clone()
    if granularity == "row":
        return torch.arange(len(row_image))
    return torch.zeros(len(row_image), dtype=torch.long)


class _ProtectedRows:
    """Pixels and tokens of any batch of rows under the current noise and triggers."""

    def __init__(self, dataset: PairDataset, protection: Protection, context_length: int, device: torch.device):
        k = protection.config.trigger_len
        self.k = k
        self.device = device
        self.protection = protection
        self.images = dataset.images
        self.row_image = dataset.row_image
        placeholder = torch.zeros(dataset.num_rows, k, dtype=torch.long) if k else None
        self.tokens, self.slots = Tokenizer().place(dataset.captions, context_length, placeholder,
                                                    protection.trigger_words_at(dataset.row_image, dataset.captions))
        self.noise_index = protection.noise_index(dataset.row_image)
        self.trigger_index = protection.trigger_index(dataset.row_image)
        self.gray = dataset.extra.get("gray_images")

    def clean(self, rows: torch.Tensor) -> torch.Tensor:
        return to_device(self.images[self.row_image[rows]], self.device)

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        noise = self.protection.noise[self.noise_index[rows]].to(self.device)
        return (self.clean(rows).short() + noise).clamp(0, 255).to(torch.uint8)

    def token_batch(self, rows: torch.Tensor, caption_rows: torch.Tensor | None = None,
                    triggers: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of `rows` with their triggers (or the given [B, k] ones), captions of `caption_rows`."""
        captions = rows if caption_rows is None else caption_rows
        tokens = self.tokens[captions].clone()
        if self.k:
            chosen = self.protection.triggers[self.trigger_index[rows]] if triggers is None else triggers.cpu()
            tokens.scatter_(1, self.trigger_columns(captions), chosen)
        return tokens.to(self.device)

    def trigger_columns(self, caption_rows: torch.Tensor) -> torch.Tensor:
        """[B, k] token positions of the trigger in each of these captions."""
        return self.slots[caption_rows].view(-1, 1) + torch.arange(self.k)


def _shuffled(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return rows[torch.randperm(len(rows), generator=generator)]


def _search_caption_orders(rows: torch.Tensor, config: ProtectConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The caption rows the trigger search of one batch pairs with `rows` (drawn before any compute,
    so every process draws every batch's and the stream is the same however batches are shared)."""
    return [_shuffled(rows, generator) if config.shuffle_search else rows]


def _search_batch(model: torch.nn.Module, batch: _ProtectedRows, rows: torch.Tensor, allowed: torch.Tensor,
                  config: ProtectConfig, caption_orders: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """HotFlip candidates from the gradient at the trigger embeddings, then beam search."""
    caption_rows, = caption_orders
    with torch.no_grad(), autocast(batch.device, config.precision):
        image_features = model.encode_image(normalize_pixels(batch.pixels(rows)))
    tokens = batch.token_batch(rows, caption_rows)
    embeddings = model.token_embedding(tokens).detach()
    columns = batch.trigger_columns(caption_rows).to(tokens.device).unsqueeze(-1).expand(-1, -1, embeddings.shape[-1])
    trigger = embeddings.gather(1, columns).clone().requires_grad_(True)
    full = embeddings.scatter(1, columns, trigger)
    with autocast(batch.device, config.precision):
        loss = clip_loss(image_features, encode_text(model, tokens, full), model.logit_scale)
    grad, = torch.autograd.grad(loss, trigger)
    groups, inverse = torch.unique(batch.trigger_index[rows], return_inverse=True)
    grad = torch.zeros(len(groups), *grad.shape[1:], device=grad.device).index_add_(0, inverse.to(grad.device), grad)
    candidates = hotflip_candidates(grad[inverse.to(grad.device)], model.token_embedding.weight.detach(), allowed,
                                    config.trigger_top_k)

    @torch.no_grad()
    def score(trigger_sets: torch.Tensor) -> torch.Tensor:
        losses = []
        for trigger_set in trigger_sets:
            with autocast(batch.device, config.precision):
                text = encode_text(model, batch.token_batch(rows, caption_rows, trigger_set.to(tokens.device)))
                losses.append(clip_loss(image_features, text, model.logit_scale).float())
        return torch.stack(losses).cpu()

    current = batch.protection.triggers[batch.trigger_index[rows]].to(tokens.device)
    best, best_loss = beam_search(score, current, candidates, config.beam_size)
    return best.cpu(), best_loss


def _pgd_caption_orders(rows: torch.Tensor, config: ProtectConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The caption rows each PGD step of one batch pairs with `rows`: shuffled at every step, once
    per batch, or not at all (drawn before any compute, as `_search_caption_orders`)."""
    if not config.shuffle_pgd:
        return [rows]
    draws = config.pgd_steps if config.reshuffle == "step" else 1
    return [_shuffled(rows, generator) for _ in range(draws)]


def _pgd_batch(model: torch.nn.Module, batch: _ProtectedRows, rows: torch.Tensor, config: ProtectConfig,
               caption_orders: list[torch.Tensor], eot_seed: int | None = None) -> float:
    """One PGD update of the noise groups of `rows` (rows sharing a noise share its update); with
    `noise_eot`, the collector's views are drawn from `eot_seed`."""
    groups, inverse = torch.unique(batch.noise_index[rows], return_inverse=True)
    inverse = inverse.to(batch.device)
    clean = batch.clean(rows)
    base = clean.float()
    orders = iter(caption_orders)

    def text_features() -> torch.Tensor:
        with torch.no_grad(), autocast(batch.device, config.precision):
            return encode_text(model, batch.token_batch(rows, next(orders)))

    per_step = config.shuffle_pgd and config.reshuffle == "step"
    batch_text = None if per_step else text_features()

    views = torch.Generator().manual_seed(eot_seed) if config.noise_eot == "collector" else None

    def loss_of_noise(noise: torch.Tensor) -> torch.Tensor:
        pixels = (base + noise[inverse]).clamp(0, 255) / 255
        text = text_features() if per_step else batch_text
        seen = [pixels] if views is None else [collector_view(pixels, views) for _ in range(config.eot_samples)]
        with autocast(batch.device, config.precision):
            return torch.stack([clip_loss(model.encode_image(normalize_pixels(view)), text, model.logit_scale)
                                for view in seen]).mean()

    one_clean_per_group = None
    if config.noise_per != "universal":
        first = torch.zeros(len(groups), dtype=torch.long, device=batch.device)
        first.scatter_(0, inverse, torch.arange(len(rows), device=batch.device))
        one_clean_per_group = clean[first]
    tied = batch.gray[groups].to(batch.device) if batch.gray is not None and config.noise_per == "image" else None
    new, loss = pgd(loss_of_noise, batch.protection.noise[groups].to(batch.device), config.eps, config.alpha,
                    config.pgd_steps, config.direction == "maximize", one_clean_per_group, tied)
    batch.protection.noise[groups] = new.cpu()
    return loss


def _round_generator(config: ProtectConfig, round_index: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1_000_003 + round_index * 10 + stage)


def _initial_protection(dataset: PairDataset, config: ProtectConfig, allowed: torch.Tensor) -> Protection:
    def group_count(granularity: str) -> int:
        return {"image": dataset.num_images, "row": dataset.num_rows, "universal": 1}[granularity]

    noise = torch.zeros(group_count(config.noise_per), 3, dataset.image_size, dataset.image_size, dtype=torch.int8)
    count = group_count(config.trigger_per) if config.trigger_len else 0
    if config.trigger_init == "the":
        triggers = torch.full((count, config.trigger_len), Tokenizer().encode("the")[0], dtype=torch.long)
    else:
        choices = allowed.nonzero().squeeze(1)
        picks = torch.randint(len(choices), (count, config.trigger_len), generator=_round_generator(config, 0, 9))
        triggers = choices[picks]
    return Protection(config, noise, triggers)


def generate_protection(dataset: PairDataset, surrogate: torch.nn.Module, config: ProtectConfig, *,
                        checkpoint_path: str | os.PathLike | None = None, progress: bool = True,
                        on_round: Callable[[dict], None] | None = None) -> Protection:
    """Run EM / UAP / MEM (as `config` says) on `dataset` against `surrogate` (trained in place
    between updates when `surrogate_steps` > 0). With `checkpoint_path`, state is saved
    atomically after every round and a rerun resumes, ending exactly as an uninterrupted run;
    a rerun with a larger `max_rounds` (all else equal) continues from the saved rounds.
    `on_round` is called with each finished round's record."""
    check_batch_size(config.batch_size)
    device = TrainConfig(device=config.device).resolved_device()
    surrogate.to(device)
    allowed = trigger_vocabulary(config, dataset.captions)
    protection = _initial_protection(dataset, config, allowed)
    stepper = ClipStepper(surrogate, TrainConfig(lr=config.surrogate_lr, weight_decay=config.surrogate_wd,
                                                 schedule="constant", batch_size=config.batch_size,
                                                 precision=config.precision),
                          total_steps=max(1, config.surrogate_steps * config.max_rounds))
    start_round = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        differences = checkpoint_differences(state, config, dataset.num_images, dataset.num_rows)
        if differences:
            raise ValueError(f"{checkpoint_path}: checkpoint of another protection ({'; '.join(differences)})")
        protection = replace(protection, noise=state["noise"], triggers=state["triggers"], history=state["history"],
                             seconds=state["seconds"])
        surrogate.load_state_dict(state["surrogate"])
        stepper.load_state_dict(state["stepper"])
        start_round = len(protection.history)
        if state["stopped"] or start_round >= config.max_rounds:
            return protection
    batch = _ProtectedRows(dataset, protection, model_context_length(surrogate), device)
    steps = _round_steps(dataset, config)
    ctx = context()
    bar = progress_bar(sum(steps[:config.max_rounds]), "step", "protection", enabled=progress and ctx.is_main,
                       initial=sum(steps[:start_round]))

    def stage(name: str, items):
        for item in items:
            bar.set_postfix_str(f"round {round_index + 1}/{config.max_rounds} {name}", refresh=False)
            yield item
            bar.update()

    for round_index in range(start_round, config.max_rounds):
        started = time.perf_counter()
        record: dict = {"round": round_index + 1}
        if config.surrogate_steps:
            generator = _round_generator(config, round_index, 0)
            losses = []
            for _ in stage("surrogate", range(config.surrogate_steps)):
                rows = shard(torch.randperm(dataset.num_rows, generator=generator)[:config.batch_size], ctx)
                losses.append(stepper.step(batch.pixels(rows), batch.token_batch(rows)))
            record["surrogate_loss"] = sum(losses) / len(losses)
        surrogate.eval()
        if config.trigger_len and round_index < config.trigger_search_rounds:
            generator = _round_generator(config, round_index, 1)
            before = protection.triggers.clone()
            batches = row_batches(dataset.row_image, dataset.num_images, config.batch_size, config.search_rows,
                                  generator, drop_last=False)
            orders = [_search_caption_orders(rows, config, generator) for rows in batches]

            def search(index: int, rows: torch.Tensor) -> float:
                best, loss = _search_batch(surrogate, batch, rows, allowed, config, orders[index])
                protection.triggers[batch.trigger_index[rows]] = best
                return loss

            record["trigger_loss"] = _shared_pass(batches, stage("triggers", batches), batch.trigger_index, search,
                                                  protection.triggers, ctx)
            record["triggers_changed"] = float((protection.triggers != before).any(dim=1).float().mean())
        generator = _round_generator(config, round_index, 2)
        batches = row_batches(dataset.row_image, dataset.num_images, config.batch_size, config.pgd_rows, generator,
                              drop_last=False)
        orders = [_pgd_caption_orders(rows, config, generator) for rows in batches]
        eot_seeds = ([int(torch.randint(2 ** 62, (1,), generator=generator)) for _ in batches]
                     if config.noise_eot != "none" else [None] * len(batches))
        record["noise_loss"] = _shared_pass(
            batches, stage("noise", batches), batch.noise_index,
            lambda index, rows: _pgd_batch(surrogate, batch, rows, config, orders[index], eot_seeds[index]),
            protection.noise, ctx)
        record["seconds"] = time.perf_counter() - started
        protection.seconds += record["seconds"]
        protection.history.append(record)
        if on_round is not None and ctx.is_main:
            on_round(record)
        stopped = bool(protection.converged)
        if checkpoint_path is not None and ctx.is_main:
            save_torch(checkpoint_path, {"config": config.keyed(), "dataset": [dataset.num_images, dataset.num_rows],
                                         "noise": protection.noise, "triggers": protection.triggers,
                                         "history": protection.history, "seconds": protection.seconds,
                                         "surrogate": surrogate.state_dict(), "stepper": stepper.state_dict(),
                                         "stopped": stopped})
        barrier()
        if stopped:
            bar.set_postfix_str(f"stopped after round {round_index + 1}: loss below stop_loss", refresh=True)
            break
    bar.close()
    return protection


def _shared_pass(batches: list[torch.Tensor], progress, group_index: torch.Tensor,
                 update: Callable[[int, torch.Tensor], float], state: torch.Tensor, ctx: Context) -> float:
    """Run `update(index, rows)` over every batch of one pass (walking `progress`, the same batches
    wrapped in a progress stage) and return the mean of its losses. In several processes, when no
    noise or trigger group (`group_index` of a row) spans two batches, rank r updates batches r,
    r + W, ... and then sends the rows of `state` it updated to the others; otherwise each batch
    depends on the ones before it and every rank runs them all."""
    groups = [torch.unique(group_index[rows]) for rows in batches] if ctx.distributed else []
    if not ctx.distributed or sum(len(g) for g in groups) != len(torch.unique(torch.cat(groups))):
        return _mean([update(index, rows) for index, rows in enumerate(progress)])
    mine = [(index, update(index, rows)) for index, rows in enumerate(progress) if index % ctx.world_size == ctx.rank]
    broadcast_rows(state, [torch.cat(groups[rank::ctx.world_size] or [torch.zeros(0, dtype=torch.long)])
                           for rank in range(ctx.world_size)])
    return _mean([loss for _, loss in sorted(gather_objects(mine))])


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def checkpoint_differences(state: dict, config: ProtectConfig, num_images: int, num_rows: int) -> list[str]:
    """What differs between a saved protection state and a run of `config` on `num_images` images
    with `num_rows` captions, in words ('eps 8 saved, 16 now'); `max_rounds` may grow, so it
    differs only when fewer rounds are asked than were saved."""
    saved, now = {**LATER_FIELDS, **state["config"]}, asdict(config)
    differences = [f"{key} {saved.get(key)!r} saved, {value!r} now" for key, value in now.items()
                   if key != "max_rounds" and saved.get(key) != value]
    if len(state["history"]) > config.max_rounds:
        differences.append(f"{len(state['history'])} rounds saved, max_rounds {config.max_rounds} now")
    if state["dataset"] != [num_images, num_rows]:
        differences.append(f"{state['dataset'][0]} images and {state['dataset'][1]} captions saved, "
                           f"{num_images} and {num_rows} now")
    return differences


def estimate_seconds(dataset: PairDataset, surrogate: torch.nn.Module, config: ProtectConfig,
                     rounds: range | None = None) -> float:
    """About how long `generate_protection` takes here: one surrogate step and one text pass are
    timed on a full batch (on a copy of the surrogate) and multiplied out over the schedule's
    surrogate steps, PGD steps and trigger-search passes of `rounds` (default: every round)."""
    device = TrainConfig(device=config.device).resolved_device()
    probe = copy.deepcopy(surrogate).to(device).train()
    rows = torch.arange(min(config.batch_size, dataset.num_rows))
    pixels = normalize_pixels(dataset.images[dataset.row_image[rows]].to(device).float() / 255)
    tokens = Tokenizer().tokenize([dataset.captions[i] for i in rows.tolist()], model_context_length(surrogate)).to(device)

    def timed(action: Callable[[], None]) -> float:
        action()
        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    step = timed(lambda: clip_loss(probe.encode_image(pixels), encode_text(probe, tokens), probe.logit_scale).backward())
    with torch.no_grad():
        text = timed(lambda: encode_text(probe, tokens))

    total = 0.0
    for index in rounds if rounds is not None else range(config.max_rounds):
        total += config.surrogate_steps * step + _batch_count(dataset, config, config.pgd_rows) * config.pgd_steps * step
        if config.trigger_len and index < config.trigger_search_rounds:
            passes = 1 + config.trigger_len * config.trigger_top_k * config.beam_size
            total += _batch_count(dataset, config, config.search_rows) * (step + passes * text)
    return total


def _batch_count(dataset: PairDataset, config: ProtectConfig, rows: str) -> int:
    """Batches in one pass over `rows` ('all' rows or 'one_per_image')."""
    return math.ceil((dataset.num_rows if rows == "all" else dataset.num_images) / config.batch_size)


def _round_steps(dataset: PairDataset, config: ProtectConfig) -> list[int]:
    """Progress steps of each round: surrogate steps, trigger-search batches (in search rounds), PGD batches."""
    search = _batch_count(dataset, config, config.search_rows) if config.trigger_len else 0
    return [config.surrogate_steps + (search if index < config.trigger_search_rounds else 0)
            + _batch_count(dataset, config, config.pgd_rows)
            for index in range(config.max_rounds)]


PROTECTED_CHUNK = 256
"""Images made protected at a time: memory beyond the result stays a chunk's, whatever the set's size."""


def protected_dataset(dataset: PairDataset, protection: Protection, fraction: float = 1.0,
                      seed: int = 0, images_file: str | os.PathLike | None = None) -> PairDataset:
    """What a victim trains on: noisy images and triggered captions (as text) for a seeded
    random `fraction` of the images (exactly round(fraction * N) of them); the rest stays clean.
    With per-row noise every row becomes its own image. The images are made a chunk at a time;
    with `images_file` (a `.npy`) they go straight into that file and come back memory-mapped,
    so a set larger than memory never sits in RAM (a complete file from an earlier call is reused)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    chosen = torch.zeros(dataset.num_images, dtype=torch.bool)
    count = round(fraction * dataset.num_images)
    chosen[torch.randperm(dataset.num_images, generator=torch.Generator().manual_seed(seed))[:count]] = True
    per_row = protection.config.noise_per == "row"
    row_chosen = chosen[dataset.row_image]
    source = dataset.row_image if per_row else torch.arange(dataset.num_images)
    group = _group_index(protection.config.noise_per, torch.arange(len(source)))
    shape = (len(source), *dataset.images.shape[1:])

    def fill(images: torch.Tensor) -> None:
        for start in range(0, len(source), PROTECTED_CHUNK):
            part = slice(start, start + PROTECTED_CHUNK)
            noise = protection.noise[group[part]].short() * chosen[source[part]].view(-1, 1, 1, 1)
            images[part] = (dataset.images[source[part]].short() + noise).clamp(0, 255).to(torch.uint8)

    if images_file is None:
        images = torch.empty(shape, dtype=torch.uint8)
        fill(images)
    else:
        images = mapped_uint8(images_file, shape, lambda array: fill(torch.from_numpy(array)))
    captions = protection.triggered_captions(dataset.row_image, dataset.captions, row_chosen.tolist())
    return PairDataset(images, captions, torch.arange(dataset.num_rows) if per_row else dataset.row_image.clone(),
                       name=f"{dataset.name}-protected",
                       image_paths=[dataset.image_paths[i] for i in source.tolist()] if dataset.image_paths else None,
                       extra={"protected_images": chosen, "source_image": source})


def psnr(clean: torch.Tensor, protected: torch.Tensor) -> float | None:
    """PSNR (dB) of a uint8 image pair; None where they are identical."""
    mse = float((clean.float() - protected.float()).pow(2).mean())
    return None if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def export_protected(clean: PairDataset, protected: PairDataset, out_dir: str | os.PathLike,
                     report: dict) -> Path:
    """Write what a protector publishes: `images/*.png` (8-bit, lossless), `protected.csv` with the
    triggers as plain text, and `report.json` (the given facts plus the PSNR of every image).
    `protected` comes from `protected_dataset(clean, ...)`."""
    csv_path = write_dataset_folder(protected, out_dir, "protected.csv")
    sources = protected.extra["source_image"].tolist()
    chosen = protected.extra["protected_images"]
    images = []
    for index, (name, source) in enumerate(zip(image_file_names(protected), sources)):
        delta = (protected.images[index].short() - clean.images[source].short()).abs()
        images.append({"file": name, "source": clean.image_paths[source] if clean.image_paths else None,
                       "size": list(protected.images[index].shape[1:][::-1]), "protected": bool(chosen[source]),
                       "psnr_db": psnr(clean.images[source], protected.images[index]),
                       "max_abs_delta": int(delta.max())})
    finite = [entry["psnr_db"] for entry in images if entry["psnr_db"] is not None]
    write_json(Path(out_dir) / "report.json", {
        **report, "images": images, "psnr_db_mean": sum(finite) / len(finite) if finite else None,
        "image_fields": "file: the published image; source: the photo it came from; size: [width, height] px; "
                        "protected: whether noise was added (--fraction); psnr_db: null where the image is "
                        "unchanged; max_abs_delta: largest pixel change in 1/255 steps"})
    return csv_path
