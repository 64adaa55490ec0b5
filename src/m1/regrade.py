"""Re-grade a finished run with another grader, from its traces alone (no engine, no model).

`m1 regrade RUN --grader m1` reads RUN's traces, grades each one's graded_text against its
options and gold again, and writes the whole report into RUN/regraded-<grader>/; the run's
own files stay as they were.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from m1.grading import GRADERS
from m1.runs import Run


def regrade(run_dir: str | Path, grader: str = "m1") -> tuple[Run, dict]:
    """(the re-graded run, how much the grader changed); writes RUN/regraded-<grader>/."""
    from m1.reporting.report import report

    old = Run.load(run_dir)
    new = old.regraded(grader)
    changed = {
        "grader": grader, "n_records": len(new.traces),
        "letters_changed": sum(a.letter != b.letter for a, b in zip(old.traces, new.traces)),
        "correct_changed": sum(a.correct != b.correct for a, b in zip(old.traces, new.traces)),
    }
    out = old.path / f"regraded-{grader}"
    report([new], out)
    (out / "changes.json").write_text(json.dumps(changed, indent=2))
    return new, changed


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("regrade", help="re-grade a finished run with another grader (no model needed)")
    p.add_argument("run", help="run folder written by `m1 eval`")
    p.add_argument("--grader", default="m1", choices=sorted(GRADERS),
                   help="m1: the official m1/HuatuoGPT-o1 scorer's rules; strict: ours")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    run, changed = regrade(args.run, args.grader)
    out = run.path / f"regraded-{args.grader}"
    print((out / "table.md").read_text(), end="")
    print(f"\n{changed['correct_changed']} of {changed['n_records']} records change correctness "
          f"under the {args.grader} grader")
    print(f"wrote the report into {out}")
    return 0
