"""Finding a stop in generated ids: the one place every engine asks where a stop begins and ends.

A stop token is found by its id; a stop string in the decoded text, and the token holding its
first (or last) character by bisection over decoded prefixes: a few decodes, not one per token.
"""
from __future__ import annotations

from typing import Callable, Sequence

Detokenize = Callable[[Sequence[int]], str]


def token_at(ids: Sequence[int], char_pos: int, detokenize: Detokenize) -> int:
    """Index of the token whose text holds character `char_pos` of decode(ids)."""
    lo, hi = 0, len(ids) - 1
    while lo < hi:  # smallest i with len(decode(ids[:i+1])) > char_pos
        mid = (lo + hi) // 2
        if len(detokenize(ids[: mid + 1])) > char_pos:
            hi = mid
        else:
            lo = mid + 1
    return lo


def locate_stop(ids: Sequence[int], stop: str | int, detokenize: Detokenize) -> int | None:
    """Index of the token where `stop` begins in `ids`, or None if it is not there."""
    if isinstance(stop, int):
        return list(ids).index(stop) if stop in ids else None
    pos = detokenize(ids).find(stop)
    return None if pos < 0 else token_at(ids, pos, detokenize)


def stop_end(ids: Sequence[int], stop: str, start: int, detokenize: Detokenize) -> int:
    """One past the token that completes `stop` (its first occurrence at or after `start`)."""
    lo, hi = start, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if stop in detokenize(ids[: mid + 1]):
            hi = mid
        else:
            lo = mid + 1
    return lo + 1


def find_stop(ids: list[int], stop_token_ids: Sequence[int], stop_strings: Sequence[str], hint: object,
              detokenize: Detokenize) -> tuple[int, int, str | int] | None:
    """(start, end, stop) of the earliest stop in `ids`: tokens [start, end) hold it. `hint`: the
    stop the server says fired; an id there counts even if it was not asked for (its own EOS)."""
    best: tuple[int, int, str | int] | None = None
    stops = [t for t in stop_token_ids if t in ids]
    if isinstance(hint, int) and hint in ids and hint not in stops:
        stops.append(hint)
    for t in stops:
        i = ids.index(t)
        if best is None or i < best[0]:
            best = (i, i + 1, t)
    for s in stop_strings:
        at = locate_stop(ids, s, detokenize)
        if at is not None and (best is None or at < best[0]):
            best = (at, stop_end(ids, s, at, detokenize), s)
    return best
