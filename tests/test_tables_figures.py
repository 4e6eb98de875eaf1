import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmue_lib import figures, paper, tables

CHANCE = {"i2t_MedR": 500.0, "t2i_MedR": 400.0, "i2t_R@10": 1.0, "t2i_R@10": 1.0}


def final(i2t_medr, t2i_medr):
    return {"i2t_R@10": 10.0, "i2t_MedR": i2t_medr, "t2i_R@10": 9.0, "t2i_MedR": t2i_medr}


def test_interval_is_the_student_t_interval_of_the_mean():
    mean, half = tables.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(tables.interval([5.0])[1])


def test_ablation_table_gives_cost_in_victim_runs_and_closure():
    clean = {"final": final(100, 100), "seconds": 200.0}
    protection = {"seconds": 100.0, "history": [{"noise_loss": 1.0}, {"noise_loss": 0.2}]}
    experiment = {"Clean": {"protection": None, "victim": clean},
                  "default": {"protection": protection, "victim": {"final": final(300, 250)}}}
    table = tables.ablation_table(experiment, CHANCE).set_index("setting")
    assert table.loc["clean data", "i2t C"] == 0 and table.loc["clean data", "victim runs"] == 0
    row = table.loc["default"]
    assert row["victim runs"] == 0.5 and row["rounds"] == 2
    assert row["i2t C"] == pytest.approx(0.5) and row["t2i C"] == pytest.approx(0.5)


def seed_experiment():
    victims = {0: {"Clean": final(100, 100), "EM": final(200, 175), "MEM-3": final(460, 370)},
               1: {"Clean": final(120, 80), "EM": final(180, 160), "MEM-3": final(500, 400)},
               2: {"Clean": final(110, 90), "EM": final(300, 240), "MEM-3": final(480, 380)}}
    return {f"seed {s}": {"protections": {}, "victims": {"RN": {k: {"final": v} for k, v in runs_.items()}}}
            for s, runs_ in victims.items()}


def test_seed_tables_summarise_and_compare_per_seed():
    long = tables.seed_long_table(seed_experiment(), CHANCE)
    assert len(long) == 9
    seed1_em = long[(long["seed"] == "seed 1") & (long["data"] == "EM")].iloc[0]
    assert seed1_em["i2t C"] == pytest.approx((180 - 120) / (500 - 120))
    summary = tables.seed_table(long, {("RN", "MEM-3"): {"i2t_MedR": 304.0}}).set_index("data")
    assert summary.loc["MEM-3", "seeds"] == 3 and summary.loc["MEM-3", "i2t_MedR"] == 480
    assert summary.loc["MEM-3", "i2t_MedR ±95%"] == pytest.approx(tables.interval([460, 500, 480])[1])
    assert summary.loc["MEM-3", "i2t_MedR (paper)"] == 304 and pd.isna(summary.loc["EM", "i2t_MedR (paper)"])
    differences = tables.seed_differences(long, "RN", [("MEM-3", "EM")]).set_index("value")
    per_seed = long.pivot(index="seed", columns="data", values="i2t C")
    assert differences.loc["i2t C", "mean"] == pytest.approx((per_seed["MEM-3"] - per_seed["EM"]).mean())
    assert differences.loc["i2t C", "beyond seed spread"]


def test_seed_study_paper_rows_take_table1_for_the_main_victim_and_table2_for_others():
    rows = paper.seed_study_rows("RN-small", ["Clean", "EM", "MEM-3"], {"RN-small": "RN50", "RN-medium": "RN101"},
                                 "MEM-3", "flickr8k")
    assert rows[("RN-small", "MEM-3")] == paper.table1("MEM-3", "flickr8k")
    assert rows[("RN-medium", "Clean")] == {"i2t_MedR": 52.0, "t2i_MedR": 58.0}
    assert rows[("RN-medium", "MEM-3")] == {"i2t_MedR": 236.0, "t2i_MedR": 197.0}


