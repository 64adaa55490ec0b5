"""Accuracy with a confidence interval, and per-run averages, from traces."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from m1.runs import Trace

Z_95 = 1.959964  # two-sided 95% normal quantile (to 7 digits, as the reports have always used)


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (statsmodels' proportion_confint).

    Wilson rather than the normal approximation because benchmark slices are often
    small and accuracies near 0 or 1, where p +- z*se leaves [0, 1] or collapses to a
    point. n == 0 returns (0.0, 1.0): with no data every accuracy is possible.
    """
    # Imported here: scipy and statsmodels take seconds to import, and `m1 eval` never needs them.
    from scipy.stats import norm
    from statsmodels.stats.proportion import proportion_confint

    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(k, n, alpha=2 * norm.sf(z), method="wilson")
    # At k == 0 or k == n the bound is exactly 0 or 1; rounding would leave 0.9999999999999999.
    return 0.0 if k == 0 else float(lo), 1.0 if k == n else float(hi)


COLUMNS = ["source", "budget", "n", "accuracy", "ci_low", "ci_high", "unparsed_rate",
           "mean_thinking_tokens", "mean_answer_tokens", "hit_budget_rate"]


def compute_metrics(traces: Iterable[Trace]) -> list[dict]:
    """One row per (source, budget), sorted."""
    groups: dict[tuple[str, int], list[Trace]] = defaultdict(list)
    for t in traces:
        groups[(t.source, t.budget)].append(t)
    return [{"source": s, "budget": b, **summarize(ts)} for (s, b), ts in sorted(groups.items())]


def summarize(records: Iterable[Trace]) -> dict:
    """Run-level numbers from traces (correct, outcome, thinking_tokens, answer_tokens,
    hit_budget).

    Rates are fractions in [0, 1]. With no records, n is 0, the interval is (0, 1)
    and every mean or rate is nan (there is nothing to average; 0 would look like a result).
    """
    records = list(records)
    n = len(records)
    n_correct = sum(r.correct for r in records)
    n_unparsed = sum(r.outcome == "unparsed" for r in records)
    lo, hi = wilson_interval(n_correct, n)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n if n else math.nan

    return {
        "n": n,
        "n_correct": n_correct,
        "accuracy": n_correct / n if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "unparsed_rate": n_unparsed / n if n else math.nan,
        "mean_thinking_tokens": mean(r.thinking_tokens for r in records),
        "mean_answer_tokens": mean(r.answer_tokens for r in records),
        "hit_budget_rate": mean(r.hit_budget for r in records),
    }
