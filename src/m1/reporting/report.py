"""The one report path: tables, plots, analyses and report.html for one or more runs.

`m1 eval`, `m1 report`, `m1 regrade` and `m1 compare --out` all end here, and so does a notebook:

    run = m1.Run.load("runs/medqa-...")
    rep = m1.report([run], "out/")
    rep.sections[0].figures  # matplotlib Figures

Metrics are computed from the traces, never read back from an older metrics.json, so a
report of a run that is still going counts exactly the traces it holds.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from m1.errors import M1Error
from m1.reporting import html, plots
from m1.reporting.metrics import COLUMNS, compute_metrics
from m1.reporting.sections import Analysis, Section, Table
from m1.runs import METRICS, Run, write_atomic


@dataclass
class Report:
    out: Path
    runs: list[Run]
    rows: list[dict]  # one per (run, source, budget); "run" names the run when there are several
    sections: list[Section]
    files: list[Path] = field(default_factory=list)


def report(runs: list[Run], out: str | Path, grader: str | None = None,
           analyses: list[Analysis] | None = None) -> Report:
    """Write every table, plot and section for `runs` into `out`; returns what was written.

    grader: show every run with that grader's scores: those stored (`m1 regrade`), graded now where
    none is (None keeps each run's own grader).
    analyses: which sections to compute (default: all of m1.reporting.analyses.ANALYSES)."""
    from m1.reporting.analyses import ANALYSES

    if not runs:
        raise M1Error("nothing to report: no runs given")
    if grader:
        runs = [run.regraded(grader) for run in runs]
    _unique_names(runs)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise M1Error(f"cannot create the report folder {out}: {err.strerror}") from None
    several = len(runs) > 1
    rows = [{"run": run.name, **row} if several else row for run in runs for row in compute_metrics(run.traces)]
    files = _write_table(out / "table", ["run"] + COLUMNS if several else COLUMNS, rows, _main_markdown(runs))

    figures = plots.figures(runs)
    sections = [s for s in (a(runs) for a in (ANALYSES if analyses is None else analyses)) if s is not None]
    pngs: dict[str, bytes] = {}
    for key, fig in figures.items():
        pngs[key] = plots.png_bytes(fig)
        files.append(write_atomic(out / plots.FILES[key], pngs[key]))
    section_pngs: dict[str, bytes] = {}
    for s in sections:
        for t in s.tables:
            files += _write_table(out / t.name, t.columns, t.rows, t.markdown())
        for stem, fig in s.figures.items():
            section_pngs[stem] = plots.png_bytes(fig)
            files.append(write_atomic(out / f"{stem}.png", section_pngs[stem]))
    md = [_main_markdown(runs)] + [s.markdown() for s in sections]
    files.append(write_atomic(out / "report.md", "\n".join(md)))
    if not several and out.resolve() == runs[0].path.resolve():
        files.append(_write_metrics(runs[0], rows))
    files.append(html.write_html(out / "report.html", runs, pngs, sections, section_pngs))
    return Report(out, runs, rows, sections, files)


def markdown_table(rows: list[dict]) -> str:
    head = "| source | budget | n | accuracy (95% CI) | unparsed | think tok | answer tok | hit budget |"
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['budget']} | {r['n']} | {r['accuracy']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}) "
            f"| {r['unparsed_rate']:.1%} | {r['mean_thinking_tokens']:.1f} | {r['mean_answer_tokens']:.1f} "
            f"| {r['hit_budget_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def _main_markdown(runs: list[Run]) -> str:
    if len(runs) == 1:
        return markdown_table(compute_metrics(runs[0].traces))
    return "\n".join(f"### {run.name}\n\n{plots.describe(run.config)}\n\n{markdown_table(compute_metrics(run.traces))}"
                     for run in runs)


def _unique_names(runs: list[Run]) -> None:
    """Two folders of one name (runs/a/x, runs/b/x) get their parent in the label."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name += f" #{seen[r.name]}"


def _write_table(stem: Path, columns: list[str], rows: list[dict], markdown: str) -> list[Path]:
    """<stem>.csv (every column) and <stem>.md."""
    csv_path = stem.with_name(stem.name + ".csv")
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    return [csv_path, write_atomic(stem.with_name(stem.name + ".md"), markdown)]


def _write_metrics(run: Run, rows: list[dict]) -> Path:
    """metrics.json in the run's own folder: the table's rows, the grader and the engine's load."""
    metrics: dict = {"rows": rows, "n_records": len(run.traces), "grader": run.grader}
    if run.engine_load:
        metrics["engine_load"] = run.engine_load
    return write_atomic(run.path / METRICS, json.dumps(metrics, indent=2))


__all__ = ["Report", "Table", "markdown_table", "report"]
