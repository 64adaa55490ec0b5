"""Supervised fine-tuning on reasoning traces: data -> TRL SFTTrainer -> a model folder.

The examples reach the trainer already tokenized with our labels (data.py), and TRL's
own dataset preparation is skipped, so the loss mask is exactly ours on either trainer:
`trainer: trl` (SFTTrainer, default) or `trainer: hf` (plain transformers Trainer).
One process, torchrun or accelerate launch (DDP, FSDP, ZeRO-3) all run this same code.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m1.errors import M1Error
from m1.training import data as D
from m1.training.config import CONFIG_NAME, TrainConfig, world_size
from m1.training.model import load_model, load_tokenizer, lora_config, save_final


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    config: TrainConfig  # resolved
    losses: list[float]  # training loss at each logged step
    steps: int
    examples: int
    rows: int  # training rows (fewer than examples when packing)
    truncated: int  # examples cut at max_length
    padding_share: float  # pad tokens / all tokens in this run's batches (approx. with shuffling)
    seconds: float
    model: Any = field(default=None, repr=False, compare=False)  # the model as saved (this rank's copy)


def prepare_rows(cfg: TrainConfig, tokenizer) -> tuple[list[D.Row], list[D.Example]]:
    records = D.load_records(cfg.require("dataset"), cfg.dataset_split, cfg.limit)
    examples = D.build_examples(records, tokenizer, cfg.max_length, cfg.instruction, cfg.system_prompt,
                                source=str(cfg.dataset))
    rows = D.pack(examples, cfg.max_length) if cfg.packing else D.unpacked(examples)
    return rows, examples


def train(cfg: TrainConfig) -> TrainResult:
    import torch

    threads = torch.get_num_threads()
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)  # the caller's process keeps its own setting


def _train(cfg: TrainConfig) -> TrainResult:
    import datasets
    import torch
    import transformers

    t0 = time.perf_counter()
    cfg = cfg.resolve(world_size())
    cfg = _absolute_paths(cfg)  # the saved config must not depend on where it was run from
    out = Path(cfg.require("output_dir"))
    resume_from = _checkpoint_to_resume(cfg, out)
    transformers.set_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg)
    rows, examples = prepare_rows(cfg, tokenizer)
    dataset = datasets.Dataset.from_list([dataclasses.asdict(r) for r in rows])
    # one padding-free sequence per micro-batch only where attention is varlen (flash)
    flatten = cfg.packing and cfg.attn_implementation.startswith("flash")
    collator = D.Collator(tokenizer.pad_token_id, packed=cfg.packing, flatten=flatten)
    truncated = sum(e.truncated for e in examples)
    padding_share = round(D.padding_share(rows, cfg.per_device_batch_size, flatten), 4)
    facts = {"world_size": world_size(), "examples": len(examples), "rows": len(rows), "truncated": truncated,
             "padding_share": padding_share, "versions": _versions()}
    if int(os.environ.get("RANK", "0")) == 0:  # every rank resolves the same; one writes
        cfg.save(out / CONFIG_NAME, extra=facts)

    # Arguments before the model: under accelerate's DeepSpeed ZeRO-3 they switch on
    # zero.Init, so from_pretrained builds the model already partitioned across GPUs.
    args = _arguments(cfg, cuda=torch.cuda.is_available())
    model = load_model(cfg)
    trainer: transformers.Trainer
    if cfg.trainer == "trl":
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                             processing_class=tokenizer, peft_config=lora_config(cfg) if cfg.lora else None)
    else:
        if cfg.lora:
            import peft

            model = peft.get_peft_model(model, lora_config(cfg))
        trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                       processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume_from)
    saved = save_final(trainer, tokenizer, cfg)
    if cfg.export_gguf and trainer.is_world_process_zero():
        from m1.training.export import export_gguf

        export_gguf(out, dtype=cfg.export_gguf)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainResult(out, cfg, losses, trainer.state.global_step, len(examples), len(rows), truncated,
                       padding_share, time.perf_counter() - t0, saved)


def _arguments(cfg: TrainConfig, cuda: bool):
    """TrainingArguments (or TRL's SFTConfig) with every recipe value passed explicitly:
    TRL changes some defaults (bf16 on, gradient checkpointing on, logging every 10)."""
    import transformers

    common: dict[str, Any] = dict(
        output_dir=cfg.output_dir, per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm, bf16=bool(cfg.bf16), fp16=False,
        logging_steps=cfg.logging_steps, save_strategy=_save_strategy(cfg.save_steps),
        save_steps=cfg.save_steps or 500, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        report_to=cfg.report_to, dataloader_num_workers=cfg.dataloader_num_workers,
        remove_unused_columns=False,  # keep seq_lengths for the collator
        use_cpu=not cuda, ddp_backend="gloo" if not cuda and world_size() > 1 else None, disable_tqdm=True,
    )
    params = inspect.signature(transformers.TrainingArguments).parameters
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing
    ckpt = "activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"
    common[ckpt] = cfg.gradient_checkpointing
    common[f"{ckpt}_kwargs"] = {"use_reentrant": False} if cfg.gradient_checkpointing else None
    # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio)
    if "warmup_ratio" in params:
        common["warmup_ratio"] = cfg.warmup_ratio
    else:
        common["warmup_steps"] = cfg.warmup_ratio
    if cfg.trainer == "hf":
        return transformers.TrainingArguments(**common)
    try:
        from trl import SFTConfig
    except ImportError:
        raise M1Error("trainer 'trl' needs trl: pip install 'm1[train]' (or set trainer=hf)") from None
    # Our rows are tokenized, labelled and packed already: TRL must not re-tokenize,
    # re-mask or re-pack them (dataset preparation is skipped; our collator pads).
    return SFTConfig(**common, max_length=cfg.max_length, packing=False, padding_free=False,
                     dataset_kwargs={"skip_prepare_dataset": True})


def _save_strategy(save_steps: int | None) -> str:
    return "epoch" if save_steps is None else "no" if save_steps == 0 else "steps"


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    local: dict[str, Any] = {k: str(Path(v).expanduser().resolve()) for k in ("model", "dataset")
                             if (v := getattr(cfg, k)) and Path(v).expanduser().exists()}
    out = Path(cfg.require("output_dir")).expanduser().resolve()
    return dataclasses.replace(cfg, output_dir=str(out), **local)


def _checkpoint_to_resume(cfg: TrainConfig, out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if cfg.resume is True:
        if last is None:
            raise M1Error(f"resume=true but {out} has no checkpoint-* folder; "
                          "drop resume or point output_dir at the run")
        return last
    if isinstance(cfg.resume, str) and cfg.resume:
        if not (Path(cfg.resume) / "trainer_state.json").is_file():
            raise M1Error(f"resume: {cfg.resume} is not a checkpoint folder (no trainer_state.json)")
        return cfg.resume
    if last is not None and not cfg.overwrite:
        raise M1Error(f"{out} already holds checkpoints ({Path(last).name}); pass resume=true to continue, "
                      "overwrite=true to start again there, or another output_dir")
    if last is not None and int(os.environ.get("RANK", "0")) == 0:
        # overwrite: old checkpoints would otherwise pass for this run's on a later resume=true
        for old in out.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
    return None


def _versions() -> dict:
    from m1.runs import package_versions

    return package_versions(("m1", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"))
