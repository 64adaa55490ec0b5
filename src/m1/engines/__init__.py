"""Engines: one protocol (base.Engine), several back ends, each imported lazily."""
from __future__ import annotations

import difflib
import inspect

from m1.engines.base import Engine, GenRequest, GenResult
from m1.errors import M1Error

ENGINES = ("llamacpp", "hf", "openai", "vllm")


def engine_class(name: str) -> type:
    if name == "llamacpp":
        from m1.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if name == "hf":
        from m1.engines.hf import HFEngine

        return HFEngine
    if name == "openai":
        from m1.engines.openai_server import OpenAIEngine

        return OpenAIEngine
    if name == "vllm":
        from m1.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "fake":  # a deterministic token script for tests, not a model (engines/fake.py); not listed
        from m1.engines.fake import FakeEngine

        return FakeEngine
    raise M1Error(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


def engine_options(name: str) -> list[str]:
    """The --engine-opt keys engine `name` takes."""
    params = inspect.signature(engine_class(name)).parameters
    return [p for p in params if p != "model"]


def make_engine(name: str, model: str | None = None, **options) -> Engine:
    """Build an engine by name. `model` is a path, hub id or server model name. The options are
    checked once, here, by their typed model (m1.engine_options): the engines trust them."""
    from m1.engine_options import check_options

    cls = engine_class(name)
    known = engine_options(name)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(known)}"
            raise M1Error(f"--engine-opt {key}: engine {name!r} has no such option; {hint}")
    check_options(name, options)
    return cls(model, **options)


__all__ = ["Engine", "GenRequest", "GenResult", "make_engine", "ENGINES"]
