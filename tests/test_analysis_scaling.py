"""The scaling section on runs built for the purpose, where every expected number is known by hand."""
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from m1.reporting.analyses.scaling import (
    MACRO,
    MICRO,
    Grid,
    boot_accuracy,
    budget_tests,
    paired_grid,
    scaling,
    superiority_p,
)
from m1.reporting.sections import Section
from m1.runs import Run, Trace

OPTIONS = {"A": "a", "B": "b", "C": "c", "D": "d"}  # chance 0.25


def traces(source: str, right: dict[int, set[int]], n: int, tokens=None, options=OPTIONS) -> list[Trace]:
    """n questions of `source` at each budget of `right`; right[b] holds the question numbers
    answered correctly at budget b. tokens(i, b) gives the thinking length (default: half the budget)."""
    out = []
    for b, ok in right.items():
        for i in range(n):
            tok = tokens(i, b) if tokens else b // 2
            out.append(Trace(id=f"{source}-{i}", source=source, budget=b, correct=i in ok, outcome="correct"
                             if i in ok else "wrong", options=options, thinking_tokens=tok, hit_budget=tok >= b))
    return out


def sc(runs: list[Run], **kw) -> Section:
    s = scaling(runs, **kw)
    assert s is not None
    return s


def run(name: str, ts: list[Trace], **config) -> Run:
    return Run(Path("/tmp/m1-test-runs") / name, {"model": "m", "format": "m1", "engine": "vllm", **config}, ts)


def table(section, name):
    return next(t for t in section.tables if t.name == name)


def rows(section, name, **match):
    return [r for r in table(section, name).rows if all(r.get(k) == v for k, v in match.items())]


# Accuracy rises to a peak at 128 and falls at 512: nested sets of right answers, so the
# 40 questions right at 128 and wrong at 512 are the only disagreements between the two.
PEAK = {32: set(range(80)), 64: set(range(100)), 128: set(range(140)), 256: set(range(120)), 512: set(range(100))}


@pytest.fixture(scope="module")
def peaked():
    return sc([run("peaked", traces("medqa", PEAK, 200))], n_boot=500)


def test_peak_then_decline_finds_best_budget_and_the_decline(peaked):
    acc = {r["budget"]: r["accuracy"] for r in rows(peaked, "scaling_accuracy", source="medqa")}
    assert acc == {32: 0.4, 64: 0.5, 128: 0.7, 256: 0.6, 512: 0.5}
    best, = rows(peaked, "scaling_best")
    assert best["best_budget"] == 128 and best["accuracy"] == pytest.approx(0.7)
    # 128 beats its neighbours on 20 questions each, with no question going the other way:
    # every resample draws some of them, so every resample picks 128.
    assert (best["argmax_low"], best["argmax_high"], best["share_best"]) == (128, 128, 1.0)
    assert rows(peaked, "scaling_argmax") == [{"source": "medqa", "budget": 128, "share": 1.0}]

    over, = rows(peaked, "scaling_overthinking")
    assert (over["best_budget"], over["largest_budget"], over["n"]) == (128, 512, 200)
    assert over["diff"] == pytest.approx(-0.2)
    assert (over["right_to_wrong"], over["wrong_to_right"]) == (40, 0)
    assert over["p_value"] == pytest.approx(2 / 2 ** 40)  # McNemar: 40 discordant, all one way
    assert over["ci_high"] < 0 and over["p_adjusted"] < 0.01 and over["decline"] is True
    assert over["verdict"].startswith("accuracy at 512 is 0.20 below the best budget 128 (95% CI \u2212")
    assert "evidence of a decline (overthinking" in over["verdict"]
    assert "best budget for medqa: 128" in peaked.text and "Accuracy at 512 is 0.20 below" in peaked.text


def test_overthinking_examples_are_linked(peaked):
    assert len(peaked.links) == 3
    for link in peaked.links:
        assert link.budget == 512 and "right at budget 128" in link.why
        assert 100 <= int(link.id.split("-")[1]) < 140  # right at 128, wrong at 512


