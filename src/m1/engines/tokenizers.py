"""Tokenizers, apart from generation: the one place m1 speaks to Hugging Face tokenizers.

An engine turns text into the ids it generates from and back; the controller counts budgets on
those ids. Every engine built on a Hugging Face tokenizer (transformers, vLLM, a server driven
with a local tokenizer) wraps it in `HFTokenizer`, so prompt encoding, decoding, chat templates
and end-of-sequence ids follow one rule everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from m1.errors import M1Error, first_line


class Tokenizer(Protocol):
    @property
    def bos_token_id(self) -> int | None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def render_chat(self, messages: list[dict]) -> str: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...


class HFTokenizer:
    """A transformers tokenizer. `extra_eos`: end ids the model's generation config adds (instruct
    models often end a turn on a second id)."""

    def __init__(self, tok, name: str, extra_eos: Sequence[int] = ()):
        self.tok, self.name = tok, name
        # encode(), not __call__: vLLM's own tokenizer wrappers have only encode/decode
        first = list(tok.encode("", add_special_tokens=True))[:1]
        # a BOS only where the tokenizer itself adds one (Llama does, Qwen does not)
        self.bos_token_id: int | None = first[0] if first and first[0] == tok.bos_token_id else None
        own = (tok.eos_token_id,) if tok.eos_token_id is not None else ()
        self._eos = tuple(sorted(set(own) | set(extra_eos)))

    @classmethod
    def load(cls, source: str, **options) -> HFTokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise M1Error("a Hugging Face tokenizer needs transformers: pip install 'm1[hf]'") from None
        try:
            return cls(AutoTokenizer.from_pretrained(source, **options), source)
        except (OSError, ValueError) as e:
            raise M1Error(f"cannot load tokenizer {source}: {first_line(e)}") from None

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenize(text)
        bos = self.bos_token_id
        return [bos] + ids if bos is not None and ids[:1] != [bos] else ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def render_chat(self, messages: list[dict]) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise M1Error(f"{self.name} has no chat template; use a chat/instruct model or a plain prompt format")
        return str(self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos


def load_tokenizer(source: str) -> Tokenizer:
    """Tokenizer and chat template without a model: from a .gguf file or an HF tokenizer folder / hub id."""
    if str(source).endswith(".gguf"):
        if not Path(source).is_file():
            raise M1Error(f"tokenizer file not found: {source} (pass an existing .gguf file)")
        from m1.engines.llamacpp import GGUFTokenizer

        return GGUFTokenizer(source, vocab_only=True)
    return HFTokenizer.load(source)
