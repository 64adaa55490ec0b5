"""A question's tokens as they are decided: thinking and answer ids streamed out of the controller.

The engine hands over each round's generated ids as it makes them (engines/base.py), but not
all of them stay: a round runs up to `len(think_end)` tokens past the budget, and the tokens
that spell a stop string are not content. `Round` passes on only ids the round is sure to keep:
never past the room the budget leaves, and holding back as many ids as a stop string could
span until the round ends. So what a listener receives, in order, is exactly the thinking and
the answer the finished request records (tests/test_stream.py).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence


class Listener(Protocol):
    """Gets one question's ids as they are decided: the thinking in context order (generated
    ids and forced ignore strings), then the answer."""

    def thinking(self, ids: list[int]) -> None: ...

    def answer(self, ids: list[int]) -> None: ...


def holdback(stop_strings: Sequence[str]) -> int:
    """How many trailing ids may still turn out to be part of a stop string: as many as the
    longest has bytes (every token spells at least one). Stop tokens are seen by id (Round)."""
    return max([0] + [len(s.encode("utf-8")) for s in stop_strings])


class Round:
    """One request's ids on their way to `emit`: at most `room` of them, the last `hold` held
    back until `finish` says how many the request kept, and a last id that is a stop token too
    (a stop token ends a result, so only the last id can be one)."""

    def __init__(self, emit: Callable[[list[int]], None], room: int, hold: int, stop_ids: Sequence[int] = ()):
        self.emit, self.room, self.hold = emit, room, hold
        self.stop_ids = frozenset(stop_ids)
        self.ids: list[int] = []
        self.sent = 0

    def __call__(self, ids: list[int]) -> None:
        self.ids += ids
        hold = max(self.hold, 1 if self.ids and self.ids[-1] in self.stop_ids else 0)
        safe = min(self.room, len(self.ids) - hold)
        if safe > self.sent:
            self.emit(self.ids[self.sent:safe])
            self.sent = safe

    def finish(self, kept: Sequence[int]) -> None:
        """The request is done and kept `kept` (a prefix of what it generated): the rest of it goes out."""
        if len(kept) > self.sent:
            self.emit(list(kept[self.sent:]))
            self.sent = len(kept)


class TextStream:
    """Text of a growing list of ids, in pieces: each `push` returns the new text that is
    settled (a multi-byte character split across tokens waits for its last byte). Decodes a
    short window, not the whole list, the way vLLM's incremental detokenizer does; `close`
    returns whatever makes the pieces add up to `detokenize(all ids)`."""

    def __init__(self, detokenize: Callable[[Sequence[int]], str]):
        self.detokenize = detokenize
        self.ids: list[int] = []
        self.text = ""  # what the pieces returned so far add up to
        self._start = self._read = 0  # window: ids[_start:_read] decode to text already returned

    def push(self, ids: Sequence[int]) -> str:
        self.ids += ids
        before = self.detokenize(self.ids[self._start:self._read])
        now = self.detokenize(self.ids[self._start:])
        if len(now) <= len(before) or now.endswith("\ufffd") or not now.startswith(before):
            return ""
        piece = now[len(before):]
        self._start, self._read = self._read, len(self.ids)
        self.text += piece
        return piece

    def close(self) -> str:
        full = self.detokenize(self.ids)
        if not full.startswith(self.text):  # a tokenizer whose pieces do not concatenate: cannot happen
            return ""                         # with byte-level vocabularies; nothing sent can be taken back
        piece = full[len(self.text):]
        self.text = full
        return piece
