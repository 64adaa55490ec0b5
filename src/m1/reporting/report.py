"""metrics.json, a Markdown and CSV table, and the accuracy-against-budget plot."""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

from m1.reporting.metrics import summarize

COLUMNS = ["source", "budget", "n", "accuracy", "ci_low", "ci_high", "unparsed_rate",
           "mean_thinking_tokens", "mean_answer_tokens", "hit_budget_rate"]


def compute_metrics(records: list[dict]) -> list[dict]:
    """One row per (source, budget), sorted."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["source"], r["budget"])].append(r)
    return [{"source": s, "budget": b, **summarize(rs)} for (s, b), rs in sorted(groups.items())]


def markdown_table(rows: list[dict]) -> str:
    head = "| source | budget | n | accuracy (95% CI) | unparsed | think tok | answer tok | hit budget |"
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['budget']} | {r['n']} | {r['accuracy']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}) "
            f"| {r['unparsed_rate']:.1%} | {r['mean_thinking_tokens']:.1f} | {r['mean_answer_tokens']:.1f} "
            f"| {r['hit_budget_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    for source, rs in sorted(by_source.items()):
        x = [r["budget"] for r in rs]
        ax.plot(x, [r["accuracy"] for r in rs], marker="o", label=source)
        ax.fill_between(x, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_reports(run_dir: Path, records: list[dict], cfg) -> dict:
    rows = compute_metrics(records)
    metrics = {"rows": rows, "n_records": len(records)}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "table.md").write_text(markdown_table(rows))
    with open(run_dir / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    if rows:
        model = Path(cfg.model).name if cfg.model else "SmolLM2-135M-Instruct (embedded)"
        plot_accuracy(rows, run_dir / "accuracy_vs_budget.png", f"{model} · format {cfg.format} · {cfg.engine}")
    return metrics
