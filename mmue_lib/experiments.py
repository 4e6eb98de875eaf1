"""Each notebook's recipe: the runs its tables and figures read, built from its `Settings`.

A recipe's building blocks (`method_runs`, `defense_runs`, ...) take one `Experiment`, the
part of the settings every run shares, and the few options that are their own; a notebook's
recipe (`table1`, `careful_collector`, ...) takes its `Settings`. `BY_NOTEBOOK` maps a notebook
to its recipe, so that the runner can list a notebook's runs before it starts (`cache.planning`)
and the tests can check their cache keys.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import wraps
from typing import Callable

from .cache import Plan, planned, planning, processes
from .defenses import defense_label, parse_defenses, parse_settings, settings_label
from .methods import METHODS, method_variant, protection_overrides
from .models import create_clip
from .runs import checkpoint_run, data_spec, load_data, protection_run, training_run
from .settings import Settings, load_settings
from .train import TrainConfig


@dataclass(frozen=True)
class Experiment:
    """What every run of a recipe shares: the data, the victim and surrogate architectures, the
    context length, the victims' training settings, the protection schedule shared by all
    methods, and the methods (variants welcome: "mem-3(trigger_vocab: captions)")."""

    data: dict
    victim_model: str
    surrogate_model: str
    context_length: int
    train: dict
    schedule: dict
    methods: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.methods, (list, tuple)):
            raise ValueError(f"methods must be a list of {list(METHODS)}; got {self.methods!r}")
        object.__setattr__(self, "methods", tuple(self.methods))

    @classmethod
    def of(cls, settings: Settings, methods: list | None = None) -> Experiment:
        """The experiment of a notebook's settings (with other `methods`, where given)."""
        return cls(settings.data, settings.victim_model, settings.surrogate_model, settings.context_length,
                   settings.train, settings.schedule, settings.methods if methods is None else methods)

    def using(self, methods: list) -> Experiment:
        return replace(self, methods=methods)

    def seeded(self, seed: int) -> Experiment:
        """The same experiment with `seed` for the victims and the protections."""
        return replace(self, train={**self.train, "seed": seed}, schedule={**self.schedule, "seed": seed})

    def victim(self, protection: dict | None = None, **options) -> dict:
        """The victim of this experiment trained on `protection`'s data (clean without one)."""
        return training_run(self.data, self.victim_model, self.context_length, self.train, protection=protection,
                            **options)

    def protection(self, method: str, **overrides) -> dict:
        """`method`'s protection of this experiment's data, made on the surrogate."""
        return protection_run(self.data, method, self.surrogate_model, self.context_length, schedule=self.schedule,
                              **overrides)


@planned
def method_runs(experiment: Experiment) -> dict[str, dict]:
    """Table 1's rows: the clean victim, and per method its protection and the victim trained on it.
    Error-maximising methods (UAP, TAP) attack the clean victim itself as their surrogate."""
    variants = [method_variant(item) for item in experiment.methods]
    clean = experiment.victim()
    runs = {"Clean": {"protection": None, "victim": clean}}
    for variant in variants:
        protection = method_protection(experiment, variant, clean)
        runs[variant[2]] = {"protection": protection, "victim": experiment.victim(protection)}
    return runs


def method_protection(experiment: Experiment, variant: tuple[str, dict, str], clean: dict) -> dict:
    """The protection of one `method_variant` of the experiment's data, as Table 1 makes it:
    error-maximising methods (UAP, TAP) attack `clean`, the clean victim, as their surrogate."""
    method, overrides, _ = variant
    surrogate = clean if METHODS[method].needs_trained_surrogate else None
    return experiment.protection(method, surrogate=surrogate, **overrides)


