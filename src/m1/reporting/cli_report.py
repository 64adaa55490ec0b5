"""`m1 report RUN [RUN...] [--out DIR] [--grader G]`: every table, plot and section for finished runs."""
from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path

from m1.grading import GRADERS
from m1.runs import Run


def add_parser(subparsers):
    p = subparsers.add_parser("report", help="tables, plots, analyses and an HTML trace viewer for run folders")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by `m1 eval`")
    p.add_argument("--out", help="output folder (default: the run's folder, or reports/<timestamp> for several)")
    p.add_argument("--grader", choices=sorted(GRADERS), help="re-grade every run with this grader first")
    j = p.add_argument_group("LLM judge of wrong answers (optional; any OpenAI-compatible API, replies cached)")
    j.add_argument("--judge-url", help="server URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", help="model name on that server")
    j.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (the key itself is never written anywhere)")
    j.add_argument("--judge-cache", help="JSON-lines cache of replies (default: <out>/judge_cache.jsonl)")
    j.add_argument("--judge-sample", help="a hand-labelled sample (JSONL) to measure the judge's agreement on")
    j.add_argument("--judge-limit", type=int, help="judge at most this many wrong answers per run")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from m1.reporting.report import report

    runs = [Run.load(p) for p in args.runs]
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1 and not args.grader:
        out = runs[0].path
    elif len(runs) == 1:
        out = runs[0].path / f"regraded-{args.grader}"
    else:
        out = Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    rep = report(runs, out, grader=args.grader, analyses=_analyses(args, runs, out))
    print((out / "table.md").read_text(), end="")
    if rep.sections:
        print("\nsections: " + ", ".join(s.title for s in rep.sections))
    print(f"\nwrote {out / 'report.md'}, {out / 'report.html'} and {len(rep.files) - 2} tables and plots in {out}")
    return 0


def _analyses(args, runs: list[Run], out: Path):
    """Every analysis; with --judge-url/--judge-model, the failures section carries the judge's labels."""
    from m1.errors import M1Error
    from m1.reporting.analyses import ANALYSES, failures
    from m1.reporting.analyses.knowledge import knowledge

    url, model = getattr(args, "judge_url", None), getattr(args, "judge_model", None)
    if not url and not model:
        return None
    if not (url and model):
        raise M1Error("the judge needs both --judge-url and --judge-model")
    if args.judge_limit is not None and args.judge_limit < 1:
        raise M1Error(f"--judge-limit must be at least 1, got {args.judge_limit}")
    from m1.reporting.judge import judge_failures

    graded = [r.regraded(args.grader) for r in runs] if args.grader else runs
    judged = judge_failures(graded, url, model, args.judge_key_env, args.judge_cache or Path(out) / "judge_cache.jsonl",
                            limit=args.judge_limit, sample=args.judge_sample)
    print(f"judge: {len(judged.judgements)} wrong answers, {judged.requests} requests, "
          f"{judged.cache_hits} from the cache, {judged.failed} failed")
    # the judge's "missing knowledge" label is also set against the knowledge intervention's verdict
    with_judge = {failures: functools.partial(failures, judged=judged),
                  knowledge: functools.partial(knowledge, judged=judged)}
    return [with_judge.get(a, a) for a in ANALYSES]
