"""PNG plots of one or more runs: accuracy, thinking length and budget hits against budget.

Every function takes `runs`, a list of (label, records, rows) triples, so several runs
overlay on the same axes; label may be "" for a lone run (no legend entry needed).
`figures` renders PNG bytes (the HTML report embeds them); `write_plots` saves files.
"""
from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from pathlib import Path

FILES = {
    "accuracy": "accuracy_vs_budget.png",
    "thinking_hist": "thinking_tokens_hist.png",
    "hit_budget": "hit_budget_rate.png",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def _save(data: bytes, path: Path) -> None:
    # Write then rename, so a reader never sees half a PNG.
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    """n panels, at most 3 a row."""
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = _plt().subplots(nrows, cols, figsize=(width * cols, height * nrows), dpi=110,
                                squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _log2_budget_axis(ax, budgets) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(budgets))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(b) for b in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("thinking budget (tokens)")
    ax.grid(alpha=0.3)


def accuracy_png(runs, title: str = "") -> bytes:
    """Accuracy against log2 budget, one panel per benchmark, one line per run, with
    the 95% Wilson interval as a band (small slices make the band the honest part)."""
    sources = sorted({r["source"] for _, _, rows in runs for r in rows})
    fig, axes = _grid(max(len(sources), 1))
    for ax, source in zip(axes, sources):
        budgets = []
        for label, _, rows in runs:
            rs = sorted((r for r in rows if r["source"] == source), key=lambda r: r["budget"])
            if not rs:
                continue
            x = [r["budget"] for r in rs]
            budgets += x
            line, = ax.plot(x, [r["accuracy"] for r in rs], marker="o", label=label or source)
            ax.fill_between(x, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs],
                            alpha=0.2, color=line.get_color())
        _log2_budget_axis(ax, budgets)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (95% Wilson interval)", fontsize=8)
        ax.set_title(source, fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def thinking_hist_png(runs, title: str = "") -> bytes:
    """Histogram of thinking tokens, one panel per budget, runs overlaid as outlines;
    the dashed line is the budget, so a pile-up there means the budget cut thinking."""
    budgets = sorted({rec["budget"] for _, records, _ in runs for rec in records})
    fig, axes = _grid(max(len(budgets), 1), width=3.6, height=2.8)
    for ax, budget in zip(axes, budgets):
        per_run = [(label, [rec["thinking_tokens"] for rec in records if rec["budget"] == budget])
                   for label, records, _ in runs]
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
        if ax is axes[0] and any(label for label, _ in per_run):
            ax.legend(fontsize=7)  # once: the runs are the same in every panel
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def hit_budget_png(runs, title: str = "") -> bytes:
    """Share of questions whose thinking the budget cut off, against log2 budget:
    where it falls to 0 a bigger budget buys nothing more for that run."""
    fig, axes = _grid(1, width=6, height=4)
    ax = axes[0]
    budgets = []
    for label, records, _ in runs:
        groups = defaultdict(list)
        for rec in records:
            groups[(rec["source"], rec["budget"])].append(bool(rec["hit_budget"]))
        for source in sorted({s for s, _ in groups}):
            x = sorted(b for s, b in groups if s == source)
            y = [sum(groups[(source, b)]) / len(groups[(source, b)]) for b in x]
            budgets += x
            ax.plot(x, y, marker="o", label=" · ".join(p for p in (label, source) if p))
    _log2_budget_axis(ax, budgets)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of questions hitting the budget", fontsize=8)
    if budgets:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def describe(config: dict) -> str:
    """A one-line title for a run's plots: model, format, engine."""
    model = config.get("model")
    model = Path(model).name if model else "SmolLM2-135M-Instruct (embedded)"
    return f"{model} · format {config.get('format')} · {config.get('engine')}"


def figures(runs, title: str = "") -> dict[str, bytes]:
    """All plots as PNG bytes, keyed like FILES; empty when there is nothing to plot."""
    if not any(records for _, records, _ in runs):
        return {}
    return {
        "accuracy": accuracy_png(runs, title),
        "thinking_hist": thinking_hist_png(runs, title),
        "hit_budget": hit_budget_png(runs, title),
    }


def write_plots(runs, out_dir: Path, title: str = "", pngs: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Save the plots into out_dir; returns {key: path}. Pass pngs to reuse rendered ones."""
    pngs = figures(runs, title) if pngs is None else pngs
    paths = {}
    for key, data in pngs.items():
        paths[key] = Path(out_dir) / FILES[key]
        _save(data, paths[key])
    return paths


def plot_accuracy(rows: list[dict], path: Path, title: str) -> None:
    """The single-run accuracy plot that `m1 eval` writes (report.write_reports)."""
    _save(accuracy_png([("", [], rows)], title), Path(path))
