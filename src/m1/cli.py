"""The `m1` command: a thin layer over the library API."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from m1.config import EvalConfig
from m1.errors import M1Error


def _budgets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"budgets must be comma-separated integers, got {text!r}") from None


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="m1", description="Test-time scaling of medical reasoning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = EvalConfig()
    e = sub.add_parser("eval", help="evaluate a model at several thinking budgets")
    e.add_argument("--benchmark", default=d.benchmark, help="registered benchmark (see `m1 benchmarks`)")
    e.add_argument("--suite", help="a benchmark suite, e.g. m1 (the paper's ten sources; runs those present)")
    e.add_argument("--data-dir", help="folder holding benchmarks m1 does not ship (also $M1_DATA_DIR)")
    e.add_argument("--data", help="a JSON/JSONL file of questions instead of a registered benchmark")
    e.add_argument("--limit", type=int, default=d.limit, help="seeded sample of this many questions (0: all)")
    e.add_argument("--seed", type=int, default=d.seed)
    e.add_argument("--engine", default=d.engine, help="llamacpp | hf | openai | vllm")
    e.add_argument("--model", help="GGUF file, HF folder or hub id, or server model name")
    e.add_argument("--base-url", help="openai engine: server URL, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--engine-opt", type=_kv, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="engine option, e.g. n_slots=8 or tokenizer=Qwen/Qwen2.5-7B-Instruct")
    e.add_argument("--format", default="auto",
                   help="m1 | s1 | r1 | plain | auto (plain for the embedded model, m1 otherwise)")
    for name in ("think_start", "think_end", "answer_start", "answer_forced", "answer_end"):
        e.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"custom {name} delimiter")
    e.add_argument("--budgets", type=_budgets, default=d.budgets, help="comma-separated thinking budgets")
    e.add_argument("--answer-max-tokens", type=int, default=d.answer_max_tokens)
    e.add_argument("--forcing", type=int, default=d.forcing_rounds, help="budget-forcing rounds (ignore ends)")
    e.add_argument("--ignore-str", default=d.ignore_str, help="string appended when forcing (default Wait)")
    e.add_argument("--temperature", type=float, default=d.temperature)
    e.add_argument("--top-p", type=float, default=d.top_p)
    e.add_argument("--independent", action="store_true",
                   help="rerun thinking for each budget instead of cutting one long run (slower, same answers)")
    e.add_argument("--instruction", default=d.instruction, help="text appended to each question")
    e.add_argument("--system-prompt")
    e.add_argument("--out", help="run folder (default: runs/<name>-<config hash>; rerun resumes)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    bm = sub.add_parser("benchmarks", help="list the registered benchmarks and which are present")
    bm.add_argument("--data-dir", help="folder holding benchmarks m1 does not ship (also $M1_DATA_DIR)")
    bm.set_defaults(func=cmd_benchmarks)
    from m1 import compare, regrade
    from m1.curation import cli as data_cli
    from m1.reporting import cli_report
    from m1.training import cli as train_cli

    data_cli.add_parser(sub)
    train_cli.add_parser(sub)
    cli_report.add_parser(sub)
    regrade.add_parser(sub)
    compare.add_parser(sub)
    return p


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    options = dict(a.engine_opt)
    if a.base_url:
        options["base_url"] = a.base_url
    overrides = {k: getattr(a, k) for k in ("think_start", "think_end", "answer_start", "answer_forced", "answer_end")
                 if getattr(a, k) is not None}
    return EvalConfig(
        benchmark=a.benchmark, suite=a.suite, data_dir=a.data_dir, data=a.data, limit=a.limit or None, seed=a.seed,
        engine=a.engine, model=a.model,
        engine_options=options, format=a.format, format_overrides=overrides, budgets=a.budgets,
        answer_max_tokens=a.answer_max_tokens, forcing_rounds=a.forcing, ignore_str=a.ignore_str,
        temperature=a.temperature, top_p=a.top_p, method="independent" if a.independent else "cut",
        instruction=a.instruction, system_prompt=a.system_prompt,
    )


def cmd_eval(a: argparse.Namespace) -> int:
    from m1.evaluate import evaluate
    from m1.reporting.report import markdown_table

    cfg = config_from_args(a)
    bar = None

    def progress(done: int, total: int, load: dict) -> None:
        nonlocal bar
        if a.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=done, unit="q", desc="questions", file=sys.stderr)
        bar.n = done
        if load:
            bar.set_postfix_str(f"{load['tokens_per_s']:.0f} tok/s, engine {load['occupancy']:.0%} full")
        bar.refresh()

    result = evaluate(cfg, out=a.out, progress=progress)
    if bar is not None:
        bar.close()
    print(markdown_table(result.metrics["rows"]), end="")
    if result.missing:
        print(f"\nnot present, skipped: {', '.join(result.missing)} "
              "(put their files in --data-dir; see `m1 benchmarks`)")
    print(f"\nrun folder: {result.run_dir}")
    print(f"plot: {result.run_dir / 'accuracy_vs_budget.png'}")
    return 0


def cmd_benchmarks(a: argparse.Namespace) -> int:
    from m1.benchmarks import SUITES, list_benchmarks

    print("| benchmark | group | split | size | present | source |")
    print("|---|---|---|---:|---|---|")
    for b in list_benchmarks(a.data_dir):
        where = "shipped" if b["shipped"] else f"your file {b['file']}"
        print(f"| {b['name']} | {b['group']} | {b['split']} | {b['size'] or '?'} | "
              f"{'yes' if b['present'] else 'no'} | {where} |")
    for name, members in SUITES.items():
        print(f"\nsuite {name}: {', '.join(members)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)  # each subcommand's parser names its handler
    except M1Error as err:
        if a.debug:
            traceback.print_exc()
        print(f"m1: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nm1: interrupted; finished questions are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
