"""Tables: CSV + Markdown written atomically, rounded as a notebook shows them, ours beside the
paper's; the closure C and every table a notebook builds from its runs."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import defenses
from .collector import detection_auc
from .data import PairDataset
from .methods import ProtectConfig, converged
from .models import Tokenizer
from .protect import Protection
from .storage import atomic_path, write_text


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a DataFrame, each column rounded alike: without decimals where
    every float in it is a whole number; else with two decimals where its floats all lie below 10
    in size (closure C, losses) and one elsewhere (Hit@10 %, MedR)."""
    digits = [_column_digits(frame.iloc[:, i]) for i in range(frame.shape[1])]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v, d) for v, d in zip(row, digits)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _column_digits(column: pd.Series) -> int:
    values = [v for v in column if isinstance(v, float) and math.isfinite(v)]
    if all(v.is_integer() for v in values):
        return 0
    return 2 if max(abs(v) for v in values) < 10 else 1


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def display_table(frame: pd.DataFrame) -> "pd.io.formats.style.Styler":
    """`frame` as a notebook shows it: rounded as `markdown_table` rounds, without the row index."""
    formats = {column: (lambda value, digits=_column_digits(frame.iloc[:, i]): _cell(value, digits))
               for i, column in enumerate(frame.columns)}
    return frame.style.format(formats).hide(axis="index")