def test_flat_run_says_no_evidence():
    # 128: questions 0-61 right; 256: 0-53 and 62-65 right. 8 go right -> wrong, 4 wrong -> right.
    ts = traces("medqa", {128: set(range(62)), 256: set(range(54)) | set(range(62, 66))}, 100)
    over, = rows(sc([run("flat", ts)], n_boot=500), "scaling_overthinking")
    p = 2 * (1 + 12 + 66 + 220 + 495) / 2 ** 12  # two-sided exact McNemar, min(b, c) = 4 of 12
    assert over["p_value"] == pytest.approx(p)
    assert over["verdict"].startswith("accuracy at 256 is 0.04 below the best budget 128 (95% CI \u2212")
    assert over["verdict"].endswith(f"McNemar p={p:.2g}): no evidence of a decline")
    assert over["decline"] is False


def test_identical_answers_at_every_budget_share_the_credit():
    budgets = [64, 128, 256, 512]
    ts = traces("medqa", {b: set(range(30)) for b in budgets}, 50)
    s = sc([run("same", ts)], n_boot=2000)
    best, = rows(s, "scaling_best")
    assert best["best_budget"] == 64  # the smallest of the tied budgets
    assert (best["argmax_low"], best["argmax_high"]) == (64, 512)
    shares = {r["budget"]: r["share"] for r in rows(s, "scaling_argmax")}
    assert set(shares) == set(budgets) and all(abs(v - 0.25) < 0.05 for v in shares.values())
    over, = rows(s, "scaling_overthinking")
    assert over["diff"] == 0 and over["p_value"] == 1 and over["p_adjusted"] == 1 and over["decline"] is False
    assert "equals" in over["verdict"] and "no decline" in over["verdict"]


def test_best_at_the_largest_budget():
    ts = traces("medqa", {64: set(range(10)), 128: set(range(20))}, 40)
    over, = rows(sc([run("rising", ts)], n_boot=200), "scaling_overthinking")
    assert over["best_budget"] == over["largest_budget"] == 128 and over["decline"] is False
    assert over["verdict"].startswith("accuracy is highest at the largest budget, 128 (0.50)")


def test_argmax_interval_is_deterministic_with_a_seed():
    rng = np.random.default_rng(7)
    correct = rng.random((60, 6)) < 0.6
    grid = Grid("medqa", tuple(str(i) for i in range(60)), (32, 64, 128, 256, 512, 1024), correct)
    a, b = budget_tests([grid], n_boot=300, seed=3), budget_tests([grid], n_boot=300, seed=3)
    assert a == b
    best, _ = a
    assert sum(best.shares.values()) == pytest.approx(1.0)
    assert best.low <= best.high and {best.low, best.high, *best.shares} <= set(grid.budgets)
    s1 = sc([run("r", traces("medqa", {32: {1, 2, 3}, 64: {2, 3, 4, 5}}, 10))], n_boot=300, seed=5)
    s2 = sc([run("r", traces("medqa", {32: {1, 2, 3}, 64: {2, 3, 4, 5}}, 10))], n_boot=300, seed=5)
    assert [t.rows for t in s1.tables] == [t.rows for t in s2.tables]


def test_boot_accuracy_resamples_whole_questions():
    # Two questions: one right at both budgets, one wrong at both. A resample keeps each
    # question's answers together, so the two budgets' accuracies are always equal.
    correct = np.array([[True, True], [False, False]])
    boot = boot_accuracy(correct, 500, np.random.default_rng(0))
    assert boot.shape == (500, 2)
    assert np.array_equal(boot[:, 0], boot[:, 1])
    assert set(np.unique(boot[:, 0])) <= {0.0, 0.5, 1.0}
    assert 0.4 < boot.mean() < 0.6


