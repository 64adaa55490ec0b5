"""`m1 data ...`: build the training sets from a config.

    m1 data build CONFIG [key=value ...] [--until STAGE] [--force] [--push-to-hub REPO]
    m1 data STAGE CONFIG [key=value ...] [--force]   one stage, on the outputs already on disk
    m1 data build --config CONFIG [key=value ...]    the same; --print-config shows the result

key=value pairs override the file's settings (dotted for sections: dedup.ngram=8).

`python -m m1.curation.cli data build CONFIG` does the same (the kill tests start it that way).
"""
from __future__ import annotations

import argparse
import json
import sys

from m1.configfile import add_config_option
from m1.curation.config import STAGES
from m1.errors import M1Error


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build m1K / m23K-style training sets (collect ... format)",
                              description="Curate SFT data: " + " -> ".join(STAGES) + ". Stages whose inputs "
                              "and settings are unchanged are skipped.")
    p.add_argument("action", choices=("build",) + STAGES, help="build: every stage in order; or one stage")
    p.add_argument("config", nargs="?", help="a data config (YAML or JSON), e.g. configs/data/example.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings over the file's, dotted for sections: dedup.ngram=8 collect.sources.0.limit=5")
    add_config_option(p, "the data config, instead of CONFIG")
    p.add_argument("--print-config", action="store_true",
                   help="print the config as loaded (YAML, paths resolved) and run nothing")
    p.add_argument("--until", choices=STAGES, help="build: stop after this stage")
    p.add_argument("--force", action="store_true", help="rerun stages even when unchanged")
    p.add_argument("--push-to-hub", metavar="REPO", help="build: push the formatted sets to this HF dataset repo")
    p.add_argument("--json", action="store_true", help="print the stage manifests as JSON at the end")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from m1.curation.config import load_config
    from m1.curation.pipeline import build, push_to_hub, run_stage

    cfg = load_config(*config_args(args))
    if args.print_config:
        from m1.configfile import dump

        print(dump(cfg), end="")
        return 0
    if args.action == "build":
        if args.push_to_hub and args.until not in (None, "format"):  # refuse before the build, not after it
            raise M1Error("--push-to-hub needs the build to reach the format stage; drop --until")
        results = build(cfg, until=args.until, force=args.force)
        if args.push_to_hub:
            push_to_hub(cfg, args.push_to_hub)
    else:
        if args.until or args.push_to_hub:
            raise M1Error("--until and --push-to-hub go with `m1 data build`")
        results = [run_stage(cfg, args.action, force=args.force)]
    if args.json:
        print(json.dumps({r.stage: {"skipped": r.skipped, **r.manifest.__dict__} for r in results}, indent=2,
                         default=str))
    else:
        print(f"outputs in {cfg.out_dir}")
    return 0


def config_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The config file and key=value overrides, from CONFIG or --config."""
    from m1.configfile import split_args

    tokens = ([args.config] if args.config else []) + list(args.overrides)
    path, overrides = split_args(tokens, args.config_file)
    if path is None:
        raise M1Error(f"m1 data {args.action} needs a config file: m1 data {args.action} --config FILE.yaml "
                      "[key=value ...] (e.g. configs/data/example.yaml)")
    return path, overrides


def run(argv: list[str] | None = None) -> int:
    """`python -m m1.curation.cli data ...` (what the kill tests start): the same errors as the m1 CLI."""
    parser = argparse.ArgumentParser(prog="m1")
    parser.add_argument("--debug", action="store_true")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return main(args)
    except M1Error as e:
        if args.debug:
            raise
        print(f"m1: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
