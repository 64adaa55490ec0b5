"""The engine protocol: token ids in, token ids out.

Every budget in m1 is counted on the ids an engine returns, never by re-tokenizing
text, so an engine must report exactly which tokens it generated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenRequest:
    """One generation: continue `prompt_ids` for at most `max_new_tokens` tokens."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class GenResult:
    """What an engine generated for one request.

    `token_ids` holds every generated token, including the token(s) that completed a
    stop. `stop_index` is how many of them come before the stop began, so
    `token_ids[:stop_index]` is the content without the stop; it equals
    `len(token_ids)` when generation ended by length.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stop_index: int
    matched_stop: str | int | None = None
    # "exact" when the ids came from the engine itself; "retokenized" when a server
    # gave only text and the ids were recovered by tokenizing it (documented fallback).
    token_source: str = "exact"


@runtime_checkable
class Engine(Protocol):
    """A text generator m1 can drive. See engines/llamacpp.py for the reference one."""

    name: str

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Run all requests (batched as the engine sees fit); results in input order."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        ...

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a full prompt: like tokenize, plus BOS where the model wants one."""
        ...

    def render_chat(self, messages: list[dict]) -> str:
        """The model's own chat template over `messages`, ready for the assistant turn."""
        ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ...

    def describe(self) -> dict:
        """What produced the tokens: engine, model path or id, file hash, versions."""
        ...

    def close(self) -> None:
        ...


@dataclass
class StopMatcher:
    """Incremental stop detection shared by the in-process engines.

    Feed generated ids one at a time; `push` returns the stop that fired (or None).
    Stop strings are searched in the decoded text of the generated tokens, so a stop
    string spanning several tokens is found on the token that completes it.
    """

    stop_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    detokenize: object  # Callable[[Sequence[int]], str]
    ids: list[int] = field(default_factory=list)
    stop_index: int | None = None

    def push(self, token_id: int) -> str | int | None:
        self.ids.append(token_id)
        if token_id in self.stop_token_ids:
            self.stop_index = len(self.ids) - 1
            return token_id
        if not self.stop_strings:
            return None
        # Only the tail can contain a newly completed stop string.
        longest = max(len(s) for s in self.stop_strings)
        text = self.detokenize(self.ids)
        for s in self.stop_strings:
            pos = text.find(s, max(0, len(text) - longest - 32))
            if pos >= 0:
                self.stop_index = self._token_index_at(pos)
                return s
        return None

    def _token_index_at(self, char_pos: int) -> int:
        """Index of the token whose text contains character `char_pos`."""
        for i in range(len(self.ids)):
            if len(self.detokenize(self.ids[: i + 1])) > char_pos:
                return i
        return len(self.ids) - 1