@planned
def transfer_runs(experiment: Experiment, method: str, victim_models: list[str]) -> dict:
    """Table 2's runs: `method`'s protection made on the surrogate, and per victim architecture a
    victim trained on clean and one on protected data, as {"protection": run,
    architecture: {"clean": run, "protected": run}}."""
    name, overrides, _ = method_variant(method)
    protection = experiment.protection(name, **overrides)
    victims = {model: replace(experiment, victim_model=model) for model in victim_models}
    return {"protection": protection,
            **{model: {"clean": victim.victim(), "protected": victim.victim(protection)}
               for model, victim in victims.items()}}


@planned
def vocabulary_runs(experiment: Experiment, method: str, mlm_path: str | None = None) -> dict:
    """Table 3's runs: `method` with the free trigger vocabulary (Table 1's run) and with a
    semantic one (a local masked LM at `mlm_path`, else the training captions' words), each with
    its victim, beside Table 1's clean victim: {"Clean": run, "protection": {name: run},
    "victim": {name: run}}."""
    table1 = method_runs(experiment)
    label, restricted = METHODS[method].label, "mlm" if mlm_path else "captions"
    protections = {f"{label} free": table1[label]["protection"],
                   f"{label} semantic ({restricted})": experiment.protection(method, trigger_vocab=restricted,
                                                                             mlm_path=mlm_path)}
    return {"Clean": table1["Clean"]["victim"], "protection": protections,
            "victim": {name: experiment.victim(protection) for name, protection in protections.items()}}


@planned
def fraction_runs(experiment: Experiment, fraction_methods: list[str], fractions: list[float]) -> dict:
    """The poisoning-fraction runs: Table 1's clean victim, and per method in `fraction_methods`
    and fraction p a victim trained when a seeded p of the images carry Table 1's protection,
    as {"Clean": run, (label, p): run}."""
    table1 = method_runs(experiment)
    seed = TrainConfig(**experiment.train).seed
    return {"Clean": table1["Clean"]["victim"],
            **{(METHODS[method].label, fraction): experiment.victim(table1[METHODS[method].label]["protection"],
                                                                    fraction=fraction, seed=seed)
               for method in fraction_methods for fraction in fractions}}


@planned
def defense_runs(experiment: Experiment, released: list[str], training: list[str],
                 captioner: dict | None = None) -> dict[str, dict[str, dict]]:
    """Victims under countermeasures, as {setting: {"Clean": run, method label: run}}: setting
    "none" holds `method_runs`' victims; then one setting per item of `released` (a released-data
    defense or chain, `defenses.parse_defenses`: "jpeg(quality: 30)"; a chain with `recaption`
    captions with the `captioner` training run) and per item of `training` (training-config
    overrides: "augment: strong, augment_views: 4")."""
    table1 = method_runs(experiment)
    protections = {label: entry["protection"] for label, entry in table1.items() if entry["protection"]}
    settings = {"none": {label: entry["victim"] for label, entry in table1.items()}}

    def victims(under: Experiment, defenses: list | None, **options) -> dict[str, dict]:
        return {"Clean": under.victim(defenses=defenses, **options),
                **{label: under.victim(protection, defenses=defenses, **options)
                   for label, protection in protections.items()}}

    for item in released:
        chain = parse_defenses(item)
        recaptions = any(entry["name"] == "recaption" for entry in chain)
        settings[defense_label(item)] = victims(experiment, chain, **({"captioner": captioner} if recaptions else {}))
    for item in training:
        overrides = parse_settings(item)
        defended = {**experiment.train, **overrides}
        TrainConfig(**defended)
        settings[settings_label(overrides)] = victims(replace(experiment, train=defended), None)
    return settings


def own_data(data: dict) -> dict:
    """A collector's own clean data beside a release of the first `max_train_images` train images:
    the train images after them."""
    if not data["max_train_images"]:
        raise ValueError("a collector's own data needs a release of part of the train split (data.max_train_images)")
    return data_spec(**{**data, "max_train_images": None, "skip_train_images": data["max_train_images"]})


def scored_on_test(experiment: Experiment) -> Experiment:
    """The experiment with its victims scored on test: its protections and any model whose
    weights are all that matters are the same runs as the notebooks'."""
    return replace(experiment, data={key: value for key, value in experiment.data.items() if key != "evaluate_on"})


