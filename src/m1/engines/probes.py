"""Option-letter probes: where an answer names its option, and how likely each letter was there.

(Names. Outside this module the results are `option_position` and `option_logprobs`; a "probe"
in m1.thinking.policies, and `Trace.probes`, is something else: an answer forced at a checkpoint
of adaptive thinking, which may carry these log-probabilities.)

A request asks for them with `GenRequest.option_letters` (the budget controller sets the
item's option letters on every answer request); the engine answers in
`GenResult.option_logprobs` and `GenResult.option_position`.

Answer position. The first generated token of the answer phase, before its stop, whose
text, stripped of whitespace and of the decoration in `DECORATION` ("(", ")", "*", "[", ".",
":", …) at both ends, is exactly one of the requested letters (case-sensitive). So in
"Final Answer: (B) …" it is the token " B" or "B", in "Final Answer: **C**" the token "C",
in "\\boxed{D}" the token "D". Known limit: a word that is itself an option letter counts
too ("A 45-year-old …" when "A" is an option), as it would for anyone reading the text.
No such token (the answer names no letter, or only inside its stop): no probe, None.

Letter log-probabilities. At the answer position, under the model's full next-token
distribution at that step (the raw logits: before temperature, top_p or any other
sampler), for each letter L: the log of the total probability of the tokens that spell L
bare or after one space, i.e. logsumexp over the ids of "L" and " L" (each where it is a
single token). So they are log-probabilities of disjoint events: their exp sums to at most 1,
and with greedy decoding the largest is the generated letter when the generated token is
one of those spellings. Engines:

  llamacpp (in process)   from the logits of that step: every letter, exact.
  hf                      from the logits of that step: every letter, exact.
  vllm (in process)       SamplingParams(logprobs=TOP_K): the top TOP_K tokens plus the
                          sampled one; a letter none of whose spellings is among them is
                          absent, and a letter with only one spelling among them is a
                          lower bound.
  openai (servers)        the same from the server's top TOP_K: vLLM, SGLang and
                          llama-cpp-python (`logprobs: TOP_K` on /v1/completions), llama.cpp's
                          llama-server (`n_probs` on /completion); another server is asked for
                          `logprobs: 5` (OpenAI's cap). A server that refuses (llama-cpp-python's
                          started with --logits_all false: HTTP 500) is not asked again.

A letter absent from the dict has no known log-probability (outside the top-k, or no
single-token spelling). The dict is None when no probe was asked for or found.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

# How many alternatives a top-k engine is asked for (vLLM's default max_logprobs is 20).
TOP_K = 20
# Stripped from both ends of a token's text before comparing it with the letters.
DECORATION = " \t\r\n\u00a0()[]{}*_.:,;'\"`"

LetterIds = Mapping[str, tuple[int, ...]]


def letter_of(text: str, letters: Sequence[str]) -> str | None:
    """The option letter a token's text names, or None (see the module docstring)."""
    s = text.strip(DECORATION)
    return s if s and s in letters else None


def spellings(letter: str) -> tuple[str, str]:
    return letter, " " + letter


def letter_token_ids(tokenize: Callable[[str], Sequence[int]], letters: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """For each letter, the ids of its single-token spellings ("L", " L")."""
    out: dict[str, tuple[int, ...]] = {}
    for letter in letters:
        ids: list[int] = []
        for s in spellings(letter):
            t = list(tokenize(s))
            if len(t) == 1 and t[0] not in ids:
                ids.append(int(t[0]))
        out[letter] = tuple(ids)
    return out


def logsumexp(values: Iterable[float]) -> float:
    vs = list(values)
    m = max(vs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in vs))


def from_logits(logits, ids: LetterIds) -> dict[str, float]:
    """Letter log-probabilities from a full row of logits (numpy array)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    m = float(z.max())
    norm = m + math.log(float(np.exp(z - m).sum()))
    return {letter: logsumexp(float(z[i]) for i in t) - norm for letter, t in ids.items() if t}


def from_top(entries: Iterable[tuple[int | None, str | None, float]], ids: LetterIds) -> dict[str, float]:
    """Letter log-probabilities from a top-k list of (token id or None, token text or None, logprob).

    An entry with an id is matched by id (the letter's single-token spellings), one with only
    text by text ("L" or " L"); an id seen twice (the sampled token is also in the top-k) counts once."""
    by_id = {i: letter for letter, t in ids.items() for i in t}
    by_text = {s: letter for letter in ids for s in spellings(letter)}
    found: dict[str, dict[object, float]] = {}
    for tid, text, lp in entries:
        if lp is None or not isinstance(lp, (int, float)) or math.isnan(lp):
            continue
        letter = by_id.get(tid) if tid is not None else by_text.get(text) if text is not None else None
        if letter is not None:
            found.setdefault(letter, {})[tid if tid is not None else text] = float(lp)
    return {letter: logsumexp(v.values()) for letter, v in found.items()}


def find_position(pieces: Iterable[str], letters: Sequence[str], end: int) -> int | None:
    """Index of the answer position among the first `end` generated tokens (`pieces`: their texts)."""
    for i, text in enumerate(pieces):
        if i >= end:
            break
        if letter_of(text, letters) is not None:
            return i
    return None
