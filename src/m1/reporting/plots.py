"""Plots of one or more runs: accuracy, thinking length and budget hits against budget.

Every function takes a list of runs and returns a matplotlib Figure, so several runs overlay
on the same axes and a notebook can show or restyle them; the report saves them as PNG
(`png_bytes`, then runs.write_atomic). Runs are labelled by name only when there are several.

Figures are plain `matplotlib.figure.Figure` objects (`grid`), never pyplot's: no global figure
list, no backend to choose, nothing to close; a figure is freed when the last reference goes.
"""
from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from m1.reporting.metrics import compute_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from m1.runs import Run, Trace

FILES = {
    "accuracy": "accuracy_vs_budget.png",
    "thinking_hist": "thinking_tokens_hist.png",
    "hit_budget": "hit_budget_rate.png",
}
TITLES = {
    "accuracy": "Accuracy against thinking budget",
    "thinking_hist": "Thinking length at each budget",
    "hit_budget": "Share of questions hitting the budget",
}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (drawn by matplotlib's Agg renderer, whatever backend pyplot would use)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def colours() -> list[str]:
    """The colours of matplotlib's property cycle (rcParams), in order: a line's colour per run."""
    import matplotlib

    return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])


def grid(n: int, width: float = 4.2, height: float = 3.2):
    """A figure with n panels, at most 3 a row: (fig, axes)."""
    from matplotlib.figure import Figure

    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * nrows), dpi=110)
    axes = fig.subplots(nrows, cols, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def budget_axis(ax, budgets) -> None:
    """A log2 budget axis ticked at the budgets that were run (linear ticks thinned when dense);
    with budget 0 (answer at once) in the run, linear from 0 to the smallest other budget."""
    ticks = sorted(set(budgets))
    if ticks and ticks[0] == 0:
        ax.set_xscale("symlog", base=2, linthresh=ticks[1] if len(ticks) > 1 else 1, linscale=0.5)
    else:
        ax.set_xscale("log", base=2)
    if len(ticks) > 12:  # a dense sweep (32:2048:32): label powers of two only
        ticks = [b for b in ticks if b & (b - 1) == 0] or ticks[:: max(1, len(ticks) // 8)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(b) for b in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("thinking budget (tokens)")
    ax.grid(alpha=0.3)


def accuracy_panel(ax, budgets, title: str, chance_level: float = math.nan,
                   ylabel: str = "accuracy (95% Wilson interval)") -> None:
    """The frame every accuracy-against-budget panel shares: the chance level as a dotted line
    (when known), the budget axis, accuracy from 0 to 1, title and legend."""
    if not math.isnan(chance_level):
        ax.axhline(chance_level, color="grey", linestyle=":", linewidth=1, label=f"chance ({chance_level:.2f})")
    budget_axis(ax, budgets)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def chance(traces: list[Trace]) -> float:
    """Accuracy of guessing uniformly: the mean of 1 / number of options (nan without options)."""
    ks = [len(t.options) for t in traces if t.options]
    return sum(1 / k for k in ks) / len(ks) if ks else math.nan


def run_label(run: Run, runs: list[Run]) -> str:
    return "" if len(runs) == 1 else run.name


def title_of(runs: list[Run]) -> str:
    return describe(runs[0].config) if len(runs) == 1 else ""


def accuracy_figure(runs: list[Run], title: str | None = None) -> Figure:
    """Accuracy against log2 budget, one panel per benchmark, one line per run, with
    the 95% Wilson interval as a band (small slices make the band the honest part) and
    the chance level as a dotted line."""
    title = title_of(runs) if title is None else title
    sources = sorted({t.source for run in runs for t in run.traces})
    fig, axes = grid(max(len(sources), 1))
    for ax, source in zip(axes, sources):
        budgets = []
        for run in runs:
            rs = [r for r in compute_metrics(run.traces) if r["source"] == source]
            if not rs:
                continue
            x = [r["budget"] for r in rs]
            budgets += x
            dense = len(x) > 12
            line, = ax.plot(x, [r["accuracy"] for r in rs], marker="" if dense else "o",
                            label=run_label(run, runs) or source)
            ax.fill_between(x, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs],
                            alpha=0.2, color=line.get_color())
        accuracy_panel(ax, budgets, source, chance([t for run in runs for t in run.traces if t.source == source]))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def thinking_figure(runs: list[Run], title: str | None = None) -> Figure:
    """Histogram of thinking tokens, one panel per budget, runs overlaid as outlines;
    the dashed line is the budget, so a pile-up there means the budget cut thinking.
    A dense sweep shows at most 9 budgets, spread over its range."""
    title = title_of(runs) if title is None else title
    budgets = sorted({t.budget for run in runs for t in run.traces})
    if len(budgets) > 9:
        budgets = [budgets[round(i * (len(budgets) - 1) / 8)] for i in range(9)]
    fig, axes = grid(max(len(budgets), 1), width=3.6, height=2.8)
    for ax, budget in zip(axes, budgets):
        per_run = [(run_label(run, runs), [t.thinking_tokens for t in run.traces if t.budget == budget])
                   for run in runs]
        top = max([budget] + [max(v) for _, v in per_run if v])
        bins = [top * i / 30 for i in range(31)]
        for label, values in per_run:
            if values:
                ax.hist(values, bins=bins, histtype="step", linewidth=1.4, label=label or None)
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"budget {budget}", fontsize=9)
        ax.set_xlabel("thinking tokens", fontsize=8)
        ax.set_ylabel("questions", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax is axes[0] and any(name for name, _ in per_run):
            ax.legend(fontsize=7)  # once: the runs are the same in every panel
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def hit_budget_figure(runs: list[Run], title: str | None = None) -> Figure:
    """Share of questions whose thinking the budget cut off, against log2 budget:
    where it falls to 0 a bigger budget buys nothing more for that run."""
    title = title_of(runs) if title is None else title
    fig, axes = grid(1, width=6, height=4)
    ax = axes[0]
    budgets = []
    for run in runs:
        groups = defaultdict(list)
        for t in run.traces:
            groups[(t.source, t.budget)].append(t.hit_budget)
        for source in sorted({s for s, _ in groups}):
            x = sorted(b for s, b in groups if s == source)
            y = [sum(groups[(source, b)]) / len(groups[(source, b)]) for b in x]
            budgets += x
            ax.plot(x, y, marker="" if len(x) > 12 else "o",
                    label=" · ".join(p for p in (run_label(run, runs), source) if p))
    budget_axis(ax, budgets)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of questions hitting the budget", fontsize=8)
    if budgets:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def describe(config: dict) -> str:
    """A one-line title for a run's plots: model, format, engine."""
    model = config.get("model")
    model = Path(model).name if model else "SmolLM2-135M-Instruct (embedded)"
    return f"{model} · format {config.get('format')} · {config.get('engine')}"


def questions_of(config: dict) -> str:
    """Where a run's questions came from, in words: "benchmark medqa", "suite m1" or "file x.csv"."""
    if config.get("data"):
        return f"file {Path(config['data']).name}"
    return f"suite {config['suite']}" if config.get("suite") else f"benchmark {config.get('benchmark')}"


def figures(runs: list[Run]) -> dict[str, Figure]:
    """The basic plots, keyed like FILES; empty when there is nothing to plot."""
    if not any(run.traces for run in runs):
        return {}
    return {"accuracy": accuracy_figure(runs), "thinking_hist": thinking_figure(runs),
            "hit_budget": hit_budget_figure(runs)}
