"""Entry point for one training process: `python -m m1.training.run CONFIG [key=value ...]`.

This is what `m1 train` runs directly, and what torchrun / accelerate launch start on
every rank; each rank resolves the same config from the same file and overrides.
"""
from __future__ import annotations

import sys

from m1.errors import M1Error


def main(argv: list[str] | None = None) -> int:
    from m1.training.config import load_config
    from m1.training.train import train

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        result = train(load_config(argv[0], argv[1:]))
    except M1Error as err:
        print(f"m1: error: {err}", file=sys.stderr)
        return 2
    report(result)
    return 0


def report(result) -> None:
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return  # one summary per run, not one per rank
    if result.losses:
        print(f"trained {result.steps} steps in {result.seconds:.0f} s; loss {result.losses[0]:.3f} -> "
              f"{result.losses[-1]:.3f}")
    print(f"model folder: {result.output_dir}")
    print(f"evaluate it: m1 eval --engine hf --model {result.output_dir} --format m1")


if __name__ == "__main__":
    sys.exit(main())
