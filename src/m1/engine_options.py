"""Each engine's options (`--engine-opt KEY=VALUE`, `engine_options:` in a config), typed.

The configs that name an engine (EvalConfig, the data config's difficulty models) check their
options here when they are built, so a typo or a bad value is one line naming the option before
any model loads. The options themselves are passed on as given (what a run saves and hashes).
"""
from __future__ import annotations

from typing import Annotated, Literal, Mapping

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from m1.configfile import Settings, explain, settings
from m1.errors import M1Error

# strict: a count is a whole number, not True or "8" (the engines take these values as given)
Positive = Annotated[int, Field(gt=0, strict=True)]
Seconds = Annotated[float, Field(gt=0)]
HFDtype = Literal["auto", "float32", "bfloat16", "float16"]


@settings
class LlamaCppOptions:
    n_slots: Positive = 8  # questions decoded together
    ctx_per_slot: Annotated[int, Field(ge=16, strict=True)] = 4096
    n_batch: Positive = 512
    n_threads: Positive | None = None  # None: llama.cpp's default
    verbose: bool = False
    batch_invariant: bool = False


@settings
class HFOptions:
    gguf_file: str | None = None  # a GGUF file inside the model folder
    device: str = "auto"
    dtype: HFDtype = "auto"
    batch_size: Positive = 8
    trust_remote_code: bool = False


@settings
class OpenAIOptions:
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"  # replicas: a list, or URLs separated by commas
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable that holds the key, never the key
    tokenizer: str | None = None
    concurrency: Positive | None = None  # requests in flight per server
    timeout: Seconds = 600
    server: str | None = None  # the server's kind (m1.client.dialects.SERVERS); None: probed
    skip_unreachable: bool = False
    open_questions: Positive | None = None

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        from m1.client.dialects import SERVERS

        if value is not None and value not in SERVERS:
            raise ValueError(f"unknown server kind {value!r}: choose one of {', '.join(SERVERS)}")
        return value


@settings
class VLLMOptions:
    tensor_parallel_size: Positive = 1
    dtype: str = "auto"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_model_len: Positive | None = None
    max_num_seqs: Positive = 256
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False


ENGINE_OPTIONS: dict[str, type] = {"llamacpp": LlamaCppOptions, "hf": HFOptions, "openai": OpenAIOptions,
                                   "vllm": VLLMOptions}


def check_options(engine: str, options: Mapping, where: str = "engine_options") -> None:
    """`options` fit engine `engine` (one without a model here, e.g. the tests' fake, is not checked);
    else one M1Error naming the option, e.g. "engine_options (llamacpp): n_slots is 0; it must be > 0"."""
    model = ENGINE_OPTIONS.get(engine)
    if model is None:
        return
    try:
        TypeAdapter(model).validate_python(dict(options))
    except ValidationError as e:
        raise M1Error(explain(e, model, Settings(dict(options), f"{where} ({engine})"))) from None
