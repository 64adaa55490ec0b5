"""Seed-to-seed variation: runs that differ only in their seed, pooled.

Two runs are replicates when their configs agree on everything that decides what is generated
(m1.config.EvalConfig.identity: scheduling options such as n_slots, concurrency or base_url do
not count) except the seed, and their traces were graded by the same grader. Each group of
replicates gets, per budget and benchmark, the mean of the per-seed accuracies, their min-max
and a t interval of the mean (stats.seeds_table).

    from m1.reporting.analyses.seeds import seeds
    section = seeds(runs)  # None when no two runs differ only in seed
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m1.config import EvalConfig
from m1.reporting import plots, stats
from m1.reporting.sections import Section, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from m1.runs import Run

MACRO = "avg (macro)"  # the row names stats.seeds_table gives its averages
MICRO = "all (micro)"


def replica_key(run: Run) -> dict[str, Any]:
    """What must be equal for two runs to be seeds of one config: the config's identity without
    the seed, plus the grader of the traces (a regraded run counts other answers as right)."""
    key = {k: v for k, v in EvalConfig.identity(run.config).items() if k != "seed"}
    key["grader"] = run.grader
    return key


@dataclass
class SeedGroup:
    runs: list[Run]  # one per seed, by seed
    key: dict[str, Any]
    label: str = ""
    left_out: list[tuple[Run, Run]] = field(default_factory=list)  # (run, the kept run with its seed)

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get("seed") for r in self.runs]

    @property
    def same_questions(self) -> bool:
        ids = [{(t.source, t.id) for t in r.traces} for r in self.runs]
        return all(i == ids[0] for i in ids)


def seed_groups(runs: list[Run]) -> list[SeedGroup]:
    """Groups of two or more runs (with traces) that differ only in seed, in the order their first
    run was given. A run with the same seed as one already in its group repeats it, not a new seed:
    it is left out (and listed in `left_out`)."""
    by_key: dict[str, SeedGroup] = {}
    for run in runs:
        if not run.traces:
            continue
        key = replica_key(run)
        group = by_key.setdefault(json.dumps(key, sort_keys=True, default=str), SeedGroup([], key))
        twin = next((r for r in group.runs if r.config.get("seed") == run.config.get("seed")), None)
        if twin is None:
            group.runs.append(run)
        else:
            group.left_out.append((run, twin))
    groups = [g for g in by_key.values() if len(g.runs) > 1]
    for g in groups:
        g.runs.sort(key=lambda r: (str(type(r.config.get("seed"))), r.config.get("seed")))
    _label(groups)
    return groups


def _label(groups: list[SeedGroup]) -> None:
    """Model, format and engine; with several groups, plus whatever else tells them apart (the
    model's full name too when two models share a file name)."""
    differ = sorted({k for g in groups for h in groups for k in set(g.key) | set(h.key)
                     if g.key.get(k) != h.key.get(k)})
    for shown in ({"model", "format", "engine"}, set()):
        for g in groups:
            extra = ", ".join(f"{k}={_short(g.key.get(k))}" for k in differ if k not in shown)
            g.label = plots.describe(g.runs[0].config) + (f" ({extra})" if extra else "")
        if len({g.label for g in groups}) == len(groups):
            return


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


COLUMNS = ["source", "budget", "n_seeds", "mean", "std", "min", "max", "ci_low", "ci_high"]
RUN_COLUMNS = ["run", "seed", "questions"]


def seeds(runs: list[Run]) -> Section | None:
    """Mean and spread over seeds for each group of runs that differ only in seed; None when
    no two runs do."""
    groups = seed_groups(runs)
    if not groups:
        return None
    several = len(groups) > 1

    def tag(g: SeedGroup, row: dict[str, Any]) -> dict[str, Any]:
        return {"group": g.label, **row} if several else row

    summary = [(g, stats.seeds_table([r.traces for r in g.runs])) for g in groups]
    rows = [tag(g, r) for g, table in summary for r in table]
    run_rows = [tag(g, {"run": r.name, "seed": r.config.get("seed"),
                        "questions": len({(t.source, t.id) for t in r.traces})}) for g in groups for r in g.runs]
    prefix = ["group"] if several else []
    tables = [
        Table("seeds_accuracy", prefix + COLUMNS, rows,
              "Per budget and benchmark, over the seeds: mean, sample standard deviation, min and max of the "
              f"per-seed accuracies and a 95% t interval of the mean; '{MACRO}' is the paper's Avg (unweighted "
              f"mean over benchmarks) and '{MICRO}' the pooled accuracy, each computed per seed first."),
        Table("seeds_runs", prefix + RUN_COLUMNS, run_rows, "The runs pooled, one per seed."),
    ]
    return Section("seeds", "Variation across seeds", _text(groups, several), tables,
                   {"seeds_accuracy": seeds_figure(summary)})


def _text(groups: list[SeedGroup], several: bool) -> str:
    paras = []
    for g in groups:
        who = f"{g.label}: " if several else ""
        seeds_ = ", ".join(str(s) for s in g.seeds)
        para = f"{who}{len(g.runs)} runs differ only in seed ({seeds_}) and are pooled."
        if not g.same_questions:
            para += (" Their questions differ: with --limit, each seed also samples its own questions, so the "
                     "spread across seeds includes which questions were asked, not only the model's sampling.")
        elif g.key.get("temperature") == 0:
            para += (" They answer the same questions at temperature 0 (greedy decoding), so the seed changes "
                     "nothing but numerical noise: expect almost no spread.")
        if g.left_out:
            para += " Left out, as repeats of a seed already pooled: " + ", ".join(
                f"{r.name} (seed {r.config.get('seed')}, as {twin.name})" for r, twin in g.left_out) + "."
        paras.append(para)
    paras += [
        "How to read it: the solid line is the mean of the per-seed accuracies, the dashed lines their min and "
        "max, the band a 95% t interval of the mean. With few seeds the t interval is wide (its quantile is 12.7 "
        "for 2 seeds, 4.3 for 3, 2.8 for 5), and that width is honest: a normal interval would be too narrow.",
        "Only (benchmark, budget) cells present in every seed's run are pooled. The per-run intervals elsewhere "
        "in this report cover the sampling of questions; the spread here adds what changes from seed to seed.",
    ]
    return "\n\n".join(paras)


def seeds_figure(summary: list[tuple[SeedGroup, list[dict[str, Any]]]]) -> Figure:
    """Mean accuracy over seeds against log2 budget: a panel per benchmark (and the macro Avg when
    there are several); per group a solid line for the mean, dashed lines for the min and max, and
    the t interval as a band (with few seeds it is often wider than min-max)."""
    sources = sorted({r["source"] for _, rows in summary for r in rows} - {MACRO, MICRO})
    panels = sources + ([MACRO] if len(sources) > 1 else [])
    several = len(summary) > 1
    fig, axes = plots.grid(max(len(panels), 1))
    for ax, panel in zip(axes, panels):
        budgets: list[int] = []
        for g, table in summary:
            rows = [r for r in table if r["source"] == panel]
            if not rows:
                continue
            x = [r["budget"] for r in rows]
            budgets += x
            line, = ax.plot(x, [r["mean"] for r in rows], marker="" if len(x) > 12 else "o", markersize=3,
                            label=g.label if several else f"mean of {len(g.runs)} seeds")
            color = line.get_color()
            for k in ("min", "max"):
                ax.plot(x, [r[k] for r in rows], color=color, linestyle="--", linewidth=0.8,
                        label="min-max" if k == "min" and not several else None)
            ax.fill_between(x, [_or(r["ci_low"], r["mean"]) for r in rows],
                            [_or(r["ci_high"], r["mean"]) for r in rows], alpha=0.2, color=color, linewidth=0,
                            label=None if several else "95% t interval")
        plots.accuracy_panel(ax, budgets, "Avg (macro, unweighted over benchmarks)" if panel == MACRO else panel,
                             ylabel="accuracy over seeds")
    if not several:
        fig.suptitle(summary[0][0].label, fontsize=9)
    fig.tight_layout()
    return fig


def _or(x: float, default: float) -> float:
    return default if math.isnan(x) else max(0.0, min(1.0, x))

