"""Engines: one protocol (base.Engine), several back ends, each imported lazily."""
from __future__ import annotations

from m1.engines.base import Engine, GenRequest, GenResult
from m1.errors import M1Error

ENGINES = ("llamacpp", "hf", "openai", "vllm")


def make_engine(name: str, model: str | None = None, **options) -> Engine:
    """Build an engine by name. `model` is a path, hub id or server model name."""
    if name == "llamacpp":
        from m1.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(model, **options)
    if name == "hf":
        from m1.engines.hf import HFEngine

        return HFEngine(model, **options)
    if name == "openai":
        from m1.engines.openai_server import OpenAIEngine

        return OpenAIEngine(model, **options)
    if name == "vllm":
        from m1.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **options)
    raise M1Error(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


__all__ = ["Engine", "GenRequest", "GenResult", "make_engine", "ENGINES"]
