"""metrics.json, a Markdown and CSV table, and the accuracy-against-budget plot."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from m1.reporting.metrics import summarize
from m1.reporting.plots import describe, plot_accuracy

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


def write_reports(run_dir: Path, records: list[dict], cfg, load: dict | None = None) -> dict:
    """Table, CSV, metrics.json and the plot. `load`: the engine's occupancy, tokens/s and
    context evaluated while this invocation generated (kept from before when it generated nothing)."""
    rows = compute_metrics(records)
    metrics: dict = {"rows": rows, "n_records": len(records)}
    old = run_dir / "metrics.json"
    if load is None and old.exists():
        try:
            load = json.loads(old.read_text()).get("engine_load")
        except (ValueError, AttributeError):
            load = None
    if load:
        metrics["engine_load"] = load
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "table.md").write_text(markdown_table(rows))
    with open(run_dir / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    if rows:
        title = describe({"model": cfg.model, "format": cfg.format, "engine": cfg.engine})
        plot_accuracy(rows, run_dir / "accuracy_vs_budget.png", title)
    return metrics
