"""Accuracy against thinking budget: where it peaks, how sure that is, and whether it falls after.

The m1 paper finds medical accuracy rises with the thinking budget up to about 4K tokens and
then stops improving or declines ("overthinking"). This section answers, for each run:

- accuracy at each budget, per benchmark (Wilson interval) and the paper's "Avg", the
  unweighted mean over benchmarks (stratified bootstrap, stats.averages);
- the best budget, with a bootstrap of the argmax itself. The same questions are asked at
  every budget, so a resample draws questions within each benchmark and keeps each one's
  answers at all budgets together (a row of the question-by-budget grid), then takes the
  argmax again. The spread of those argmaxes says how well the data pin the best budget down;
- the overthinking test: the largest budget against the best one on the same questions
  (paired bootstrap difference and McNemar's exact test, stats.paired_compare/paired_pooled).
  The best budget is the highest of all budgets on these very questions, so the pair alone
  finds a "decline" far too often in a dense sweep; a decline is claimed only when a test that
  allows for that choice (superiority_p, Hansen's SPA test on the same bootstrap) agrees;
- how long the model thought at each budget, and how often the budget cut it off.

    from m1.reporting.analyses.scaling import scaling
    section = scaling([run])
    section.figures["scaling_accuracy"]
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from m1.reporting import plots, stats
from m1.reporting.sections import Section, Table, TraceLink

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from m1.runs import Run, Trace

MACRO = "avg (macro)"  # the paper's "Avg": the unweighted mean over benchmarks (as in stats.seeds_table)
MICRO = "all (micro)"  # pooled over all questions
ALPHA = 0.05
LINKS_PER_SOURCE = 3  # overthinking examples linked per benchmark (right at the best budget, wrong at the largest)
LINKS_PER_RUN = 12
_TIE = 1e-12


# ---- the question-by-budget grid and its bootstrap ----

@dataclass(frozen=True)
class Grid:
    """Correctness of the same questions at every budget of one benchmark:
    `correct[i, j]` is question ids[i] at budgets[j]."""

    source: str
    ids: tuple[str, ...]
    budgets: tuple[int, ...]
    correct: np.ndarray  # bool, (questions, budgets)

    @property
    def n(self) -> int:
        return len(self.ids)

    def column(self, budget: int) -> np.ndarray:
        return self.correct[:, self.budgets.index(budget)]


def paired_grid(traces: Sequence[Trace], source: str, budgets: Sequence[int] | None = None) -> Grid | None:
    """The grid of `source`'s questions answered at every one of `budgets` (default: every budget
    the source has); questions missing at some budget (a run still going) are left out.
    None when no question was answered at all of them."""
    by_id: dict[str, dict[int, bool]] = defaultdict(dict)
    for t in traces:
        if t.source == source:
            by_id[t.id][t.budget] = bool(t.correct)
    chosen = sorted(set(budgets) if budgets is not None else {b for d in by_id.values() for b in d})
    ids = sorted(i for i, d in by_id.items() if all(b in d for b in chosen))
    if not ids or not chosen:
        return None
    correct = np.array([[by_id[i][b] for b in chosen] for i in ids], dtype=bool)
    return Grid(source, tuple(ids), tuple(chosen), correct)


def boot_accuracy(correct: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, budgets) accuracies of resampled question sets: n questions drawn with
    replacement, each keeping its answers at every budget together (a row of the grid).

    Questions with the same row of answers are interchangeable, so a resample is counted per
    distinct row, and its accuracies are those counts times the rows."""
    patterns, inverse = np.unique(correct, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n, k = len(inverse), len(patterns)
    weights = patterns.astype(float) / n
    step = max(1, 4_000_000 // n)  # resamples per chunk: bounds the (resamples, questions) draw
    out = []
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        rows = inverse[rng.integers(0, n, size=(m, n))] + k * np.arange(m)[:, None]
        out.append(np.bincount(rows.ravel(), minlength=m * k).reshape(m, k) @ weights)
    return np.concatenate(out, axis=0)


def _argmax(acc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The best budget's index in each row, ties broken at random: budgets that are equally
    good share the credit (a plateau of identical answers should not all go to its first budget)."""
    tied = acc >= acc.max(axis=1, keepdims=True) - _TIE
    return np.argmax(np.where(tied, rng.random(acc.shape), -1.0), axis=1)


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, benchmark): a benchmark's interval does not move when others are added."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def superiority_p(point: np.ndarray, boot: np.ndarray, n: int) -> float:
    """One-sided p-value for "some budget is more accurate than the last (largest) one", allowing
    for the best budget having been picked from all of them on the same questions.

    Hansen's test for superior predictive ability (J. Bus. Econ. Stat. 2005): the largest
    studentized gap max_b (acc_b - acc_last) / se_b, against its paired-bootstrap distribution
    under "no budget beats the last". A budget far below the last (t < -sqrt(2 log log n)) keeps
    its own gap in that distribution rather than 0, so clearly worse small budgets do not dilute
    the test. `point`: (budgets,) accuracies; `boot`: (resamples, budgets) from boot_accuracy."""
    gap = point[:-1] - point[-1]
    boot_gap = boot[:, :-1] - boot[:, -1:]
    se = boot_gap.std(axis=0)
    keep = se > _TIE  # budgets that never disagree with the last one cannot beat it
    if not keep.any():
        return 1.0
    gap, boot_gap, se = gap[keep], boot_gap[:, keep], se[keep]
    t = gap / se
    observed = t.max()
    if observed <= 0:
        return 1.0
    floor = -math.sqrt(2 * math.log(math.log(n))) if n > math.e ** math.e else -math.inf
    null = ((boot_gap - gap + np.where(t < floor, gap, 0.0)) / se).max(axis=1)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + len(null)))


@dataclass(frozen=True)
class BestBudget:
    source: str  # a benchmark, or MACRO
    n: int  # paired questions (answered at every budget)
    budgets: tuple[int, ...]
    accuracy: tuple[float, ...]  # on the paired questions, per budget
    best: int  # the argmax; the smallest budget on ties (the cheapest of the best)
    low: int  # the alpha/2 .. 1 - alpha/2 range of the argmax over resamples
    high: int
    shares: dict[int, float]  # budget -> share of resamples in which it is best (nonzero only), most first

    @property
    def best_accuracy(self) -> float:
        return self.accuracy[self.budgets.index(self.best)]


@dataclass(frozen=True)
class Overthinking:
    source: str  # a benchmark, or MACRO
    best: int
    largest: int
    paired: stats.Paired  # A = the best budget, B = the largest: diff = acc(largest) - acc(best)
    p_adjusted: float  # superiority_p: allows for the best budget being picked among n_budgets
    n_budgets: int
    verdict: str
    decline: bool  # evidence of overthinking: p_adjusted and McNemar's p both below alpha


def budget_tests(grids: Sequence[Grid], n_boot: int = stats.N_BOOT, seed: int = 0,
                 alpha: float = ALPHA) -> tuple[BestBudget, Overthinking]:
    """The best budget and the overthinking test of one benchmark (one grid) or of the macro
    average over several (grids with the same budgets).

    Best budget: the argmax, with the bootstrap distribution of the argmax. Overthinking: the
    largest budget against the best on the same questions (stats.paired_compare, or for the
    macro stats.paired_pooled with McNemar on the flips pooled over benchmarks), and
    superiority_p, which the verdict rests on."""
    if not grids:
        raise ValueError("budget_tests needs at least one grid")
    budgets = grids[0].budgets
    if any(g.budgets != budgets for g in grids):
        raise ValueError("budget_tests: every grid needs the same budgets")
    name = grids[0].source if len(grids) == 1 else MACRO
    rng = _rng(seed, name)
    point = np.mean([g.correct.mean(axis=0) for g in grids], axis=0)
    boot = np.mean([boot_accuracy(g.correct, n_boot, rng) for g in grids], axis=0)
    picks = np.asarray(budgets)[_argmax(boot, rng)]
    lo, hi = np.quantile(picks, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    values, counts = np.unique(picks, return_counts=True)
    shares = {int(b): int(c) / n_boot for b, c in sorted(zip(values, counts), key=lambda bc: (-bc[1], bc[0]))}
    best = budgets[int(np.argmax(point >= point.max() - _TIE))]
    n = sum(g.n for g in grids)
    found = BestBudget(name, n, budgets, tuple(float(a) for a in point), best, int(lo), int(hi), shares)

    largest = budgets[-1]
    groups = {g.source: (g.column(best).tolist(), g.column(largest).tolist()) for g in grids}
    if len(grids) == 1:
        paired = stats.paired_compare(*groups[name], n_boot=n_boot, seed=seed, alpha=alpha)
    else:
        paired = stats.paired_pooled(groups, n_boot=n_boot, seed=seed, alpha=alpha)[0]
    p_adj = superiority_p(point, boot, n) if best != largest else 1.0
    over = Overthinking(name, best, largest, paired, p_adj, len(budgets),
                        verdict(best, largest, paired, p_adj, len(budgets), alpha),
                        best != largest and decline(paired, p_adj, alpha))
    return found, over


def decline(p: stats.Paired, p_adjusted: float, alpha: float = ALPHA) -> bool:
    """Evidence of overthinking: the selection-aware test and McNemar's exact test of the pair both
    reject. The first alone can be a little liberal on small, discrete samples; the second alone
    ignores that the best budget was picked as the highest."""
    return p_adjusted < alpha and p.p_value < alpha and p.diff < 0


def verdict(best: int, largest: int, p: stats.Paired, p_adjusted: float, n_budgets: int,
            alpha: float = ALPHA) -> str:
    """One plain sentence: how far the largest budget is below the best, and whether that is a decline."""
    if best == largest:
        return (f"accuracy is highest at the largest budget, {largest} ({p.acc_b:.2f}): "
                "no sign of overthinking within the budgets run")
    gap = p.acc_a - p.acc_b
    if abs(gap) < _TIE:
        return (f"accuracy at {largest} equals that at the best budget {best} ({p.acc_a:.2f}): "
                "no decline, and nothing gained past it")
    head = (f"accuracy at {largest} is {_amount(gap)} below the best budget {best} "
            f"({1 - alpha:.0%} CI {_signed(p.ci_low)} to {_signed(p.ci_high)}, McNemar {_p(p.p_value)})")
    if decline(p, p_adjusted, alpha):
        return (f"{head}: evidence of a decline (overthinking; {_p(p_adjusted)} allowing for the best being "
                f"picked among {n_budgets} budgets)")
    if p.p_value < alpha or p.ci_high < 0:
        return (f"{head}: no clear evidence of a decline, since the best of {n_budgets} budgets beats the "
                f"largest by chance alone this often ({_p(p_adjusted)} allowing for that)")
    if p_adjusted < alpha:
        return f"{head}: no clear evidence of a decline (McNemar's test of the two budgets is not significant)"
    return f"{head}: no evidence of a decline"


def _amount(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.3f}"


def _signed(x: float) -> str:
    return (f"{x:+.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:+.3f}").replace("-", "\u2212")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


# ---- one run ----

@dataclass
class RunScaling:
    """Everything the section shows for one run."""

    run: Run
    accuracy: list[dict[str, Any]]  # rows of scaling_accuracy, without the run column
    best: list[BestBudget]  # per benchmark, then MACRO when there are several
    over: list[Overthinking]  # the same order
    length: list[dict[str, Any]]
    links: list[TraceLink]
    left_out: dict[str, int]  # benchmark -> questions not answered at every budget
    chance: dict[str, float]  # benchmark -> accuracy of guessing (nan without options)


def analyse_run(run: Run, n_boot: int = stats.N_BOOT, seed: int = 0, alpha: float = ALPHA) -> RunScaling:
    by_source: dict[str, list[Trace]] = defaultdict(list)
    for t in run.traces:
        by_source[t.source].append(t)
    sources = sorted(by_source)
    rows: list[dict[str, Any]] = [
        {"source": a.source, "budget": a.budget, "n": a.n, "n_correct": a.n_correct, "accuracy": a.accuracy,
         "ci_low": a.ci_low, "ci_high": a.ci_high} for a in stats.accuracy_table(run.traces)]
    if len(sources) > 1:
        for avg in stats.averages(run.traces, n_boot, seed, alpha):
            for name, est in ((MACRO, avg.macro), (MICRO, avg.micro)):
                rows.append({"source": name, "budget": avg.budget, "n": avg.n, "n_correct": None,
                             "accuracy": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high})

    best, over, links = [], [], []
    left_out: dict[str, int] = {}
    for source in sources:
        grid = paired_grid(by_source[source], source)
        n_questions = len({t.id for t in by_source[source]})
        if grid is None or grid.n < n_questions:
            left_out[source] = n_questions - (grid.n if grid else 0)
        if grid is None:
            continue
        b, o = budget_tests([grid], n_boot, seed, alpha)
        best.append(b)
        over.append(o)
        links += _flip_links(run, grid, b.best, o.largest)
    if len(sources) > 1:
        # The macro needs every benchmark at the same budgets: those all of them have.
        common = sorted(set.intersection(*({t.budget for t in by_source[s]} for s in sources)))
        grids = [paired_grid(by_source[s], s, common) for s in sources] if common else []
        macro_grids = [g for g in grids if g is not None]
        if macro_grids and len(macro_grids) == len(sources):
            b, o = budget_tests(macro_grids, n_boot, seed, alpha)
            best.append(b)
            over.append(o)
    return RunScaling(run, rows, best, over, length_rows(run.traces), links[:LINKS_PER_RUN], left_out,
                      {s: plots.chance(ts) for s, ts in by_source.items()})


def length_rows(traces: Sequence[Trace]) -> list[dict[str, Any]]:
    """Per budget, over all benchmarks: quantiles of thinking tokens and the share the budget cut off."""
    by_budget: dict[int, list[Trace]] = defaultdict(list)
    for t in traces:
        by_budget[t.budget].append(t)
    rows = []
    for budget, ts in sorted(by_budget.items()):
        x = np.array([t.thinking_tokens for t in ts], dtype=float)
        q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
        rows.append({"budget": budget, "n": len(ts), "mean": float(x.mean()),
                     **{k: float(v) for k, v in zip(("p10", "p25", "median", "p75", "p90"), q)},
                     "max": float(x.max()), "hit_budget_share": sum(t.hit_budget for t in ts) / len(ts)})
    return rows


def _flip_links(run: Run, grid: Grid, best: int, largest: int) -> list[TraceLink]:
    if best == largest:
        return []
    flipped = grid.column(best) & ~grid.column(largest)
    return [TraceLink(run.name, grid.source, grid.ids[i], largest,
                      f"right at budget {best} (the best), wrong at {largest} (the largest)")
            for i in np.flatnonzero(flipped)[:LINKS_PER_SOURCE]]


# ---- the section ----

ACCURACY_COLUMNS = ["source", "budget", "n", "n_correct", "accuracy", "ci_low", "ci_high"]
BEST_COLUMNS = ["source", "n", "best_budget", "accuracy", "argmax_low", "argmax_high", "share_best", "shares"]
ARGMAX_COLUMNS = ["source", "budget", "share"]
OVER_COLUMNS = ["source", "n", "best_budget", "largest_budget", "acc_best", "acc_largest", "diff", "ci_low",
                "ci_high", "p_value", "p_adjusted", "right_to_wrong", "wrong_to_right", "decline", "verdict"]
LENGTH_COLUMNS = ["budget", "n", "mean", "p10", "p25", "median", "p75", "p90", "max", "hit_budget_share"]


def scaling(runs: list[Run], n_boot: int = stats.N_BOOT, seed: int = 0, alpha: float = ALPHA) -> Section | None:
    """Accuracy against budget, the best budget and the overthinking test for each run.
    None when no run has traces."""
    runs = [r for r in runs if r.traces]
    if not runs:
        return None
    results = [analyse_run(r, n_boot, seed, alpha) for r in runs]
    several = len(runs) > 1

    def tag(res: RunScaling, row: dict[str, Any]) -> dict[str, Any]:
        return {"run": res.run.name, **row} if several else row

    def cols(columns: list[str]) -> list[str]:
        return ["run", *columns] if several else columns

    level = f"{1 - alpha:.0%}"
    best_rows, argmax_rows, over_rows = [], [], []
    for res in results:
        for b in res.best:
            best_rows.append(tag(res, {
                "source": b.source, "n": b.n, "best_budget": b.best, "accuracy": b.best_accuracy,
                "argmax_low": b.low, "argmax_high": b.high, "share_best": b.shares.get(b.best, 0.0),
                "shares": ", ".join(f"{k}: {v:.0%}" for k, v in list(b.shares.items())[:3])}))
            argmax_rows += [tag(res, {"source": b.source, "budget": k, "share": v})
                            for k, v in sorted(b.shares.items())]
        for o in res.over:
            p = o.paired
            over_rows.append(tag(res, {
                "source": o.source, "n": p.n, "best_budget": o.best, "largest_budget": o.largest,
                "acc_best": p.acc_a, "acc_largest": p.acc_b, "diff": p.diff, "ci_low": p.ci_low,
                "ci_high": p.ci_high, "p_value": p.p_value, "p_adjusted": o.p_adjusted,
                "right_to_wrong": p.flips.right_to_wrong, "wrong_to_right": p.flips.wrong_to_right,
                "decline": o.decline, "verdict": o.verdict}))
    tables = [
        Table("scaling_accuracy", cols(ACCURACY_COLUMNS), [tag(res, r) for res in results for r in res.accuracy],
              f"Accuracy at each budget: per benchmark with the {level} Wilson interval; '{MACRO}' is the paper's "
              f"Avg (unweighted mean over benchmarks) and '{MICRO}' the pooled accuracy, each with a {level} "
              "bootstrap interval resampling questions within each benchmark."),
        Table("scaling_best", cols(BEST_COLUMNS), best_rows,
              f"Best budget (smallest on ties), with the {level} range of the best budget over bootstrap "
              "resamples (argmax_low to argmax_high), the share of resamples choosing it, and the three "
              "budgets chosen most often. Computed on the questions answered at every budget."),
        Table("scaling_argmax", cols(ARGMAX_COLUMNS), argmax_rows,
              "Share of bootstrap resamples in which each budget is the best (budgets never best are left out)."),
        Table("scaling_overthinking", cols(OVER_COLUMNS), over_rows,
              "The largest budget against the best one on the same questions: diff = accuracy at the largest "
              f"minus accuracy at the best, with a {level} paired bootstrap interval; p_value: McNemar's exact "
              "test; p_adjusted: a test that allows for the best budget having been "
              "picked among all budgets (Hansen's superior predictive ability test); decline: p_adjusted and "
              f"p_value both below {alpha:g}; right_to_wrong: questions right at the best budget and wrong at "
              "the largest."),
        Table("scaling_length", cols(LENGTH_COLUMNS), [tag(res, r) for res in results for r in res.length],
              "Thinking tokens at each budget, over all benchmarks: mean and quantiles, and the share of "
              "questions whose thinking the budget cut off."),
    ]
    figures = {"scaling_accuracy": accuracy_figure(results), "scaling_length": length_figure(results)}
    return Section("scaling", "Accuracy against thinking budget", _text(results, several, level), tables, figures,
                   [link for res in results for link in res.links])


def _text(results: list[RunScaling], several: bool, level: str) -> str:
    paras = [
        "Accuracy at each thinking budget, per benchmark and as the paper's Avg (the unweighted mean over "
        f"benchmarks, '{MACRO}'). The m1 paper finds accuracy rises with the budget up to about 4K tokens and "
        "then stops improving or falls (overthinking). In the figure each band is a "
        f"{level} interval, the dotted line is chance (guessing among the options) and the dot marks the "
        "best budget."]
    for res in results:
        head = next((b for b in res.best if b.source == MACRO), res.best[0] if len(res.best) == 1 else None)
        over = next((o for o in res.over if head is not None and o.source == head.source), None)
        who = f"{res.run.name}: " if several else ""
        if head is None or over is None:
            paras.append(f"{who}no budget and question is common to every benchmark, so there is no best "
                         "budget for the Avg yet (see the per-benchmark rows).")
            continue
        what = "Avg" if head.source == MACRO else head.source
        spread = (f"the central {level} of resamples all pick {head.low}" if head.low == head.high
                  else f"in {level} of resamples the best budget lies between {head.low} and {head.high}")
        paras.append(f"{who}best budget for {what}: {head.best} (accuracy {head.best_accuracy:.2f}; {spread}; "
                     f"{head.best} is best in {head.shares.get(head.best, 0.0):.0%} of them). "
                     f"{over.verdict[0].upper()}{over.verdict[1:]}.")
        per_source = [o for o in res.over if o.source != MACRO]
        if head.source == MACRO and per_source:
            declines = [o.source for o in per_source if o.decline]
            paras.append(f"{who}per benchmark (scaling_overthinking): a decline after the best budget in "
                         f"{len(declines)} of {len(per_source)}" + (f" ({', '.join(declines)})." if declines else "."))
        if res.left_out:
            parts = ", ".join(f"{s}: {k}" for s, k in sorted(res.left_out.items()))
            paras.append(f"{who}questions not answered at every budget (a run still going?) are left out of the "
                         f"best-budget and overthinking rows ({parts}).")
    paras += [
        "How to read the best budget: it is the budget with the highest accuracy, the smallest on ties. Its "
        "bootstrap draws questions with replacement within each benchmark, keeping each question's answers at "
        "all budgets together (the same questions are asked at every budget), and takes the best budget again; "
        "ties in a resample are broken at random. A wide range, or a small share for the best budget, means the "
        "data cannot tell the neighbouring budgets apart.",
        "How to read the overthinking test: the largest budget against the best one, on the same questions. "
        "The difference gets a paired bootstrap interval and McNemar's exact test, which looks only at the "
        "questions the two budgets disagree on. But the best budget was picked as the highest of all budgets "
        "on these same questions, so it is lucky by construction: with many budgets (a dense sweep) the largest "
        "lands below it even when accuracy does not fall at all, and McNemar's p is then too small. So a "
        "decline is claimed only when p_adjusted, a bootstrap test of whether any budget beats the largest that "
        "allows for that choice (Hansen's test for superior predictive ability), agrees.",
        "Thinking length: the median thinking tokens at each budget with the 25-75% and 10-90% ranges; the "
        "dashed line is the budget itself. Where the share of questions hitting the budget is near 0, the "
        "model ends its thinking before the budget and a larger budget changes little.",
    ]
    if any(len(res.run.budgets) > 12 for res in results):
        paras.append("A dense sweep: the figures draw lines without markers and label powers of two; the "
                     "tables keep every budget.")
    return "\n\n".join(paras)


# ---- figures ----

def _name(run: Run, runs: list[Run]) -> str:
    """A run's legend label: its name when there are several, none for a lone run."""
    return run.name if len(runs) > 1 else ""


def _panels(results: list[RunScaling]) -> list[str]:
    sources = sorted({r["source"] for res in results for r in res.accuracy if r["source"] not in (MACRO, MICRO)})
    return sources + ([MACRO] if any(r["source"] == MACRO for res in results for r in res.accuracy) else [])


def _chance(results: list[RunScaling], panel: str, sources: list[str]) -> float:
    """Chance accuracy of a benchmark (the mean over runs), or for the macro panel the mean over
    benchmarks (nan, so no line, when a benchmark has no options to guess from)."""
    def of(source: str) -> float:
        levels = [x for res in results if not math.isnan(x := res.chance.get(source, math.nan))]
        return sum(levels) / len(levels) if levels else math.nan

    levels = [of(s) for s in sources] if panel == MACRO else [of(panel)]
    return math.nan if any(math.isnan(x) for x in levels) else sum(levels) / len(levels)


def accuracy_figure(results: list[RunScaling]) -> Figure:
    """Accuracy against log2 budget: a panel per benchmark and one for the macro Avg, a line per
    run with its interval as a band, the chance level dotted and the best budget as a dot."""
    runs = [res.run for res in results]
    panels = _panels(results)
    sources = [p for p in panels if p != MACRO]
    fig, axes = plots.grid(max(len(panels), 1))
    for ax, panel in zip(axes, panels):
        budgets: list[int] = []
        for res in results:
            rows = [r for r in res.accuracy if r["source"] == panel]
            if not rows:
                continue
            x = [r["budget"] for r in rows]
            y = [r["accuracy"] for r in rows]
            budgets += x
            line, = ax.plot(x, y, marker="" if len(x) > 12 else "o", markersize=3,
                            label=_name(res.run, runs) or ("Avg" if panel == MACRO else panel))
            ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.2,
                            color=line.get_color())
            best = next((b for b in res.best if b.source == panel), None)
            if best is not None and best.best in x:
                ax.scatter([best.best], [y[x.index(best.best)]], s=40, color=line.get_color(),
                           edgecolor="black", zorder=3)
        plots.accuracy_panel(ax, budgets, "Avg (macro, unweighted over benchmarks)" if panel == MACRO else panel,
                             _chance(results, panel, sources), ylabel="accuracy")
    title = plots.describe(runs[0].config) if len(runs) == 1 else ""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def length_figure(results: list[RunScaling]) -> Figure:
    """Left: thinking tokens against budget (median line, 25-75% and 10-90% bands, the budget
    dashed). Right: share of questions hitting the budget. Readable for any number of budgets."""
    runs = [res.run for res in results]
    fig, (ax, ax_hit) = plots.grid(2, width=5, height=3.6)
    budgets = sorted({r["budget"] for res in results for r in res.length})
    for res in results:
        rows = res.length
        x = [r["budget"] for r in rows]
        marker = "" if len(x) > 12 else "o"
        name = _name(res.run, runs)
        line, = ax.plot(x, [r["median"] for r in rows], marker=marker, markersize=3, label=name or "median")
        color = line.get_color()
        ax.fill_between(x, [r["p25"] for r in rows], [r["p75"] for r in rows], alpha=0.3, color=color,
                        linewidth=0, label=None if name else "25-75%")
        ax.fill_between(x, [r["p10"] for r in rows], [r["p90"] for r in rows], alpha=0.12, color=color,
                        linewidth=0, label=None if name else "10-90%")
        ax_hit.plot(x, [r["hit_budget_share"] for r in rows], marker=marker, markersize=3, color=color,
                    label=name or None)
    ax.plot(budgets, budgets, color="grey", linestyle="--", linewidth=1, label="budget")
    for a in (ax, ax_hit):
        plots.budget_axis(a, budgets)
        a.tick_params(labelsize=7)
    # Up to the longest 90th percentile: past it the budget line only squashes the bands.
    top = max([r["p90"] for res in results for r in res.length] + [budgets[0] if budgets else 1])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("thinking tokens", fontsize=8)
    ax.set_title("Thinking length at each budget", fontsize=9)
    ax.legend(fontsize=7)
    ax_hit.set_ylim(-0.02, 1.02)
    ax_hit.set_ylabel("share hitting the budget", fontsize=8)
    ax_hit.set_title("Questions cut off by the budget", fontsize=9)
    if len(runs) > 1:
        ax_hit.legend(fontsize=7)
    title = plots.describe(runs[0].config) if len(runs) == 1 else ""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
