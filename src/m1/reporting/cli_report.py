"""`m1 report RUN [RUN...] [--out DIR]`: tables, plots and report.html for finished runs.

Metrics are recomputed from traces.jsonl rather than read from metrics.json, so a report
of a run that is still going (or was resumed) counts exactly the traces it holds.
"""
from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from m1.errors import M1Error
from m1.reporting import html, plots
from m1.reporting.report import COLUMNS, compute_metrics, markdown_table
from m1.runs import CONFIG, TRACES, read_config, read_traces


def add_parser(subparsers):
    p = subparsers.add_parser("report", help="tables, plots and an HTML trace viewer for one or more run folders")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by `m1 eval`")
    p.add_argument("--out", help="output folder (default: the run's folder, or reports/<timestamp> for several)")
    p.set_defaults(func=main)
    return p


def load_run(folder: str | Path) -> dict:
    """{name, config, records, rows} for one run folder; M1Error if it is not one.

    Read-only: unlike RunDir.load, a partial last line (a run still writing, or killed)
    is skipped, not truncated away, since the report must never change a run.
    """
    path = Path(folder)
    cfg_file, traces = path / CONFIG, path / TRACES
    if not path.is_dir():
        raise M1Error(f"{path} is not a folder; pass a run folder written by `m1 eval`")
    if not cfg_file.exists() or not traces.exists():
        missing = CONFIG if not cfg_file.exists() else TRACES
        raise M1Error(f"{path} is not a run folder (no {missing}); pass a folder written by `m1 eval`")
    cfg = read_config(cfg_file)
    records = read_traces(traces, ("source", "budget", "correct", "outcome", "thinking_tokens", "answer_tokens",
                                   "hit_budget"))
    return {"name": path.resolve().name, "path": path, "config": cfg, "records": records,
            "rows": compute_metrics(records)}


def _unique_names(runs: list[dict]) -> None:
    """Two folders of one name (runs/a/x, runs/b/x) get their parent in the label."""
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = f"{r['path'].resolve().parent.name}/{r['name']}"
    seen: dict[str, int] = {}
    for r in runs:
        seen[r["name"]] = seen.get(r["name"], 0) + 1
        if seen[r["name"]] > 1:
            r["name"] += f" #{seen[r['name']]}"


def write_tables(runs: list[dict], out: Path) -> None:
    """table.md and table.csv: one run as `m1 eval` writes them, several with a run column."""
    if len(runs) == 1:
        md, cols, rows = markdown_table(runs[0]["rows"]), COLUMNS, runs[0]["rows"]
    else:
        parts = []
        for r in runs:
            parts.append(f"### {r['name']}\n\n{plots.describe(r['config'])}\n\n{markdown_table(r['rows'])}")
        md = "\n".join(parts)
        cols = ["run"] + COLUMNS
        rows = [{"run": r["name"], **row} for r in runs for row in r["rows"]]
    (out / "table.md").write_text(md, encoding="utf-8")
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: row[k] for k in cols} for row in rows)


def main(args) -> int:
    runs = [load_run(p) for p in args.runs]
    _unique_names(runs)
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = runs[0]["path"]
    else:
        out = Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise M1Error(f"cannot create --out {out}: {err.strerror}") from None
    write_tables(runs, out)
    pngs = plots.figures(html.plot_runs(runs), html.plot_title(runs))
    plots.write_plots([], out, pngs=pngs)
    page = html.write_html(out / "report.html", runs, images=pngs)
    print(markdown_table(runs[0]["rows"]) if len(runs) == 1 else (out / "table.md").read_text(), end="")
    print(f"\nwrote {out / 'table.md'}, {out / 'table.csv'}, {len(pngs)} plots and {page}")
    return 0
