"""The chat request `m1 serve` reads, and how its thinking budget is found.

OpenAI's chat-completions fields, plus every name other servers give a thinking budget, so a
client written for any of them gets an exact budget here with no change (the openai SDK's
`extra_body` puts them on the wire). Unknown top-level fields are ignored, as OpenAI-compatible
servers do; m1's own options sit under `m1` and are checked strictly.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from m1.serve.config import ServeConfig

Tokens = Annotated[int, Field(ge=0)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Open):
    include_usage: bool = False


class Reasoning(_Open):  # OpenRouter's and OpenAI's Responses `reasoning`
    max_tokens: Tokens | None = None
    effort: str | None = None


class ThinkingField(_Open):  # Anthropic's `thinking`
    type: str | None = None  # "enabled" | "disabled"
    budget_tokens: Tokens | None = None


class M1Options(BaseModel):
    """m1's own per-request options (`"m1": {...}` in the body); unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")
    forcing_rounds: Tokens | None = None
    ignore_str: str | None = None
    answer_max_tokens: Annotated[int, Field(gt=0)] | None = None
    adaptive: str | None = None  # e.g. "stable=3,every=64": stop when the forced answers settle
    min_thinking_tokens: Tokens | None = None


class ChatRequest(_Open):
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    # the thinking budget, by each server's name (budget_of: the first present wins)
    thinking_token_budget: Tokens | None = None  # vLLM
    reasoning: Reasoning | None = None  # OpenRouter
    thinking: ThinkingField | None = None  # Anthropic
    thinking_budget_tokens: Tokens | None = None  # llama.cpp
    reasoning_budget_tokens: Tokens | None = None  # llama.cpp
    reasoning_effort: str | None = None  # OpenAI
    chat_template_kwargs: dict[str, Any] | None = None  # enable_thinking: false means budget 0
    m1: M1Options | None = None


class BadField(ValueError):
    """A value the schema cannot see is wrong (an effort name the server has no budget for, a
    budget over its limit): the field and why."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def budget_of(req: ChatRequest, cfg: ServeConfig) -> tuple[int, str]:
    """(the request's thinking budget, the field it came from). The first present wins:
    thinking_token_budget > reasoning.max_tokens > thinking.budget_tokens >
    thinking_budget_tokens / reasoning_budget_tokens > reasoning_effort / reasoning.effort >
    the server's default; `chat_template_kwargs.enable_thinking: false` (or Anthropic's
    thinking type "disabled") turns thinking off: budget 0."""
    if (req.chat_template_kwargs or {}).get("enable_thinking") is False:
        return 0, "chat_template_kwargs.enable_thinking"
    if req.thinking is not None and req.thinking.type == "disabled":
        return 0, "thinking.type"
    reasoning, thinking = req.reasoning or Reasoning(), req.thinking or ThinkingField()
    for value, name in ((req.thinking_token_budget, "thinking_token_budget"),
                        (reasoning.max_tokens, "reasoning.max_tokens"),
                        (thinking.budget_tokens, "thinking.budget_tokens"),
                        (req.thinking_budget_tokens, "thinking_budget_tokens"),
                        (req.reasoning_budget_tokens, "reasoning_budget_tokens")):
        if value is not None:
            return _within(value, name, cfg), name
    for effort, name in ((req.reasoning_effort, "reasoning_effort"), (reasoning.effort, "reasoning.effort")):
        if effort is not None:
            if effort not in cfg.effort:
                raise BadField(name, f"{name} {effort!r} is not one this server knows: "
                                     f"{', '.join(f'{k} ({v} tokens)' for k, v in cfg.effort.items())}")
            return _within(cfg.effort[effort], name, cfg), name
    return cfg.budget, "default"


def _within(value: int, name: str, cfg: ServeConfig) -> int:
    if value > cfg.max_thinking_budget:
        raise BadField(name, f"{name} {value} is over this server's limit of {cfg.max_thinking_budget} "
                             "thinking tokens (m1 serve --max-thinking-budget)")
    return value
