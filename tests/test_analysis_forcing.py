"""The forcing analysis on runs built for the purpose: grouping, accuracy, flips, McNemar, links."""
from __future__ import annotations

from pathlib import Path

import pytest

from m1.config import EvalConfig
from m1.reporting.analyses import ANALYSES
from m1.reporting.analyses.forcing import ACCURACY_COLUMNS, MACRO, MICRO, PAIRED_COLUMNS, forcing, forcing_groups
from m1.reporting.stats import mcnemar_exact
from m1.runs import Run, Trace

OPTIONS = {"A": "a", "B": "b", "C": "c", "D": "d"}
BASE = EvalConfig(budgets=(32, 64)).to_dict()


def trace(qid: str, budget: int, right: bool, rounds: int = 0, source: str = "medqa", letter: str | None = None,
          hit: bool = False) -> Trace:
    letter = letter or ("A" if right else "B")
    return Trace(id=qid, source=source, budget=budget, gold="A", options=OPTIONS, letter=letter,
                 outcome="correct" if right else "wrong", correct=right, rounds_forced=rounds,
                 forced_at=[10] * rounds, hit_budget=hit, thinking_ended="budget" if hit else "natural",
                 thinking_tokens=budget if hit else budget // 2)


def run(name: str, traces: list[Trace], **config) -> Run:
    return Run(Path(f"/runs/{name}"), {**BASE, **config}, traces, name=name)


def uniform(name: str, n_right: int, n: int = 10, budgets=(32, 64), rounds: int = 0, source="medqa", **config):
    return run(name, [trace(f"q{i}", b, i < n_right, rounds, source) for b in budgets for i in range(n)],
               forcing_rounds=rounds, **config)


def test_no_group_without_runs_that_differ_only_in_forcing():
    assert forcing([]) is None
    assert forcing([uniform("a", 5)]) is None
    # differ in seed, model or budgets as well as forcing: not comparable
    assert forcing([uniform("a", 5), uniform("b", 5, rounds=1, seed=1)]) is None
    assert forcing([uniform("a", 5), uniform("b", 5, rounds=1, model="other.gguf")]) is None
    other_budgets = uniform("b", 5, rounds=1)
    other_budgets.config["budgets"] = [32, 64, 128]
    assert forcing([uniform("a", 5), other_budgets]) is None
    # same forcing twice is one level, not a comparison
    assert forcing([uniform("a", 5), uniform("b", 5)]) is None


def test_groups_ignore_scheduling_grader_and_ignore_string():
    runs = [uniform("f2", 5, rounds=2, ignore_str="Hmm"), uniform("f0", 5, ignore_str="Hmm"),
            uniform("f1", 5, rounds=1, grader="m1", engine_options={"n_slots": 8}),
            uniform("other", 5, rounds=1, model="x.gguf"), uniform("dup0", 5)]
    [group] = forcing_groups(runs)
    assert [(lv.rounds, lv.run.name) for lv in group.levels] == [(0, "f0"), (1, "f1"), (2, "f2")]
    assert [r.name for r in group.unused] == ["dup0"]  # a second unforced run (ignore_str unused there)
    assert group.baseline.ignore_str == "" and group.levels[2].ignore_str == "Hmm"
    assert group.show_ignore  # forced runs differ in their ignore strings
    s = forcing(runs)
    assert s is not None and "dup0" in s.text


def test_configs_saved_before_a_field_existed_still_match():
    old = {k: v for k, v in BASE.items() if k not in ("system_prompt", "top_p")}
    runs = [run("old", [trace("q", 32, True)], **{}), run("new", [trace("q", 32, False, 1)], forcing_rounds=1)]
    runs[0].config = old
    assert len(forcing_groups(runs)) == 1


def test_flips_mcnemar_and_links():
    # baseline: q0-q5 right of 10. Forced (up to 2 rounds): q0, q1 turned wrong after forcing,
    # q2 turned wrong although nothing was forced there; q8 turned right.
    base = [trace(f"q{i}", 64, i < 6) for i in range(10)]
    forced_right = {3, 4, 5, 8}
    rounds = {0: 2, 1: 1, 3: 2, 8: 1}
    forced = [trace(f"q{i}", 64, i in forced_right, rounds.get(i, 0), letter="A" if i in forced_right else "C")
              for i in range(10)]
    runs = [run("forced2", forced, forcing_rounds=2), run("plain", base)]
    s = forcing(runs)
    assert s is not None and s.key == "forcing"
    acc, paired = s.tables
    assert acc.columns == ACCURACY_COLUMNS and paired.columns == PAIRED_COLUMNS
    [row] = paired.rows
    assert (row["baseline_run"], row["run"], row["baseline_rounds"], row["forcing_rounds"]) == \
        ("plain", "forced2", 0, 2)
    assert (row["both_right"], row["right_to_wrong"], row["wrong_to_right"], row["both_wrong"]) == (3, 3, 1, 3)
    assert row["n"] == 10 and row["acc_baseline"] == 0.6 and row["acc_forced"] == 0.4
    assert row["diff"] == pytest.approx(-0.2)
    assert row["p_mcnemar"] == pytest.approx(mcnemar_exact(3, 1)) == pytest.approx(0.625)  # 2 * (1 + 4) / 16
    assert row["ci_low"] <= -0.2 <= row["ci_high"]
    assert (row["right_to_wrong_forced"], row["wrong_to_right_forced"]) == (2, 1)

    by_run = {(r["run"], r["budget"]): r for r in acc.rows}
    assert by_run[("forced2", 64)]["accuracy"] == 0.4 and by_run[("plain", 64)]["accuracy"] == 0.6
    assert by_run[("forced2", 64)]["forced_share"] == 0.4
    assert by_run[("forced2", 64)]["mean_rounds_forced"] == pytest.approx(0.6)

    # the questions forcing turned wrong, really forced ones first
    assert [(link.run, link.id, link.budget) for link in s.links] == \
        [("forced2", "q0", 64), ("forced2", "q1", 64), ("forced2", "q2", 64)]
    assert s.links[0].why == "right without forcing (A), wrong after 2 forced rounds (C)"
    assert s.links[1].why == "right without forcing (A), wrong after 1 forced round (C)"
    assert "no round was forced" in s.links[2].why and "nondeterminism" in s.links[2].why
    assert s.links[0].source == "medqa"
    assert set(s.figures) == {"forcing_accuracy"}
    assert "Budget forcing" in s.markdown()


def test_each_level_against_no_forcing_per_budget():
    runs = [uniform("f0", 6), uniform("f1", 5, rounds=1), uniform("f4", 7, rounds=4)]
    s = forcing(runs)
    assert s is not None
    paired = s.tables[1].rows
    assert sorted((r["forcing_rounds"], r["budget"]) for r in paired) == [(1, 32), (1, 64), (4, 32), (4, 64)]
    assert all(r["baseline_run"] == "f0" for r in paired)
    one = next(r for r in paired if r["forcing_rounds"] == 1 and r["budget"] == 32)
    assert (one["right_to_wrong"], one["wrong_to_right"]) == (1, 0)
    four = next(r for r in paired if r["forcing_rounds"] == 4 and r["budget"] == 32)
    assert (four["right_to_wrong"], four["wrong_to_right"]) == (0, 1)
    assert len(s.links) == 2  # q5 at both budgets, in f1
    assert {link.run for link in s.links} == {"f1"}
    acc = {(r["run"], r["budget"]): r["accuracy"] for r in s.tables[0].rows}
    assert acc == {("f0", 32): 0.6, ("f0", 64): 0.6, ("f1", 32): 0.5, ("f1", 64): 0.5, ("f4", 32): 0.7,
                   ("f4", 64): 0.7}


def test_smallest_level_is_the_baseline_without_an_unforced_run():
    runs = [uniform("f2", 4, rounds=2), uniform("f1", 6, rounds=1)]
    s = forcing(runs)
    assert s is not None
    assert {(r["baseline_run"], r["baseline_rounds"]) for r in s.tables[1].rows} == {("f1", 1)}
    assert s.links and s.links[0].why.startswith("right with 1 forced round (A), wrong after 2 forced rounds")


def test_several_sources_get_macro_and_micro_rows():
    def two(name, right_a, right_b, rounds=0):
        a = uniform(name, right_a, budgets=(32,), rounds=rounds, source="medqa").traces
        b = uniform(name, right_b, n=20, budgets=(32,), rounds=rounds, source="pubmedqa").traces
        return run(name, a + b, forcing_rounds=rounds)

    s = forcing([two("f0", 5, 10), two("f1", 4, 12, rounds=1)])
    assert s is not None
    acc, paired = s.tables
    rows = {(r["run"], r["source"]): r for r in acc.rows}
    assert rows[("f0", MICRO)]["accuracy"] == pytest.approx(15 / 30)
    assert rows[("f0", MACRO)]["accuracy"] == pytest.approx((0.5 + 0.5) / 2)
    assert rows[("f1", MICRO)]["n_correct"] == 16
    prow = {r["source"]: r for r in paired.rows}
    assert set(prow) == {"medqa", "pubmedqa", MACRO, MICRO}
    assert prow[MICRO]["right_to_wrong"] == 1 and prow[MICRO]["wrong_to_right"] == 2
    assert prow[MICRO]["diff"] == pytest.approx(1 / 30)
    assert prow[MACRO]["diff"] == pytest.approx(((0.4 - 0.5) + (0.6 - 0.5)) / 2)


def test_links_are_capped_and_the_rest_counted():
    runs = [uniform("f0", 10), uniform("f1", 0, rounds=1)]
    s = forcing(runs, max_links=5)
    assert s is not None and len(s.links) == 5
    assert "15 more" in s.text  # 10 questions x 2 budgets turned wrong


def test_two_groups_two_figures():
    runs = [uniform("a0", 5), uniform("a1", 5, rounds=1), uniform("b0", 5, seed=1), uniform("b2", 5, rounds=2, seed=1)]
    s = forcing(runs)
    assert s is not None
    assert set(s.figures) == {"forcing_accuracy_g1", "forcing_accuracy_g2"}
    assert {r["group"] for r in s.tables[1].rows} == {"g1", "g2"}


def test_registered_in_the_report_order():
    names = [a.__name__ for a in ANALYSES]
    assert "forcing" in names and "failures" in names
    assert names.index("forcing") < names.index("failures")