def collector_clip(experiment: Experiment, own_train: dict) -> dict:
    """The informed collector's own CLIP: trained on its clean data (`own_data`) with `own_train`
    over the experiment's training settings, scored on test whatever split the experiment's victims
    are scored on (its weights do not depend on it: a selection on val shares the run)."""
    own = scored_on_test(experiment)
    return replace(own, data=own_data(own.data), train={**experiment.train, **own_train}).victim()


def hold_protections(experiment: Experiment, hold_methods: list | tuple, pretrained: dict) -> dict[str, dict]:
    """The protections of `hold_methods` made against the collector's own CLIP (`pretrained`) as
    their surrogate: a protector who expects the collector to start from a public pretrained model
    protects against that model."""
    return {f"{label} against the collector's CLIP": experiment.protection(name, surrogate=pretrained, **overrides)
            for name, overrides, label in map(method_variant, hold_methods)}


def fine_tuning_runs(experiment: Experiment, pretrained: dict, finetune: dict, frozen_groups: int,
                     protections: dict[str, dict | None]) -> dict[str, dict[str, dict]]:
    """Victims fine-tuned from the collector's `pretrained` CLIP with `finetune` over the
    experiment's training settings, on each released set (`protections`: label -> protection run,
    None for clean): {"fine-tuned": {label: run}, "fine-tuned, frozen": {label: run}}, the second
    with the image tower's first `frozen_groups` groups frozen (SSC)."""
    tuning = {**experiment.train, **finetune}
    TrainConfig(**tuning)
    return {"fine-tuned": fine_tuned_victims(experiment, pretrained, tuning, protections),
            "fine-tuned, frozen": fine_tuned_victims(experiment, pretrained, {**tuning, "freeze_image_groups": frozen_groups},
                                                     protections)}


def fine_tuned_victims(experiment: Experiment, pretrained: dict, train: dict,
                       protections: dict[str, dict | None]) -> dict[str, dict]:
    """One victim fine-tuned from `pretrained` with `train` per released set ({label: run})."""
    return {label: training_run(experiment.data, experiment.victim_model, experiment.context_length, train,
                                protection=protection, pretrained=pretrained)
            for label, protection in protections.items()}


def fine_tuning_seed_runs(experiment: Experiment, pretrained: dict, finetune: dict,
                          protections: dict[str, dict | None], seeds: list[int]) -> dict[str, dict[str, dict]]:
    """The whole-model fine-tuning of `fine_tuning_runs` once per seed (the seed orders the
    fine-tuning batches; the collector's CLIP and the protections stay the same), as
    {"seed s": {label: run}}; the experiment's own seed gives `fine_tuning_runs`' runs."""
    return {f"seed {seed}": fine_tuned_victims(experiment, pretrained, {**experiment.train, **finetune, "seed": seed},
                                               protections)
            for seed in seeds}


@planned
def fine_tuning_selection(experiment: Experiment, own_train: dict, finetune: dict, frozen_groups: int,
                          against_collector: bool) -> dict:
    """The fine-tuning collector of `informed_runs` with victims scored on the experiment's split
    (val, to choose a protection against it): the protections of the experiment's methods as the
    notebooks make them (and with `against_collector` each also made against the collector's CLIP),
    victims fine-tuned from the collector's CLIP on each. {"pretrained", "clean victim" (from
    scratch, scored on test: the unit of cost), "protections", "fine-tuned", "fine-tuned, frozen"}."""
    released = scored_on_test(experiment)
    pretrained = collector_clip(released, own_train)
    clean = released.victim()
    protections = {"Clean": None, **{variant[2]: method_protection(released, variant, clean)
                                     for variant in map(method_variant, experiment.methods)}}
    if against_collector:
        protections.update(hold_protections(released, experiment.methods, pretrained))
    return {"pretrained": pretrained, "clean victim": clean, "protections": protections,
            **fine_tuning_runs(experiment, pretrained, finetune, frozen_groups, protections)}


