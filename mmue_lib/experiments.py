"""Each notebook's runs, built from its `Settings`: the one call a notebook makes to get them.

`BY_NOTEBOOK` maps a notebook to its function, so that the runner can list a notebook's runs
before it starts (`runs.planning`) and the tests can check their cache keys.
"""
from __future__ import annotations

from functools import wraps
from typing import Callable

from . import runs
from .settings import Settings, load_settings


def _in_processes(function: Callable[[Settings], object]) -> Callable[[Settings], object]:
    """Compute the experiment's missing runs in `settings.nproc` processes (`runs.processes`)."""

    @wraps(function)
    def run(settings: Settings):
        with runs.processes(settings.nproc):
            return function(settings)

    return run


def _leading(settings: Settings) -> tuple:
    """The arguments the experiment functions of `runs` start with: data, victim and surrogate
    architectures, context length, the victims' training settings."""
    return settings.data, settings.victim_model, settings.surrogate_model, settings.context_length, settings.train


@_in_processes
def table1(settings: Settings) -> dict:
    """Table 1 (and Figures 4-6): the clean victim, and per method its protection and the victim
    trained on it (`runs.method_runs`)."""
    return runs.method_runs(*_leading(settings), settings.methods, settings.schedule)


@_in_processes
def table2(settings: Settings) -> dict:
    """Table 2: one protection made on the surrogate, victims of several architectures on clean
    and protected data (`runs.transfer_runs`)."""
    s, o = settings, settings.options
    return runs.transfer_runs(s.data, s.surrogate_model, s.context_length, s.train, o.transfer_method, s.schedule,
                              o.victim_models)


@_in_processes
def semantic_triggers(settings: Settings) -> dict:
    """Table 3: free against semantic trigger vocabulary (`runs.vocabulary_runs`)."""
    s, o = settings, settings.options
    return runs.vocabulary_runs(*_leading(s), s.methods, s.schedule, o.semantic_method, o.semantic_mlm_path)


@_in_processes
def poisoning_fraction(settings: Settings) -> dict:
    """Victims trained when only a fraction of the images is protected (`runs.fraction_runs`)."""
    s, o = settings, settings.options
    return runs.fraction_runs(*_leading(s), s.methods, s.schedule, o.fraction_methods, o.fractions)


def face_data(settings: Settings) -> dict:
    """The face study's data: the face folder at the shared image size, captioned from names."""
    o = settings.options
    return runs.data_spec(o.face_data, settings.data["image_size"], named_faces=dict(
        people=o.face_people, captions_per_image=o.face_captions_per_image, seed=settings.seed))


@_in_processes
def faces(settings: Settings) -> tuple[dict, dict]:
    """Table 4: pretrained victims fine-tuned on clean and protected face pairs (`runs.face_study_runs`)."""
    s, o = settings, settings.options
    checkpoints = {model: path for model, path in zip(o.face_victims, o.face_pretrained_paths) if path}
    return runs.face_study_runs(s.data, face_data(s), o.face_victims, o.face_surrogate, s.context_length, s.train,
                                s.train_with(o.face_finetune), o.face_methods, s.schedule_with(o.face_protect),
                                checkpoints)


@_in_processes
def defenses(settings: Settings) -> dict:
    """Countermeasures against each method (`runs.defense_runs`)."""
    s, o = settings, settings.options
    return runs.defense_runs(*_leading(s), o.defense_methods, s.schedule, o.released_defenses, o.training_defenses)


@_in_processes
def ablation(settings: Settings) -> dict:
    """Paper-vs-code settings flipped one at a time (`runs.ablation_runs`)."""
    s, o = settings, settings.options
    return runs.ablation_runs(*_leading(s), o.ablation_method, s.schedule, o.ablation_flips)


@_in_processes
def seeds(settings: Settings) -> dict:
    """Tables 1 and 2 once per seed (`runs.seed_runs`)."""
    s, o = settings, settings.options
    return runs.seed_runs(*_leading(s), o.seed_methods, s.schedule, o.transfer_method, o.victim_models, o.seeds)


@_in_processes
def careful_collector(settings: Settings) -> dict:
    """A careful collector against every protection (`runs.collector_runs`): the collector's
    released-data countermeasures and open_clip's default training against every method; the
    robust methods under each countermeasure of 10_defenses (read from its params at the same
    scale); victims trained as long as the paper's on Table 1's data (its protections are shared);
    a seed check."""
    s, o = settings, settings.options
    single = load_settings("10_defenses", s.scale).options
    return runs.collector_runs(*_leading(s), o.collector_methods, s.schedule, o.collector_released,
                               o.collector_training, o.robust_methods, single.released_defenses,
                               single.training_defenses, load_settings("02_table1", s.scale).data,
                               o.persistence["methods"], o.persistence["epochs"], o.seed_check["method"],
                               o.seed_check["countermeasure"], o.seed_check["seeds"])


BY_NOTEBOOK: dict[str, Callable[[Settings], object] | None] = {
    "01_data_overview": None, "02_table1": table1, "03_table2": table2, "04_figure4": table1, "05_figure5": table1,
    "06_figure6": table1, "07_semantic_triggers": semantic_triggers, "08_poisoning_fraction": poisoning_fraction,
    "09_faces": faces, "10_defenses": defenses, "11_ablation": ablation, "12_seeds": seeds,
    "13_careful_collector": careful_collector,
}
"""The experiment function of every notebook (None: it trains nothing)."""


def planned_runs(settings: Settings) -> runs.Plan | None:
    """The runs a notebook's experiment needs and which of them the cache lacks, computing nothing."""
    function = BY_NOTEBOOK[settings.notebook]
    return None if function is None else runs.planning(function, settings)