def write_table(frame: pd.DataFrame, results_dir: str | os.PathLike, name: str) -> "pd.io.formats.style.Styler":
    """Write `name.csv` and `name.md` under `results_dir`; return the table styled for display."""
    results_dir = Path(results_dir)
    with atomic_path(results_dir / f"{name}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(results_dir / f"{name}.md", markdown_table(frame))
    return display_table(frame)


def beside_paper(ours: dict[str, float], paper: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Interleave our numbers and the paper's: `key` and `key (paper)` for every key."""
    row = {}
    for key in keys:
        row[key] = ours.get(key, float("nan"))
        row[f"{key} (paper)"] = paper.get(key, float("nan"))
    return row


RETRIEVAL_KEYS = ["i2t_R@10", "i2t_MedR", "t2i_R@10", "t2i_MedR"]


def protection_closure(protected: dict, clean: dict, chance: dict, direction: str) -> float:
    """C = (MedR_protected - MedR_clean) / (MedR_random - MedR_clean): 0 = no protection, 1 = random."""
    key = f"{direction}_MedR"
    gap = chance[key] - clean[key]
    return float("nan") if gap <= 0 else (protected[key] - clean[key]) / gap


def clean_quality(clean: dict, chance: dict, direction: str) -> float:
    """q = MedR_clean / MedR_random: how well the clean victim retrieves (0 perfect, 1 chance)."""
    key = f"{direction}_MedR"
    return clean[key] / chance[key]


def retrieval_table(finals: dict[str, dict], chance: dict, paper_rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per method (Random first): Hit@10 and MedR both ways (beside the paper's, given
    `paper_rows`), and the protection closure C of every row against the 'Clean' row (Random 1,
    Clean 0 by definition)."""
    rows = []
    for label, final in {"Random": chance, **finals}.items():
        scores = ({key: final[key] for key in RETRIEVAL_KEYS} if paper_rows is None
                  else beside_paper(final, paper_rows.get(label, {}), RETRIEVAL_KEYS))
        row = {"method": label, **scores}
        if "Clean" in finals:
            for direction in ("i2t", "t2i"):
                row[f"{direction} C"] = protection_closure(final, finals["Clean"], chance, direction)
        rows.append(row)
    return pd.DataFrame(rows)


def protection_costs(experiment: dict[str, dict]) -> pd.DataFrame:
    """Table 1's cost of each protection: seconds, rounds, final PGD loss (and whether it reached
    `stop_loss`), its victim's seconds, and the protection in units of one clean victim run."""
    clean_seconds = experiment["Clean"]["victim"]["seconds"]
    rows = []
    for label, entry in experiment.items():
        protection = entry["protection"]
        if not protection:
            continue
        reached = converged(ProtectConfig(**protection["spec"]["config"]), protection["history"])
        rows.append({"method": label, "protection s": protection["seconds"], "rounds": len(protection["history"]),
                     "final noise loss": protection["history"][-1]["noise_loss"],
                     "reached stop_loss": {None: "n/a", True: "yes", False: "no"}[reached],
                     "victim s": entry["victim"]["seconds"],
                     "protection / clean victim": protection["seconds"] / clean_seconds})
    return pd.DataFrame(rows)


def generator_costs(experiment: dict[str, dict]) -> pd.DataFrame:
    """What a generator-made protection (T2UE) costs, per such method of `method_runs`: training
    its generator (seconds, rounds, and in units of one clean victim run), then the noise of the
    released set from its captions (seconds, milliseconds per image)."""
    clean_seconds = experiment["Clean"]["victim"]["seconds"]
    rows = []
    for label, entry in experiment.items():
        protection = entry["protection"]
        if not protection or "generator_seconds" not in protection:
            continue
        rows.append({"method": label, "generator s": protection["generator_seconds"],
                     "rounds": len(protection["history"]), "final noise loss": protection["history"][-1]["noise_loss"],
                     "generator / clean victim": protection["generator_seconds"] / clean_seconds,
                     "noise s": protection["noise_seconds"], "noise ms per image": protection["noise_ms_per_image"]})
    return pd.DataFrame(rows)


def fine_tuning_table(settings: dict[str, dict[str, dict]], pretrained: dict, chance: dict) -> pd.DataFrame:
    """Per fine-tuning setting, the collector's `pretrained` CLIP not fine-tuned, then one row per
    released data set: MedR both ways of the victim fine-tuned from it; the fine-tuning closure
    C_ft = (MedR - MedR_ft_clean) / (MedR_pretrained - MedR_ft_clean): 0 when fine-tuning on the
    released data gained as much as on clean data, 1 when it gained nothing over the pretrained
    model (above 1: it lost; its denominator is the clean gain, so a small gain makes it large;
    undefined where clean fine-tuning gained nothing); and Table 1's closure C against the victim
    fine-tuned on clean data (1 = chance), which stays on one scale however little fine-tuning
    gains."""
    start = pretrained["final"]
    rows = []
    for setting, victims in settings.items():
        clean = victims["Clean"]["final"]
        for data, final in {"none (not fine-tuned)": start, **{d: run["final"] for d, run in victims.items()}}.items():
            row = {"setting": setting, "data": data, **{k: final[k] for k in RETRIEVAL_KEYS}}
            for direction in ("i2t", "t2i"):
                row[f"{direction} C_ft"] = protection_closure(final, clean, start, direction)
                row[f"{direction} C"] = protection_closure(final, clean, chance, direction)
            rows.append(row)
    return pd.DataFrame(rows)


def fine_tuning_seed_table(seed_runs: dict[str, dict[str, dict]], pretrained: dict, chance: dict) -> pd.DataFrame:
    """Per released data set, over the seeds of `seed_runs` ({"seed s": {label: fine-tuned run}}):
    the number of seeds, and the mean and 95% interval's half-width of MedR, the fine-tuning
    closure C_ft and the closure C of `fine_tuning_table`, each seed against its own clean victim."""
    values = tuple(f"{d} {v}" for d in ("i2t", "t2i") for v in ("MedR", "C_ft", "C"))
    per_seed = pd.concat([fine_tuning_table({seed: victims}, pretrained, chance) for seed, victims in seed_runs.items()])
    per_seed = per_seed.rename(columns={f"{d}_MedR": f"{d} MedR" for d in ("i2t", "t2i")})
    return interval_summary(per_seed, "data", values).rename(columns={"runs": "seeds"})


def detection_table(protected: dict[str, torch.Tensor], clean: torch.Tensor, examples: int, steps: int,
                    seed: int = 0) -> pd.DataFrame:
    """Per released set (label -> uint8 images), how well a detector trained on `examples` of its
    images and `examples` of the collector's `clean` ones tells the rest apart
    (`collector.detection_auc`); a set released clean gives the chance level (about 0.5)."""
    rows = [{"released": label, "detector AUC": detection_auc(images, clean, examples, steps, seed)}
            for label, images in protected.items()]
    return pd.DataFrame(rows)


def transfer_table(rows: list[tuple[str, str, dict, dict]], chance: dict, method_label: str,
                   paper_rows: dict[str, dict]) -> pd.DataFrame:
    """Table 2: per victim architecture (ours, the paper's counterpart), MedR when trained on clean
    and on protected data, beside the paper's, with the protection closure C."""
    table = []
    for victim, paper_victim, clean, protected in rows:
        row = {"victim": victim, "paper victim": paper_victim}
        published = paper_rows.get(paper_victim, {})
        for direction in ("i2t", "t2i"):
            key = f"{direction}_MedR"
            row[f"clean {key}"] = clean[key]
            row[f"clean {key} (paper)"] = published.get(f"clean {key}", float("nan"))
            row[f"{method_label} {key}"] = protected[key]
            row[f"{method_label} {key} (paper)"] = published.get(f"MEM-3 {key}", float("nan"))
            row[f"{direction} C"] = protection_closure(protected, clean, chance, direction)
        table.append(row)
    return pd.DataFrame(table)


def fraction_table(finals: dict[tuple[str, float], dict], clean: dict, chance: dict,
                   paper_rows: dict[tuple, dict], paper_clean: dict, paper_chance: dict) -> pd.DataFrame:
    """Poisoning fraction: per (method, fraction p of protected images) Hit@10 and MedR both ways,
    MedR beside the draft paper's, and the closure C against the clean victim (p = 0), ours and
    the paper's (from its Table 1 clean and random rows): C compares across test-set sizes."""
    rows = [{"method": "Clean", "p": 0.0, **{k: clean[k] for k in RETRIEVAL_KEYS}, "i2t C": 0.0, "t2i C": 0.0}]
    for (label, fraction), final in finals.items():
        row = {"method": label, "p": fraction}
        published = paper_rows.get((label, fraction), {})
        for key in RETRIEVAL_KEYS:
            row[key] = final[key]
            if key in published:
                row[f"{key} (paper)"] = published[key]
        for direction in ("i2t", "t2i"):
            row[f"{direction} C"] = protection_closure(final, clean, chance, direction)
            if f"{direction}_MedR" in published:
                row[f"{direction} C (paper)"] = protection_closure(published, paper_clean, paper_chance, direction)
        rows.append(row)
    return pd.DataFrame(rows)


def defense_table(settings: dict[str, dict[str, dict]], chance: dict) -> pd.DataFrame:
    """One row per (defense, training data): Hit@10 and MedR both ways, and the closure C against
    the undefended clean victim (`settings["none"]["Clean"]`). For protected data C near 0 means
    the defense broke the protection; for clean data C is the defense's own cost."""
    reference = settings["none"]["Clean"]["final"]
    rows = []
    for setting, victims in settings.items():
        for data, run in victims.items():
            final = run["final"]
            rows.append({"defense": setting, "data": data, **{k: final[k] for k in RETRIEVAL_KEYS},
                         **{f"{d} C": protection_closure(final, reference, chance, d) for d in ("i2t", "t2i")}})
    return pd.DataFrame(rows)


def seed_check_table(seeded: dict[str, dict[str, dict[str, dict]]], chance: dict, label: str) -> pd.DataFrame:
    """The headline cell once per seed (`experiments.careful_collector`'s "seeds"): per seed and
    countermeasure the closure C of `label`'s victim against that seed's undefended clean victim, then a row with
    the mean over the seeds and one with the half-width of its 95% interval."""
    rows = []
    for seed, settings in seeded.items():
        for setting, victims in settings.items():
            if setting != "none":
                rows.append({"seed": seed, "defense": setting, **{
                    f"{d} C": protection_closure(victims[label]["final"], settings["none"]["Clean"]["final"],
                                                 chance, d) for d in ("i2t", "t2i")}})
    table = pd.DataFrame(rows)
    summary = []
    for setting, group in table.groupby("defense", sort=False):
        intervals = {key: interval(group[key]) for key in ("i2t C", "t2i C")}
        summary += [{"seed": f"mean of {len(group)}", "defense": setting,
                     **{key: mean for key, (mean, _) in intervals.items()}},
                    {"seed": "95% half-width", "defense": setting,
                     **{key: half for key, (_, half) in intervals.items()}}]
    return pd.concat([table, pd.DataFrame(summary)], ignore_index=True)


def ablation_table(experiment: dict[str, dict], chance: dict) -> pd.DataFrame:
    """One row per protection setting of `experiments.ablation_runs` (the clean victim first, at no
    cost): generation time in seconds and in clean-victim runs, rounds run, the victim's Hit@10
    and MedR both ways, and the closure C against the clean victim."""
    clean = experiment["Clean"]["victim"]
    rows = []
    for setting, entry in experiment.items():
        protection, final = entry["protection"], entry["victim"]["final"]
        seconds = protection["seconds"] if protection else 0.0
        row = {"setting": setting if protection else "clean data", "seconds": seconds,
               "victim runs": seconds / clean["seconds"], "rounds": len(protection["history"]) if protection else 0}
        row.update({k: final[k] for k in RETRIEVAL_KEYS})
        row.update({f"{d} C": protection_closure(final, clean["final"], chance, d) for d in ("i2t", "t2i")})
        rows.append(row)
    return pd.DataFrame(rows)


SEED_VALUES = [*RETRIEVAL_KEYS, "i2t C", "t2i C"]


def seed_long_table(experiment: dict[str, dict], chance: dict) -> pd.DataFrame:
    """One row per (seed, victim architecture, training data) of `experiments.seed_runs`: Hit@10 and
    MedR both ways, and C against the same seed's clean victim of the same architecture."""
    rows = []
    for seed, entry in experiment.items():
        for victim, runs_of_victim in entry["victims"].items():
            clean = runs_of_victim["Clean"]["final"]
            for data, run in runs_of_victim.items():
                final = run["final"]
                rows.append({"seed": seed, "victim": victim, "data": data, **{k: final[k] for k in RETRIEVAL_KEYS},
                             **{f"{d} C": protection_closure(final, clean, chance, d) for d in ("i2t", "t2i")}})
    return pd.DataFrame(rows)


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval of the mean (half-width nan for one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def seed_table(long: pd.DataFrame, paper_rows: dict[tuple[str, str], dict] | None = None) -> pd.DataFrame:
    """Per (victim, training data): the number of seeds, and the mean and the 95% interval's
    half-width of every value of `seed_long_table`, beside the paper's number where `paper_rows`
    ({(victim, data): {value: number}}) has one."""
    rows = []
    for (victim, data), group in long.groupby(["victim", "data"], sort=False):
        row = {"victim": victim, "data": data, "seeds": len(group)}
        published = (paper_rows or {}).get((victim, data), {})
        for value in SEED_VALUES:
            row[value], row[f"{value} ±95%"] = interval(group[value])
            if value in published:
                row[f"{value} (paper)"] = published[value]
        rows.append(row)
    return pd.DataFrame(rows)


def seed_differences(long: pd.DataFrame, victim: str, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """For each (better, worse) pair of training data on `victim`: the per-seed difference of C
    (better - worse), its mean and 95% interval, and whether that interval excludes 0, i.e.
    whether the advantage is larger than the seed-to-seed spread."""
    rows = []
    of_victim = long[long["victim"] == victim].set_index(["seed", "data"])
    for better, worse in pairs:
        for direction in ("i2t", "t2i"):
            column = of_victim[f"{direction} C"].unstack("data")
            mean, half = interval(column[better] - column[worse])
            rows.append({"victim": victim, "comparison": f"{better} - {worse}", "value": f"{direction} C",
                         "mean": mean, "±95%": half, "beyond seed spread": bool(mean - half > 0)})
    return pd.DataFrame(rows)


def caption_defense_examples(protected: PairDataset, released: list[str], reference: PairDataset,
                             count: int = 4, seed: int = 0, model: torch.nn.Module | None = None) -> pd.DataFrame:
    """Some protected captions (triggers included) and what the caption defenses of each item of
    `released` leave of them (a chain's image defenses are left out; items with none are skipped;
    `model` is a re-captioner's CLIP)."""
    chosen = torch.randperm(protected.num_rows, generator=torch.Generator().manual_seed(seed))[:count].tolist()
    table = pd.DataFrame({"protected caption": [protected.captions[r] for r in chosen]})
    for item in released:
        chain = [entry for entry in defenses.parse_defenses(item) if entry["name"] in defenses.CAPTION_DEFENSES]
        if chain:
            cleaned = defenses.apply_defenses(protected, chain, reference, model)
            table[defenses.defense_label(chain)] = [cleaned.captions[r] for r in chosen]
    return table


def trigger_examples(dataset: PairDataset, protections: dict[str, Protection], count: int = 5,
                     seed: int = 0) -> pd.DataFrame:
    """The same random training captions with each protection's trigger in front."""
    rows_of = dataset.rows_of_image()
    chosen = np.random.default_rng(seed).choice(dataset.num_images, size=min(count, dataset.num_images), replace=False)
    table = []
    for image in chosen.tolist():
        row = rows_of[image][0]
        entry = {"image": image, "caption": dataset.captions[row]}
        for label, protection in protections.items():
            entry[label] = protection.trigger_texts(dataset.row_image[row:row + 1])[0]
        table.append(entry)
    return pd.DataFrame(table)


FACE_KEYS = ["i2t_R@1", "i2t_R@10", "i2t_MedR", "t2i_R@1", "t2i_R@10", "t2i_MedR"]


def face_table(rows: list[dict], paper_victims: dict[str, str], paper_rows: dict[tuple, dict]) -> pd.DataFrame:
    """Table 4: per victim and setting, identity retrieval on one photo per person beside the
    paper's (image -> text only: its text -> image column is a copy), and MedR on all test photos."""
    table = []
    for row in rows:
        paper_victim = paper_victims.get(row["victim"], "")
        published = paper_rows.get((row["setting"], paper_victim), {})
        out = {"victim": row["victim"], "paper victim": paper_victim, "setting": row["setting"]}
        for key in FACE_KEYS:
            out[key] = row[key]
            if key in published:
                out[f"{key} (paper)"] = published[key]
        out["all i2t_MedR"], out["all t2i_MedR"] = row["all i2t_MedR"], row["all t2i_MedR"]
        table.append(out)
    return pd.DataFrame(table)


def split_summary(dataset: PairDataset, context_length: int) -> dict[str, float]:
    """Sizes and caption statistics of one split; `truncated %` counts captions longer than the context."""
    tokenizer = Tokenizer()
    words = np.array([len(c.split()) for c in dataset.captions])
    tokens = np.array([len(tokenizer.encode(c)) for c in dataset.captions])
    per_image = np.bincount(dataset.row_image.numpy(), minlength=dataset.num_images)
    return {"split": dataset.name, "images": dataset.num_images, "captions": dataset.num_rows,
            "captions/image (min)": int(per_image.min()), "captions/image (max)": int(per_image.max()),
            "words (mean)": float(words.mean()), "tokens (mean)": float(tokens.mean()),
            "tokens (max)": int(tokens.max()), "truncated %": float(np.mean(tokens > context_length - 2) * 100),
            "vocabulary": len({w.lower().strip(".,") for c in dataset.captions for w in c.split()})}


def scale_table(ladder: dict[str, dict], chance: dict, points: dict[str, dict]) -> pd.DataFrame:
    """One row per operating point of the scale ladder (`experiments.ladder_runs`' "ladder"): what
    the point varies and its size (`points[label]`: varies, image_size, model, images, parameters;
    work = pixels x parameters x images), the clean victim's MedR and quality q = MedR_clean /
    MedR_random per direction (0 is perfect, 1 is chance), per method its victim's MedR and closure
    C, and the cost: seconds and peak memory of the clean victim and of each protection, and each
    protection in clean victim runs, and the CPU threads each run was timed with (NaN where its
    record does not say); forward size = pixels x parameters is what one image's pass through the
    model holds, the axis of the memory laws."""
    rows = []
    for label, runs in ladder.items():
        clean = runs["Clean"]["victim"]
        point = points[label]
        forward = point["image_size"] ** 2 * point["parameters"]
        row = {"point": label, **point, "forward size": forward, "work": forward * point["images"]}
        for direction in ("i2t", "t2i"):
            key = f"{direction}_MedR"
            row[f"clean {key}"] = clean["final"][key]
            row[f"{direction} q"] = clean_quality(clean["final"], chance, direction)
        row["victim s"] = clean["seconds"]
        row["victim threads"] = _threads(clean)
        row["victim peak GiB"] = _gibibytes(clean.get("peak_rss_bytes"))
        for method, entry in runs.items():
            if method == "Clean":
                continue
            protected = entry["victim"]["final"]
            for direction in ("i2t", "t2i"):
                row[f"{method} {direction}_MedR"] = protected[f"{direction}_MedR"]
                row[f"{method} {direction} C"] = protection_closure(protected, clean["final"], chance, direction)
            row[f"{method} protection s"] = entry["protection"]["seconds"]
            row[f"{method} protection threads"] = _threads(entry["protection"])
            row[f"{method} protection peak GiB"] = _gibibytes(entry["protection"].get("peak_rss_bytes"))
            row[f"{method} victim runs"] = entry["protection"]["seconds"] / clean["seconds"]
        rows.append(row)
    return pd.DataFrame(rows)


def _gibibytes(count: int | None) -> float:
    return float("nan") if count is None else count / 2 ** 30


def _threads(run: dict) -> float:
    """The CPU threads a run computed with, from its provenance (NaN where the record predates it)."""
    threads = run.get("provenance", {}).get("threads")
    return float("nan") if threads is None else float(threads)


def cost_laws(table: pd.DataFrame, kinds: dict[str, tuple[str, str]], size: str) -> dict[str, dict[str, float]]:
    """Per kind of run (name -> (cost column, threads column) of `scale_table`) the `power_law` of
    its cost on the `size` column, fitted over the runs timed with the thread count most of its
    runs were timed with (runs timed otherwise, or whose records do not say, would bend the law;
    the law names that count as "threads")."""
    laws = {}
    for name, (cost, threads) in kinds.items():
        counts = table.loc[table[cost].notna(), threads].dropna()
        usual = float(counts.mode().min()) if len(counts) else float("nan")
        alike = table[threads] == usual
        laws[name] = {**power_law(table.loc[alike, size], table.loc[alike, cost]), "threads": usual}
    return laws


def power_law(size: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    """cost = a * size^b fitted by least squares on logarithms over the points whose cost was measured
    (not NaN): a, b, the standard error of b, the factor by which a point typically lies off the line
    (exp of the residuals' standard deviation), and how many points it rests on; NaN where fewer
    than two were measured."""
    size, cost = np.asarray(size, float), np.asarray(cost, float)
    measured = np.isfinite(cost)
    size, cost = size[measured], cost[measured]
    if len(size) < 2:
        return {"a": float("nan"), "b": float("nan"), "b stderr": float("nan"), "spread": float("nan"),
                "points": int(len(size))}
    fit = stats.linregress(np.log(size), np.log(cost))
    residuals = np.log(cost) - (fit.intercept + fit.slope * np.log(size))
    spread = math.exp(float(np.std(residuals, ddof=2))) if len(size) > 2 else float("nan")
    return {"a": math.exp(fit.intercept), "b": fit.slope, "b stderr": fit.stderr, "spread": spread,
            "points": int(len(size))}


def noise_diversity(noises: dict[str, torch.Tensor], images: int = 1000) -> pd.DataFrame:
    """How different each protection's noises are from image to image (its first `images` noises):
    the share of their energy in the 2 and the 10 directions that hold most of it (near 1: a few
    patterns shared by many images, a shortcut a contrastive batch cannot tell pairs apart by), and
    the median cosine between an image's noise and the most similar other image's. A universal
    noise (one for every image) counts as one pattern, the same for every image."""
    rows = []
    for label, noise in noises.items():
        flat = noise[:images].reshape(min(images, len(noise)), -1).double()
        energy = torch.linalg.svdvals(flat) ** 2
        energy = energy / energy.sum()
        nearest = 1.0
        if len(flat) > 1:
            unit = torch.nn.functional.normalize(flat, dim=1)
            cosine = unit @ unit.T
            cosine.fill_diagonal_(-2.0)
            nearest = float(cosine.max(dim=1).values.median())
        rows.append({"protection": label, "noises": len(flat), "energy in 2 directions": float(energy[:2].sum()),
                     "energy in 10 directions": float(energy[:10].sum()),
                     "nearest other noise (median cosine)": nearest})
    return pd.DataFrame(rows)


def closure_trend(table: pd.DataFrame, method: str, paper_point: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """Per direction: the least-squares line of `method`'s closure C on the clean victim's quality q
    over the points of `scale_table` (slope and its standard error), the C it predicts at the
    paper's q (`paper_point[direction]` = (q, C)) with the 95% confidence interval of that
    prediction, the paper's C, and whether the paper's C lies inside the interval."""
    rows = []
    for direction in ("i2t", "t2i"):
        q, closure = table[f"{direction} q"].to_numpy(float), table[f"{method} {direction} C"].to_numpy(float)
        fit = stats.linregress(q, closure)
        paper_q, paper_c = paper_point[direction]
        predicted = fit.intercept + fit.slope * paper_q
        residual = np.sqrt(np.sum((closure - fit.intercept - fit.slope * q) ** 2) / (len(q) - 2))
        spread = residual * np.sqrt(1 / len(q) + (paper_q - q.mean()) ** 2 / np.sum((q - q.mean()) ** 2))
        half = float(stats.t.ppf(0.975, len(q) - 2) * spread)
        rows.append({"direction": direction, "points": len(q), "slope": fit.slope, "slope stderr": fit.stderr,
                     "paper q": paper_q, "C predicted at paper q": predicted, "±95%": half, "paper C": paper_c,
                     "paper C inside": bool(abs(paper_c - predicted) <= half)})
    return pd.DataFrame(rows)


def axis_effects(table: pd.DataFrame, method: str, study_point: str) -> pd.DataFrame:
    """Per axis the ladder moves one at a time (`varies` of `scale_table`, the study's point, whose
    `varies` is `study_point`, counted on every axis): its points, and per direction the lowest and
    highest clean quality q and closure C of `method` along it, and how far C moves (highest - lowest)."""
    study = table[table["varies"] == study_point]
    rows = []
    for axis, part in table[table["varies"] != study_point].groupby("varies", sort=False):
        points = pd.concat([study, part])
        row = {"axis": axis, "points": len(points)}
        for direction in ("i2t", "t2i"):
            q, closure = points[f"{direction} q"], points[f"{method} {direction} C"]
            row.update({f"{direction} q low": q.min(), f"{direction} q high": q.max(),
                        f"{direction} C low": closure.min(), f"{direction} C high": closure.max(),
                        f"{direction} C moves": closure.max() - closure.min()})
        rows.append(row)
    return pd.DataFrame(rows)


def extrapolated_costs(laws: dict[str, dict[str, float]], runs: list[dict], per_epoch: tuple[str, ...],
                       memory_laws: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """What each fitted cost law (`power_law` of seconds on work, one per kind of run) says the runs
    of `runs` (each: label, work, forward size, and epochs_factor: the run's epochs over the fitted
    victims') would take here, in hours; the laws named in `per_epoch` (training runs) scale with
    the epochs, the others do not. Each of `memory_laws` (peak GiB on forward size) gives the run's
    peak memory at the fitted runs' batch size."""
    rows = []
    for run in runs:
        row = {"run": run["label"], "work": run["work"]}
        for name, law in laws.items():
            epochs = run["epochs_factor"] if name in per_epoch else 1.0
            row[f"{name} h"] = law["a"] * run["work"] ** law["b"] * epochs / 3600
        for name, law in (memory_laws or {}).items():
            row[f"{name} peak GiB"] = law["a"] * run["forward size"] ** law["b"]
        rows.append(row)
    return pd.DataFrame(rows)


def closure_rows(named_runs: dict[str, dict[str, dict]], chance: dict, name: str) -> pd.DataFrame:
    """Per entry of `named_runs` (`name` -> `method_runs`: a schedule, a seed) and per protection: its
    victim's MedR and closure C against that entry's clean victim, that clean victim's quality q
    (MedR / random MedR), its seconds and its cost in clean victim runs."""
    rows = []
    for entry_name, runs in named_runs.items():
        clean = runs["Clean"]["victim"]
        for method, entry in runs.items():
            if method == "Clean":
                continue
            final = entry["victim"]["final"]
            rows.append({name: entry_name, "method": method, **{k: final[k] for k in ("i2t_MedR", "t2i_MedR")},
                         **{f"{d} C": protection_closure(final, clean["final"], chance, d) for d in ("i2t", "t2i")},
                         **{f"{d} q": clean_quality(clean["final"], chance, d) for d in ("i2t", "t2i")},
                         "protection s": entry["protection"]["seconds"],
                         "victim runs": entry["protection"]["seconds"] / clean["seconds"]})
    return pd.DataFrame(rows)


def quality_closure_points(rows: pd.DataFrame, name: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Each row of `closure_rows(..., name)` as a point to plot: "<method>, <name>: <entry>" ->
    direction -> (clean quality q, closure C)."""
    return {f"{row['method']}, {name}: {row[name]}": {d: (row[f"{d} q"], row[f"{d} C"]) for d in ("i2t", "t2i")}
            for _, row in rows.iterrows()}


def interval_summary(frame: pd.DataFrame, by: str, values: tuple[str, ...] = ("i2t C", "t2i C")) -> pd.DataFrame:
    """Per value of `by`: how many rows, and the mean and 95% half-width (`interval`) of each of `values`."""
    rows = []
    for group, part in frame.groupby(by, sort=False):
        row = {by: group, "runs": len(part)}
        for value in values:
            row[value], row[f"{value} ±95%"] = interval(part[value])
        rows.append(row)
    return pd.DataFrame(rows)
