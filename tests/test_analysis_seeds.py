"""The seeds section: which runs are pooled, and the numbers over seeds, on runs built by hand."""
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from m1.reporting.analyses.seeds import MACRO, MICRO, replica_key, seed_groups, seeds
from m1.reporting.sections import Section
from m1.runs import Run, Trace

CONFIG: dict[str, Any] = {"benchmark": "medqa", "limit": 4, "engine": "vllm", "model": "org/m1-7B", "format": "m1",
          "budgets": [64, 128], "temperature": 0.6, "engine_options": {"max_model_len": 8192}}


def make(name: str, right: dict[tuple[str, int], int], n: int = 4, ids_from: int = 0, grader: str = "strict",
         **config: Any) -> Run:
    """A run whose (source, budget) cell has right[cell] of n questions correct."""
    ts = [Trace(id=f"q{ids_from + i}", source=s, budget=b, correct=i < k, outcome="correct" if i < k else "wrong",
                grader=grader)
          for (s, b), k in right.items() for i in range(n)]
    cfg = {**CONFIG, **config}
    cfg["engine_options"] = {**CONFIG["engine_options"], **config.get("engine_options", {})}
    return Run(Path("/tmp/m1-test-runs") / name, cfg, ts)


def pooled(runs: list[Run]) -> Section:
    s = seeds(runs)
    assert s is not None
    return s


def table(section, name):
    return next(t for t in section.tables if t.name == name)


# Three seeds: at 64, medqa has 1, 2, 3 of 4 right (0.25, 0.5, 0.75); at 128 all have 2 (0.5).
SEEDS = [make(f"s{seed}", {("medqa", 64): k, ("medqa", 128): 2}, seed=seed,
              engine_options={"n_slots": seed + 1, "base_url": f"http://h{seed}"})  # scheduling: ignored
         for seed, k in zip((0, 1, 2), (1, 2, 3))]


def test_three_seeds_are_pooled_and_another_model_is_not():
    other = make("other-model", {("medqa", 64): 4, ("medqa", 128): 4}, seed=0, model="org/other")
    s = pooled([SEEDS[0], other, SEEDS[1], SEEDS[2]])
    assert s is not None and s.key == "seeds"
    runs = table(s, "seeds_runs")
    assert [r["run"] for r in runs.rows] == ["s0", "s1", "s2"]
    assert [r["seed"] for r in runs.rows] == [0, 1, 2] and all(r["questions"] == 4 for r in runs.rows)
    cells = {(r["source"], r["budget"]): r for r in table(s, "seeds_accuracy").rows}
    at64 = cells[("medqa", 64)]
    assert (at64["n_seeds"], at64["mean"], at64["min"], at64["max"]) == (3, 0.5, 0.25, 0.75)
    assert at64["std"] == pytest.approx(0.25)
    half = 4.303 * 0.25 / 3 ** 0.5  # t quantile for 2 degrees of freedom
    assert (at64["ci_low"], at64["ci_high"]) == (max(0.0, 0.5 - half), min(1.0, 0.5 + half))  # clipped to [0, 1]
    at128 = cells[("medqa", 128)]
    assert (at128["mean"], at128["std"], at128["ci_low"], at128["ci_high"]) == (0.5, 0.0, 0.5, 0.5)
    assert table(s, "seeds_accuracy").columns[0] == "source"  # one group: no group column
    assert "3 runs differ only in seed (0, 1, 2)" in s.text
    assert "--limit" not in s.text  # the same questions in every seed