def test_macro_avg_is_the_unweighted_mean_of_sources():
    # a: 10 questions; b: 30. At 64: a 5/10, b 27/30 -> macro 0.7, micro 32/40 = 0.8.
    # At 128: a 8/10, b 15/30 -> macro 0.65, micro 23/40.
    ts = traces("a", {64: set(range(5)), 128: set(range(8))}, 10) + \
        traces("b", {64: set(range(27)), 128: set(range(15))}, 30)
    s = sc([run("two", ts)], n_boot=500)
    macro = {r["budget"]: r for r in rows(s, "scaling_accuracy", source=MACRO)}
    micro = {r["budget"]: r for r in rows(s, "scaling_accuracy", source=MICRO)}
    assert macro[64]["accuracy"] == pytest.approx(0.7) and macro[128]["accuracy"] == pytest.approx(0.65)
    assert micro[64]["accuracy"] == pytest.approx(0.8) and micro[128]["accuracy"] == pytest.approx(23 / 40)
    for b in (64, 128):
        per_source = [r["accuracy"] for r in rows(s, "scaling_accuracy", budget=b) if r["source"] in "ab"]
        assert macro[b]["accuracy"] == pytest.approx(sum(per_source) / 2)
        assert macro[b]["ci_low"] < macro[b]["accuracy"] < macro[b]["ci_high"]
        assert macro[b]["n"] == 40
    best = {r["source"]: r for r in rows(s, "scaling_best")}
    assert (best["a"]["best_budget"], best["b"]["best_budget"], best[MACRO]["best_budget"]) == (128, 64, 64)
    assert best[MACRO]["accuracy"] == pytest.approx(0.7) and best[MACRO]["n"] == 40
    over = {r["source"]: r for r in rows(s, "scaling_overthinking")}
    assert over[MACRO]["diff"] == pytest.approx(-0.05)  # macro 0.65 at 128 against 0.7 at 64
    assert "best budget for Avg: 64" in s.text


def test_budget_tests_macro_needs_matching_budgets():
    g1 = Grid("a", ("1",), (64, 128), np.array([[True, False]]))
    g2 = Grid("b", ("1",), (64, 256), np.array([[True, False]]))
    with pytest.raises(ValueError):
        budget_tests([g1, g2])
    with pytest.raises(ValueError):
        budget_tests([])


def test_superiority_p_allows_for_picking_the_best():
    # No budget differs from the last in any question: nothing can beat it.
    flat = np.tile([0.5, 0.5, 0.5], (100, 1))
    assert superiority_p(np.array([0.5, 0.5, 0.5]), flat, 100) == 1.0
    # Many budgets of pure noise around one accuracy: the best lands well above the last, as
    # McNemar between the two would flag, but the selection-aware test sees nothing unusual.
    rng = np.random.default_rng(0)
    correct = rng.random((300, 64)) < 0.6
    grid = Grid("s", tuple(str(i) for i in range(300)), tuple(range(1, 65)), correct)
    best, over = budget_tests([grid], n_boot=1000, seed=0)
    assert over.p_adjusted > 0.05 and not over.decline


def test_partial_run_leaves_out_unfinished_questions():
    ts = traces("medqa", {64: set(range(5)), 128: set(range(6))}, 10)
    ts = [t for t in ts if not (t.id == "medqa-9" and t.budget == 128)]  # still being answered
    s = sc([run("partial", ts)], n_boot=200)
    assert rows(s, "scaling_best")[0]["n"] == 9
    assert {r["budget"]: r["n"] for r in rows(s, "scaling_accuracy")} == {64: 10, 128: 9}
    assert "medqa: 1" in s.text
    grid = paired_grid(ts, "medqa")
    assert grid is not None and grid.n == 9
    assert paired_grid(ts, "other") is None


def test_length_table_quantiles_and_budget_hits():
    lengths = {0: 10, 1: 20, 2: 30, 3: 40, 4: 128}
    ts = traces("medqa", {128: {0}}, 5, tokens=lambda i, b: lengths[i])
    r, = table(sc([run("len", ts)], n_boot=100), "scaling_length").rows
    assert (r["budget"], r["n"], r["median"], r["max"], r["mean"]) == (128, 5, 30.0, 128.0, 45.6)
    assert (r["p25"], r["p75"]) == (20.0, 40.0)
    assert r["hit_budget_share"] == pytest.approx(0.2)