@planned
def informed_runs(experiment: Experiment, countermeasures: list[str], own_train: dict, finetune: dict,
                  frozen_groups: int, hold_methods: list | tuple = (), finetune_seeds: list | tuple = ()) -> dict:
    """The informed collector's runs: "scratch": `method_runs` (victims from scratch); "pretrained":
    the collector's own CLIP (`collector_clip`); "fine-tuned" and "fine-tuned, frozen": victims
    fine-tuned from it (`fine_tuning_runs`) on the released data, clean or protected, also on the
    protections of `hold_methods` made against the collector's CLIP (`hold_protections`);
    "fine-tuning seeds": the first of them once per seed of `finetune_seeds`
    (`fine_tuning_seed_runs`); "countermeasures": `defense_runs` of the released-data
    `countermeasures`, the pretrained CLIP captioning any `recaption`."""
    scratch = method_runs(experiment)
    pretrained = collector_clip(experiment, own_train)
    protections = {label: entry["protection"] for label, entry in scratch.items()}
    protections.update(hold_protections(experiment, hold_methods, pretrained))
    return {"scratch": scratch, "pretrained": pretrained,
            **fine_tuning_runs(experiment, pretrained, finetune, frozen_groups, protections),
            "fine-tuning seeds": fine_tuning_seed_runs(experiment, pretrained, finetune, protections, finetune_seeds),
            "countermeasures": defense_runs(experiment, countermeasures, [], captioner=pretrained)}


@planned
def ablation_runs(experiment: Experiment, method: str, flips: list[str]) -> dict[str, dict]:
    """One protection of `method` per setting, each with the victim trained on it, as
    {"Clean": {"protection": None, "victim": clean run}, "default": {...}, flip label: {...}}.
    A flip is a string of protection settings that override the schedule and the method's
    preset ("noise_per: row, pgd_rows: all"); its label is that string, normalised."""
    parsed = [protection_overrides(item) for item in flips]
    runs = {"Clean": {"protection": None, "victim": experiment.victim()}}
    for label, overrides in {"default": {}, **{settings_label(o): o for o in parsed}}.items():
        protection = experiment.protection(method, **overrides)
        runs[label] = {"protection": protection, "victim": experiment.victim(protection)}
    return runs


@planned
def seed_runs(experiment: Experiment, transfer_method: str, transfer_victims: list[str],
              seeds: list[int]) -> dict[str, dict]:
    """Tables 1 and 2 once per seed (the seed initialises the surrogate and the victims and
    orders their batches), as {"seed s": {"protections": {label: run},
    "victims": {architecture: {"Clean": run, label: run}}}}."""
    runs = {}
    transfer_label = METHODS[transfer_method].label
    for seed in seeds:
        seeded = experiment.seeded(seed)
        table1 = method_runs(seeded)
        protections = {label: entry["protection"] for label, entry in table1.items() if entry["protection"]}
        victims = {experiment.victim_model: {label: entry["victim"] for label, entry in table1.items()}}
        if transfer_label not in protections:
            protections[transfer_label] = seeded.protection(transfer_method)
        for model in transfer_victims:
            victim = replace(seeded, victim_model=model)
            victims.setdefault(model, {})
            victims[model]["Clean"] = victim.victim()
            victims[model][transfer_label] = victim.victim(protections[transfer_label])
        runs[f"seed {seed}"] = {"protections": protections, "victims": victims}
    return runs


POINT_KEYS = ("image_size", "max_train_images", "model")
"""What an operating point of the scale ladder may change: the data's resolution and size, and the
architecture of the victims and the surrogate alike."""


