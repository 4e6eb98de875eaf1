"""Choose a protection's settings against the careful collector on the val split, never test.

    .venv/bin/python benchmarks/collector_selection.py --scale cpu --candidate "" --candidate "eot_samples: 1"
    .venv/bin/python benchmarks/collector_selection.py --scale cpu --candidate "" --training ""
    .venv/bin/python benchmarks/collector_selection.py --clean-only --released "lowpass(cutoff: 0.5)" --training ""
    .venv/bin/python benchmarks/collector_selection.py --collector pretrained --method mem-3 --against-collector
    .venv/bin/python benchmarks/collector_selection.py --collector pretrained --clean-only --set finetune.lr=0.0005

The data, victims and shared schedule are `13_careful_collector`'s (`params/<scale>/`); each
`--candidate` is protection settings over `--method`'s preset ("" for the preset itself). Every
candidate is protected once, and victims are trained on it undefended, under each `--released`
countermeasure (released-data defense chains) and each `--training` one (training-config
overrides), beside clean victims under the same countermeasures. Victims are scored on val
(`runs.data_spec(evaluate_on="val")`), so these runs have their own cache keys; they are cached
and resume after a kill like the notebooks' runs. Prints the closure C of every (countermeasure,
training data) pair and each protection's cost in clean victim runs.

`--collector pretrained` is `16_informed_collector`'s collector instead: it fine-tunes its own
CLIP (pretrained on the train images after the released ones) on each candidate's release, all of
it and with the image tower's first groups frozen; victims are scored on val and the table gives
the fine-tuning closure C_ft (the pretrained model measured on val too). `--against-collector`
makes each candidate also against the collector's CLIP as its surrogate; with `--clean-only` only
clean data is fine-tuned on, to choose the collector's fine-tuning schedule (`--set finetune.lr=...`)
by what it gains over the pretrained model. The protections and the
collector's CLIP are the notebook's runs (they do not depend on the split victims are scored on).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from mmue_lib import runs
from mmue_lib.cache import planning
from mmue_lib.experiments import Experiment, defense_runs, fine_tuning_selection, method_runs
from mmue_lib.metrics import random_metrics
from mmue_lib.notebooks import parse_overrides
from mmue_lib.records import export_records
from mmue_lib.tables import defense_table, fine_tuning_table, protection_costs
from mmue_lib.settings import load_settings

COMBINED = "jpeg(quality: 30) + dictionary_filter"
OPEN_CLIP_TRAINING = "augment: open_clip, rows_per_epoch: all"


def candidate_method(method: str, settings: str) -> str:
    """ "rmem-8", "eot_samples: 1" -> "rmem-8(eot_samples: 1)" (the method alone for "")."""
    return f"{method}({settings})" if settings.strip() else method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="cpu", help="params/<scale>/13_careful_collector.yaml gives the experiment")
    parser.add_argument("--method", default="rmem-8", help="the method whose preset the candidates change")
    parser.add_argument("--candidate", action="append", metavar="SETTINGS",
                        help='protection settings, e.g. "eot_samples: 1, max_rounds: 4" ("" for the preset)')
    parser.add_argument("--released", action="append", metavar="DEFENSES",
                        help=f'released-data countermeasure (default: "{COMBINED}")')
    parser.add_argument("--training", action="append", metavar="OVERRIDES",
                        help=f'training countermeasure (default: "{OPEN_CLIP_TRAINING}"; "" for none)')
    parser.add_argument("--clean-only", action="store_true",
                        help="no protection: what each countermeasure costs a collector whose data is clean")
    parser.add_argument("--collector", choices=["careful", "pretrained"], default="careful",
                        help="13's careful collector (default) or 16's collector who fine-tunes its own CLIP")
    parser.add_argument("--against-collector", action="store_true",
                        help="with --collector pretrained: each candidate also made against the collector's CLIP")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--export", metavar="FILE",
                        help="add the records of this selection's finished runs to FILE (results/cpu/selection/*.json), "
                             "for `mmue runs --restore` on another machine")
    args = parser.parse_args()
    if args.collector == "pretrained":
        select_against_fine_tuning(args)
        return

    settings = load_settings("13_careful_collector", args.scale, parse_overrides(args.set))
    data = runs.data_spec(**settings.data, evaluate_on="val")
    methods = [] if args.clean_only else [candidate_method(args.method, text) for text in (args.candidate or [""])]
    experiment = replace(Experiment.of(settings, methods), data=data)
    released = args.released or [COMBINED]
    training = [item for item in (args.training or [OPEN_CLIP_TRAINING]) if item.strip()]
    plan = planning(defense_runs, experiment, released, training)
    print(f"{len(plan.runs)} runs, {len(plan.todo)} not in the cache; victims scored on val")

    victims = defense_runs(experiment, released, training)
    export_selection(args.export, plan)
    val = runs.load_data(data, "test")
    chance = random_metrics(val.row_image, val.num_images)
    table = defense_table(victims, chance)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["defense", "data", "i2t_MedR", "t2i_MedR", "i2t C", "t2i C"]].round(2).to_string(index=False))
        if methods:
            print(protection_costs(method_runs(experiment)).round(2).to_string(index=False))


def export_selection(records_file: str | None, plan) -> None:
    """Add the records of the plan's runs this cache finished to `records_file` (when one is given)."""
    if records_file:
        count = export_records(records_file, {Path(folder).name for folder in plan.runs})
        print(f"{count} run records written to {records_file}")


def select_against_fine_tuning(args: argparse.Namespace) -> None:
    """Print C_ft on val of every candidate (and its version against the collector's CLIP) under
    16's fine-tuning collector, and what each protection cost in clean victim runs."""
    settings = load_settings("16_informed_collector", args.scale, parse_overrides(args.set))
    options = settings.options
    methods = [] if args.clean_only else [candidate_method(args.method, text) for text in (args.candidate or [""])]
    experiment = replace(Experiment.of(settings, methods), data=runs.data_spec(**settings.data, evaluate_on="val"))
    selection = (experiment, options.own_train, options.finetune, options.frozen_groups, args.against_collector)
    plan = planning(fine_tuning_selection, *selection)
    print(f"{len(plan.runs)} runs, {len(plan.todo)} not in the cache; fine-tuned victims scored on val")
    chosen = fine_tuning_selection(*selection)
    export_selection(args.export, plan)
    start = {"final": runs.run_retrieval(chosen["pretrained"], experiment.data)}
    val = runs.load_data(experiment.data, "test")
    table = fine_tuning_table({setting: chosen[setting] for setting in ("fine-tuned", "fine-tuned, frozen")}, start,
                              random_metrics(val.row_image, val.num_images))
    unit = chosen["clean victim"]["seconds"]
    costs = pd.DataFrame([{"protection": label, "seconds": run["seconds"], "victim runs": run["seconds"] / unit}
                          for label, run in chosen["protections"].items() if run])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["setting", "data", "i2t_MedR", "t2i_MedR", "i2t C_ft", "t2i C_ft", "i2t C", "t2i C"]]
              .round(2).to_string(index=False))
        if len(costs):
            print(costs.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
