"""The `m1` command: a thin layer over the library API."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from m1.config import EvalConfig, budgets_arg
from m1.errors import M1Error


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one line (what, and where to look), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="m1", description="Test-time scaling of medical reasoning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    from m1.configfile import add_config_option

    d = EvalConfig()
    # Settings flags default to None: only those given override --config FILE (see config_from_args).
    e = sub.add_parser("eval", help="evaluate a model at several thinking budgets",
                       description="Settings come from the defaults, then --config FILE (YAML or JSON), then "
                       "the flags given, then key=value pairs (EvalConfig field names, dotted into mappings: "
                       "engine_options.n_slots=4). --print-config shows the result as a file --config reads.")
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config fields, e.g. limit=20 budgets=[64,128] engine_options.n_slots=4")
    add_config_option(e, "a file of EvalConfig fields, e.g. one written by --print-config")
    e.add_argument("--print-config", dest="func", action="store_const", const=cmd_print_config,
                   help="print the config as loaded (YAML) and run nothing")
    e.add_argument("--benchmark", help=f"registered benchmark (see `m1 benchmarks`; default {d.benchmark})")
    e.add_argument("--suite", help="a benchmark suite, e.g. m1 (the paper's ten sources; runs those present)")
    e.add_argument("--data-dir", help="folder holding benchmarks m1 does not ship (also $M1_DATA_DIR)")
    e.add_argument("--data", help="a JSON/JSONL file of questions instead of a registered benchmark")
    e.add_argument("--limit", type=int, help=f"seeded sample of this many questions (0: all; default {d.limit})")
    e.add_argument("--seed", type=int, help=f"default {d.seed}")
    e.add_argument("--engine", help=f"llamacpp | hf | openai | vllm (default {d.engine})")
    e.add_argument("--model", help="GGUF file, a name from `m1 models` (qwen2.5-coder-0.5b), HF folder or hub id, "
                                   "or server model name")
    e.add_argument("--base-url", action="append",
                   help="openai engine: server URL, e.g. http://127.0.0.1:8000/v1; replicas: repeat the flag or "
                        "separate URLs with commas (each request goes to the least loaded one)")
    e.add_argument("--engine-opt", type=_kv, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="engine option, e.g. n_slots=8 or tokenizer=Qwen/Qwen2.5-7B-Instruct")
    e.add_argument("--format", help="m1 | s1 | r1 | plain | auto (default: plain for the embedded model, m1 otherwise)")
    for name in DELIMITERS:
        e.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"custom {name} delimiter")
    e.add_argument("--budgets", type=budgets_arg,
                   help="thinking budgets: numbers and start:stop:step ranges, e.g. 16,32:512:32,1024 "
                        f"(default {','.join(map(str, d.budgets))})")
    e.add_argument("--answer-max-tokens", type=int, help=f"default {d.answer_max_tokens}")
    e.add_argument("--forcing", type=int, help="budget-forcing rounds (ignore ends; default 0)")
    e.add_argument("--ignore-str", help=f"string appended when forcing (default {d.ignore_str})")
    e.add_argument("--temperature", type=float, help=f"default {d.temperature}")
    e.add_argument("--top-p", type=float, help=f"default {d.top_p}")
    e.add_argument("--adaptive", metavar="POLICY",
                   help="stop each question's thinking when its answer settles: stable=M,every=N (M forced answers "
                        "in a row agree), confidence=TAU,every=N or deer=TAU,every=N[,switch_words=Wait|But]; "
                        "--budgets then gives the cap")
    e.add_argument("--knowledge", help="knowledge condition: none (default) | gold (the item's explanation) | "
                                       "gold-background (it, answer masked) | counterfactual | placebo | retrieve")
    e.add_argument("--knowledge-where", help="prompt (before the question; default) | thinking (inserted into the "
                                             "thinking at --knowledge-at; not counted against the budget)")
    e.add_argument("--knowledge-k", type=int, help=f"passages per retrieval (default {d.knowledge_k})")
    e.add_argument("--corpus", dest="knowledge_corpus",
                   help="retrieval corpus: MedRAG chunk JSONL {id, title, content} (default: m1's shipped corpus)")
    e.add_argument("--retriever", dest="knowledge_retriever", help="bm25 (default) | dense | hybrid")
    e.add_argument("--knowledge-at", help="insertion points in the thinking: fractions of the largest budget or "
                                          f"token counts (default {d.knowledge_at}), or `search`: where the model "
                                          "writes a query between knowledge_search_tags (Search-o1's by default)")
    e.add_argument("--knowledge-counted", action="store_const", const=True,
                   help="inserted tokens count against the thinking budget")
    e.add_argument("--min-thinking", type=int,
                   help="replace an end of thinking before N tokens with the ignore string (default 0)")
    e.add_argument("--grader", choices=("strict", "m1"),
                   help="how answers are read: strict (default; m1's own) or m1 (the official scorer's rules); "
                        "either can be re-applied later with `m1 report --grader` or `m1 regrade`")
    e.add_argument("--independent", action="store_true",
                   help="rerun thinking for each budget instead of cutting one long run (slower, same answers)")
    e.add_argument("--instruction", help="text appended to each question (default: m1's boxed-answer line)")
    e.add_argument("--system-prompt")
    e.add_argument("--out", help="run folder (default: runs/<name>-<config hash>; rerun resumes)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    bm = sub.add_parser("benchmarks", help="list the registered benchmarks and which are present")
    bm.add_argument("--data-dir", help="folder holding benchmarks m1 does not ship (also $M1_DATA_DIR)")
    bm.set_defaults(func=cmd_benchmarks)
    from m1 import compare, models, regrade
    from m1.curation import cli as data_cli
    from m1.knowledge import cli as knowledge_cli
    from m1.reporting import cli_report
    from m1.serve import cli as serve_cli
    from m1.training import cli as train_cli

    data_cli.add_parser(sub)
    train_cli.add_parser(sub)
    cli_report.add_parser(sub)
    regrade.add_parser(sub)
    compare.add_parser(sub)
    models.add_parser(sub)
    knowledge_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    return p


# EvalConfig fields whose eval flag has another name (the others' flags share the field's name)
_FLAG_DESTS = {"forcing_rounds": "forcing"}
_FLAG_NAMES = {"forcing_rounds": "--forcing", "knowledge_corpus": "--corpus", "knowledge_retriever": "--retriever",
               "method": "--independent"}
DELIMITERS = ("think_start", "think_end", "answer_start", "answer_forced", "answer_end")


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    """The eval config: defaults < --config FILE < the flags given < key=value pairs (m1.configfile);
    EvalConfig itself checks every value."""
    from dataclasses import fields

    from m1.configfile import load_config, split_args

    flags: dict[str | tuple[str, ...], object] = {}
    for f in fields(EvalConfig):
        dest = _FLAG_DESTS.get(f.name, f.name)
        if f.name not in ("limit", "method") and getattr(a, dest, None) is not None:
            flags[f.name] = getattr(a, dest)
    if getattr(a, "limit", None) is not None:
        flags["limit"] = a.limit or None  # --limit 0: all
    if getattr(a, "independent", False):
        flags["method"] = "independent"
    names = {f.name for f in fields(EvalConfig)}
    late = []  # key=value settings typed after --engine-opt, which takes every KEY=VALUE that follows it
    labels = {k: _FLAG_NAMES.get(k, "--" + k.replace("_", "-")) for k in flags if isinstance(k, str)}  # messages
    for k, v in getattr(a, "engine_opt", []):
        if k.split(".")[0] in names:  # no engine option shares a name with an eval setting
            late.append(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
        else:
            flags[("engine_options", k)] = v
    if getattr(a, "base_url", None):  # each --base-url given (a list), each may hold comma-separated replicas
        urls = a.base_url if isinstance(a.base_url, list) else [a.base_url]
        flags[("engine_options", "base_url")] = ",".join(urls)
    for k in DELIMITERS:
        if getattr(a, k, None) is not None:
            flags[("format_overrides", k)] = getattr(a, k)
    path, overrides = split_args(getattr(a, "overrides", []), getattr(a, "config_file", None), positional_file=False)
    # chunk_size: saved by runs before questions flowed one by one; their config.json still loads
    return load_config(EvalConfig, path, overrides + late, flags=flags, labels=labels, drop=("chunk_size",),
                       what="eval config")


def cmd_print_config(a: argparse.Namespace) -> int:
    """`m1 eval ... --print-config`: the config as loaded, as YAML that --config reads back."""
    from m1.configfile import dump

    print(dump(config_from_args(a)), end="")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from m1.evaluate import benchmark_names, evaluate

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

    run = evaluate(cfg, out=a.out, progress=progress)
    if bar is not None:
        bar.close()
    print((run.path / "table.md").read_text(), end="")
    _, missing = benchmark_names(cfg)
    if missing:
        print(f"\nnot present, skipped: {', '.join(missing)} "
              "(put their files in --data-dir; see `m1 benchmarks`)")
    print(f"\nrun folder: {run.path}")
    print(f"report: {run.path / 'report.html'} (plots: {run.path / 'accuracy_vs_budget.png'}, ...)")
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