@pytest.mark.parametrize("horizontal", [False, True])
def test_grouped_bars_draw_one_bar_per_group_and_label_with_the_table_values(horizontal):
    table = pd.DataFrame({"defense": ["none", "none", "jpeg", "jpeg", "blur", "blur"],
                          "data": ["Clean", "MEM", "Clean", "MEM", "Clean", "MEM"],
                          "C": [0.0, 1.2, 0.1, 0.8, 0.3, 0.9]})
    figure = figures.plot_grouped_bars(table, "defense", "data", ["C"], chance={"C": 1.0}, horizontal=horizontal)
    axis = figure.axes[0]
    sizes = [patch.get_width() if horizontal else patch.get_height() for patch in axis.patches]
    assert sizes == pytest.approx([0.0, 0.1, 0.3, 1.2, 0.8, 0.9])
    ticks = axis.get_yticklabels() if horizontal else axis.get_xticklabels()
    assert [tick.get_text() for tick in ticks] == ["none", "jpeg", "blur"]
    legend = figure.legends[0] if horizontal else axis.get_legend()
    assert sorted(text.get_text() for text in legend.get_texts()) == ["Clean", "MEM", "random"]
    assert axis.get_title() == "C"
    if horizontal:
        assert axis.get_ylim()[0] > axis.get_ylim()[1], "the first group is drawn at the top"


def test_markdown_table_rounds_each_column_alike():
    table = pd.DataFrame({"method": ["EM", "MEM-3"], "i2t_MedR": [289.0, 665.5], "t2i_MedR": [13.0, 250.0],
                          "i2t C": [0.3229, 1.0], "note": ["a", float("nan")]})
    assert tables.markdown_table(table).splitlines() == [
        "| method | i2t_MedR | t2i_MedR | i2t C | note |", "|---|---|---|---|---|",
        "| EM | 289.0 | 13 | 0.32 | a |", "| MEM-3 | 665.5 | 250 | 1.00 |  |"]