def ladder_point(experiment: Experiment, point: dict) -> Experiment:
    """`experiment` at one operating point (`POINT_KEYS`; max_train_images null: every train image)."""
    unknown = sorted(set(point) - set(POINT_KEYS))
    if unknown:
        raise ValueError(f"ladder point {point}: unknown {unknown}; a point may set {', '.join(POINT_KEYS)}")
    data = {**experiment.data, **{key: point[key] for key in ("image_size", "max_train_images") if key in point}}
    model = point.get("model", experiment.victim_model)
    return replace(experiment, data=data, victim_model=model, surrogate_model=model)


def point_label(experiment: Experiment) -> str:
    """"64 px, RN-small, 2000 images": an operating point in words."""
    images = experiment.data["max_train_images"] or "all"
    return f"{experiment.data['image_size']} px, {experiment.victim_model}, {images} images"


VARIES = {"image_size": "image size", "model": "architecture", "max_train_images": "train images"}
"""What a ladder point varies, in words."""

STUDY_POINT = "none (the study's point)"
"""What the ladder's point without overrides varies: the study's own operating point."""


def ladder_sizes(settings: Settings) -> dict[str, dict]:
    """Per point of `settings.options.ladder` (by `point_label`): what it varies, its image size,
    model, train images and the model's parameter count, for the cost laws of `tables.scale_table`."""
    base = Experiment.of(settings, settings.options.ladder_methods)
    sizes = {}
    for point in settings.options.ladder:
        experiment = ladder_point(base, point)
        varies = ", ".join(VARIES[key] for key in point) or STUDY_POINT
        sizes[point_label(experiment)] = {
            "varies": varies, "image_size": experiment.data["image_size"], "model": experiment.victim_model,
            "images": load_data(experiment.data, "train").num_images,
            "parameters": parameter_count(experiment.victim_model, experiment.data["image_size"],
                                          experiment.context_length)}
    return sizes


def parameter_count(model: str, image_size: int, context_length: int) -> int:
    """Parameters of an architecture at an image size (a fresh model; nothing is loaded)."""
    return sum(parameter.numel() for parameter in create_clip(model, image_size=image_size,
                                                                context_length=context_length).parameters())


def run_work(settings: Settings, runs: list[dict]) -> list[dict]:
    """The runs of `runs` (label, model, image_size, images, epochs: e.g. the paper's victims) with
    their forward size = pixels x parameters, work = forward size x images, and their epochs over
    this experiment's victims'."""
    epochs = TrainConfig(**settings.train).epochs
    sized = [{**run, "forward size": run["image_size"] ** 2
              * parameter_count(run["model"], run["image_size"], settings.context_length)} for run in runs]
    return [{**run, "work": run["forward size"] * run["images"], "epochs_factor": run["epochs"] / epochs}
            for run in sized]


@planned
def ladder_runs(experiment: Experiment, points: list[dict], schedule_check: dict, schedules: dict[str, dict],
                seed_check: dict) -> dict:
    """The scale ladder: {"ladder": {point label: `method_runs` at that point}, "schedule": {schedule
    name: `method_runs` of `schedule_check["methods"]` at its point under that schedule (the
    experiment's own, then each of `schedules`)}, "seeds": {"seed s": `method_runs` at
    `seed_check["point"]` with seed s}}."""
    check = ladder_point(experiment, schedule_check["point"]).using(schedule_check["methods"])
    seeded = ladder_point(experiment, seed_check["point"])
    return {"ladder": {point_label(point): method_runs(point)
                       for point in (ladder_point(experiment, p) for p in points)},
            "schedule": {"own": method_runs(check),
                         **{name: method_runs(replace(check, schedule=schedule)) for name, schedule in schedules.items()}},
            "seeds": {f"seed {seed}": method_runs(seeded.seeded(seed)) for seed in seed_check["seeds"]}}


def _in_processes(function: Callable[[Settings], object]) -> Callable[[Settings], object]:
    """A notebook's recipe: one plan for all its runs, the missing ones computed in `settings.nproc`
    processes (`cache.processes`)."""
    recipe = planned(function)

    @wraps(function)
    def run(settings: Settings):
        with processes(settings.nproc):
            return recipe(settings)

    return run


