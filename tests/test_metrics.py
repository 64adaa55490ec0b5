import math

import pytest

from m1.reporting.metrics import summarize, wilson_interval
from m1.runs import Trace


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    narrow = wilson_interval(800, 1000, z=1.0)
    assert narrow[1] - narrow[0] < wilson_interval(800, 1000)[1] - wilson_interval(800, 1000)[0]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def record(correct, outcome, thinking, answer, hit):
    return Trace(id="q", source="s", budget=512, correct=correct, outcome=outcome, thinking_tokens=thinking,
                 answer_tokens=answer, hit_budget=hit)


def test_summarize():
    records = [
        record(True, "correct", 100, 10, False),
        record(True, "correct", 300, 20, True),
        record(False, "wrong", 200, 30, True),
        record(False, "unparsed", 400, 40, True),
    ]
    s = summarize(records)
    assert s["n"] == 4
    assert s["n_correct"] == 2
    assert s["accuracy"] == 0.5
    assert (s["ci_low"], s["ci_high"]) == wilson_interval(2, 4)
    assert s["unparsed_rate"] == 0.25
    assert s["mean_thinking_tokens"] == 250.0
    assert s["mean_answer_tokens"] == 25.0
    assert s["hit_budget_rate"] == 0.75


def test_summarize_empty():
    s = summarize([])
    assert s["n"] == 0
    assert (s["ci_low"], s["ci_high"]) == (0.0, 1.0)
    assert math.isnan(s["accuracy"]) and math.isnan(s["mean_thinking_tokens"])
