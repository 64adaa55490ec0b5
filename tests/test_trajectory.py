"""Answer trajectories and the replayed adaptive policies, on hand-made runs with known answers."""
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m1.reporting import plots
from m1.reporting.analyses import ANALYSES
from m1.reporting.analyses.trajectory import (
    FIXED,
    MAX_QUESTION_ROWS,
    MICRO,
    adaptive,
    question_trajectory,
    replay,
    settled,
    trajectories,
    trajectory,
    trajectory_summary,
)
from m1.reporting.metrics import wilson_interval
from m1.reporting.sections import Section
from m1.runs import Run, Trace
from m1.thinking.policies import Confidence, Stable

OPTIONS = {"A": "a", "B": "b", "C": "c", "D": "d"}
BUDGETS = (32, 64, 96, 128)


def question(qid: str, answers: str, gold: str = "A", source: str = "medqa", end: int | None = None,
             end_tokens: int | None = None, logprobs=None, budgets=BUDGETS) -> list[Trace]:
    """One question's traces: answers "A B - C" at `budgets` ("-": unparsed). end: index of the first
    budget whose thinking ended by itself, at end_tokens; later budgets hold that trace (a cut sweep)."""
    letters = [None if a == "-" else a for a in answers.split()]
    assert len(letters) == len(budgets)
    out = []
    for j, b in enumerate(budgets):
        natural = end is not None and j >= end
        letter = letters[end] if natural and end is not None else letters[j]
        out.append(Trace(id=qid, source=source, budget=b, gold=gold, options=OPTIONS, thinking=f"think {qid} {j}",
                         thinking_tokens=(end_tokens or b) if natural else b,
                         thinking_ended="natural" if natural else "budget", hit_budget=not natural,
                         letter=letter, correct=letter == gold,
                         outcome="unparsed" if letter is None else "correct" if letter == gold else "wrong",
                         option_logprobs=logprobs[j] if logprobs else None))
    return out


def make_run(name: str, traces: list[Trace], **config) -> Run:
    return Run(Path("/tmp/m1-test-runs") / name, {"model": "m", "format": "m1", "engine": "vllm", **config}, traces)


def traj(runs, **kw) -> Section:
    s = trajectory(runs, **kw)
    assert s is not None
    return s


def table(section, name):
    return next(t for t in section.tables if t.name == name)


def rows(section, name, **match):
    return [r for r in table(section, name).rows if all(r.get(k) == v for k, v in match.items())]


# ---- one trajectory ----

@pytest.mark.parametrize("answers, settle, flips", [
    ("B B B B", 32, 0), ("A B B B", 64, 1), ("A B A B", 128, 3), ("B B A A", 96, 1),
    ("A - - -", 64, 1),  # unparsed at the end: settled where it became unparsed
    ("- - - -", 32, 0), ("A - A A", 96, 2),
])
def test_settle_point_and_flips(answers, settle, flips):
    t = question_trajectory(question("q", answers))
    assert (t.settle_budget, t.flips, t.answers) == (settle, flips, answers)


def test_final_ever_and_the_two_kinds_of_flip():
    def kinds(answers):
        t = question_trajectory(question("q", answers, gold="B"))
        return t.final_correct, t.ever_correct, t.right_to_wrong, t.wrong_to_right

    assert kinds("B B A A") == (False, True, True, False)  # overthinking
    assert kinds("A A B B") == (True, True, False, True)
    assert kinds("B A B B") == (True, True, False, True)  # wrong at some budget, right at the largest
    assert kinds("B B B B") == (True, True, False, False)
    assert kinds("A - C C") == (False, False, False, False)


def test_held_after_the_natural_end():
    # thinking ended by itself at 50 tokens (budget 64): the later answers are that trace's, settled by 64
    t = question_trajectory(question("q", "C A x x", end=1, end_tokens=50))
    assert (t.answers, t.settle_budget, t.end_budget, t.flips) == ("C A A A", 64, 64, 1)
    # the traces disagree after the natural end (sampled answers): held anyway, settled at the end
    ts = question("q", "C A B A")
    ts = [Trace(**{**vars(t), "thinking_ended": "natural" if t.budget >= 64 else "budget"}) for t in ts]
    held = question_trajectory(ts)
    assert (held.answers, held.settle_budget) == ("C A A A", 64)
    # a run that rethinks at every budget is taken as it is
    run = make_run("ind", ts, method="independent")
    (t,), _ = trajectories(run)
    assert (t.answers, t.settle_budget) == ("C A B A", 128)


