"""The training config: the m1 paper's SFT recipe as defaults, resolved once, saved.

Values come from a YAML file, then `key=value` overrides from the command line (m1.configfile). Fields
left "auto" (dtype, attention, precision, gradient accumulation) are resolved for the
machine and world size in `resolve()`; the resolved config is what `train_config.yaml`
beside the checkpoints records, so a run can be read back exactly.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from m1.config import M1_INSTRUCTION, NonNegative, Positive
from m1.configfile import CommaList, settings
from m1.errors import M1Error

CONFIG_NAME = "train_config.yaml"
Fraction = Annotated[float, Field(ge=0, lt=1)]
REQUIRED: tuple[typing.Literal["model", "dataset", "output_dir"], ...] = ("model", "dataset", "output_dir")


@settings
class TrainConfig:
    """One supervised fine-tune on reasoning traces (defaults: the m1 paper's recipe)."""

    # -- what to train, on what, and where it goes --------------------------------
    model: str | None = None  # HF folder, hub id, a .gguf file (dequantized), or "embedded" (SmolLM2-135M)
    gguf_file: str | None = None  # a GGUF file name inside `model` when model is a folder
    dataset: str | None = None  # a local .json/.jsonl/.parquet file, or a hub id such as UCSC-VLAA/m1K
    dataset_split: str = "train"
    limit: Positive | None = None  # use only the first N records (smoke tests)
    output_dir: str | None = None
    # -- how examples are rendered --------------------------------------------------
    # Appended to each question on its own line; the default is m1 eval's default
    # --instruction, so a trained model is evaluated on the prompt it was trained on.
    instruction: str | None = M1_INSTRUCTION
    system_prompt: str | None = None  # None: whatever the chat template does by default
    max_length: Positive = 32768  # the paper's block size; longer examples are truncated
    packing: bool = False  # several examples per row, positions restart at each one
    # -- optimisation (paper: lr 1e-5 in the code; the appendix's 1e-4 is a misprint) --
    learning_rate: Annotated[float, Field(gt=0)] = 1e-5
    num_train_epochs: Annotated[float, Field(gt=0)] = 5.0
    max_steps: int = -1  # > 0 overrides epochs (tests, smoke runs)
    global_batch_size: Positive = 16  # = per_device_batch_size x gradient_accumulation_steps x world size
    per_device_batch_size: Positive = 1
    gradient_accumulation_steps: Positive | None = None  # None: derived from the global batch
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    warmup_ratio: Fraction = 0.05
    lr_scheduler_type: str = "cosine"
    adam_beta1: Fraction = 0.9
    adam_beta2: Fraction = 0.95
    max_grad_norm: float = 1.0
    # -- numerics and memory ---------------------------------------------------------
    # dtype is what the weights are loaded (and kept) in; bf16 is autocast on top. The
    # official script loaded fp32 without saying so; here both are explicit and saved.
    # auto: bfloat16 on a GPU that has it, else float32
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    bf16: bool | None = None  # None: on where the hardware has bf16 (a GPU), off on CPU
    # auto: flash_attention_2 if installed on GPU with a half dtype, else sdpa
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                 "flex_attention"] = "auto"
    gradient_checkpointing: bool = False
    # -- LoRA (off: full fine-tune as in the paper) ---------------------------------
    lora: bool = False
    lora_r: Positive = 16
    lora_alpha: Positive = 32
    lora_dropout: Fraction = 0.05
    lora_target_modules: CommaList[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    merge_and_save: bool = True  # fold the adapter into the weights: an ordinary model folder
    # f16 | f32: also write output_dir/model-<dtype>.gguf for the embedded llama.cpp engine
    # (models trained from a GGUF only: its tokenizer metadata is reused; see training/export.py)
    export_gguf: Literal["f16", "f32"] | None = None
    # -- bookkeeping ---------------------------------------------------------------------
    trainer: Literal["trl", "hf"] = "trl"  # trl: TRL SFTTrainer; hf: plain transformers Trainer (same data, same loss)
    seed: int = 42
    save_steps: NonNegative | None = None  # None: a checkpoint each epoch (as the paper's script); 0: final model only
    save_total_limit: Positive | None = None
    logging_steps: Positive = 1
    resume: bool | str = False  # true: the latest checkpoint in output_dir; or a checkpoint folder
    overwrite: bool = False  # allow a fresh run into an output_dir that already has checkpoints
    report_to: str = "none"  # e.g. wandb, tensorboard
    dataloader_num_workers: NonNegative = 0
    # CPU only: torch threads for this process (None: torch's default). On a shared or
    # small machine 1 thread can be several times faster than oversubscribed cores.
    cpu_threads: Positive | None = None
    trust_remote_code: bool = False

    # -- resolution -------------------------------------------------------------------------
    def check_complete(self) -> None:
        """The fields a run cannot do without (not required by the model, so overrides can fill them)."""
        for name in REQUIRED:
            self.require(name)

    def require(self, name: typing.Literal["model", "dataset", "output_dir"]) -> str:
        """One of the fields a run cannot do without, known to be set (else M1Error)."""
        value = getattr(self, name)
        if not value:
            raise M1Error(f"train config: {name} is not set; add `{name}: ...` to the YAML or pass {name}=...")
        return value

    def resolve(self, world_size: int = 1, cuda: bool | None = None, bf16_ok: bool | None = None,
                flash_attn: bool | None = None) -> TrainConfig:
        """Every "auto" made concrete for this machine and world size (idempotent)."""
        self.check_complete()
        if cuda is None or bf16_ok is None or flash_attn is None:
            import importlib.util

            import torch

            cuda = torch.cuda.is_available() if cuda is None else cuda
            bf16_ok = (cuda and torch.cuda.is_bf16_supported()) if bf16_ok is None else bf16_ok
            flash_attn = importlib.util.find_spec("flash_attn") is not None if flash_attn is None else flash_attn
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if bf16_ok else "float32")
        bf16 = bf16_ok if self.bf16 is None else self.bf16
        if bf16 and not bf16_ok:
            raise M1Error("train config: bf16=true but this machine has no bf16 GPU; set bf16=false (fp32 on CPU)")
        attn = self.attn_implementation
        if attn == "auto":
            attn = "flash_attention_2" if cuda and flash_attn and dtype in ("bfloat16", "float16") else "sdpa"
        if attn.startswith("flash_attention") and dtype == "float32" and not bf16:
            # flash attention runs only on half-precision activations: bf16 autocast or half weights
            raise M1Error(f"train config: {attn} needs bf16=true or dtype bfloat16/float16, not plain float32; "
                          "set bf16=true, dtype=bfloat16 or attn_implementation=sdpa")
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise M1Error(f"train config: global_batch_size {self.global_batch_size} is not a multiple of "
                          f"per_device_batch_size {self.per_device_batch_size} x {world_size} process(es); "
                          "change one of them")
        accum = self.global_batch_size // per_step
        if self.gradient_accumulation_steps not in (None, accum):
            raise M1Error(f"train config: gradient_accumulation_steps={self.gradient_accumulation_steps} disagrees "
                          f"with global_batch_size {self.global_batch_size} = {self.per_device_batch_size} per device "
                          f"x {world_size} process(es) x {accum}; leave it unset (it is derived)")
        return dataclasses.replace(self, dtype=dtype, bf16=bf16, attn_implementation=attn,
                                   gradient_accumulation_steps=accum)

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        if extra:
            d["_resolved"] = extra  # facts of the run (world size, versions), not settings
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path


# -- loading -----------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """A YAML file (optional) then `key=value` overrides, read by m1's one config loader
    (m1.configfile): unknown keys and bad values are one-line M1Errors."""
    from m1.configfile import load_config as load

    # `_resolved`: the facts a saved train_config.yaml records beside its settings, so it loads back
    return load(TrainConfig, path, overrides, drop=("_resolved",), what="train config")


def world_size() -> int:
    """Processes in this run, as torchrun / accelerate launch tell each one."""
    return int(os.environ.get("WORLD_SIZE", "1"))
