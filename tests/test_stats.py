import math

import pytest

from m1.reporting.metrics import wilson_interval
from m1.reporting.stats import (
    Flips,
    accuracy_table,
    across_seeds,
    averages,
    flip_table,
    mcnemar_exact,
    paired_compare,
    paired_pooled,
    seeds_table,
    t95,
)
from m1.runs import Trace


def recs(source: str, budget: int, correct: list[int], start: int = 0) -> list[Trace]:
    return [Trace(source=source, budget=budget, id=f"{source}-{i + start}", correct=bool(c))
            for i, c in enumerate(correct)]


# ---- McNemar ----

@pytest.mark.parametrize("b, c, p", [
    (1, 9, 0.021484375),  # 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    (9, 1, 0.021484375),  # symmetric
    (0, 0, 1.0),  # no discordant pairs: no evidence
    (5, 5, 1.0),  # capped at 1
    (0, 5, 0.0625),  # 2 / 2^5
    (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024 = 112/1024
    (0, 1, 1.0),  # 2 * 1/2
])
def test_mcnemar_exact_hand_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-15)


def test_mcnemar_large_counts_stay_finite():
    p = mcnemar_exact(600, 700)  # 2^1300 overflows a float
    assert 0 < p < 0.01
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_mcnemar_agrees_with_the_binomial_sum():
    # The exact test by hand, on integers: 2 * P(Binomial(b + c, 1/2) <= min(b, c)), at most 1.
    for b in range(41):
        for c in range(41):
            tail = sum(math.comb(b + c, i) for i in range(min(b, c) + 1))
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * tail / 2 ** (b + c)), rel=1e-12, abs=0)


def test_holm_agrees_with_the_step_down_by_hand():
    from m1.reporting.analyses.domains import holm

    def by_hand(ps):
        out, running = [1.0] * len(ps), 0.0
        for rank, i in enumerate(sorted(range(len(ps)), key=lambda i: ps[i])):
            running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
            out[i] = running
        return out

    for ps in ([], [0.2], [0.01, 0.04, 0.03], [0.01, 0.01, 0.5, 0.0], [0.3, 1e-12, 0.3, 0.02, 0.9, 0.02]):
        assert holm(ps) == by_hand(ps)


# ---- flips and paired comparisons ----

def test_flip_table_counts():
    a = [x == 1 for x in (1, 1, 1, 0, 0, 0, 1, 0)]
    b = [x == 1 for x in (1, 0, 1, 1, 1, 0, 0, 0)]
    f = flip_table(a, b)
    assert f == Flips(both_right=2, right_to_wrong=2, wrong_to_right=2, both_wrong=2)
    assert f.n == 8
    with pytest.raises(ValueError):
        flip_table([True], [True, False])


def test_paired_compare_point_values_and_p():
    a = [True] * 10 + [False] * 10 + [True] * 1 + [False] * 9
    b = [True] * 10 + [False] * 10 + [False] * 1 + [True] * 9
    r = paired_compare(a, b, n_boot=500, seed=3)
    assert (r.flips.right_to_wrong, r.flips.wrong_to_right) == (1, 9)
    assert r.p_value == pytest.approx(0.021484375)
    assert r.acc_a == pytest.approx(11 / 30) and r.acc_b == pytest.approx(19 / 30)
    assert r.diff == pytest.approx(8 / 30)
    assert r.ci_low <= r.diff <= r.ci_high
    assert r.ci_low > 0  # 8 net flips in 30 is clearly positive


def test_paired_bootstrap_is_deterministic_with_a_seed():
    a = [i % 3 == 0 for i in range(40)]
    b = [i % 2 == 0 for i in range(40)]
    one, two = paired_compare(a, b, seed=7), paired_compare(a, b, seed=7)
    assert (one.ci_low, one.ci_high) == (two.ci_low, two.ci_high)
    other = paired_compare(a, b, seed=8)
    assert (one.ci_low, one.ci_high) != (other.ci_low, other.ci_high)