def test_incomplete_questions_are_left_out():
    ts = question("q1", "A A A A") + question("q2", "A A A A")[:3]
    trajs, left_out = trajectories(make_run("r", ts))
    assert [t.id for t in trajs] == ["q1"] and left_out == {"medqa": 1}


# ---- the section ----

# Gold A. settle points 32, 64, 64, 128, 64 (natural end), 96; flips 0, 1, 1, 3, 1, 1
QUESTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "q1": ("A A A A", {}),
    "q2": ("B A A A", {}),
    "q3": ("A B B B", {}),      # right -> wrong (overthinking)
    "q4": ("A B A B", {}),      # right -> wrong, 3 flips
    "q5": ("C A x x", {"end": 1, "end_tokens": 50}),
    "q6": ("- - A A", {}),      # wrong -> right via unparsed
}


@pytest.fixture(scope="module")
def hand_run():
    ts = [t for q, (a, kw) in QUESTIONS.items() for t in question(q, a, **kw)]
    return make_run("hand", ts)


def test_summary_numbers(hand_run):
    s = traj([hand_run])
    assert s.key == "trajectory"
    (row,) = rows(s, "trajectory_summary")
    assert row["run"] == "hand" and row["source"] == "medqa" and row["n"] == 6
    assert row["final_correct"] == pytest.approx(4 / 6)  # q1 q2 q5 q6
    assert row["ever_correct"] == 1.0
    assert row["late_flip_rate"] == pytest.approx(2 / 6)  # q3 q4
    assert row["wrong_to_right_rate"] == pytest.approx(3 / 6)  # q2 q5 q6
    assert row["mean_flips"] == pytest.approx((0 + 1 + 1 + 3 + 1 + 1) / 6)
    assert row["natural_end_share"] == pytest.approx(1 / 6)
    # settle points sorted: 32, 64, 64, 64, 96, 128; quantiles are budgets (the inverted CDF)
    assert (row["settle_p25"], row["settle_median"], row["settle_p75"], row["settle_p90"]) == (64, 64, 96, 128)


def test_share_settled_by_budget(hand_run):
    s = traj([hand_run])
    got = {r["budget"]: (r["share_settled"], r["accuracy"], r["share_ended"]) for r in rows(s, "trajectory_settled")}
    # settle: q1 32, q2 64, q3 64, q4 128, q5 64, q6 96. accuracy at each budget, gold A:
    # 32: q1 q3 q4 -> 3; 64: q1 q2 q5 -> 3; 96: q1 q2 q4 q5 q6 -> 5; 128: q1 q2 q5 q6 -> 4
    assert got == {32: pytest.approx((1 / 6, 3 / 6, 0)), 64: pytest.approx((4 / 6, 3 / 6, 1 / 6)),
                   96: pytest.approx((5 / 6, 5 / 6, 1 / 6)), 128: pytest.approx((1, 4 / 6, 1 / 6))}


def test_question_rows_links_and_figures(hand_run):
    s = traj([hand_run])
    qs = table(s, "trajectory_questions").rows
    assert [r["id"] for r in qs[:2]] == ["q4", "q3"]  # late right -> wrong first, the most flips first
    q5 = next(r for r in qs if r["id"] == "q5")
    assert (q5["answers"], q5["settle"], q5["natural_end"], q5["final_correct"]) == ("C A A A", 64, 64, True)
    assert next(r for r in qs if r["id"] == "q6")["answers"] == "- - A A"
    # links: the late flips, right latest first (q4 right at 96, q3 at 32), at the largest budget
    assert [(link.id, link.budget) for link in s.links] == [("q4", 128), ("q3", 128)]
    assert "right at 96 (A)" in s.links[0].why and "B (wrong) at 128" in s.links[0].why
    assert set(s.figures) == {"trajectory_stability", "trajectory_raster"}
    for fig in s.figures.values():
        assert plots.png_bytes(fig)[:4] == b"\x89PNG"
    assert "late_flip_rate" in s.markdown() and "C A A A" in s.markdown()