def test_macro_rows_over_two_benchmarks():
    a = make("a0", {("x", 64): 1, ("y", 64): 3}, seed=0)  # macro 0.5
    b = make("a1", {("x", 64): 3, ("y", 64): 3}, seed=1)  # macro 0.75
    s = pooled([a, b])
    cells = {(r["source"], r["budget"]): r for r in table(s, "seeds_accuracy").rows}
    assert cells[(MACRO, 64)]["mean"] == pytest.approx(0.625)
    assert cells[(MICRO, 64)]["mean"] == pytest.approx(0.625)
    panels = [ax for ax in s.figures["seeds_accuracy"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["x", "y", "Avg (macro, unweighted over benchmarks)"]


def test_none_when_no_two_runs_differ_only_in_seed():
    assert seeds([SEEDS[0]]) is None
    assert seeds([SEEDS[0], make("m", {("medqa", 64): 1}, seed=1, model="org/other")]) is None
    assert seeds([SEEDS[0], make("t", {("medqa", 64): 1}, seed=1, temperature=1.0)]) is None
    assert seeds([SEEDS[0], make("b", {("medqa", 64): 1}, seed=1, budgets=[64, 128, 256])]) is None
    # Regraded by another grader: other answers count as right, so not replicates.
    assert seeds([SEEDS[0], make("g", {("medqa", 64): 1}, seed=1, grader="m1")]) is None
    assert seeds([]) is None


def test_a_repeated_seed_is_left_out():
    again = make("s0-again", {("medqa", 64): 4, ("medqa", 128): 4}, seed=0)
    assert seeds([SEEDS[0], again]) is None  # the same seed twice is not two seeds
    s = pooled([SEEDS[0], again, SEEDS[1]])
    assert [r["run"] for r in table(s, "seeds_runs").rows] == ["s0", "s1"]
    assert "s0-again (seed 0, as s0)" in s.text


def test_scheduling_options_do_not_split_a_group():
    assert replica_key(SEEDS[0]) == replica_key(SEEDS[2])
    assert "seed" not in replica_key(SEEDS[0])
    assert replica_key(SEEDS[0]) != replica_key(make("m", {}, seed=0, engine_options={"max_model_len": 4096}))


def test_other_questions_per_seed_are_flagged():
    a = make("l0", {("medqa", 64): 2}, seed=0)
    b = make("l1", {("medqa", 64): 2}, seed=1, ids_from=2)  # --limit sampled other questions
    assert "--limit" in pooled([a, b]).text
    greedy = [make(f"g{k}", {("medqa", 64): 2}, seed=k, temperature=0.0) for k in (0, 1)]
    assert "temperature 0" in pooled(greedy).text


def test_two_groups_get_a_group_column():
    big = [make(f"b{k}", {("medqa", 64): 2 + k}, seed=k, model="org/big") for k in (0, 1)]
    s = pooled([*SEEDS, *big])
    t = table(s, "seeds_accuracy")
    assert t.columns[0] == "group"
    groups = sorted({r["group"] for r in t.rows})
    assert groups == ["big · format m1 · vllm", "m1-7B · format m1 · vllm"]
    assert [len(g.runs) for g in seed_groups([*SEEDS, *big])] == [3, 2]
    panel, = [ax for ax in s.figures["seeds_accuracy"].axes if ax.get_visible()]
    assert len(panel.get_lines()) == 6  # per group: mean, min, max


def test_groups_of_models_with_one_file_name_are_told_apart():
    a = [make(f"a{k}", {("medqa", 64): 2}, seed=k, model="org1/m") for k in (0, 1)]
    b = [make(f"b{k}", {("medqa", 64): 2}, seed=k, model="org2/m") for k in (0, 1)]
    labels = [g.label for g in seed_groups(a + b)]
    assert labels == ["m · format m1 · vllm (model=org1/m)", "m · format m1 · vllm (model=org2/m)"]


def test_figure_has_mean_and_spread_lines():
    s = pooled(SEEDS)
    fig = s.figures["seeds_accuracy"]
    assert isinstance(fig, Figure)
    panel, = [ax for ax in fig.axes if ax.get_visible()]
    assert panel.get_title() == "medqa"
    mean, low, high = panel.get_lines()
    assert np.asarray(mean.get_ydata()).tolist() == [0.5, 0.5]
    assert np.asarray(low.get_ydata()).tolist() == [0.25, 0.5]
    assert np.asarray(high.get_ydata()).tolist() == [0.75, 0.5]
    assert len(panel.collections) == 1  # the t interval band
    assert "## Variation across seeds" in s.markdown()