def test_identical_systems_have_zero_difference():
    a = [True, False, True, True]
    r = paired_compare(a, a)
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_pooled_macro_and_micro():
    # Source x: 10 questions, B fixes 5.  Source y: 2 questions, no change.
    groups = {"x": ([False] * 10, [True] * 5 + [False] * 5), "y": ([True, False], [True, False])}
    macro, micro = paired_pooled(groups, n_boot=300, seed=0)
    assert macro.diff == pytest.approx((0.5 + 0.0) / 2)
    assert micro.diff == pytest.approx(5 / 12)
    assert macro.flips == micro.flips == Flips(1, 0, 5, 6)
    assert macro.p_value == pytest.approx(mcnemar_exact(0, 5))
    for r in (macro, micro):
        assert r.ci_low <= r.diff <= r.ci_high


# ---- accuracy, macro and micro ----

def test_accuracy_table_uses_wilson():
    rows = accuracy_table(recs("medqa", 256, [1, 1, 0, 1]) + recs("pubmedqa", 256, [0, 1]))
    assert [(r.source, r.n, r.n_correct) for r in rows] == [("medqa", 4, 3), ("pubmedqa", 2, 1)]
    assert (rows[0].ci_low, rows[0].ci_high) == wilson_interval(3, 4)


def test_macro_and_micro_differ_when_sizes_differ():
    records = recs("big", 128, [1] * 90 + [0] * 10) + recs("small", 128, [1] * 2 + [0] * 8)
    (avg,) = averages(records, n_boot=1000, seed=0)
    assert avg.budget == 128 and avg.n_sources == 2 and avg.n == 110
    assert avg.macro.value == pytest.approx((0.9 + 0.2) / 2)  # 0.55: each source counts once
    assert avg.micro.value == pytest.approx(92 / 110)  # 0.836: the big source dominates
    for e in (avg.macro, avg.micro):
        assert e.ci_low <= e.value <= e.ci_high
    # The small source is noisy, and in the macro average it weighs as much as the big one.
    assert avg.macro.ci_high - avg.macro.ci_low > avg.micro.ci_high - avg.micro.ci_low


def test_averages_per_budget_and_deterministic():
    records = (recs("a", 64, [1, 0, 0, 1, 1]) + recs("b", 64, [0, 0, 1])
               + recs("a", 256, [1, 1, 1, 1, 0]) + recs("b", 256, [1, 0, 1]))
    first, again = averages(records, seed=5), averages(records, seed=5)
    assert [a.budget for a in first] == [64, 256]
    assert first == again


# ---- seeds ----

# The two-sided 95% t table that t95 used to hard-code (3 decimals, df 1..30): scipy's exact
# quantiles round to every entry.
T_TABLE = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
           2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
           2.045, 2.042]


def test_t_quantiles():
    assert [round(t95(df), 3) for df in range(1, 31)] == T_TABLE
    assert t95(2) == pytest.approx(4.302653, abs=1e-6)
    assert t95(31) == pytest.approx(2.0395, abs=1e-4)
    assert t95(1000) == pytest.approx(1.9623, abs=1e-4)
    assert t95(10**9) == pytest.approx(1.959964, abs=1e-6)  # the normal quantile in the limit
    with pytest.raises(ValueError):
        t95(0)


def test_across_seeds():
    s = across_seeds([0.60, 0.62, 0.64])
    assert s.n_seeds == 3 and s.mean == pytest.approx(0.62)
    assert s.std == pytest.approx(0.02)
    assert (s.min, s.max) == (0.60, 0.64)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.62 - half, 0.62 + half))
    one = across_seeds([0.5])
    assert one.std == 0.0 and math.isnan(one.ci_low)
    with pytest.raises(ValueError):
        across_seeds([])


def test_seeds_table():
    runs = [recs("a", 128, [1, 1, 0, 0]) + recs("b", 128, [1, 0]),
            recs("a", 128, [1, 1, 1, 0]) + recs("b", 128, [0, 0]),
            recs("a", 128, [1, 0, 0, 0]) + recs("b", 128, [1, 1])]
    rows = {r["source"]: r for r in seeds_table(runs)}
    assert set(rows) == {"a", "b", "avg (macro)", "all (micro)"}
    assert rows["a"]["mean"] == pytest.approx(0.5) and rows["a"]["min"] == 0.25 and rows["a"]["max"] == 0.75
    assert rows["avg (macro)"]["mean"] == pytest.approx(((0.5 + 0.5) + (0.75 + 0) + (0.25 + 1)) / 6)
    assert rows["all (micro)"]["mean"] == pytest.approx((3 / 6 + 3 / 6 + 3 / 6) / 3)
    assert rows["all (micro)"]["std"] == 0.0
