"""The protection methods and their settings: `ProtectConfig` (every knob of EM / UAP / MEM,
each point where the official code differs from the paper among them), the method registry, the
named schedules, and the one rule that merges them: a method's preset wins over the schedule
shared by all methods, and explicit overrides win over both (`protection_config`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Literal

from .checkpoint import setting_differences
from .defenses import parse_settings, settings_label
from .storage import keyed_settings
from .train import check_choices


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
    trigger_vocab: Literal["words", "captions", "study", "mlm", "all"] = "words"
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
    """With trigger_vocab 'captions' (or 'study'): only words seen at least this often in the
    training captions (common words, which a dictionary built from other captions of the domain keeps)."""
    generator_steps: int = 0
    """T2UE (`t2ue`): generator steps per round. Above 0 the noise of an image comes from its first
    caption through a text-conditioned generator (`t2ue.NoiseGenerator`) trained by these steps
    between the surrogate's, instead of from PGD on each image: the PGD and trigger settings are unused."""
    generator_lr: float = 1e-3
    generator_width: int = 16
    generator_embed_dim: int = 32
    generator_corpus: Literal["released", "disjoint"] = "released"
    """What the generator learns from: the released images themselves (the study's setting), or
    'disjoint': the val split and the train images beyond the released ones, never the released
    images (the zero-contact setting)."""
    generator_diversity: float = 0.0
    """Weight of a term in the generator's loss that keeps the noises of a batch's images apart (their
    mean squared cosine): without it the generator tends to a few patterns shared by many captions
    (`tables.noise_diversity`), which a contrastive batch cannot tell pairs apart by. Ours, not the paper's."""

    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("precision", "noise_eot", "eot_samples", "trigger_position",
                                                "trigger_min_count", "generator_steps", "generator_lr",
                                                "generator_width", "generator_embed_dim", "generator_corpus",
                                                "generator_diversity")
    """Fields added after the committed cpu runs were keyed: they key a protection only when set
    away from their default."""

    def keyed(self) -> dict:
        """These settings as a protection run's (and its checkpoint's) key (`storage.keyed_settings`)."""
        return keyed_settings(self)

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
        if self.generator_steps < 0:
            raise ValueError(f"generator_steps must be >= 0, got {self.generator_steps}")
        if self.generator_steps and (self.trigger_len or self.noise_per != "image" or self.direction != "minimize"):
            raise ValueError("a T2UE generator (generator_steps > 0) makes error-minimising noise per image from "
                             "its caption: use trigger_len 0, noise_per 'image', direction 'minimize'")
        if self.generator_diversity < 0:
            raise ValueError(f"generator_diversity must be >= 0, got {self.generator_diversity}")
        if self.generator_width % 8 or self.generator_width < 8:
            raise ValueError(f"generator_width must be a multiple of 8, got {self.generator_width}")
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
    "t2ue": Method("T2UE", {"trigger_len": 0, "generator_steps": 120}, in_paper=False),
}
"""The method registry, read by the runs, the notebooks, the CLI and the paper tables. UAP and
TAP (the official code's "UAP" script) maximise the loss of a clean-trained surrogate. R-MEM-8
(ours, `13_careful_collector`, chosen on val) is MEM made for a careful collector: an 8-word
trigger at the start of each caption, of words seen at least 20 times in the captions, so that an
in-domain dictionary keeps them and stripping fewer than 8 leading words leaves a trigger;
top-4 candidates per slot keep its search near MEM-3's cost (`11_ablation`: top-4 protects as top-8).
T2UE (Ma et al. 2025, `t2ue`) makes each image's noise from its caption alone, through a generator
trained once by error minimisation; 120 generator steps a round, chosen on val
(`benchmarks/collector_selection.py --method t2ue`, the first 2,000 train images at 64 px, the
calibrated schedule's 3 rounds): C 0.24 / 0.08 against 0.14 / 0.05 with 40 steps and 0.19 / 0.07
with 40 steps and 6 rounds, at 3.0, 1.3 and 2.6 victim runs."""

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


