"""Budget forcing: does replacing the end of thinking with "Wait" (up to N times) change accuracy?

Runs that are the same evaluation apart from `forcing_rounds` (and `ignore_str`) form a
group: the same model, questions, budgets, format, sampling and seed, forced 0, 1, 2, 4...
times. Within a group each forcing level is compared, question by question at each budget,
with the baseline: the run with no forcing (forcing_rounds 0), or the smallest level when
there is none. The m1 paper (arXiv 2504.00869) reports that forcing does not raise accuracy
on medical benchmarks; these tables test that claim on your runs.

Tables (CSV columns):
  forcing_accuracy  group, forcing_rounds, ignore_str, run, source, budget, n, n_correct,
                    accuracy, ci_low, ci_high (Wilson per source; bootstrap for the "avg (macro)"
                    and "all (micro)" rows over sources), forced_share (share of questions where
                    at least one round was forced), mean_rounds_forced, mean_thinking_tokens,
                    hit_budget_rate
  forcing_paired    group, baseline_rounds, forcing_rounds, baseline_run, run, source, budget,
                    n (questions in both), acc_baseline, acc_forced, diff (forced - baseline),
                    ci_low, ci_high (paired bootstrap), both_right, right_to_wrong, wrong_to_right,
                    both_wrong, p_mcnemar (exact, two-sided, not corrected for the many tests),
                    right_to_wrong_forced / wrong_to_right_forced (those flips where the forced
                    run really forced a round: a flip without one cannot be forcing's doing)
Links: each question right at the baseline and wrong at a forcing level (at most `max_links`
per level, those where a round was really forced first).
Figure forcing_accuracy[_gN]: accuracy against budget, one line per forcing level.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Sequence

from m1.config import EvalConfig
from m1.reporting import stats
from m1.reporting.metrics import wilson_interval
from m1.reporting.plots import accuracy_panel, chance, describe, grid, questions_of
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace

MACRO, MICRO = "avg (macro)", "all (micro)"
VARYING = ("forcing_rounds", "ignore_str")

ACCURACY_COLUMNS = ["group", "forcing_rounds", "ignore_str", "run", "source", "budget", "n", "n_correct",
                    "accuracy", "ci_low", "ci_high", "forced_share", "mean_rounds_forced", "mean_thinking_tokens",
                    "hit_budget_rate"]
PAIRED_COLUMNS = ["group", "baseline_rounds", "forcing_rounds", "baseline_run", "run", "source", "budget", "n",
                  "acc_baseline", "acc_forced", "diff", "ci_low", "ci_high", "both_right", "right_to_wrong",
                  "wrong_to_right", "both_wrong", "p_mcnemar", "right_to_wrong_forced", "wrong_to_right_forced"]


@dataclasses.dataclass(frozen=True)
class Level:
    rounds: int
    ignore_str: str  # "" without forcing (the string is never used then)
    run: Run

    def label(self, show_ignore: bool) -> str:
        text = "no forcing" if self.rounds == 0 else f"{self.rounds} round{'s' if self.rounds != 1 else ''}"
        return f"{text} ({self.ignore_str!r})" if show_ignore and self.rounds else text


@dataclasses.dataclass
class Group:
    name: str  # "g1", "g2", ...
    levels: list[Level]  # by rounds, then ignore string; the baseline first
    unused: list[Run]  # duplicates of a level already taken

    @property
    def baseline(self) -> Level:
        return self.levels[0]

    @property
    def show_ignore(self) -> bool:
        return len({lv.ignore_str for lv in self.levels if lv.rounds}) > 1

    def describe(self) -> str:
        cfg = self.baseline.run.config
        what = [describe(cfg), questions_of(cfg), f"seed {cfg.get('seed')}"]
        levels = ", ".join(f"{lv.run.name} ({lv.label(self.show_ignore)})" for lv in self.levels)
        text = f"{self.name}: {' · '.join(what)}; runs {levels}"
        if self.unused:
            text += f"; not used (same forcing as a run above): {', '.join(r.name for r in self.unused)}"
        return text


def _key(config: dict[str, Any]) -> str:
    """What must match for two runs to be compared: their identity without the forcing settings."""
    return EvalConfig.comparison_key(config, VARYING)


def forcing_groups(runs: Sequence[Run]) -> list[Group]:
    """Runs that differ only in forcing: groups of at least two forcing levels, in order of first run."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.traces:
            by_key[_key(run.config)].append(run)
    groups: list[Group] = []
    for members in by_key.values():
        levels: dict[tuple[int, str], Level] = {}
        unused = []
        for run in members:
            rounds = int(run.config.get("forcing_rounds") or 0)
            ignore = str(run.config.get("ignore_str", "Wait")) if rounds else ""  # unused without forcing
            if (rounds, ignore) in levels:
                unused.append(run)
            else:
                levels[(rounds, ignore)] = Level(rounds, ignore, run)
        if len(levels) >= 2:
            ordered = [levels[k] for k in sorted(levels)]
            groups.append(Group(f"g{len(groups) + 1}", ordered, unused))
    return groups