def test_seed_check_gives_each_seeds_closure_against_its_own_clean_victim_and_their_interval():
    cm = "jpeg(quality: 30) + dictionary_filter"
    seeded = {f"seed {s}": {"none": {"Clean": {"final": final(clean, clean)}, "R": {"final": final(450, 350)}},
                            cm: {"Clean": {"final": final(130, 130)}, "R": {"final": final(protected, protected)}}}
              for s, (clean, protected) in enumerate([(100, 300), (200, 350), (100, 500)])}
    table = tables.seed_check_table(seeded, CHANCE, "R")
    per_seed = table[table["seed"].str.startswith("seed")]
    assert per_seed["i2t C"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    mean, half = table.iloc[-2], table.iloc[-1]
    assert (mean["seed"], half["seed"], mean["defense"]) == ("mean of 3", "95% half-width", cm)
    assert (mean["i2t C"], half["i2t C"]) == pytest.approx(tables.interval([0.5, 0.5, 1.0]))


def test_closure_heatmap_has_a_cell_per_countermeasure_and_data():
    table = pd.DataFrame([{"defense": d, "data": t, "i2t C": c, "t2i C": c / 2}
                          for d, t, c in (("none", "Clean", 0.0), ("none", "R", 1.0), ("jpeg", "Clean", 0.1))])
    figure = figures.plot_closure_heatmap(table)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["0.00", "1.00", "0.10"], "the missing (jpeg, R) cell stays blank"
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["none", "jpeg"]


def test_strength_against_cost_draws_when_closure_is_undefined():
    """A slice whose clean victim is no better than chance has no closure (nan): the plot still draws."""
    table = pd.DataFrame([{"setting": "clean data", "victim runs": 0.0, "i2t C": float("nan"), "t2i C": float("nan")},
                          {"setting": "default", "victim runs": 2.7, "i2t C": float("nan"), "t2i C": float("nan")}])
    figure = figures.plot_strength_vs_cost(table)
    figure.canvas.draw()
    assert figure.axes[0].get_xscale() == "log"


def ladder_entry(clean_medr: float, protected_medr: float, seconds: float) -> dict:
    victim = {"final": {"i2t_MedR": clean_medr, "t2i_MedR": clean_medr}, "seconds": seconds, "peak_rss_bytes": 2 ** 30,
              "provenance": {"threads": 2}}
    return {"Clean": {"protection": None, "victim": victim},
            "MEM-3": {"protection": {"seconds": 2 * seconds},
                      "victim": {"final": {"i2t_MedR": protected_medr, "t2i_MedR": protected_medr}, "seconds": seconds}}}


def test_the_scale_table_gives_quality_closure_and_cost_per_point():
    ladder = {"a": ladder_entry(100, 300, 10.0), "b": ladder_entry(300, 400, 40.0)}
    sizes = {"a": {"varies": "none", "image_size": 32, "model": "RN", "images": 10, "parameters": 5},
             "b": {"varies": "image size", "image_size": 64, "model": "RN", "images": 10, "parameters": 5}}
    table = tables.scale_table(ladder, {"i2t_MedR": 500.0, "t2i_MedR": 500.0}, sizes).set_index("point")
    assert table.loc["a", "i2t q"] == pytest.approx(0.2) and table.loc["b", "t2i q"] == pytest.approx(0.6)
    assert table.loc["a", "MEM-3 i2t C"] == pytest.approx(0.5) and table.loc["b", "MEM-3 t2i C"] == pytest.approx(0.5)
    assert table.loc["b", "forward size"] == 64 ** 2 * 5 and table.loc["b", "work"] == 64 ** 2 * 5 * 10 and table.loc["a", "MEM-3 victim runs"] == pytest.approx(2.0)
    assert table.loc["a", "victim peak GiB"] == 1.0 and math.isnan(table.loc["a", "MEM-3 protection peak GiB"])
    assert table.loc["a", "victim threads"] == 2 and math.isnan(table.loc["a", "MEM-3 protection threads"])
    figure = figures.plot_closure_against_quality(table.reset_index().assign(varies=["none", "size"]), "MEM-3",
                                                  {"i2t": (0.1, 0.4), "t2i": (0.1, 0.4)},
                                                  {"official schedule": {"i2t": (0.3, -0.5), "t2i": (0.3, 0.2)}})
    assert len(figure.axes) == 2
    assert "official schedule" in [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert figure.axes[0].get_ylim()[0] < -0.5


def test_noise_diversity_tells_per_image_noise_from_a_few_shared_patterns():
    generator = torch.Generator().manual_seed(0)
    per_image = torch.randint(-8, 9, (200, 3, 8, 8), generator=generator).float()
    patterns = torch.randint(-8, 9, (2, 3, 8, 8), generator=generator).float()
    shared = patterns[torch.arange(200) % 2] + 0.1 * per_image
    table = tables.noise_diversity({"per image": per_image, "two patterns": shared, "universal": patterns[:1]},
                                   images=150).set_index("protection")
    assert table.loc["per image", "noises"] == 150 and table.loc["universal", "noises"] == 1
    assert table.loc["universal", "nearest other noise (median cosine)"] == 1.0
    assert table.loc["per image", "energy in 2 directions"] < 0.1 < 0.9 < table.loc["two patterns", "energy in 2 directions"]
    assert table.loc["per image", "nearest other noise (median cosine)"] < 0.5
    assert table.loc["two patterns", "nearest other noise (median cosine)"] > 0.95


def test_the_closure_trend_says_whether_it_reaches_the_papers_point_and_which_axis_moves_c_most():
    q = np.array([0.2, 0.3, 0.4, 0.5])
    noise = np.array([0.01, -0.01, -0.01, 0.01])
    table = pd.DataFrame({"varies": ["study", "image size", "image size", "train images"],
                          "i2t q": q, "t2i q": q, "MEM-3 i2t C": 2 * q + noise, "MEM-3 t2i C": 2 * q + noise})
    trend = tables.closure_trend(table, "MEM-3", {"i2t": (0.1, 0.2), "t2i": (0.1, 0.9)}).set_index("direction")
    assert trend.loc["i2t", "slope"] == pytest.approx(2.0, abs=0.1)
    assert trend.loc["i2t", "C predicted at paper q"] == pytest.approx(0.2, abs=0.05)
    wide = trend.loc["i2t", "±95%"]
    assert 0 < wide < 0.3 and trend.loc["i2t", "paper C inside"] and not trend.loc["t2i", "paper C inside"]
    fit = np.polyfit(q, 2 * q + noise, 1)
    residual = np.sqrt(np.sum((2 * q + noise - np.polyval(fit, q)) ** 2) / 2)
    by_hand = 4.303 * residual * np.sqrt(1 / 4 + (0.1 - 0.35) ** 2 / np.sum((q - 0.35) ** 2))
    assert wide == pytest.approx(by_hand, rel=1e-3), "the textbook interval of a predicted mean"
    axes = tables.axis_effects(table, "MEM-3", "study").set_index("axis")
    assert list(axes.index) == ["image size", "train images"] and axes.loc["image size", "points"] == 3
    assert axes.loc["image size", "i2t C moves"] == pytest.approx(0.79 - 0.41)
    assert axes.loc["train images", "i2t q low"] == 0.2 and axes.loc["train images", "i2t q high"] == 0.5


def test_a_power_law_is_recovered_and_extrapolated_per_epoch_only_for_training():
    work = np.array([1e3, 1e4, 1e5, 1e6])
    law = tables.power_law(work, 3.0 * work ** 0.8)
    assert law["a"] == pytest.approx(3.0) and law["b"] == pytest.approx(0.8) and law["spread"] == pytest.approx(1.0)
    memory = tables.power_law(work, [np.nan, 2.0, 2.0 * 10 ** 0.5, 20.0])
    assert memory["points"] == 3 and memory["b"] == pytest.approx(0.5), "unmeasured runs are left out of the fit"
    assert math.isnan(tables.power_law(work, [np.nan, np.nan, np.nan, 1.0])["b"])
    costs = tables.extrapolated_costs({"victim": law, "protection": law},
                                      [{"label": "big", "work": 1e7, "forward size": 1e8, "epochs_factor": 4.0}],
                                      per_epoch=("victim",), memory_laws={"victim": memory})
    expected = 3.0 * 1e7 ** 0.8 / 3600
    assert costs.loc[0, "victim h"] == pytest.approx(4 * expected) and costs.loc[0, "protection h"] == pytest.approx(expected)
    assert costs.loc[0, "victim peak GiB"] == pytest.approx(memory["a"] * 1e8 ** 0.5)
    seconds = 3.0 * work ** 0.8
    table = pd.DataFrame({"work": [*work, 1e5], "forward size": [*work, 1e5], "s": [*seconds, 1.0],
                          "threads": [1, 1, 1, 1, 2], "GiB": [np.nan, 2.0, 2.0 * 10 ** 0.5, 20.0, np.nan]})
    laws = tables.cost_laws(table, {"victim": ("s", "threads")}, "work")
    assert laws["victim"]["threads"] == 1 and laws["victim"]["points"] == 4, "the run timed otherwise is left out"
    assert laws["victim"]["b"] == pytest.approx(0.8)
    memory_laws = tables.cost_laws(table, {"victim": ("GiB", "threads")}, "forward size")
    figure = figures.plot_cost_law(table, {"victim": ("s", "threads")}, laws, {"victim": ("GiB", "threads")},
                                   memory_laws)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "victim, other threads (not fitted)" in labels and any("work^0.80" in label for label in labels)
    assert len(figure.axes) == 2 and any("forward size^0.50" in label for label in figure.axes[1].get_legend_handles_labels()[1])


def test_closures_per_schedule_or_seed_and_their_intervals():
    rows = tables.closure_rows({"seed 0": ladder_entry(100, 300, 10.0), "seed 1": ladder_entry(100, 500, 10.0)},
                               {"i2t_MedR": 500.0, "t2i_MedR": 500.0}, "seed")
    assert list(rows["i2t C"]) == pytest.approx([0.5, 1.0]) and list(rows["victim runs"]) == [2.0, 2.0]
    assert list(rows["i2t q"]) == pytest.approx([0.2, 0.2])
    assert tables.quality_closure_points(rows, "seed")["MEM-3, seed: seed 1"]["t2i"] == pytest.approx((0.2, 1.0))
    summary = tables.interval_summary(rows, "method").set_index("method")
    assert summary.loc["MEM-3", "runs"] == 2
    assert (summary.loc["MEM-3", "i2t C"], summary.loc["MEM-3", "i2t C ±95%"]) == pytest.approx(tables.interval([0.5, 1.0]))


def test_every_dashed_line_is_in_a_legend_and_panels_have_readable_titles():
    history = [{"epoch": 1, "train_loss": 3.0, "i2t_MedR": 50.0, "t2i_MedR": 40.0},
               {"epoch": 2, "train_loss": 2.0, "i2t_MedR": 30.0, "t2i_MedR": 20.0}]
    figure = figures.plot_training_curves({"Clean": history}, chance={"i2t_MedR": 100.0, "t2i_MedR": 90.0})
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["Clean", "random"], "the random line of the MedR panels is labelled"
    assert figures.readable("i2t_MedR") == "image -> text MedR" and figures.readable("t2i C") == "text -> image C"
    assert figures.readable("all t2i_MedR") == "text -> image MedR, all test photos"


def test_a_saved_figure_is_the_same_bytes_every_time(tmp_path):
    import matplotlib.pyplot as plt

    from mmue_lib.figures import save_figure

    figure, axis = plt.subplots()
    axis.plot([1, 2, 3], [3, 1, 2], label="a line")
    axis.legend()
    save_figure(figure, tmp_path / "first", "figure")
    save_figure(figure, tmp_path / "second", "figure")
    plt.close(figure)
    for suffix in ("png", "pdf"):
        assert (tmp_path / "first" / f"figure.{suffix}").read_bytes() == (tmp_path / "second" / f"figure.{suffix}").read_bytes()
    assert b"CreationDate" not in (tmp_path / "first" / "figure.pdf").read_bytes(), "a date would differ on another day"


def test_fine_tuning_table_gives_both_closures_against_the_clean_fine_tuned_victim():
    def final(i2t, t2i):
        return {"final": {"i2t_R@10": 10.0, "t2i_R@10": 10.0, "i2t_MedR": i2t, "t2i_MedR": t2i}}

    chance = {"i2t_MedR": 500.0, "t2i_MedR": 400.0}
    victims = {"fine-tuned": {"Clean": final(100, 100), "MEM-3": final(300, 130)}}
    table = tables.fine_tuning_table(victims, final(120, 100), chance).set_index("data")
    assert list(table.index) == ["none (not fine-tuned)", "Clean", "MEM-3"]
    assert table.loc["none (not fine-tuned)", "i2t C_ft"] == 1.0
    assert table.loc["none (not fine-tuned)", "i2t C"] == pytest.approx(0.05), "20 MedR above clean of 400 to chance"
    assert table.loc["Clean", "i2t C_ft"] == 0.0 and table.loc["Clean", "t2i C"] == 0.0
    assert table.loc["MEM-3", "i2t C_ft"] == pytest.approx(10.0), "200 MedR lost over a gain of 20"
    assert math.isnan(table.loc["MEM-3", "t2i C_ft"]), "no gain from clean fine-tuning: C_ft undefined"
    assert table.loc["MEM-3", "i2t C"] == pytest.approx(0.5) and table.loc["MEM-3", "t2i C"] == pytest.approx(0.1)


def test_fine_tuning_seed_table_takes_each_seed_against_its_own_clean_victim():
    def final(i2t, t2i):
        return {"final": {"i2t_R@10": 10.0, "t2i_R@10": 10.0, "i2t_MedR": i2t, "t2i_MedR": t2i}}

    chance = {"i2t_MedR": 500.0, "t2i_MedR": 400.0}
    seeds = {"seed 0": {"Clean": final(100, 100), "MEM-3": final(300, 130)},
             "seed 1": {"Clean": final(110, 90), "MEM-3": final(320, 150)}}
    table = tables.fine_tuning_seed_table(seeds, final(120, 110), chance).set_index("data")
    assert list(table.index) == ["none (not fine-tuned)", "Clean", "MEM-3"] and (table["seeds"] == 2).all()
    assert table.loc["MEM-3", "i2t MedR"] == 310.0
    assert table.loc["MEM-3", "i2t C_ft"] == pytest.approx((10.0 + 21.0) / 2), "200 over 20, then 210 over 10"
    assert table.loc["MEM-3", "t2i C"] == pytest.approx((30 / 300 + 60 / 310) / 2)
    assert table.loc["Clean", "i2t C"] == 0.0 and table.loc["Clean", "i2t C ±95%"] == 0.0
    assert table.loc["MEM-3", "i2t C ±95%"] > 0