def protection_config(method: str, schedule: dict | None = None, **overrides) -> ProtectConfig:
    """`method`'s `ProtectConfig`: its preset over the `schedule` shared by all methods, under
    `overrides` (the one merge rule of presets and schedules)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    shared = {k: v for k, v in (schedule or {}).items() if k not in METHODS[method].preset}
    return method_config(method, **{**shared, **overrides})


def protection_overrides(text: str) -> dict:
    """"noise_per: row, pgd_rows: all" -> protection settings, checked against `ProtectConfig`."""
    try:
        return check_protection_settings(parse_settings(text))
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None


def method_variant(item: str) -> tuple[str, dict, str]:
    """"mem-3" or "mem-3(trigger_vocab: captions)" -> (method, protection overrides, label):
    ("mem-3", {}, "MEM-3"), ("mem-3", {"trigger_vocab": "captions"}, "MEM-3 (trigger_vocab: captions)")."""
    name, _, arguments = str(item).partition("(")
    name = name.strip()
    if name not in METHODS or (arguments and not arguments.endswith(")")):
        raise ValueError(f"method {item!r}: expected one of {list(METHODS)}, optionally with protection settings "
                         "in brackets, e.g. 'mem-3(trigger_vocab: captions)'")
    overrides = protection_overrides(arguments[:-1]) if arguments else {}
    label = METHODS[name].label + (f" ({settings_label(overrides)})" if overrides else "")
    return name, overrides, label


BOUND_SHARE = 0.5
"""A minimising protection's noise is bound to its captions when its last PGD loss is below this
share of a contrastive loss at chance (ln of the pairs in a batch). The calibrated cpu
protections of Table 1 ended at 0.08-0.33 after their 3 rounds (C about 1 on their victims);
those of 41-101 photos, which barely protect, at 3-5, above chance (3.7-4.6)."""


def bound(config: ProtectConfig, history: list[dict], num_images: int | None = None) -> bool | None:
    """Whether the noise bound (see `BOUND_SHARE`): the expectation every schedule meets when it
    works, whether or not it reached its early-stop `stop_loss`; None for a maximising method or
    no rounds. `num_images` below the batch size makes the batch smaller."""
    if config.direction != "minimize" or not history:
        return None
    return history[-1]["noise_loss"] < BOUND_SHARE * math.log(batch_pairs(config, num_images))


def batch_pairs(config: ProtectConfig, num_images: int | None = None) -> int:
    """Pairs in one contrastive batch of a protection: its batch size, or fewer images (at least 2);
    a contrastive loss at chance is the log of it."""
    return max(2, min(config.batch_size, num_images or config.batch_size))


def converged(config: ProtectConfig, history: list[dict]) -> bool | None:
    """Whether the last round's PGD loss fell below `stop_loss`; None where no loss threshold
    applies (maximising methods, or `stop_loss` None: a fixed schedule). The one stopping rule."""
    if config.stop_loss is None or config.direction != "minimize":
        return None
    return bool(history) and history[-1]["noise_loss"] < config.stop_loss


def checkpoint_differences(state: dict, config: ProtectConfig, num_images: int, num_rows: int) -> list[str]:
    """What differs between a saved protection (or T2UE generator) state and a run of `config` on
    `num_images` images with `num_rows` captions, in words ('eps 8 saved, 16 now'); `max_rounds`
    may grow, so it differs only when fewer rounds are asked than were saved."""
    defaults = asdict(ProtectConfig())
    optional = {key: defaults[key] for key in ProtectConfig.OPTIONAL_KEYS}
    differences = setting_differences({**optional, **state["config"]}, asdict(config), free=("max_rounds",))
    if len(state["history"]) > config.max_rounds:
        differences.append(f"{len(state['history'])} rounds saved, max_rounds {config.max_rounds} now")
    if state["dataset"] != [num_images, num_rows]:
        differences.append(f"{state['dataset'][0]} images and {state['dataset'][1]} captions saved, "
                           f"{num_images} and {num_rows} now")
    return differences