def forcing(runs: list[Run], max_links: int = 200) -> Section | None:
    """Accuracy per forcing level and budget, and each level against no forcing, paired by question.
    None when no runs differ only in forcing rounds."""
    groups = forcing_groups(runs)
    if not groups:
        return None
    acc_rows: list[dict[str, Any]] = []
    paired_rows: list[dict[str, Any]] = []
    links: list[TraceLink] = []
    figures = {}
    notes = []
    for group in groups:
        for lv in group.levels:
            acc_rows += _accuracy_rows(group, lv)
        for lv in group.levels[1:]:
            rows, flipped = _paired(group, lv)
            paired_rows += rows
            chosen = sorted(flipped, key=lambda pair: (pair[1].rounds_forced == 0, pair[1].budget,
                                                       pair[1].source, pair[1].id))
            links += [_link(group, lv, base, forced) for base, forced in chosen[:max_links]]
            if len(chosen) > max_links:
                notes.append(f"{group.name}, {lv.label(group.show_ignore)}: {len(chosen) - max_links} more "
                             f"questions turned wrong than are linked (max_links={max_links}).")
        name = "forcing_accuracy" if len(groups) == 1 else f"forcing_accuracy_{group.name}"
        figures[name] = _figure(group)
    text = "\n\n".join([
        "Budget forcing suppresses the end of thinking and appends the ignore string (\"Wait\") instead, up to "
        "forcing_rounds times per question, so the model thinks longer within the same budget. The m1 paper "
        "(arXiv 2504.00869) reports that this does not improve accuracy on medical benchmarks. Here runs that "
        "differ only in forcing are compared with the unforced run, question by question at each budget.",
        "\n".join(g.describe() for g in groups),
        "forcing_accuracy: accuracy at each budget and forcing level (95% interval); forced_share is the share "
        "of questions where at least one round was really forced (the model must end its thinking before the "
        "budget for forcing to happen). forcing_paired: right_to_wrong counts questions right without forcing "
        "and wrong with it, wrong_to_right the reverse; diff is the paired accuracy difference (forced minus "
        "baseline) with a paired bootstrap 95% interval, p_mcnemar McNemar's exact test on the flips, one test "
        "per row and not corrected for multiplicity. A flip where no round was forced (right_to_wrong minus "
        "right_to_wrong_forced) comes from run-to-run nondeterminism, not from forcing.",
        "The linked questions are those forcing turned wrong; open them to read where the extra thinking went.",
        *notes,
    ])
    tables = [
        Table("forcing_accuracy", ACCURACY_COLUMNS, acc_rows, "Accuracy per forcing level and budget"),
        Table("forcing_paired", PAIRED_COLUMNS, paired_rows,
              "Each forcing level against the baseline, paired by question"),
    ]
    return Section("forcing", "Budget forcing", text, tables, figures, links)


# ---- tables ----

def _accuracy_rows(group: Group, lv: Level) -> list[dict[str, Any]]:
    traces = lv.run.traces
    by_cell: dict[tuple[str, int], list[Trace]] = defaultdict(list)
    for t in traces:
        by_cell[(t.source, t.budget)].append(t)
    head = {"group": group.name, "forcing_rounds": lv.rounds, "ignore_str": lv.ignore_str, "run": lv.run.name}
    rows = []
    for a in stats.accuracy_table(traces):
        rows.append({**head, "source": a.source, "budget": a.budget, "n": a.n, "n_correct": a.n_correct,
                     "accuracy": a.accuracy, "ci_low": a.ci_low, "ci_high": a.ci_high,
                     **_usage(by_cell[(a.source, a.budget)])})
    if len({t.source for t in traces}) > 1:
        for av in stats.averages(traces):
            at_budget = [t for t in traces if t.budget == av.budget]
            usage = _usage(at_budget)
            rows.append({**head, "source": MACRO, "budget": av.budget, "n": av.n, "accuracy": av.macro.value,
                         "ci_low": av.macro.ci_low, "ci_high": av.macro.ci_high, **usage})
            rows.append({**head, "source": MICRO, "budget": av.budget, "n": av.n,
                         "n_correct": sum(t.correct for t in at_budget), "accuracy": av.micro.value,
                         "ci_low": av.micro.ci_low, "ci_high": av.micro.ci_high, **usage})
    return rows


def _usage(traces: list[Trace]) -> dict[str, float]:
    n = len(traces)
    return {"forced_share": sum(t.rounds_forced > 0 for t in traces) / n,
            "mean_rounds_forced": sum(t.rounds_forced for t in traces) / n,
            "mean_thinking_tokens": sum(t.thinking_tokens for t in traces) / n,
            "hit_budget_rate": sum(t.hit_budget for t in traces) / n}