def test_per_source_pooled_and_domains():
    ts = [t for q, (a, kw) in QUESTIONS.items() for t in question(q, a, **kw)]
    ts += [t for i in range(12) for t in question(f"p{i}", "B A A A", source="pubmedqa")]
    run = make_run("two", ts)
    domains = {("medqa", q): "Diagnosis" for q in QUESTIONS} | {("pubmedqa", f"p{i}"): "Therapy" for i in range(10)}
    s = traj([run], domains=domains)
    assert [r["source"] for r in rows(s, "trajectory_summary")] == ["medqa", "pubmedqa", MICRO]
    (micro,) = rows(s, "trajectory_summary", source=MICRO)
    assert micro["n"] == 18 and micro["final_correct"] == pytest.approx((4 + 12) / 18)
    dom = {r["domain"]: r["n"] for r in table(s, "trajectory_domains").rows}
    # Therapy has 10 (kept), Diagnosis 6 and unlabelled 2 are pooled (fewer than 10 questions)
    assert dom == {"Therapy": 10, "other (pooled: 2 domains)": 8}
    # or labelled by a labeller (domains.label_runs): one label for all 18 questions
    s = traj([run], labeller=lambda texts: ["Diagnosis"] * len(texts))
    assert [(r["domain"], r["n"]) for r in table(s, "trajectory_domains").rows] == [("Diagnosis", 18)]
    assert "trajectory_domains" not in {t.name for t in traj([run]).tables}


def test_none_without_density_and_registration():
    sparse = make_run("sparse", [t for t in question("q", "A A A", budgets=(32, 64, 128))])
    assert trajectory([sparse]) is None and adaptive([sparse]) is None
    names = [a.__name__ for a in ANALYSES]
    order = [names.index(n) for n in ("failures", "trajectory_by_domain", "adaptive", "seeds")]
    assert order == sorted(order)


def test_question_rows_are_capped():
    ts = [t for i in range(MAX_QUESTION_ROWS + 20) for t in question(f"q{i:04d}", "A A B B")]
    s = traj([make_run("big", ts)])
    assert len(table(s, "trajectory_questions").rows) == MAX_QUESTION_ROWS
    assert f"keeps {MAX_QUESTION_ROWS} of its {MAX_QUESTION_ROWS + 20}" in s.text


def test_trajectory_summary_and_settled_are_plain_functions():
    trajs = [question_trajectory(question(q, a, **kw)) for q, (a, kw) in QUESTIONS.items()]
    assert trajectory_summary(trajs)["n"] == 6 and [r["budget"] for r in settled(trajs)] == list(BUDGETS)


# ---- the adaptive frontier ----

def lp(top: str, p: float) -> dict[str, float]:
    return {k: math.log(p if k == top else (1 - p) / 3) for k in "ABCD"}


# Gold A. Under Stable(2, every=32):
#   f1 "A A A A"  -> stable at 64, right;   f2 "B A A A" -> stable at 96, right
#   f3 "B B A A"  -> stable at 64, wrong;   f4 natural end at 50 tokens (by 64) -> A, right
FRONTIER: dict[str, tuple[str, dict[str, Any]]] = {"f1": ("A A A A", {}), "f2": ("B A A A", {}), "f3": ("B B A A", {}),
            "f4": ("C A x x", {"end": 1, "end_tokens": 50})}


@pytest.fixture(scope="module")
def frontier_rows():
    ts = [t for q, (a, kw) in FRONTIER.items() for t in question(q, a, **kw)]
    return replay(make_run("front", ts), [Stable(2, every=32), Confidence(0.9, every=32)], n_boot=500)


