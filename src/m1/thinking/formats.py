"""Reasoning formats: where thinking starts and ends, and how the answer is forced."""
from __future__ import annotations

from dataclasses import dataclass

from m1.errors import M1Error


@dataclass(frozen=True)
class ReasoningFormat:
    """Delimiters of one reasoning style.

    think_start  appended after the assistant header; the model thinks from there.
    think_end    the model ends its thinking by emitting this (None: no delimiter,
                 the model just answers and ends its turn — the `plain` format).
    answer_start appended when thinking ended by itself.
    answer_forced appended when the budget cut thinking off (forces an answer).
    answer_end   ends the answer (besides the model's end-of-sequence tokens).
    """

    name: str
    think_start: str
    think_end: str | None
    answer_start: str
    answer_forced: str
    answer_end: str | None = "<|im_end|>"

    def reply(self, reasoning: str, answer: str) -> str:
        """A training target in this format: thinking, the answer delimiter, "Answer: ..."."""
        return f"{self.think_start}{reasoning}\n{self.answer_start}Answer: {answer}"


FORMATS: dict[str, ReasoningFormat] = {
    "m1": ReasoningFormat(
        name="m1",
        think_start="<|im_start|>think\n",
        think_end="<|im_start|>",
        answer_start="<|im_start|>answer\n",
        answer_forced="<|im_start|>answer\nFinal Answer:",
    ),
    "r1": ReasoningFormat(
        name="r1",
        think_start="<think>\n",
        think_end="</think>",
        answer_start="</think>\n\n",
        answer_forced="\n</think>\n\nFinal Answer:",
    ),
    "plain": ReasoningFormat(
        name="plain",
        think_start="",
        think_end=None,
        answer_start="",
        answer_forced="\nFinal Answer:",
    ),
}
FORMATS["s1"] = FORMATS["m1"]


def get_format(name: str, **overrides: str) -> ReasoningFormat:
    """A preset by name, with any delimiter replaced by a custom string from config."""
    if name not in FORMATS:
        raise M1Error(f"unknown reasoning format {name!r}: choose one of {', '.join(FORMATS)}")
    base = FORMATS[name]
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(fields) - set(ReasoningFormat.__dataclass_fields__) - {"name"}
    if unknown:
        raise M1Error(f"unknown reasoning-format field(s) {sorted(unknown)}")
    if not fields:
        return base
    return ReasoningFormat(**{**base.__dict__, **fields, "name": f"{name}+custom"})
