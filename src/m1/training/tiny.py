"""A tiny randomly initialised Llama with the embedded SmolLM2 tokenizer, as a model folder.

For tests and benchmarks of the training machinery (multi-process runs, packing, LoRA)
where the real 135M model would only add minutes: same tokenizer, chat template and
architecture family, ~3.2M parameters (almost all of them the embedding).
"""
from __future__ import annotations

from pathlib import Path


def make_tiny_model(out: str | Path, seed: int = 0, layers: int = 2, hidden: int = 64, tokenizer=None) -> Path:
    import torch
    import transformers

    from m1.training.config import TrainConfig
    from m1.training.model import load_tokenizer

    out = Path(out)
    tok = tokenizer or load_tokenizer(TrainConfig(model="embedded"))
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