@_in_processes
def table1(settings: Settings) -> dict:
    """Table 1 (and Figures 4-6): the clean victim, and per method its protection and the victim
    trained on it (`method_runs`)."""
    return method_runs(Experiment.of(settings))


@_in_processes
def table2(settings: Settings) -> dict:
    """Table 2: one protection made on the surrogate, victims of several architectures on clean
    and protected data (`transfer_runs`)."""
    return transfer_runs(Experiment.of(settings), settings.options.transfer_method, settings.options.victim_models)


@_in_processes
def semantic_triggers(settings: Settings) -> dict:
    """Table 3: free against semantic trigger vocabulary (`vocabulary_runs`)."""
    o = settings.options
    return vocabulary_runs(Experiment.of(settings), o.semantic_method, o.semantic_mlm_path)


@_in_processes
def poisoning_fraction(settings: Settings) -> dict:
    """Victims trained when only a fraction of the images is protected (`fraction_runs`)."""
    return fraction_runs(Experiment.of(settings), settings.options.fraction_methods, settings.options.fractions)


def face_data(settings: Settings) -> dict:
    """The face study's data: the face folder at the shared image size, captioned from names."""
    o = settings.options
    return data_spec(o.face_data, settings.data["image_size"], named_faces=dict(
        people=o.face_people, captions_per_image=o.face_captions_per_image, seed=settings.seed))


@_in_processes
def faces(settings: Settings) -> tuple[dict[str, dict[str, dict]], dict[str, dict]]:
    """Table 4: per victim architecture, its pretrained model (a local checkpoint from
    `face_pretrained_paths`, else our own CLIP trained on the shared data), that model fine-tuned
    on clean face pairs, and fine-tuned on each method's protected pairs; and the protection runs
    per method label, made once, starting from the surrogate architecture's pretrained model."""
    o, faces_ = settings.options, face_data(settings)
    checkpoints = {model: path for model, path in zip(o.face_victims, o.face_pretrained_paths) if path}
    pretrain = Experiment.of(settings)
    finetune = replace(pretrain, data=faces_, train=settings.train_with(o.face_finetune),
                       schedule=settings.schedule_with(o.face_protect))

    def base(model: str) -> dict:
        if model in checkpoints:
            return checkpoint_run(checkpoints[model], model, faces_["image_size"], settings.context_length)
        return replace(pretrain, victim_model=model).victim()

    bases = {model: base(model) for model in dict.fromkeys([o.face_surrogate, *o.face_victims])}
    protections = {METHODS[method].label: replace(finetune, surrogate_model=o.face_surrogate).protection(
        method, surrogate=bases[o.face_surrogate]) for method in o.face_methods}
    study = {}
    for model in o.face_victims:
        victim = replace(finetune, victim_model=model)
        study[model] = {"Pretrained": bases[model], "Fine-tuned": victim.victim(pretrained=bases[model])}
        for label, protection in protections.items():
            study[model][label] = victim.victim(protection, pretrained=bases[model])
    return study, protections


@_in_processes
def defenses(settings: Settings) -> dict:
    """Countermeasures against each method (`defense_runs`)."""
    o = settings.options
    return defense_runs(Experiment.of(settings, o.defense_methods), o.released_defenses, o.training_defenses)


@_in_processes
def ablation(settings: Settings) -> dict:
    """Paper-vs-code settings flipped one at a time (`ablation_runs`)."""
    return ablation_runs(Experiment.of(settings), settings.options.ablation_method, settings.options.ablation_flips)


@_in_processes
def seeds(settings: Settings) -> dict:
    """Tables 1 and 2 once per seed (`seed_runs`)."""
    o = settings.options
    return seed_runs(Experiment.of(settings, o.seed_methods), o.transfer_method, o.victim_models, o.seeds)