def _paired(group: Group, lv: Level) -> tuple[list[dict[str, Any]], list[tuple[Trace, Trace]]]:
    """Rows of `lv` against the baseline, per budget (per source, and averaged over sources), and
    the (baseline, forced) trace pairs that went from right to wrong."""
    base = {t.key: t for t in group.baseline.run.traces}
    pairs: dict[int, dict[str, list[tuple[Trace, Trace]]]] = defaultdict(lambda: defaultdict(list))
    for t in sorted(lv.run.traces, key=lambda t: t.key):
        match = base.get(t.key)
        if match is not None:
            pairs[t.budget][t.source].append((match, t))
    head = {"group": group.name, "baseline_rounds": group.baseline.rounds, "forcing_rounds": lv.rounds,
            "baseline_run": group.baseline.run.name, "run": lv.run.name}
    rows: list[dict[str, Any]] = []
    flipped = []
    for budget in sorted(pairs):
        by_source = pairs[budget]
        groups = {s: ([x.correct for x, _ in ps], [y.correct for _, y in ps]) for s, ps in sorted(by_source.items())}
        for source, (right_a, right_b) in groups.items():
            rows.append({**head, "source": source, "budget": budget,
                         **_paired_cells(stats.paired_compare(right_a, right_b), by_source[source])})
        if len(groups) > 1:
            macro, micro = stats.paired_pooled(groups)
            every = [p for ps in by_source.values() for p in ps]
            rows.append({**head, "source": MACRO, "budget": budget, **_paired_cells(macro, every)})
            rows.append({**head, "source": MICRO, "budget": budget, **_paired_cells(micro, every)})
        flipped += [(b, t) for ps in by_source.values() for b, t in ps if b.correct and not t.correct]
    return rows, flipped


def _paired_cells(p: stats.Paired, pairs: list[tuple[Trace, Trace]]) -> dict[str, Any]:
    f = p.flips
    return {"n": p.n, "acc_baseline": p.acc_a, "acc_forced": p.acc_b, "diff": p.diff, "ci_low": p.ci_low,
            "ci_high": p.ci_high, "both_right": f.both_right, "right_to_wrong": f.right_to_wrong,
            "wrong_to_right": f.wrong_to_right, "both_wrong": f.both_wrong, "p_mcnemar": p.p_value,
            "right_to_wrong_forced": sum(b.correct and not t.correct and t.rounds_forced > 0 for b, t in pairs),
            "wrong_to_right_forced": sum(t.correct and not b.correct and t.rounds_forced > 0 for b, t in pairs)}


def _rounds(n: int) -> str:
    return f"{n} forced round{'s' if n != 1 else ''}"


def _link(group: Group, lv: Level, base: Trace, forced: Trace) -> TraceLink:
    before = "without forcing" if group.baseline.rounds == 0 else f"with {_rounds(base.rounds_forced)}"
    letter = forced.letter or "no letter read"
    if forced.rounds_forced:
        why = f"right {before} ({base.letter}), wrong after {_rounds(forced.rounds_forced)} ({letter})"
    else:
        why = (f"right {before} ({base.letter}), wrong in the run forcing up to {lv.rounds} rounds ({letter}) "
               "though no round was forced: the model did not end its thinking before the budget, so the flip "
               "is nondeterminism, not forcing")
    return TraceLink(lv.run.name, forced.source, forced.id, forced.budget, why)


# ---- figure ----

def _figure(group: Group):
    sources = sorted({t.source for lv in group.levels for t in lv.run.traces})
    panels = sources + ([MICRO] if len(sources) > 1 else [])
    fig, axes = grid(len(panels))
    for ax, panel in zip(axes, panels):
        budgets: list[int] = []
        for lv in group.levels:
            traces = [t for t in lv.run.traces if panel == MICRO or t.source == panel]
            cells: dict[int, list[bool]] = defaultdict(list)
            for t in traces:
                cells[t.budget].append(t.correct)
            x = sorted(cells)
            if not x:
                continue
            budgets += x
            acc = [sum(cells[b]) / len(cells[b]) for b in x]
            ci = [wilson_interval(sum(cells[b]), len(cells[b])) for b in x]
            line, = ax.plot(x, acc, marker="" if len(x) > 12 else "o", label=lv.label(group.show_ignore))
            ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], alpha=0.12, color=line.get_color())
        traces = [t for lv in group.levels for t in lv.run.traces if panel == MICRO or t.source == panel]
        accuracy_panel(ax, budgets, panel, chance(traces))
    fig.suptitle(f"Accuracy by forcing rounds · {group.name}: {describe(group.baseline.run.config)}", fontsize=9)
    fig.tight_layout()
    return fig
