"""Commands that start training on one or many processes, through existing launchers only.

    none         python -m m1.training.run CONFIG ...           (one process)
    torchrun     torchrun --standalone --nproc_per_node N -m m1.training.run CONFIG ...   (DDP)
    accelerate   accelerate launch --config_file ACC.yaml [--num_processes N] -m m1.training.run CONFIG ...
                 (FSDP / DeepSpeed ZeRO-3 as the accelerate config says: configs/train/accelerate_*.yaml)
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Sequence

from m1.errors import M1Error

LAUNCHERS = ("none", "torchrun", "accelerate")
MODULE = "m1.training.run"


def build_command(config: str, overrides: Sequence[str] = (), launcher: str = "none", nproc: int | None = None,
                  accelerate_config: str | None = None, entry: Sequence[str] = ("-m", MODULE)) -> list[str]:
    """argv for one training run; `entry` is what each process runs (a module, or a script in tests)."""
    if launcher not in LAUNCHERS:
        raise M1Error(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if nproc is not None and nproc <= 0:
        raise M1Error(f"--nproc must be positive, got {nproc}")
    tail = [*entry, str(config), *overrides]
    if launcher == "none":
        if nproc not in (None, 1):
            raise M1Error("--nproc needs --launcher torchrun or accelerate (one process without a launcher)")
        return [sys.executable, *tail]
    if launcher == "torchrun":
        # --standalone: a local rendezvous on a free port (one node; several runs may share it)
        return [_tool("torchrun"), "--standalone", f"--nproc_per_node={nproc or 1}", *tail]
    cmd = [_tool("accelerate"), "launch"]
    if accelerate_config:
        if not Path(accelerate_config).is_file():
            raise M1Error(f"accelerate config not found: {accelerate_config} (e.g. configs/train/accelerate_fsdp.yaml)")
        cmd += ["--config_file", str(accelerate_config)]
    if nproc:
        cmd += ["--num_processes", str(nproc)]
    return cmd + tail


def _tool(name: str) -> str:
    """The launcher beside this Python (a venv's bin), else on PATH, else by bare name."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)
