"""Re-grade a finished run with another grader, from its traces alone (no engine, no model).

`m1 regrade RUN --grader m1` reads RUN/traces.jsonl, grades each record's graded_text
against its options and gold again, and writes RUN/metrics_<grader>.json and
RUN/table_<grader>.md next to the originals, which stay as they were.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.grading import GRADERS, get_grader
from m1.reporting.report import compute_metrics, markdown_table
from m1.runs import TRACES, read_traces

NEEDED = ("id", "source", "budget", "gold", "options", "graded_text", "correct",
          "thinking_tokens", "answer_tokens", "hit_budget")


def load_traces(run_dir: str | Path) -> list[dict]:
    """The records of a run folder, read only (see runs.read_traces)."""
    path = Path(run_dir) / TRACES
    if not path.is_file():
        raise M1Error(f"{path} not found; pass a run folder written by `m1 eval`")
    return read_traces(path, NEEDED)


def regrade_records(records: list[dict], grader: str = "m1") -> list[dict]:
    """Copies of the records with letter, outcome, rule and correct from `grader`."""
    grade = get_grader(grader)
    out = []
    for r in records:
        item = Item(id=r["id"], question="", options=r["options"], answer=r["gold"], source=r["source"])
        g = grade(r["graded_text"] or "", item)
        out.append({**r, "letter": g.letter, "outcome": g.outcome, "rule": g.rule,
                    "correct": g.outcome == "correct", "grader": grader})
    return out


def regrade(run_dir: str | Path, grader: str = "m1") -> list[dict]:
    return _regrade(Path(run_dir), grader)[0]


def _regrade(run_dir: Path, grader: str) -> tuple[list[dict], dict]:
    old = load_traces(run_dir)
    new = regrade_records(old, grader)
    rows = compute_metrics(new)
    metrics = {
        "grader": grader, "rows": rows, "n_records": len(new),
        # How much the grader matters on this run: decisions that differ from the run's own.
        "letters_changed": sum(a.get("letter") != b["letter"] for a, b in zip(old, new)),
        "correct_changed": sum(bool(a.get("correct")) != b["correct"] for a, b in zip(old, new)),
    }
    (run_dir / f"metrics_{grader}.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / f"table_{grader}.md").write_text(markdown_table(rows))
    return new, metrics


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("regrade", help="re-grade a finished run with another grader (no model needed)")
    p.add_argument("run", help="run folder written by `m1 eval`")
    p.add_argument("--grader", default="m1", choices=sorted(GRADERS),
                   help="m1: the official m1/HuatuoGPT-o1 scorer's rules; strict: ours")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    _, metrics = _regrade(run_dir, args.grader)
    print(markdown_table(metrics["rows"]), end="")
    print(f"\n{metrics['correct_changed']} of {metrics['n_records']} records change correctness "
          f"under the {args.grader} grader")
    print(f"wrote {run_dir / f'metrics_{args.grader}.json'} and {run_dir / f'table_{args.grader}.md'}")
    return 0
