"""`m1 train CONFIG [key=value ...] [--launcher none|torchrun|accelerate] [--nproc N]`.

`m1 train --config CONFIG [key=value ...]` is the same; `--print-config` shows the config as loaded.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess

from m1.configfile import add_config_option
from m1.errors import M1Error
from m1.training.launch import LAUNCHERS, build_command


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="fine-tune a model on m1-format reasoning traces (SFT)",
        description="Supervised fine-tuning with the m1 recipe. CONFIG is a YAML file (see configs/train/); "
                    "key=value pairs override its fields, e.g. learning_rate=2e-5 max_steps=10.")
    p.add_argument("config", nargs="?", help="training YAML, e.g. configs/train/example_cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config fields to override")
    add_config_option(p, "the training config, instead of CONFIG")
    p.add_argument("--print-config", action="store_true",
                   help="print the config as loaded (YAML, autos unresolved) and run nothing")
    p.add_argument("--launcher", choices=LAUNCHERS, default="none",
                   help="none: this process; torchrun: DDP; accelerate: as --accelerate-config says (FSDP, ZeRO-3)")
    p.add_argument("--nproc", type=int, help="processes (GPUs) per node for torchrun / accelerate")
    p.add_argument("--accelerate-config", help="accelerate config, e.g. configs/train/accelerate_fsdp.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="print the config as loaded (autos unresolved) and the command; run nothing")
    p.set_defaults(func=main)
    x = subparsers.add_parser(
        "export-gguf", help="write a trained model folder as GGUF for the embedded llama.cpp engine",
        description="A model trained from a GGUF (e.g. the embedded SmolLM2) back to GGUF: the source file's "
                    "tokenizer and metadata, the trained weights. Then: m1 eval --model FILE.gguf --format m1")
    x.add_argument("model_dir", help="output_dir of m1 train")
    x.add_argument("--dtype", choices=("f16", "f32"), default="f16")
    x.add_argument("--out", help="GGUF file to write (default: MODEL_DIR/model-<dtype>.gguf)")
    x.add_argument("--source", help="the GGUF the model was trained from (default: from its train_config.yaml)")
    x.set_defaults(func=export_main)
    return p


def export_main(args: argparse.Namespace) -> int:
    from m1.training.export import export_gguf

    out = export_gguf(args.model_dir, args.out, args.dtype, args.source)
    print(f"wrote {out}")
    print(f"evaluate it: m1 eval --model {out} --format m1")
    return 0


def main(args: argparse.Namespace) -> int:
    from m1.configfile import dump, split_args
    from m1.training.config import load_config

    tokens = ([args.config] if args.config else []) + list(args.overrides)
    path, overrides = split_args(tokens, args.config_file)
    if path is None:
        raise M1Error("m1 train needs a config file: m1 train --config FILE.yaml [key=value ...] "
                      "(e.g. configs/train/example_cpu.yaml)")
    cfg = load_config(path, overrides)  # fail here, once, before any launcher starts ranks
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    cfg.check_complete()
    if args.launcher == "accelerate" and not args.accelerate_config:
        raise M1Error("--launcher accelerate needs --accelerate-config (configs/train/accelerate_fsdp.yaml "
                      "or accelerate_zero3.yaml)")
    cmd = build_command(path, overrides, args.launcher, args.nproc, args.accelerate_config)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(shlex.join(cmd))
        return 0
    if args.launcher == "none":
        from m1.training.run import report
        from m1.training.train import train

        report(train(cfg))  # in process: an M1Error reaches m1's own handler (and --debug)
        return 0
    try:
        return subprocess.call(cmd, env=os.environ.copy())
    except FileNotFoundError:
        raise M1Error(f"{cmd[0]} not found: pip install 'm1[train]' "
                      "(accelerate ships `accelerate`, torch `torchrun`)") from None