@_in_processes
def careful_collector(settings: Settings) -> dict:
    """A careful collector against every protection: {"methods": `method_runs` of
    `collector_methods`; "countermeasures": `defense_runs` of them under the collector's
    released-data countermeasures and open_clip's default training; "single": `defense_runs` of
    `robust_methods` under each countermeasure of 10_defenses (read from its params at the same
    scale); "persistence": `method_runs` on Table 1's data (its protections are shared) with
    victims trained as long as the paper's; "seeds": {"seed s": `defense_runs` of the seed check's
    method under its countermeasure alone, with seed s}}."""
    o = settings.options
    base = Experiment.of(settings, o.collector_methods)
    single = load_settings("10_defenses", settings.scale).options
    persistence = replace(base, data=load_settings("02_table1", settings.scale).data,
                          train={**base.train, "epochs": o.persistence["epochs"]},
                          methods=o.persistence["methods"])
    check = o.seed_check
    return {"methods": method_runs(base),
            "countermeasures": defense_runs(base, o.collector_released, o.collector_training),
            "single": defense_runs(base.using(o.robust_methods), single.released_defenses, single.training_defenses),
            "persistence": method_runs(persistence),
            "seeds": {f"seed {seed}": defense_runs(base.using([check["method"]]).seeded(seed),
                                                   [check["countermeasure"]], [])
                      for seed in check["seeds"]}}


@_in_processes
def scale(settings: Settings) -> dict:
    """The scale ladder of operating points (`ladder_runs`): every point of `ladder`, the schedule
    check under the named schedule it gives, the seed check."""
    o = settings.options
    check = o.schedule_check
    return ladder_runs(Experiment.of(settings, o.ladder_methods), o.ladder, check,
                       {check["schedule"]: settings.named_schedule(check["schedule"])}, o.seed_check)


@_in_processes
def t2ue(settings: Settings) -> dict:
    """T2UE beside the paper's methods: {"table1": `method_runs` of the shared methods and
    `t2ue_methods` (02_table1's runs shared); "transfer": per method of `transfer_methods`, its
    `transfer_runs` to 03_table2's victim architectures; "collector": `defense_runs` of
    `collector_methods` on 13_careful_collector's data under its countermeasures (13's runs shared)}."""
    o = settings.options
    table1 = Experiment.of(settings, [*settings.methods, *o.t2ue_methods])
    victims = load_settings("03_table2", settings.scale).options.victim_models
    collector = load_settings("13_careful_collector", settings.scale)
    careful = Experiment.of(collector, o.collector_methods)
    return {"table1": method_runs(table1),
            "transfer": {method_variant(method)[2]: transfer_runs(table1, method, victims) for method in o.transfer_methods},
            "collector": defense_runs(careful, collector.options.collector_released,
                                      collector.options.collector_training)}


@_in_processes
def informed_collector(settings: Settings) -> dict:
    """A collector who starts from its own pretrained CLIP, purifies, detects or recaptions
    (`informed_runs`), on 13_careful_collector's data and protections (its runs shared)."""
    o = settings.options
    return informed_runs(Experiment.of(settings, o.informed_methods), o.countermeasures, o.own_train, o.finetune,
                         o.frozen_groups, o.hold_methods, o.finetune_seeds)


BY_NOTEBOOK: dict[str, Callable[[Settings], object] | None] = {
    "01_data_overview": None, "02_table1": table1, "03_table2": table2, "04_figure4": table1, "05_figure5": table1,
    "06_figure6": table1, "07_semantic_triggers": semantic_triggers, "08_poisoning_fraction": poisoning_fraction,
    "09_faces": faces, "10_defenses": defenses, "11_ablation": ablation, "12_seeds": seeds,
    "13_careful_collector": careful_collector, "14_scale": scale, "15_t2ue": t2ue,
    "16_informed_collector": informed_collector,
}
"""The recipe of every notebook (None: it trains nothing)."""


def planned_runs(settings: Settings) -> Plan | None:
    """The runs a notebook's experiment needs and which of them the cache lacks, computing nothing."""
    recipe = BY_NOTEBOOK[settings.notebook]
    return None if recipe is None else planning(recipe, settings)
