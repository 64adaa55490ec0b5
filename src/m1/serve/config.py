"""What `m1 serve` runs and how it guards itself: one typed settings class, layered like
`m1 eval`'s (defaults < --config FILE < flags < key=value)."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from m1.config import Engine, Format
from m1.configfile import settings
from m1.engine_options import check_options
from m1.errors import M1Error
from m1.models import is_embedded, registered_name

NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]
# reasoning_effort -> thinking budget; the operator may set any names (OpenAI's low/medium/high here)
EFFORT = {"minimal": 256, "low": 1024, "medium": 4096, "high": 16384}


@settings
class ServeConfig:
    """The model and engine (as `m1 eval` takes them), the thinking defaults a request may
    override, and the server's limits."""

    engine: Engine = "llamacpp"
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    engine_options: dict = field(default_factory=dict)
    format: Format = "auto"  # as m1 eval: plain for the embedded model, m1 for any other
    format_overrides: dict = field(default_factory=dict)
    served_model_name: str | None = None  # what /v1/models lists and requests name; None: the model's name
    # Per-request defaults (the request's own fields win; see m1.serve.schema)
    budget: NonNegative = 1024  # thinking tokens when a request names no budget
    answer_max_tokens: Positive = 1024
    forcing_rounds: NonNegative = 0
    ignore_str: str = "Wait"
    min_thinking: NonNegative = 0
    temperature: Annotated[float, Field(ge=0)] = 0.0  # greedy unless a request asks otherwise
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    effort: dict[str, NonNegative] = field(default_factory=lambda: dict(EFFORT))
    # Limits
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_key_env: str | None = None  # the environment variable holding the bearer key; None: no key
    max_thinking_budget: NonNegative = 32768
    max_queue: NonNegative = 256  # requests waiting beyond those running; more get 429
    max_body: Positive = 1 << 20  # bytes
    log_content: bool = False  # log prompts and answers (off: patients' notes pass through)

    @field_validator("effort")
    @classmethod
    def _effort(cls, value: dict) -> dict:
        if not value:
            raise ValueError("needs at least one effort name, e.g. {low: 1024, medium: 4096, high: 16384}")
        return value

    @model_validator(mode="after")
    def _together(self) -> ServeConfig:
        check_options(self.engine, self.engine_options)
        if self.engine == "llamacpp" and (name := registered_name(self.model)) is not None:
            object.__setattr__(self, "model", name)
        if self.budget > self.max_thinking_budget:
            raise M1Error(f"budget {self.budget} is over max_thinking_budget {self.max_thinking_budget}")
        return self

    def resolved(self) -> ServeConfig:
        """Format "auto" decided as `m1 eval` decides it (EvalConfig.resolved)."""
        if self.format != "auto":
            return self
        embedded = self.engine == "llamacpp" and is_embedded(self.model)
        return dataclasses.replace(self, format="plain" if embedded else "m1")
