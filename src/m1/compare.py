"""Is B really better than A? Paired comparison on the same questions.

Two runs (`m1 compare RUN_A RUN_B`): each (source, id, budget) answered by both is a pair,
compared budget by budget. One run (`m1 compare RUN --budgets 256,1024`): the same question
at consecutive budgets of the list is a pair (256 -> 1024; with 256,1024,4096 also
1024 -> 4096). Per source and budget, and for the macro ("Avg") and micro averages: both
accuracies, the difference B - A with a paired-bootstrap 95% interval, McNemar's exact
p-value and the flip table. A p-value is per row; with many rows, expect some small ones by chance.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from m1.config import budgets_arg
from m1.errors import M1Error
from m1.grading import GRADERS
from m1.reporting.stats import N_BOOT, Paired, paired_pooled
from m1.runs import Run, Trace

MACRO, MICRO = "avg (macro)", "all (micro)"


def compare_runs(run_a: str | Path | Run, run_b: str | Path | Run | None = None, budgets: list[int] | None = None,
                 grader: str | None = None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Rows of paired comparisons (see the module doc); grader re-grades both sides first
    (None keeps each run's own grades)."""
    if n_boot < 1:
        raise M1Error(f"--n-boot must be at least 1, got {n_boot}")
    a = _load(run_a, grader)
    recs_a = a.traces
    if run_b is None:
        have = a.budgets
        budgets = sorted(budgets) if budgets else have
        if len(budgets) < 2:
            raise M1Error(f"{a.path} has budgets {have}; comparing within one run needs two of them "
                          "(--budgets 256,1024)")
        lost = [b for b in budgets if b not in have]
        if lost:
            raise M1Error(f"{a.path} has no records at budget {lost[0]}; it has {have}")
        steps = list(zip(budgets, budgets[1:]))
        pairs = {step: _pair(recs_a, recs_a, step) for step in steps}
        label_b, differs = str(a.path), []
    else:
        b = _load(run_b, grader)
        recs_b = b.traces
        common = sorted(set(a.budgets) & set(b.budgets))
        if budgets:
            lost = [b for b in budgets if b not in common]
            if lost:
                raise M1Error(f"budget {lost[0]} is not in both runs; they share {common}")
            common = sorted(set(budgets))
        if not common:
            raise M1Error(f"{a.path} and {b.path} share no budget")
        pairs = {(b, b): _pair(recs_a, recs_b, (b, b)) for b in common}
        label_b, differs = str(b.path), _config_diff(a.config, b.config)

    rows = []
    for (ba, bb), groups in pairs.items():
        if not groups:
            raise M1Error(f"no question was answered by both sides at budgets {ba} and {bb}; "
                          "are these runs of the same benchmark sample?")
        for source, ab in groups.items():
            rows.append(_row(source, ba, bb, paired_pooled({source: ab}, n_boot, seed)[1]))
        macro, micro = paired_pooled(groups, n_boot, seed)
        rows += [_row(MACRO, ba, bb, macro), _row(MICRO, ba, bb, micro)]
    return {"a": str(a.path), "b": label_b, "mode": "budgets" if run_b is None else "runs",
            "grader": grader, "n_boot": n_boot, "seed": seed, "config_differs": differs, "rows": rows}


def _load(run: str | Path | Run, grader: str | None) -> Run:
    run = run if isinstance(run, Run) else Run.load(run)
    return run.regraded(grader) if grader else run


def _pair(recs_a: list[Trace], recs_b: list[Trace], budgets: tuple[int, int]) -> dict[str, tuple[list, list]]:
    """source -> (correct in A, correct in B) over the questions both answered, in one order."""
    at_b = {(r.source, r.id): r for r in recs_b if r.budget == budgets[1]}
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in sorted((r for r in recs_a if r.budget == budgets[0]), key=lambda r: (r.source, r.id)):
        other = at_b.get((r.source, r.id))
        if other is None:
            continue
        if other.gold != r.gold or other.options != r.options:
            raise M1Error(f"question {r.source}/{r.id} differs between the two runs (gold or options); "
                          "they are not the same benchmark version")
        groups[r.source][0].append(r.correct)
        groups[r.source][1].append(other.correct)
    return dict(sorted(groups.items()))


def _row(source: str, budget_a: int, budget_b: int, p: Paired) -> dict:
    return {"source": source, "budget_a": budget_a, "budget_b": budget_b, "n": p.n,
            "acc_a": p.acc_a, "acc_b": p.acc_b, "diff": p.diff, "ci_low": p.ci_low, "ci_high": p.ci_high,
            "p_value": p.p_value, **vars(p.flips)}


def _config_diff(a: dict, b: dict) -> list[str]:
    """'key: A vs B' for each config field that differs, so the table says what was compared."""
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def format_comparison(result: dict) -> str:
    lines = [f"A: {result['a']}", f"B: {result['b']}"]
    if result["config_differs"]:
        lines.append("config differs in: " + "; ".join(result["config_differs"]))
    if result["grader"]:
        lines.append(f"both re-graded with the {result['grader']} grader")
    lines += ["", "| source | budget | n | acc A | acc B | B − A (95% CI) | McNemar p | right→wrong | wrong→right "
                  "| both right | both wrong |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        budget = str(r["budget_a"]) if r["budget_a"] == r["budget_b"] else f"{r['budget_a']}→{r['budget_b']}"
        name = f"**{r['source']}**" if r["source"] in (MACRO, MICRO) else r["source"]
        lines.append(
            f"| {name} | {budget} | {r['n']} | {r['acc_a']:.3f} | {r['acc_b']:.3f} "
            f"| {r['diff']:+.3f} ({r['ci_low']:+.3f}, {r['ci_high']:+.3f}) | {_p(r['p_value'])} "
            f"| {r['right_to_wrong']} | {r['wrong_to_right']} | {r['both_right']} | {r['both_wrong']} |")
    lines += ["", f"Paired bootstrap: {result['n_boot']} resamples of questions within each source (seed "
                  f"{result['seed']}). McNemar: exact two-sided test on the flips; the average rows pool "
                  "the flips of all sources."]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "nan" if math.isnan(p) else f"{p:.3g}" if p >= 1e-4 else "<1e-4"


def _budget_list(text: str) -> list[int]:
    return list(budgets_arg(text))  # the --budgets syntax of m1 eval, ranges included


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="paired comparison of two runs, or of budgets within one run")
    p.add_argument("run_a", help="run folder (A, the baseline)")
    p.add_argument("run_b", nargs="?", help="second run folder (B); omit to compare budgets within run A")
    p.add_argument("--budgets", type=_budget_list,
                   help="e.g. 256,1024: budgets to compare (one run: consecutive pairs)")
    p.add_argument("--grader", choices=sorted(GRADERS), help="re-grade both sides with this grader first")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of Markdown")
    p.add_argument("--out", help="also write the full report of both runs (every section) into this folder")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    result = compare_runs(args.run_a, args.run_b, args.budgets, args.grader, args.n_boot, args.seed)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result), end="")
    if args.out:
        from m1.reporting.report import report

        runs = [Run.load(p) for p in (args.run_a, args.run_b) if p]
        report(runs, args.out, grader=args.grader)
        Path(args.out, "comparison.md").write_text(format_comparison(result), encoding="utf-8")
        print(f"\nwrote the report of {len(runs)} run(s) and comparison.md into {args.out}")
    return 0
