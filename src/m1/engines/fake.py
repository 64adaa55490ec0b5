"""A fake engine for tests: a deterministic token script, no model.

`FakeEngine` is a stand-in for tests, not a model: what it "generates" means nothing. It
exists so that the budget controller, the pipelines and the evaluation can be tested in
milliseconds; the tests on the real embedded model (SmolLM2-135M through llama.cpp) are
what prove that budgets are exact on real token ids.

It is a real implementation of the engine protocol (engines/base.py), built like the
in-process engines: a `SteppedEngine` whose every step gives one token to each running
request, at most `capacity` of them, the waiting ones started lowest `GenRequest.priority`
first; stops found by base.StopMatcher, as llama.cpp's engine finds them; the LoadMeter
counted like the others (no prefix cache: every prompt counts in full as context).

Vocabulary: three ChatML special tokens, a few dozen words (most with a leading space), and
one id per character for everything else (`CHAR_BASE` + code point), so any text tokenizes
and `detokenize(tokenize(text)) == text`. Tokenizing takes the longest known piece first.

The script: the next token is a function of the whole context (prompt and generated ids),
through a 64-bit hash of the context, so greedy output is reproducible and batch-invariant
by construction, and continuing a cut context gives what one request would have given. In
order of precedence:

1. an answer: after a trigger of `Script.answers` ("Final Answer:", "<|im_start|>answer\\n",
   "</think>\\n\\n"), its answer text, with a letter of `Script.letters` picked by the hash of
   the context at the trigger, ending in <|im_end|>;
2. an end begun: after the first token(s) of a multi-token end ("</think>"), the next one;
3. otherwise one token in `end_every` (on average) starts an end of `Script.ends` (the m1
   format's "<|im_start|>", the end of turn "<|im_end|>", r1's "</think>"), and the others
   are thinking words.

With `temperature > 0` step 3 also draws from a generator seeded with `GenRequest.seed`
(the same seed, the same tokens); top_p is ignored. Option-letter probes (engines/probes.py)
are answered: at the first generated token naming a requested letter, that letter has
probability 0.5 to 0.95 (from the hash) and the other requested letters share 90% of the rest.
`latency` seconds pass per step (on the engine's worker thread, as a decode step would), so
pipeline concurrency can be exercised; `n_ctx` caps prompt plus generated ids per request, a
request reaching it ending by length, as a server's context limit does.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from m1.engines import probes
from m1.engines.base import FinishReason, GenRequest, GenResult, SteppedEngine, StopMatcher
from m1.errors import M1Error

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# What the thinking is made of (step 3 of the script).
THINKING_WORDS = (
    " the", " patient", " has", " fever", " and", " cough", " so", " we", " consider", " a", " likely",
    " diagnosis", " of", " infection", " because", " blood", " test", " shows", " high", " low", " heart",
    " rate", " pressure", " is", " not", " pain", " in", " chest", " which", " suggests", " treatment",
    " Let", " me", " check", " that", " again", " Wait", ",", ".", "\n",
)
# Known to the tokenizer besides: the delimiters' words, and the option letters bare and after a space.
OTHER_WORDS = ("Wait", "think", "answer", "Answer", " Answer", "Final", " Final", ":") + \
    tuple(s for letter in "ABCDE" for s in probes.spellings(letter))
CHAR_BASE = 256  # ids from here on are single characters: CHAR_BASE + ord(character)

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: a 64-bit bijection that spreads every input bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def extend_hash(h: int, token: int) -> int:
    """The hash of a context one token longer."""
    return _mix((h + 0x9E3779B97F4A7C15 * (token + 1)) & _MASK)


@dataclass(frozen=True)
class Script:
    """What the fake engine generates (see the module docstring)."""

    end_every: int = 16  # one thinking token in this many (on average) starts an end
    ends: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "</think>")
    answers: tuple[tuple[str, str], ...] = (
        ("Final Answer:", " {letter}<|im_end|>"),
        ("<|im_start|>answer\n", "Answer: {letter}<|im_end|>"),
        ("</think>\n\n", "Answer: {letter}<|im_end|>"),
    )
    letters: str = "ABCD"
    words: tuple[str, ...] = THINKING_WORDS

    def __post_init__(self):
        if not isinstance(self.end_every, int) or self.end_every < 1:
            raise M1Error(f"fake engine: end_every must be a whole number >= 1, got {self.end_every!r}")
        if not self.words or not self.letters:
            raise M1Error("fake engine: the script needs thinking words and answer letters")


@dataclass
class _Sequence:
    token: object  # handed back with the result
    request: GenRequest
    context: list[int]  # prompt + generated ids
    hashes: list[int]  # hashes[i]: the hash of context[:i]
    matcher: StopMatcher
    rng: random.Random | None
    generated: list[int] = field(default_factory=list)
    probe_position: int | None = None
    probe_logprobs: dict[str, float] | None = None


class FakeEngine(SteppedEngine):
    """A stand-in engine for tests: a deterministic token script, no model (module docstring)."""

    name = "fake"

    def __init__(self, model: str | None = None, capacity: int = 4, latency: float = 0.0,
                 end_every: int = 16, n_ctx: int | None = None, script: Script | None = None):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise M1Error(f"--engine-opt capacity={capacity!r}: must be a whole number >= 1")
        if not latency >= 0:
            raise M1Error(f"--engine-opt latency={latency!r}: must be >= 0 seconds")
        if n_ctx is not None and (not isinstance(n_ctx, int) or n_ctx < 2):
            raise M1Error(f"--engine-opt n_ctx={n_ctx!r}: must be a whole number >= 2")
        self.model = model
        self.latency, self.n_ctx = float(latency), n_ctx
        self.script = script if script is not None else Script(end_every=end_every)
        self._pieces: list[str] = list(SPECIALS) + list(dict.fromkeys(THINKING_WORDS + OTHER_WORDS
                                                                      + self.script.words))
        if len(self._pieces) > CHAR_BASE:
            raise M1Error(f"fake engine: at most {CHAR_BASE - len(SPECIALS)} words")
        self._ids = {p: i for i, p in enumerate(self._pieces)}
        by_length = sorted(self._pieces, key=len, reverse=True)
        self._split = re.compile("|".join(re.escape(p) for p in by_length) + "|.", re.DOTALL)
        s = self.script
        self._word_ids = [self._ids[w] for w in s.words]
        self._ends = [self.tokenize(e) for e in s.ends]
        # trigger ids, and per letter the answer's ids
        self._answers = [(self.tokenize(t), {c: self.tokenize(a.format(letter=c)) for c in s.letters})
                         for t, a in s.answers]
        self._running: list[_Sequence] = []
        self._waiting: list[tuple[int, int, object, GenRequest]] = []
        self._order = itertools.count()
        self._start_queue(capacity)

    # -- text <-> ids ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        ids = self._ids
        return [ids[p] if p in ids else CHAR_BASE + ord(p) for p in self._split.findall(text)]

    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenize(text)  # no BOS, as SmolLM2

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(self._piece(i) for i in ids)

    def _piece(self, i: int) -> str:
        if 0 <= i < len(self._pieces):
            return self._pieces[i]
        if CHAR_BASE <= i <= CHAR_BASE + 0x10FFFF:
            return chr(i - CHAR_BASE)
        raise ValueError(f"fake engine: no token with id {i}")

    def render_chat(self, messages: list[dict]) -> str:
        """ChatML, as SmolLM2's template renders it."""
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self._ids["<|im_end|>"],)

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model or "fake-script", "capacity": self.capacity,
                "latency": self.latency, "n_ctx": self.n_ctx, "script": asdict(self.script)}

    # -- the script -------------------------------------------------------------------
    def _letter(self, h: int) -> str:
        letters = self.script.letters
        return letters[_mix(h ^ 0x5DEECE66D) % len(letters)]

    def next_token(self, context: Sequence[int], hashes: Sequence[int] | None = None,
                   rng: random.Random | None = None) -> int:
        """The token the script puts after `context` (`hashes`: each prefix's hash, if known)."""
        if hashes is None:
            hashes = self.context_hashes(context)
        n = len(context)
        for trigger, by_letter in self._answers:  # 1. an answer
            longest = max(len(a) for a in by_letter.values())
            for j in range(min(longest, n - len(trigger) + 1)):
                at = n - j
                if list(context[at - len(trigger):at]) != trigger:
                    continue
                answer = by_letter[self._letter(hashes[at])]
                if j < len(answer) and list(context[at:]) == answer[:j]:
                    return answer[j]
        for end in self._ends:  # 2. an end begun
            for j in range(min(len(end) - 1, n), 0, -1):
                if list(context[n - j:]) == end[:j]:
                    return end[j]
        x = hashes[n]  # 3. an end, or a word
        if rng is not None:
            x = _mix(x ^ rng.getrandbits(64))
        if x % self.script.end_every == 0:
            return self._ends[(x >> 20) % len(self._ends)][0]
        return self._word_ids[(x >> 32) % len(self._word_ids)]

    @staticmethod
    def context_hashes(context: Sequence[int]) -> list[int]:
        """Each prefix's hash: [i] is the hash of context[:i] (extend_hash adds a token)."""
        out = [0]
        for t in context:
            out.append(extend_hash(out[-1], t))
        return out

    # -- generation (on the worker thread, see SteppedEngine) --------------------------
    def check_request(self, r: GenRequest) -> None:
        if not r.prompt_ids:
            raise M1Error("empty prompt")
        if r.max_new_tokens < 1:
            raise M1Error(f"max_new_tokens must be >= 1, got {r.max_new_tokens}")
        if self.n_ctx is not None and len(r.prompt_ids) >= self.n_ctx:
            raise M1Error(f"a prompt of {len(r.prompt_ids)} tokens leaves no room in the fake engine's "
                          f"context of {self.n_ctx}")

    def _advance(self, new):
        for req, token in new:
            heapq.heappush(self._waiting, (req.priority, next(self._order), token, req))
        while self._waiting and len(self._running) < self.capacity:
            _, _, token, req = heapq.heappop(self._waiting)
            self._running.append(self._start(token, req))
        self.meter.set(len(self._running))
        finished: list[tuple[object, GenResult]] = []
        if not self._running:
            return finished
        if self.latency:
            time.sleep(self.latency)
        for seq in list(self._running):
            result = self._step(seq)
            if result is not None:
                self._running.remove(seq)
                finished.append((seq.token, result))
        self.meter.set(len(self._running))
        return finished

    def _start(self, token: object, req: GenRequest) -> _Sequence:
        self.meter.count(context=len(req.prompt_ids), requests=1)
        context = list(req.prompt_ids)
        rng = random.Random(req.seed) if req.temperature > 0 else None
        matcher = StopMatcher(req.stop_token_ids, req.stop_strings, self.detokenize)
        return _Sequence(token, req, context, self.context_hashes(context), matcher, rng)

    def _step(self, seq: _Sequence) -> GenResult | None:
        """One token for `seq`; its result when that token finished it."""
        req = seq.request
        tok = self.next_token(seq.context, seq.hashes, seq.rng)
        self.meter.count(generated=1)
        if req.option_letters and seq.probe_position is None:
            letter = probes.letter_of(self._piece(tok), req.option_letters)
            if letter is not None:
                seq.probe_position = len(seq.generated)
                seq.probe_logprobs = self._letter_logprobs(letter, req.option_letters, seq.hashes[-1])
        seq.generated.append(tok)
        seq.context.append(tok)
        seq.hashes.append(extend_hash(seq.hashes[-1], tok))
        stop = seq.matcher.push(tok)
        reason: FinishReason
        if stop is not None:
            reason, idx = "stop", seq.matcher.stop_index
        elif len(seq.generated) >= req.max_new_tokens or (self.n_ctx is not None and len(seq.context) >= self.n_ctx):
            reason, idx = "length", len(seq.generated)
        else:
            return None
        found = seq.probe_position is not None and seq.probe_position < idx
        return GenResult(token_ids=list(seq.generated), text=self.detokenize(seq.generated), finish_reason=reason,
                         stop_index=idx, matched_stop=stop,
                         option_logprobs=seq.probe_logprobs if found else None,
                         option_position=seq.probe_position if found else None)

    @staticmethod
    def _letter_logprobs(letter: str, letters: Sequence[str], h: int) -> dict[str, float]:
        top = 0.5 + 0.45 * (_mix(h ^ 0xC0FFEE) % 1000) / 999
        others = [c for c in dict.fromkeys(letters) if c != letter]
        rest = 0.9 * (1 - top) / len(others) if others else 0.0
        return {letter: math.log(top), **{c: math.log(rest) for c in others if rest > 0}}

    def _abandon(self) -> None:
        self._running.clear()
        self._waiting.clear()
        self.meter.set(0)

    def _drop(self, gone) -> None:
        self._running = [seq for seq in self._running if seq.token not in gone]
        self._waiting = [w for w in self._waiting if w[2] not in gone]
        heapq.heapify(self._waiting)
        self.meter.set(len(self._running))

    def _progress(self, sent):
        return {seq.token: seq.generated[sent[seq.token]:] for seq in self._running
                if seq.token in sent and len(seq.generated) > sent[seq.token]}

    def close(self) -> None:
        self._close_worker()
