"""A trained model folder back to GGUF, so the embedded llama.cpp engine serves it.

    m1 export-gguf runs/train/example-cpu [--dtype f16|f32] [--out FILE] [--source GGUF]

For models that were trained from a GGUF (the embedded SmolLM2, or any .gguf given as
`model`): every metadata key of that source file is kept — tokenizer vocabulary, merges,
pre-tokenizer, special ids, chat template — and only the weights are replaced, so the
exported file tokenizes exactly as the one it came from. Weights are written unquantized
(f16 matrices with f32 norms, as llama.cpp's converter does, or all f32).

transformers un-permutes the Llama query/key rows when it reads a GGUF (llama.cpp orders
each head's rotary pairs differently from Hugging Face); writing them back re-applies that
permutation. Architectures whose GGUF has no such permutation (qwen2) are copied as they are.
A model that started from a Hugging Face folder has no source GGUF to take a tokenizer
from: use llama.cpp's convert_hf_to_gguf.py for those.
"""
from __future__ import annotations

import os
from pathlib import Path

from m1.errors import M1Error

# architecture -> whether query/key rows are permuted in its GGUF
ARCHITECTURES = {"llama": True, "qwen2": False}
DTYPES = ("f16", "f32")
_DROPPED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def source_gguf_of(model_dir: Path) -> Path | None:
    """The GGUF a trained folder started from, read from its saved training config."""
    from m1.training.config import CONFIG_NAME, load_config
    from m1.training.model import resolve_source

    saved = model_dir / CONFIG_NAME
    if not saved.is_file():
        return None
    cfg = load_config(saved)
    folder, gguf_name = resolve_source(cfg.require("model"), cfg.gguf_file)
    return Path(folder) / gguf_name if gguf_name else None


def rotary_pair_order(w, n_heads: int):
    """Reorder each head's rows from Hugging Face's rotary layout (first half, second half)
    to llama.cpp's (interleaved pairs)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(model_dir: str | Path, out: str | Path | None = None, dtype: str = "f16",
                source: str | Path | None = None) -> Path:
    """Write `model_dir` as a GGUF file (default: model_dir/model-<dtype>.gguf) and return its path."""
    try:
        import gguf
        import numpy as np
        import torch
        import transformers
    except ImportError as e:
        raise M1Error(f"GGUF export needs {e.name}: pip install 'm1[train]'") from None
    model_dir = Path(model_dir)
    if dtype not in DTYPES:
        raise M1Error(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not (model_dir / "config.json").is_file():
        raise M1Error(f"{model_dir} is not a model folder (no config.json); pass the output_dir of m1 train")
    source = Path(source) if source else source_gguf_of(model_dir)
    if source is None or not source.is_file():
        raise M1Error(f"{model_dir}: no source GGUF to take the tokenizer from (the model did not start from one); "
                      "pass --source FILE.gguf, or convert with llama.cpp's convert_hf_to_gguf.py")
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    if arch not in ARCHITECTURES:
        raise M1Error(f"{source.name}: architecture {arch} is not supported for export (supported: "
                      f"{', '.join(ARCHITECTURES)}); use llama.cpp's convert_hf_to_gguf.py")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = model.config
    expected = {f"{arch}.block_count": config.num_hidden_layers, f"{arch}.embedding_length": config.hidden_size}
    for key, value in expected.items():
        if key in reader.fields and reader.fields[key].contents() != value:
            raise M1Error(f"{model_dir} does not match {source.name} ({key} {reader.fields[key].contents()} there, "
                          f"{value} here); pass the GGUF it was trained from with --source")

    out = Path(out) if out else model_dir / f"model-{dtype}.gguf"
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in _DROPPED_KEYS:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if (tied and name == "lm_head.weight") or "rotary_emb" in name:
            continue  # a tied output reads token_embd; rotary tables are recomputed
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise M1Error(f"{name}: no GGUF tensor name for it in architecture {arch}; export is not supported")
        data = tensor.detach().to(torch.float32).numpy()
        if ARCHITECTURES[arch] and gname.endswith("attn_q.weight"):
            data = rotary_pair_order(data, heads)
        elif ARCHITECTURES[arch] and gname.endswith("attn_k.weight"):
            data = rotary_pair_order(data, kv_heads)
        if dtype == "f16" and data.ndim > 1:  # norms and biases stay f32
            data = data.astype(np.float16)
        writer.add_tensor(gname, np.ascontiguousarray(data))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out
