"""Uncertainty for benchmark accuracies: intervals, averages over sources, paired tests, seeds.

Everything here is a pure function over traces (m1.runs.Trace: source, budget, id and
correct are used) or over lists of booleans. Bootstraps are seeded, so a report
recomputed from the same traces gives the same intervals.

Why these choices:
- Per (source, budget) accuracy: Wilson interval (see metrics.wilson_interval).
- Averages over sources: the paper's "Avg" is the unweighted mean of source accuracies
  (macro); the pooled accuracy over all questions is the micro average. Both get a
  percentile bootstrap that resamples questions within each source, so each source keeps
  its size, as it does in the benchmark.
- Two systems on the same questions (two budgets, two runs): their errors are correlated,
  so unpaired intervals overlap far more than the real uncertainty of the difference.
  We use the paired bootstrap for the difference and McNemar's exact test, which looks
  only at questions where the two disagree.
- Several seeds: mean, spread, and a t interval over the per-seed accuracies (the seeds
  are the replicates; with 3-5 of them a normal quantile would be too narrow).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from m1.reporting.metrics import wilson_interval

if TYPE_CHECKING:
    from m1.runs import Trace

N_BOOT = 2000


@dataclass(frozen=True)
class Accuracy:
    source: str
    budget: int
    n: int
    n_correct: int
    accuracy: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Averages:
    budget: int
    n_sources: int
    n: int
    macro: Estimate  # unweighted mean over sources (the paper's "Avg")
    micro: Estimate  # pooled over all questions


@dataclass(frozen=True)
class Flips:
    both_right: int
    right_to_wrong: int  # right in A, wrong in B
    wrong_to_right: int  # wrong in A, right in B
    both_wrong: int

    @property
    def n(self) -> int:
        return self.both_right + self.right_to_wrong + self.wrong_to_right + self.both_wrong


@dataclass(frozen=True)
class Paired:
    n: int
    acc_a: float
    acc_b: float
    diff: float  # acc_b - acc_a: what changes going from A to B
    ci_low: float
    ci_high: float
    p_value: float  # McNemar exact, two-sided
    flips: Flips


@dataclass(frozen=True)
class SeedSummary:
    n_seeds: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for one seed
    min: float
    max: float
    ci_low: float  # t interval of the mean; the whole [min, max] is no substitute
    ci_high: float


# ---- one accuracy per (source, budget) ----

def _groups(records: Iterable[Trace]) -> dict[tuple[str, int], list[bool]]:
    groups: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for r in records:
        groups[(r.source, r.budget)].append(bool(r.correct))
    return dict(sorted(groups.items()))


def accuracy_table(records: Iterable[Trace]) -> list[Accuracy]:
    rows = []
    for (source, budget), correct in _groups(records).items():
        k, n = sum(correct), len(correct)
        lo, hi = wilson_interval(k, n)
        rows.append(Accuracy(source, budget, n, k, k / n, lo, hi))
    return rows


# ---- macro / micro averages over sources ----

def averages(records: Iterable[Trace], n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> list[Averages]:
    """Per budget: macro and micro average over sources, each with a stratified bootstrap interval."""
    by_budget: dict[int, dict[str, list[bool]]] = defaultdict(dict)
    for (source, budget), correct in _groups(records).items():
        by_budget[budget][source] = correct
    rng = np.random.default_rng(seed)
    out = []
    for budget in sorted(by_budget):
        sources = by_budget[budget]
        ns = np.array([len(c) for c in sources.values()])
        ks = np.array([sum(c) for c in sources.values()])
        # Drawing n questions with replacement from a source with k right gives a number right
        # that is Binomial(n, k/n): the same resampling as drawing indices, without the indices.
        boot_k = rng.binomial(ns, ks / ns, size=(n_boot, len(ns)))
        macro = (boot_k / ns).mean(axis=1)
        micro = boot_k.sum(axis=1) / ns.sum()
        out.append(Averages(
            budget, len(ns), int(ns.sum()),
            Estimate(float((ks / ns).mean()), *_percentiles(macro, alpha)),
            Estimate(float(ks.sum() / ns.sum()), *_percentiles(micro, alpha)),
        ))
    return out


def _percentiles(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---- paired comparisons ----

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (statsmodels): under "no difference" each of the b + c
    discordant questions is equally likely to go either way, so min(b, c) is Binomial(b + c, 1/2)."""
    from statsmodels.stats.contingency_tables import mcnemar  # slow to import; reports only

    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got b={b}, c={c}")
    return float(mcnemar([[0, b], [c, 0]], exact=True).pvalue)


def flip_table(a: Sequence[bool], b: Sequence[bool]) -> Flips:
    if len(a) != len(b):
        raise ValueError(f"paired results need equal lengths, got {len(a)} and {len(b)}")
    cells: defaultdict[tuple[bool, bool], int] = defaultdict(int)
    for x, y in zip(a, b):
        cells[(bool(x), bool(y))] += 1
    return Flips(cells[(True, True)], cells[(True, False)], cells[(False, True)], cells[(False, False)])


