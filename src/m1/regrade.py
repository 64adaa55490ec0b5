"""Re-grade a finished run with another grader, from its traces alone (no engine, no model).

`m1 regrade RUN --grader m1` reads RUN's traces, grades each one's graded_text against its
options and gold with that grader, appends the scores to RUN/scores.jsonl beside the traces
(one line per trace and grader; a score already there is not graded or written again) and
writes the whole report, with that grader's scores, into RUN/regraded-<grader>/. The run's
traces.jsonl, config and report stay as they were.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from m1.grading import GRADERS
from m1.runs import SCORES, Run, add_scores


def regrade(run_dir: str | Path, grader: str = "m1") -> tuple[Run, dict]:
    """(the run with `grader` active, how much the grader changed); adds the grader's scores to
    RUN/scores.jsonl and writes RUN/regraded-<grader>/."""
    new, changed, _ = _regrade(run_dir, grader)
    return new, changed


def _regrade(run_dir: str | Path, grader: str) -> tuple[Run, dict, int]:
    """regrade's, with how many scores were added to scores.jsonl (0 when all were there)."""
    from m1.reporting.report import report

    old = Run.load(run_dir)
    new = old.scored_by(grader)
    added = add_scores(new, grader)
    changed = {
        "grader": grader, "n_records": len(new.traces),
        "letters_changed": sum(a.letter != b.letter for a, b in zip(old.traces, new.traces)),
        "correct_changed": sum(a.correct != b.correct for a, b in zip(old.traces, new.traces)),
    }
    out = old.path / f"regraded-{grader}"
    report([new], out)
    (out / "changes.json").write_text(json.dumps(changed, indent=2))
    return new, changed, added


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("regrade", help="re-grade a finished run with another grader (no model needed)")
    p.add_argument("run", help="run folder written by `m1 eval`")
    p.add_argument("--grader", default="m1", choices=sorted(GRADERS),
                   help="m1: the official m1/HuatuoGPT-o1 scorer's rules; strict: ours")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    run, changed, added = _regrade(args.run, args.grader)
    out = run.path / f"regraded-{args.grader}"
    print((out / "table.md").read_text(), end="")
    print(f"\n{changed['correct_changed']} of {changed['n_records']} records change correctness "
          f"under the {args.grader} grader")
    print(f"added {added} {args.grader} scores to {run.path / SCORES}" if added
          else f"the run already holds its {args.grader} scores; none added")
    print(f"wrote the report into {out}")
    return 0
