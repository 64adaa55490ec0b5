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


@pytest.mark.parametrize("k, n, lo, hi", [  # Newcombe (1998), Stat Med 17:857, worked examples, method 3 (score)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0)])
def test_wilson_textbook_values(k, n, lo, hi):
    assert [round(x, 4) for x in wilson_interval(k, n)] == [lo, hi]


def test_wilson_agrees_with_the_closed_form():
    for z in (1.959964, 2.575829):
        for n in range(1, 31):
            for k in range(n + 1):
                p, z2 = k / n, z * z
                centre = (p + z2 / (2 * n)) / (1 + z2 / n)
                half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
                assert wilson_interval(k, n, z) == pytest.approx((centre - half, centre + half), abs=1e-12)


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
