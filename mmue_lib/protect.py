"""The bi-level protection loop: EM, UAP and MEM over one PGD core (`pgd`) and one
trigger-search core (`triggers`: `hotflip_candidates` + `beam_search`); its settings and the
method registry are in `methods`, what is released from its outcome in `release`.

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
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .checkpoint import Checkpoint
from .data import PairDataset
from .defenses import collector_view
from .distributed import Context, broadcast_rows, check_batch_size, context, gather_objects, resolve_device, shard
from .methods import ProtectConfig, checkpoint_differences, converged
from .models import Tokenizer, encode_text, model_context_length, normalize_pixels
from .progress import bar as progress_bar
from .storage import seeded_generator
from .train import ClipStepper, TrainConfig, autocast, clip_loss, row_batches, to_device
from .triggers import beam_search, hotflip_candidates, trigger_vocabulary


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
        return group_index(self.config.noise_per, row_image)

    def trigger_index(self, row_image: torch.Tensor) -> torch.Tensor:
        """Which trigger each row uses."""
        return group_index(self.config.trigger_per if self.config.trigger_len else "universal", row_image)

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


def group_index(granularity: str, row_image: torch.Tensor) -> torch.Tensor:
    """Which noise (or trigger) each row uses, for noise (or triggers) per image, per row or one for all."""
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
    return seeded_generator(config.seed, round_index * 10 + stage)


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
    device = resolve_device(config.device)
    surrogate.to(device)
    allowed = trigger_vocabulary(config, dataset.captions)
    protection = _initial_protection(dataset, config, allowed)
    stepper = ClipStepper(surrogate, TrainConfig(lr=config.surrogate_lr, weight_decay=config.surrogate_wd,
                                                 schedule="constant", batch_size=config.batch_size,
                                                 precision=config.precision),
                          total_steps=max(1, config.surrogate_steps * config.max_rounds))
    start_round = 0
    checkpoint = Checkpoint(checkpoint_path, "protection")
    state = checkpoint.load(lambda saved: checkpoint_differences(saved, config, dataset.num_images, dataset.num_rows))
    if state is not None:
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
        checkpoint.save({"config": config.keyed(), "dataset": [dataset.num_images, dataset.num_rows],
                         "noise": protection.noise, "triggers": protection.triggers, "history": protection.history,
                         "seconds": protection.seconds, "surrogate": surrogate.state_dict(),
                         "stepper": stepper.state_dict(), "stopped": stopped})
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


def estimate_seconds(dataset: PairDataset, surrogate: torch.nn.Module, config: ProtectConfig,
                     rounds: range | None = None) -> float:
    """About how long `generate_protection` takes here: one surrogate step and one text pass are
    timed on a full batch (on a copy of the surrogate) and multiplied out over the schedule's
    surrogate steps, PGD steps and trigger-search passes of `rounds` (default: every round)."""
    device = resolve_device(config.device)
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
