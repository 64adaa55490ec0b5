"""Loading the model to train (folder, hub id or GGUF) and saving an ordinary model folder."""
from __future__ import annotations

from pathlib import Path

from m1.errors import M1Error, first_line
from m1.models import embedded_model_path
from m1.training.config import TrainConfig


def resolve_source(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name) as from_pretrained wants them."""
    if model == "embedded":
        path = embedded_model_path()
        return str(path.parent), path.name
    from m1.engines.hf import resolve_model_source  # the same rules as the hf engine's

    return resolve_model_source(model, gguf_file)


def load_tokenizer(cfg: TrainConfig):
    import transformers

    source, gguf = resolve_source(cfg.require("model"), cfg.gguf_file)
    kwargs = {"trust_remote_code": cfg.trust_remote_code, **({"gguf_file": gguf} if gguf else {})}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise M1Error(f"transformers could not load the tokenizer of {cfg.model}: {first_line(e)}") from None
    if not getattr(tok, "chat_template", None):
        raise M1Error(f"{cfg.model} has no chat template; train an instruct model or records with a rendered `text`")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # pads are masked out of attention and loss either way
    return tok


def load_model(cfg: TrainConfig):
    """The model in cfg.dtype with cfg.attn_implementation; a GGUF is dequantized to plain weights."""
    import torch
    import transformers

    source, gguf = resolve_source(cfg.require("model"), cfg.gguf_file)
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "dtype": getattr(torch, cfg.dtype),
              "attn_implementation": cfg.attn_implementation, **({"gguf_file": gguf} if gguf else {})}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise M1Error(f"transformers could not load {cfg.model}: {first_line(e)}") from None
    if gguf:
        drop_gguf_marker(model)
    if not torch.cuda.is_available():
        from m1.engines.hf import realign_cpu_weights

        realign_cpu_weights(model)
    model.config.use_cache = False  # a KV cache in training only costs memory (and hides packing)
    return model


def drop_gguf_marker(model) -> None:
    """A GGUF-loaded model is already plain dequantized tensors, but transformers still
    marks it quantized: Trainer then refuses to train it and save_pretrained to save it."""
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None


def lora_config(cfg: TrainConfig):
    try:
        import peft
    except ImportError:
        raise M1Error("lora=true needs peft: pip install 'm1[train]'") from None
    return peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")


def save_final(trainer, tokenizer, cfg: TrainConfig):
    """The trained model as a plain safetensors folder in output_dir (+ tokenizer), loadable by
    `m1 eval --engine hf --model OUTPUT_DIR`; a LoRA adapter is merged in unless
    merge_and_save=false. Returns this rank's model as saved (merged when merging here)."""
    out = Path(cfg.require("output_dir"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # the saved model generates with a KV cache
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if cfg.lora and cfg.merge_and_save:
        if sharded:
            # The adapter is spread over ranks: save it, then merge on one process from the base.
            trainer.save_model(str(out / "adapter"))
            trainer.accelerator.wait_for_everyone()
            if trainer.is_world_process_zero():
                _merge_from_disk(cfg, out / "adapter", out)
        else:
            model = model.merge_and_unload()  # every rank holds the whole model (DDP or one process)
            if trainer.is_world_process_zero():
                model.save_pretrained(str(out), safe_serialization=True)
    else:
        trainer.save_model(str(out))  # gathers FSDP / ZeRO-3 shards; an adapter folder when lora without merge
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        trainer.save_state()  # trainer_state.json: the loss at every logged step, beside the model
    trainer.accelerator.wait_for_everyone()
    return model


def _merge_from_disk(cfg: TrainConfig, adapter: Path, out: Path) -> None:
    import peft

    base = load_model(cfg)
    merged = peft.PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