def lines(ax):
    return len(ax.get_lines())


def test_figures_are_figures_with_a_line_per_run_and_chance():
    ts = traces("a", {64: {1, 2}, 128: {1, 2, 3}}, 8) + traces("b", {64: {1}, 128: {2, 3}}, 8)
    s = sc([run("one", ts)], n_boot=100)
    fig = s.figures["scaling_accuracy"]
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["a", "b", "Avg (macro, unweighted over benchmarks)"]
    assert [lines(ax) for ax in panels] == [2, 2, 2]  # the run, chance
    assert np.asarray(panels[0].get_lines()[1].get_ydata()).tolist()[0] == pytest.approx(0.25)
    length = s.figures["scaling_length"]
    assert isinstance(length, Figure)
    thinking, hits = [ax for ax in length.axes if ax.get_visible()]
    assert (lines(thinking), lines(hits)) == (2, 1)  # median and the budget line; hit share

    two = sc([run("one", ts), run("two", ts)], n_boot=100)
    panels = [ax for ax in two.figures["scaling_accuracy"].axes if ax.get_visible()]
    assert [lines(ax) for ax in panels] == [3, 3, 3]
    legend = panels[0].get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} >= {"one", "two"}
    thinking, hits = [ax for ax in two.figures["scaling_length"].axes if ax.get_visible()]
    assert (lines(thinking), lines(hits)) == (3, 2)

    no_options = sc([run("bare", traces("a", {64: {1}}, 4, options={}))], n_boot=100)
    panel, = [ax for ax in no_options.figures["scaling_accuracy"].axes if ax.get_visible()]
    assert lines(panel) == 1  # no options, no chance level


def test_several_runs_are_labelled_by_name():
    a = run("alpha", traces("medqa", PEAK, 200))
    b = run("beta", traces("medqa", {b: set(range(100)) for b in PEAK}, 200))
    s = sc([a, b], n_boot=200)
    for t in s.tables:
        assert t.columns[0] == "run"
        assert {r["run"] for r in t.rows} == {"alpha", "beta"}
    over = {r["run"]: r for r in table(s, "scaling_overthinking").rows}
    assert over["alpha"]["decline"] is True and over["beta"]["decline"] is False
    assert "alpha: best budget for medqa: 128" in s.text and "beta: best budget for medqa: 32" in s.text
    assert "## Accuracy against thinking budget" in s.markdown()


def test_dense_sweep_keeps_every_budget_and_readable_figures():
    budgets = list(range(32, 2049, 32))  # --budgets 32:2048:32
    assert len(budgets) == 64
    rng = np.random.default_rng(1)
    right = {b: {i for i in range(20) if rng.random() < 0.5} for b in budgets}
    ts = traces("a", right, 20) + traces("b", right, 20)
    s = sc([run("dense", ts)], n_boot=200)
    assert len(table(s, "scaling_accuracy").rows) == 64 * 4  # a, b, macro, micro
    assert len(table(s, "scaling_length").rows) == 64
    assert "dense sweep" in s.text
    for ax in (ax for fig in s.figures.values() for ax in fig.axes if ax.get_visible()):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["32", "64", "128", "256", "512", "1024", "2048"]  # powers of two only
        assert all(line.get_marker() in ("", "None", None) for line in ax.get_lines())


def test_no_traces_no_section():
    assert scaling([run("empty", [])]) is None


def test_wilson_intervals_per_source():
    s = sc([run("w", traces("medqa", {64: set(range(3))}, 10))], n_boot=100)
    r, = table(s, "scaling_accuracy").rows
    assert (r["n"], r["n_correct"], r["accuracy"]) == (10, 3, 0.3)
    assert r["ci_low"] == pytest.approx(0.1078, abs=1e-4) and r["ci_high"] == pytest.approx(0.6032, abs=1e-4)
    assert not any(r["source"] in (MACRO, MICRO) for r in table(s, "scaling_accuracy").rows)
    assert not math.isnan(rows(s, "scaling_best")[0]["share_best"])
