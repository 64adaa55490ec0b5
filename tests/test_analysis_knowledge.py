"""The knowledge analysis on runs built for the purpose: every number has a known right value."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from m1.config import EvalConfig
from m1.reporting.analyses import ANALYSES
from m1.reporting.analyses.knowledge import (
    ACCURACY_COLUMNS,
    MACRO,
    MICRO,
    PAIRED_COLUMNS,
    knowledge,
    knowledge_groups,
    retrieval_hit,
    supported_letter,
)
from m1.reporting.judge import Judgement, JudgeResult
from m1.reporting.stats import mcnemar_exact
from m1.runs import Run, Trace

OPTIONS = {"A": "Beta-blocker therapy", "B": "Aspirin", "C": "Digoxin", "D": "Surgery"}
BASE = EvalConfig(budgets=(32, 64)).to_dict()
IDS = [f"q{i}" for i in range(10)]


def trace(qid: str, budget: int, right: bool, source: str = "medqa", letter: str | None = None,
          knowledge: str = "none", thinking_tokens: int | None = None, tokens: int = 0,
          insertions: list | None = None) -> Trace:
    letter = letter or ("A" if right else "B")
    return Trace(id=qid, source=source, budget=budget, gold="A", options=OPTIONS, letter=letter,
                 question=f"Which treatment for question {qid}?", outcome="correct" if right else "wrong",
                 correct=right, thinking_tokens=budget // 2 if thinking_tokens is None else thinking_tokens,
                 knowledge=knowledge, knowledge_where=None if knowledge == "none" else "prompt",
                 knowledge_tokens=tokens, insertions=insertions)


def run(name: str, knowledge: str, right, budgets=(64,), ids=IDS, source="medqa", environment=None,
        trace_options=None, **config) -> Run:
    """A run whose question `qid` at `budget` is right when right(qid, budget) (or qid in right)."""
    is_right = right if callable(right) else (lambda qid, _b: qid in right)
    traces = [trace(q, b, is_right(q, b), source, knowledge=knowledge, **(trace_options or {}))
              for b in budgets for q in ids]
    cfg = {**BASE, "budgets": list(budgets), "knowledge": knowledge, **config}
    return Run(Path(f"/runs/{name}"), cfg, traces, environment=environment or {}, name=name)


def first(n: int) -> set[str]:
    return set(IDS[:n])


def table(section, name: str) -> list[dict]:
    return next(t for t in section.tables if t.name == name).rows


def test_none_when_no_group_holds_a_run_without_knowledge_and_another():
    assert knowledge([]) is None
    assert knowledge([run("none", "none", first(4))]) is None
    # not the same evaluation apart from knowledge
    assert knowledge([run("none", "none", first(4)), run("gold", "gold-background", first(8), seed=1)]) is None
    assert knowledge([run("none", "none", first(4)), run("gold", "gold", first(8), model="x.gguf")]) is None
    # no run without knowledge
    assert knowledge([run("g", "gold", first(4)), run("p", "placebo", first(8))]) is None
    # the same condition twice is one condition
    assert knowledge([run("n1", "none", first(4)), run("n2", "none", first(5), grader="m1")]) is None


def test_groups_drop_the_knowledge_settings_grader_and_scheduling_and_label_each_condition():
    old_none = run("old", "none", first(4))
    old_none.config = {k: v for k, v in old_none.config.items()
                       if k not in ("knowledge", "min_thinking", "knowledge_where", "knowledge_k")}
    runs = [
        run("ret", "retrieve", first(6), knowledge_where="thinking", knowledge_k=8, knowledge_retriever="dense",
            knowledge_counted=True, engine_options={"n_slots": 8}),
        run("nomin", "none", first(4), min_thinking=32),
        old_none,
        run("bg", "gold-background", first(8), grader="m1", min_thinking=16),
        run("other", "gold", first(8), seed=3),
        run("dup", "none", first(4)),
    ]
    [group] = knowledge_groups(runs)
    assert group.none.run.name == "old"  # none with min_thinking 0 is the baseline
    assert [(c.run.name, c.label) for c in group.conditions] == [
        ("nomin", "none · min_thinking 32"),
        ("bg", "gold-background · prompt · min_thinking 16"),
        ("ret", "retrieve k=8 · thinking · dense · counted"),
    ]
    assert [r.name for r in group.unused] == ["dup"]
    s = knowledge(runs, by_domain=False)
    assert s is not None and "dup" in s.text and "other" not in {r["run"] for r in table(s, "knowledge_accuracy")}


def test_knowledge_gap_paired_flips_and_links():
    # none: right on q0-q3, wrong on 6; gold-background: right on q0-q7, so it fixes 4 of the 6
    runs = [run("none", "none", first(4)), run("bg", "gold-background", first(8))]
    s = knowledge(runs, by_domain=False, max_links=5)
    assert s is not None and s.key == "knowledge"
    assert next(t for t in s.tables if t.name == "knowledge_accuracy").columns == ACCURACY_COLUMNS
    assert next(t for t in s.tables if t.name == "knowledge_paired").columns == PAIRED_COLUMNS
    [gap] = table(s, "knowledge_gap")
    assert (gap["condition"], gap["source"], gap["domain"], gap["budget"], gap["n"]) == \
        ("gold-background · prompt", "medqa", "all", 64, 10)
    assert (gap["n_no_gap"], gap["n_gap"], gap["n_not_knowledge"]) == (4, 4, 2)
    assert gap["share_gap"] == pytest.approx(0.4) and gap["share_not_knowledge"] == pytest.approx(0.2)
    assert gap["share_no_gap"] == pytest.approx(0.4) and gap["gap_share_of_errors"] == pytest.approx(4 / 6)

    [paired] = table(s, "knowledge_paired")
    assert (paired["acc_none"], paired["acc_condition"]) == (0.4, 0.8)
    assert paired["diff"] == pytest.approx(0.4)
    assert (paired["both_right"], paired["right_to_wrong"], paired["wrong_to_right"], paired["both_wrong"]) == \
        (4, 0, 4, 2)
    assert paired["p_mcnemar"] == pytest.approx(mcnemar_exact(0, 4)) == pytest.approx(0.125)
    assert paired["ci_low"] <= 0.4 <= paired["ci_high"]

    # the 4 gap questions first, then the rest up to max_links; the one left out is counted
    assert [(link.run, link.id) for link in s.links] == [("bg", f"q{i}") for i in range(4, 9)]
    assert s.links[0].why.startswith("knowledge gap: wrong without knowledge (B), right with gold-background")
    assert s.links[4].why.startswith("not knowledge")
    assert "1 of the gap and not-knowledge questions are not linked" in s.text
    assert "the thinking collapsed" not in s.text
    assert set(s.figures) == {"knowledge_accuracy"}

    acc = {(r["run"], r["budget"]): r for r in table(s, "knowledge_accuracy")}
    assert acc[("none", 64)]["accuracy"] == 0.4 and acc[("bg", 64)]["accuracy"] == 0.8
    assert acc[("bg", 64)]["ci_low"] < 0.8 < acc[("bg", 64)]["ci_high"]


def test_interaction_is_the_difference_of_gains_over_the_same_questions():
    # none gains 0.4 from 32 to 128 (2 -> 6 right); with the background it gains 0.2 (6 -> 8)
    none = run("none", "none", lambda q, b: q in first(2 if b == 32 else 6), budgets=(32, 64, 128))
    bg = run("bg", "gold-background", lambda q, b: q in first(6 if b == 32 else 8), budgets=(32, 64, 128))
    s = knowledge([none, bg], by_domain=False)
    assert s is not None
    [row] = table(s, "knowledge_interaction")
    assert (row["budget_low"], row["budget_high"], row["n"]) == (32, 128, 10)
    assert row["gain_none"] == pytest.approx(0.4) and row["gain_condition"] == pytest.approx(0.2)
    assert row["difference"] == pytest.approx(-0.2)
    assert row["ci_low"] <= -0.2 <= row["ci_high"] and row["ci_low"] < row["ci_high"]


def test_fixes_compare_knowledge_with_twice_the_budget():
    # none's errors at 64 (the largest budget both ran): q4-q9. The background fixes q4-q7;
    # none itself at 128 fixes q4 and q5.
    none = run("none", "none", lambda q, b: q in first(4 if b <= 64 else 6), budgets=(32, 64, 128))
    bg = run("bg", "gold-background", first(8), budgets=(32, 64))
    s = knowledge([none, bg], by_domain=False)
    assert s is not None
    [row] = table(s, "knowledge_fixes")
    assert (row["budget"], row["doubled_budget"], row["n_errors"]) == (64, 128, 6)
    assert (row["fixed_by_knowledge"], row["fixed_by_doubling"]) == (4, 2)
    assert row["share_fixed_by_knowledge"] == pytest.approx(4 / 6)
    assert row["share_fixed_by_doubling"] == pytest.approx(2 / 6)
    assert row["diff"] == pytest.approx(2 / 6)
    assert row["p_mcnemar"] == pytest.approx(mcnemar_exact(0, 2)) == pytest.approx(0.5)

    # without a none budget twice the largest compared one: n/a
    s = knowledge([run("none", "none", first(4), budgets=(32, 64)), bg], by_domain=False)
    assert s is not None
    [row] = table(s, "knowledge_fixes")
    assert row["n_errors"] == 6 and row["fixed_by_knowledge"] == 4
    assert row["doubled_budget"] == row["share_fixed_by_doubling"] == row["p_mcnemar"] == "n/a"


def test_matched_tokens_pair_knowledge_with_none_at_budget_plus_inserted_tokens():
    budgets = (32, 64, 128, 256)
    none = run("none", "none", lambda q, b: q in first(b // 32), budgets=budgets)  # 1, 2, 4, 8 right
    bg = run("bg", "gold-background", first(5), budgets=(32, 64), trace_options={"tokens": 100})
    s = knowledge([none, bg], by_domain=False)
    assert s is not None
    rows = {r["budget"]: r for r in table(s, "knowledge_matched")}
    # 32 + 100 -> 128 (closest of 32..256); 64 + 100 = 164 -> 128 as well
    assert rows[32]["none_budget"] == 128 and rows[32]["target_budget"] == 132
    assert rows[64]["none_budget"] == 128
    assert rows[32]["mean_knowledge_tokens"] == 100
    assert rows[32]["acc_none"] == 0.4 and rows[32]["acc_none_same_budget"] == 0.1
    assert rows[32]["acc_condition"] == 0.5 and rows[32]["diff"] == pytest.approx(0.1)
    assert rows[32]["n"] == 10

    # counted: the inserted tokens are already in the budget, so none at the same budget
    counted = run("bgc", "gold-background", first(5), budgets=(32, 64), trace_options={"tokens": 100},
                  knowledge_counted=True)
    s = knowledge([none, counted], by_domain=False)
    assert s is not None
    assert {r["budget"]: r["none_budget"] for r in table(s, "knowledge_matched")} == {32: 32, 64: 64}

    # a tie goes to the larger budget (96 is as far from 64 as from 128)
    tie = run("tie", "gold", first(5), budgets=(64,), trace_options={"tokens": 32})
    s = knowledge([none, tie], by_domain=False)
    assert s is not None
    assert [r["none_budget"] for r in table(s, "knowledge_matched")] == [128]


def _counterfactual_insertions(letter: str) -> list[dict]:
    return [{"where": "prompt", "at": None, "char_at": None, "tokens": 40, "query": None, "text": "...",
             "passages": [{"id": "x", "source": "counterfactual", "title": "", "text": "...", "score": 0.0,
                           "supports": letter}]}]


def test_counterfactual_follow_rate_against_none_picking_the_same_option():
    none_traces = [trace(q, 64, i < 4, letter="C" if i == 9 else None) for i, q in enumerate(IDS)]
    # the counterfactual argues for C; 3 answers follow it, 1 stays right, the rest pick B
    cf_traces = [trace(q, 64, i == 0, letter="A" if i == 0 else "C" if i in (1, 2, 3) else "B",
                       knowledge="counterfactual", insertions=_counterfactual_insertions("C"))
                 for i, q in enumerate(IDS)]
    none = Run(Path("/runs/none"), {**BASE, "budgets": [64]}, none_traces, name="none")
    cf = Run(Path("/runs/cf"), {**BASE, "budgets": [64], "knowledge": "counterfactual"}, cf_traces, name="cf")
    assert supported_letter(cf_traces[0]) == "C" and supported_letter(none_traces[0]) is None
    s = knowledge([none, cf], by_domain=False)
    assert s is not None
    [row] = [r for r in table(s, "knowledge_controls") if r["control"] == "counterfactual follow"]
    assert (row["condition"], row["n"]) == ("counterfactual · prompt", 10)
    assert row["value"] == pytest.approx(0.3) and row["ci_low"] < 0.3 < row["ci_high"]
    assert row["reference_value"] == pytest.approx(0.1)  # none picked C once

    # no supported letter recorded: said, not guessed
    bare = run("bare", "counterfactual", first(1))
    s = knowledge([none, bare], by_domain=False)
    assert s is not None
    [row] = [r for r in table(s, "knowledge_controls") if r["control"] == "counterfactual follow"]
    assert row["n"] == 0 and math.isnan(row["value"]) and "no supported letter" in row["note"]


def _retrieved(text: str) -> list[dict]:
    return [{"where": "thinking", "at": 21, "char_at": 50, "tokens": 60, "query": "q", "text": text,
             "passages": [{"id": "p1", "source": "m1-knowledge", "title": "Heart failure", "text": text,
                           "score": 3.0}]}]


def test_retrieval_hit_ignores_case_and_punctuation_but_not_word_boundaries():
    def with_text(text):
        return trace("q", 64, True, knowledge="retrieve", insertions=_retrieved(text))

    assert retrieval_hit(with_text("Start BETA blocker  therapy, then review.")) is True
    assert retrieval_hit(with_text("Beta-blockers therapy is not it.")) is False
    assert retrieval_hit(trace("q", 64, True, knowledge="retrieve")) is None  # nothing inserted


def test_retrieval_hit_rate_and_gap_closed_against_gold_background():
    # none 4/10, background 8/10, retrieve 6/10: retrieval closes half the background's gap
    hits = {"q0", "q1", "q2", "q4"}  # passages naming the answer; q8, q9 got no passages
    ret_traces = [trace(q, 64, q in first(6), knowledge="retrieve",
                        insertions=None if q in ("q8", "q9") else
                        _retrieved("use beta-blocker therapy" if q in hits else "use aspirin"))
                  for q in IDS]
    runs = [run("none", "none", first(4)), run("bg", "gold-background", first(8)),
            Run(Path("/runs/ret"), {**BASE, "budgets": [64], "knowledge": "retrieve"}, ret_traces, name="ret")]
    s = knowledge(runs, by_domain=False)
    assert s is not None
    controls = {r["control"]: r for r in table(s, "knowledge_controls")}
    closed = controls["retrieve vs gold-background"]
    assert (closed["condition"], closed["reference"], closed["n"]) == ("retrieve k=4 · prompt",
                                                                        "gold-background · prompt", 10)
    assert closed["value"] == pytest.approx(0.5) and closed["reference_value"] == pytest.approx(0.4)
    assert closed["ci_low"] <= 0.5 <= closed["ci_high"]
    hit = controls["retrieval hit"]
    assert hit["n"] == 8 and hit["value"] == pytest.approx(0.5)
    assert hit["acc_with_hit"] == pytest.approx(1.0)  # q0, q1, q2, q4: all right
    assert hit["acc_without_hit"] == pytest.approx(0.5)  # q3, q5 right; q6, q7 wrong
    assert "2 traces without inserted passages" in hit["note"]


def test_placebo_against_none():
    s = knowledge([run("none", "none", first(4)), run("pl", "placebo", first(3))], by_domain=False)
    assert s is not None
    [row] = table(s, "knowledge_controls")
    assert (row["control"], row["n"], row["reference_value"]) == ("placebo vs none", 10, 0.4)
    assert row["value"] == pytest.approx(-0.1) and row["p_value"] == pytest.approx(1.0)
    assert table(s, "knowledge_gap") == []  # no gold-background run: no gap to measure


def test_collapsed_thinking_and_skipped_items_are_shown():
    collapsed = [trace(q, 64, q in first(5), knowledge="gold", thinking_tokens=1 if i < 8 else 30)
                 for i, q in enumerate(IDS)]
    gold = Run(Path("/runs/gold"), {**BASE, "budgets": [64], "knowledge": "gold"}, collapsed,
               environment={"knowledge": {"condition": "gold", "skipped": ["q10", "q11"]}}, name="gold")
    s = knowledge([run("none", "none", first(4)), gold], by_domain=False)
    assert s is not None
    acc = {r["run"]: r for r in table(s, "knowledge_accuracy")}
    assert acc["gold"]["collapsed_share"] == pytest.approx(0.8) and acc["none"]["collapsed_share"] == 0
    assert acc["gold"]["skipped_items"] == 2 and acc["none"]["skipped_items"] == 0
    assert "gold · prompt: the thinking collapsed (at most 2 tokens) on 80% of the questions at budget 64 " \
        "(none: 0%)" in s.text
    collapse_links = [link for link in s.links if "collapsed" in link.why]
    assert len(collapse_links) == 8 and {link.run for link in collapse_links} == {"gold"}


def test_judge_missing_knowledge_against_the_intervention():
    runs = [run("none", "none", first(4)), run("bg", "gold-background", first(8))]
    # none's errors q4-q9; the background fixes q4-q7 (a knowledge gap)
    labels = {"q4": "missing_knowledge", "q5": "missing_knowledge", "q6": "reasoning_slip",
              "q7": "missing_knowledge", "q8": "missing_knowledge", "q9": None}  # q9: the reply named no label
    judgements = [Judgement("none", "medqa", q, 64, "B", "A", label, "reply") for q, label in labels.items()]
    judgements += [Judgement("bg", "medqa", "q8", 64, "B", "A", "missing_knowledge", "another run"),
                   Judgement("none", "medqa", "q8", 32, "B", "A", "missing_knowledge", "a budget bg did not run")]
    s = knowledge(runs, judged=JudgeResult("judge-model", judgements), by_domain=False)
    assert s is not None
    [row] = table(s, "knowledge_judge")
    assert (row["n"], row["judge_and_gap"], row["judge_only"], row["gap_only"], row["neither"]) == (5, 3, 1, 1, 0)
    assert row["agreement"] == pytest.approx(3 / 5)
    # p_o = 15/25, p_e = (4*4 + 1*1) / 25 = 17/25: kappa = (15 - 17) / (25 - 17)
    assert row["kappa"] == pytest.approx(-0.25)
    assert "knowledge_judge" in s.text
    without = knowledge(runs, by_domain=False)
    assert without is not None and "knowledge_judge" not in {t.name for t in without.tables}


def test_gap_per_domain_at_the_largest_budget():
    runs = [run("none", "none", first(4), budgets=(32, 64)), run("bg", "gold-background", first(8), budgets=(32, 64))]
    domains = {("medqa", q): "Diagnosis" if i < 6 else "Therapy" if i < 9 else "Rare" for i, q in enumerate(IDS)}
    s = knowledge(runs, domains=domains)
    assert s is not None
    rows = {r["domain"]: r for r in table(s, "knowledge_gap") if r["domain"] != "all"}
    assert set(rows) == {"Diagnosis", "other (pooled: 2 domains under 5 questions)"}
    assert all(r["budget"] == 64 for r in rows.values())
    assert (rows["Diagnosis"]["n"], rows["Diagnosis"]["n_gap"]) == (6, 2)  # q4, q5
    other = rows["other (pooled: 2 domains under 5 questions)"]
    assert (other["n"], other["n_gap"], other["n_not_knowledge"]) == (4, 2, 2)

    # by default the offline labeller names a domain for each question
    s = knowledge(runs)
    assert s is not None
    assert any(r["domain"] != "all" for r in table(s, "knowledge_gap"))


def test_several_sources_get_pooled_rows():
    def two(name, cond, right_a, right_b):
        a = run(name, cond, first(right_a), source="medqa").traces
        b = run(name, cond, first(right_b), source="pubmedqa").traces
        return Run(Path(f"/runs/{name}"), {**BASE, "budgets": [64], "knowledge": cond}, a + b, name=name)

    s = knowledge([two("none", "none", 4, 6), two("bg", "gold-background", 8, 6)], by_domain=False)
    assert s is not None
    paired = {r["source"]: r for r in table(s, "knowledge_paired")}
    assert set(paired) == {"medqa", "pubmedqa", MACRO, MICRO}
    assert paired[MICRO]["diff"] == pytest.approx(4 / 20)
    gap = {r["source"]: r for r in table(s, "knowledge_gap")}
    assert gap[MICRO]["n"] == 20 and gap[MICRO]["n_gap"] == 4
    acc = {(r["run"], r["source"]): r for r in table(s, "knowledge_accuracy")}
    assert acc[("bg", MICRO)]["accuracy"] == pytest.approx(14 / 20)


def test_registered_after_forcing_and_written_by_the_report(tmp_path):
    from m1.reporting.report import report

    names = [a.__name__ for a in ANALYSES]
    assert names.index("knowledge") == names.index("forcing") + 1
    paths = []
    for r in (run("none", "none", first(4)), run("bg", "gold-background", first(8))):
        path = tmp_path / r.name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"config": r.config, "environment": {}}))
        (path / "traces.jsonl").write_text("".join(json.dumps(t.to_json()) + "\n" for t in r.traces))
        paths.append(path)
    out = tmp_path / "report"
    rep = report([Run.load(p) for p in paths], out, analyses=[knowledge])
    assert [s.key for s in rep.sections] == ["knowledge"]
    for name in ("knowledge_accuracy", "knowledge_paired", "knowledge_gap", "knowledge_interaction",
                 "knowledge_controls", "knowledge_fixes", "knowledge_matched"):
        assert (out / f"{name}.csv").exists() and (out / f"{name}.md").exists(), name
    assert (out / "knowledge_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "knowledge_gap.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["domain"] == "all"]
    assert [(r["n_gap"], float(r["share_gap"])) for r in rows] == [("4", 0.4)]
    assert "Knowledge or reasoning?" in (out / "report.md").read_text()