def paired_compare(a: Sequence[bool], b: Sequence[bool], n_boot: int = N_BOOT, seed: int = 0,
                   alpha: float = 0.05) -> Paired:
    """B against A on the same questions, in the same order."""
    return paired_pooled({"": (a, b)}, n_boot, seed, alpha)[0]


def paired_pooled(groups: Mapping[str, tuple[Sequence[bool], Sequence[bool]]], n_boot: int = N_BOOT,
                  seed: int = 0, alpha: float = 0.05) -> tuple[Paired, Paired]:
    """(macro, micro) paired comparison over sources; groups maps source -> (a, b).

    The bootstrap resamples questions, as (a, b) pairs, within each source. Each pair falls
    in one of the four flip cells, so a resample is a multinomial draw of cell counts.
    McNemar's p uses the flips pooled over all sources, for both averages.
    """
    if not groups:
        raise ValueError("paired_pooled needs at least one group")
    flips = {s: flip_table(a, b) for s, (a, b) in sorted(groups.items())}
    if any(f.n == 0 for f in flips.values()):
        raise ValueError("every group needs at least one paired question")
    rng = np.random.default_rng(seed)
    ns = np.array([f.n for f in flips.values()])
    # Per source: counts of (right->wrong, wrong->right, agreeing) in each resample.
    cells = np.stack([rng.multinomial(f.n, [f.right_to_wrong / f.n, f.wrong_to_right / f.n,
                                            (f.both_right + f.both_wrong) / f.n], size=n_boot)
                      for f in flips.values()], axis=1)  # (n_boot, sources, 3)
    boot_diff = (cells[..., 1] - cells[..., 0])  # per source: wrong->right minus right->wrong
    macro_boot = (boot_diff / ns).mean(axis=1)
    micro_boot = boot_diff.sum(axis=1) / ns.sum()

    acc_a = np.array([(f.both_right + f.right_to_wrong) / f.n for f in flips.values()])
    acc_b = np.array([(f.both_right + f.wrong_to_right) / f.n for f in flips.values()])
    total = Flips(*(sum(getattr(f, k) for f in flips.values())
                    for k in ("both_right", "right_to_wrong", "wrong_to_right", "both_wrong")))
    p = mcnemar_exact(total.right_to_wrong, total.wrong_to_right)
    n = int(ns.sum())
    macro = Paired(n, float(acc_a.mean()), float(acc_b.mean()), float(acc_b.mean() - acc_a.mean()),
                   *_percentiles(macro_boot, alpha), p, total)
    micro_a, micro_b = float((acc_a * ns).sum() / n), float((acc_b * ns).sum() / n)
    micro = Paired(n, micro_a, micro_b, (total.wrong_to_right - total.right_to_wrong) / n,
                   *_percentiles(micro_boot, alpha), p, total)
    return macro, micro


# ---- several seeds ----

def t95(df: int) -> float:
    """Two-sided 95% Student t quantile (scipy)."""
    from scipy.stats import t  # slow to import; reports only

    if df < 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    return float(t.ppf(0.975, df))


def across_seeds(values: Sequence[float]) -> SeedSummary:
    """One accuracy per seed -> mean, spread and a 95% t interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("across_seeds needs at least one value")
    mean = float(x.mean())
    if x.size == 1:  # one seed says nothing about seed-to-seed spread
        return SeedSummary(1, mean, 0.0, mean, mean, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t95(x.size - 1) * std / math.sqrt(x.size)
    # Accuracies live in [0, 1]; with 2-3 seeds the t interval easily reaches past either end.
    return SeedSummary(int(x.size), mean, std, float(x.min()), float(x.max()), max(0.0, mean - half),
                       min(1.0, mean + half))


def seeds_table(runs: Sequence[Sequence[Trace]]) -> list[dict]:
    """Runs that differ only in seed -> one row per (source, budget), plus macro and micro
    rows per budget ("source" = "avg (macro)" / "all (micro)"), each summarising the
    per-seed accuracies. Only (source, budget) cells present in every run are used."""
    if not runs:
        raise ValueError("seeds_table needs at least one run")
    per_run = [{(a.source, a.budget): a for a in accuracy_table(r)} for r in runs]
    cells = sorted(set.intersection(*(set(p) for p in per_run)))
    rows = [{"source": s, "budget": b, **vars(across_seeds([p[(s, b)].accuracy for p in per_run]))}
            for s, b in cells]
    for budget in sorted({b for _, b in cells}):
        sources = [s for s, b in cells if b == budget]
        macro = [float(np.mean([p[(s, budget)].accuracy for s in sources])) for p in per_run]
        micro = [sum(p[(s, budget)].n_correct for s in sources) / sum(p[(s, budget)].n for s in sources)
                 for p in per_run]
        rows.append({"source": "avg (macro)", "budget": budget, **vars(across_seeds(macro))})
        rows.append({"source": "all (micro)", "budget": budget, **vars(across_seeds(micro))})
    return rows