def test_frontier_fixed_rows(frontier_rows):
    fixed = {r["params"]: r for r in frontier_rows if r["policy"] == FIXED}
    assert list(fixed) == ["B=32", "B=64", "B=96", "B=128"]
    big, small = fixed["B=128"], fixed["B=32"]
    assert (big["accuracy"], big["mean_tokens"]) == (1.0, (128 * 3 + 50) / 4)
    assert (small["accuracy"], small["mean_tokens"], small["stopped_budget"]) == (0.25, 32, 1.0)
    assert big["stopped_natural_end"] == 0.25 and big["tokens_saved_vs_largest"] == 0 and big["acc_vs_largest"] == 0
    assert (fixed["B=64"]["accuracy"], fixed["B=64"]["mean_tokens"]) == (0.75, (64 * 3 + 50) / 4)


def test_frontier_policy_rows(frontier_rows):
    (stable,) = [r for r in frontier_rows if r["policy"] == "Stable"]
    assert stable["params"] == "m=2, every=32" and stable["n"] == 4
    assert stable["accuracy"] == 0.75
    assert (stable["ci_low"], stable["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert stable["mean_tokens"] == (64 + 96 + 64 + 50) / 4
    assert stable["tokens_saved_vs_largest"] == pytest.approx(1 - 68.5 / 108.5)
    assert stable["acc_vs_largest"] == pytest.approx(-0.25)
    assert stable["mean_probes"] == (2 + 3 + 2 + 1) / 4
    assert (stable["stopped_stable"], stable["stopped_natural_end"], stable["stopped_budget"],
            stable["stopped_confident"]) == (0.75, 0.25, 0, 0)
    assert 50 <= stable["tokens_ci_low"] <= stable["mean_tokens"] <= stable["tokens_ci_high"] <= 96
    # a run without log-probabilities gets no Confidence row
    assert not [r for r in frontier_rows if r["policy"] == "Confidence"]


def test_adaptive_section_with_logprobs():
    ts = []
    for q, (a, kw) in FRONTIER.items():
        ts += question(q, a, logprobs=[lp("B", 0.5), lp("A", 0.95), lp("A", 0.95), lp("A", 0.99)], **kw)
    s = adaptive([make_run("front", ts)], n_boot=200)
    assert s is not None and s.key == "adaptive" and set(s.figures) == {"adaptive_frontier"}
    (t,) = s.tables
    conf = next(r for r in t.rows if r["policy"] == "Confidence" and r["params"] == "tau=0.9, every=32")
    # confident at 64 everywhere: f1 A, f2 A, f3 B (the graded letter), f4 ended at 50 before 64
    assert conf["accuracy"] == 0.75 and conf["mean_tokens"] == (64 * 3 + 50) / 4
    assert (conf["stopped_confident"], conf["stopped_natural_end"]) == (0.75, 0.25)
    assert {r["policy"] for r in t.rows} == {FIXED, "Stable", "Confidence", "Deer"}
    assert all(not math.isnan(r["tokens_ci_low"]) for r in t.rows)
    assert plots.png_bytes(s.figures["adaptive_frontier"])[:4] == b"\x89PNG"
    assert "fewer thinking tokens" in s.text or "no policy reaches" in s.text


def test_several_runs_and_a_sparse_one_left_out(hand_run):
    sparse = make_run("sparse", question("q", "A A A", budgets=(32, 64, 128)))
    s = traj([hand_run, sparse])
    assert {r["run"] for r in table(s, "trajectory_summary").rows} == {"hand"}
    assert "Left out, with fewer than 4 budgets: sparse." in s.text
    a = adaptive([hand_run, sparse], n_boot=100)
    assert a is not None and {r["run"] for r in a.tables[0].rows} == {"hand"}
    assert np.isfinite([r["accuracy"] for r in a.tables[0].rows]).all()


def test_default_policies_follow_the_sweep():
    from m1.reporting.analyses.trajectory import default_policies
    from m1.thinking.policies import missing_checkpoints

    dense = default_policies(list(range(32, 513, 32)))
    assert {p.every for p in dense} == {32, 64} and len(dense) == 15
    logspaced = [64, 128, 256, 512, 1024]
    assert {p.every for p in default_policies(logspaced)} == {None}
    assert not any(missing_checkpoints(p, logspaced) for p in default_policies(logspaced))
