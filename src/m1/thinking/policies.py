"""When to stop thinking: adaptive stopping policies, shared by the offline simulation and the online mode.

A policy watches a question's thinking at *checkpoints* and, after a *probe* (an answer forced
there, as at a budget cut), says whether to stop and answer with that probe's answer. (A probe's
`option_logprobs` are read by the engine as m1.engines.probes describes; that module's "probes"
are those log-probabilities, not forced answers.)
Nothing here touches an engine: the same objects decide in `m1 eval --adaptive` (online) and in
the report's replay of a dense one-pass sweep (offline, `simulate`), so on the same probes both
stop at the same place with the same answer, by construction.

Checkpoints (`every`, precisely). Thinking length counts the engine's token ids, as budgets do
(forced ignore strings included). A checkpoint is a moment where the thinking holds exactly
k * every tokens, k = 1, 2, ...: `policy.is_checkpoint(tokens)` is `tokens % every == 0`.
`every=None` makes every point the caller offers a checkpoint (offline: every budget of the run;
online: every cut the caller makes). Offline, the checkpoints are the run's budgets that are
multiples of `every`; the replay equals an online run only where the run has every multiple of
`every` up to its largest budget (`missing_checkpoints` lists the ones it lacks).

The loop, online and offline alike (`Episode` holds its state):

    episode = Episode(policy, options=("A", "B", "C", "D"))
    # at each cut of the thinking, `tokens` long, whose text so far is `thinking`:
    if episode.checkpoint(tokens, thinking):            # a checkpoint the policy wants to probe
        letter, logprobs = <force an answer here>       # graded letter (None: unparsed), option log p's
        if episode.probe(letter, logprobs):             # True: stop; answer `letter`, `tokens` used
            ...
    # thinking that ends by itself before a checkpoint stops the question ("natural end");
    # thinking that reaches the largest budget stops there ("budget").

`checkpoint` computes the probe's `new_text`: the thinking text added since the previous
checkpoint (the whole thinking at the first one), whether or not that checkpoint was probed.
`probe` appends `Probe(budget, letter, option_logprobs, new_text, options)` to `episode.history`
and returns `policy.decide(history)`. A caller may skip `Episode` and call `decide` on its own
list of `Probe`s (or of plain tuples in that order). Policies are frozen and keep no state (the
Episode holds a question's), so one policy object serves every question, concurrently.

Policies:
- `Stable(m, every)`: stop at the first probe where the last m probed answers are the same
  parsed letter (an unparsed answer breaks the streak).
- `Confidence(tau, every)`: stop at the first probe with a parsed letter whose top option
  probability is >= tau: softmax of `option_logprobs` over the question's options (renormalised
  over the options, so probability mass on other tokens does not count). A probe without
  log-probabilities never stops (engines that give none).
- `Deer(tau, switch_words, every)`: probe only at checkpoints whose new text holds a switch word
  ("Wait", "Alternatively", "Hmm", "But": whole words, case-sensitive, so a mid-sentence "but"
  does not count), and stop there when the confidence is >= tau (after DEER, "Dynamic Early Exit
  in Reasoning", Yang et al. 2025, which tries an answer at such transitions of thought).
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Mapping, NamedTuple, Sequence

if TYPE_CHECKING:
    from m1.runs import Trace

# Why a question stopped.
STABLE = "stable"
CONFIDENT = "confident"
NATURAL_END = "natural end"  # the model ended its thinking before the policy stopped it
BUDGET = "budget"  # the largest budget (the cap) was reached first
REASONS = (STABLE, CONFIDENT, NATURAL_END, BUDGET)
SWITCH_WORDS = ("Wait", "Alternatively", "Hmm", "But")


class Probe(NamedTuple):
    """An answer forced at a checkpoint."""

    budget: int  # thinking tokens at the checkpoint
    letter: str | None  # the graded answer letter; None: unparsed
    option_logprobs: Mapping[str, float] | None  # log p of each option letter at the answer position
    new_text: str = ""  # thinking text added since the previous checkpoint
    options: tuple[str, ...] = ()  # the question's option letters (() : every key of option_logprobs)


def confidence(option_logprobs: Mapping[str, float] | None, options: Sequence[str] = ()) -> float | None:
    """The top option's probability, renormalised over the options (softmax of their log p's);
    None without log-probabilities for any option."""
    if not option_logprobs:
        return None
    values = [v for k, v in option_logprobs.items()
              if (not options or k in options) and v is not None and not math.isnan(v)]
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return None
    return 1.0 / sum(math.exp(v - top) for v in values)


class Policy(ABC):
    """A stopping rule: `decide(history)` after each probe (True: stop, answer with the last probe)."""

    reason: ClassVar[str]  # why a question stops when decide says so
    every: int | None

    def is_checkpoint(self, tokens: int) -> bool:
        return self.every is None or (tokens > 0 and tokens % self.every == 0)

    def worth_probing(self, new_text: str) -> bool:
        """Whether a checkpoint with this new text is worth an answer (the probe costs one)."""
        return True

    @abstractmethod
    def decide(self, history: Sequence[Probe]) -> bool:
        """After a probe (history[-1]; history holds every probe of the question so far, in order)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def params(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.name}({self.params})"


def _check_every(every: int | None) -> None:
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be a positive number of tokens or None, got {every!r}")


def _check_tau(tau: float) -> None:
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be a probability in (0, 1], got {tau!r}")


def _every(every: int | None) -> str:
    return "each" if every is None else str(every)


@dataclass(frozen=True)
class Stable(Policy):
    """Stop when the last m probed answers agree (parsed letters only)."""

    m: int = 3
    every: int | None = None
    reason: ClassVar[str] = STABLE

    def __post_init__(self):
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"Stable needs m >= 1 answers in a row, got {self.m!r}")
        _check_every(self.every)

    def decide(self, history: Sequence[Probe]) -> bool:
        last = [p[1] for p in history[-self.m:]]  # the letters (a Probe or a plain tuple)
        return len(last) == self.m and last[-1] is not None and all(x == last[-1] for x in last)

    @property
    def params(self) -> str:
        return f"m={self.m}, every={_every(self.every)}"


@dataclass(frozen=True)
class Confidence(Policy):
    """Stop when the top option's renormalised probability reaches tau."""

    tau: float = 0.9
    every: int | None = None
    reason: ClassVar[str] = CONFIDENT

    def __post_init__(self):
        _check_tau(self.tau)
        _check_every(self.every)

    def decide(self, history: Sequence[Probe]) -> bool:
        return _confident(history[-1], self.tau) if history else False

    @property
    def params(self) -> str:
        return f"tau={self.tau:g}, every={_every(self.every)}"


@dataclass(frozen=True)
class Deer(Policy):
    """Probe only where the thinking switched course (a switch word in the new text); stop there
    when the top option's renormalised probability reaches tau."""

    tau: float = 0.9
    switch_words: tuple[str, ...] = SWITCH_WORDS
    every: int | None = None
    reason: ClassVar[str] = CONFIDENT

    def __post_init__(self):
        _check_tau(self.tau)
        _check_every(self.every)
        if not self.switch_words or not all(isinstance(w, str) and w.strip() for w in self.switch_words):
            raise ValueError(f"Deer needs switch words, got {self.switch_words!r}")
        object.__setattr__(self, "switch_words", tuple(self.switch_words))

    def switched(self, text: str) -> bool:
        """Whether `text` holds a switch word (whole word, case-sensitive)."""
        return _switch_pattern(self.switch_words).search(text) is not None

    def worth_probing(self, new_text: str) -> bool:
        return self.switched(new_text)

    def decide(self, history: Sequence[Probe]) -> bool:
        if not history:
            return False
        last = history[-1]
        return len(last) > 3 and self.switched(last[3]) and _confident(last, self.tau)

    @property
    def params(self) -> str:
        words = "" if self.switch_words == SWITCH_WORDS else f", words={'/'.join(self.switch_words)}"
        return f"tau={self.tau:g}{words}, every={_every(self.every)}"


@lru_cache(maxsize=64)
def _switch_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b")


def _confident(probe: Probe, tau: float) -> bool:
    """A parsed letter at confidence >= tau (a Probe or a plain tuple in its order)."""
    if probe[1] is None:
        return False
    c = confidence(probe[2], probe[4] if len(probe) > 4 else ())
    return c is not None and c >= tau


def added_text(before: str, now: str) -> str:
    """The text `now` adds to `before`: past their common prefix (a cut's text normally extends
    the previous one; where decoding differs at the seam, from the first differing character)."""
    if now.startswith(before):
        return now[len(before):]
    lo, hi = 0, min(len(before), len(now))  # longest common prefix, by halving
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if now[:mid] == before[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return now[lo:]


class Episode:
    """One question under a policy: the checkpoint / probe / decide loop (see the module docstring)."""

    def __init__(self, policy: Policy, options: Sequence[str] = ()):
        self.policy = policy
        self.options = tuple(options)
        self.history: list[Probe] = []
        self._text = ""  # the thinking at the previous checkpoint
        self._pending: tuple[int, str] | None = None

    def checkpoint(self, tokens: int, thinking: str) -> bool:
        """The thinking is `tokens` long and reads `thinking`. True: probe here (then call `probe`);
        False: not a checkpoint of the policy, or one not worth a probe."""
        if not self.policy.is_checkpoint(tokens):
            return False
        new, self._text = added_text(self._text, thinking), thinking
        self._pending = (tokens, new) if self.policy.worth_probing(new) else None
        return self._pending is not None

    def probe(self, letter: str | None, option_logprobs: Mapping[str, float] | None) -> bool:
        """The answer forced at the checkpoint `checkpoint` just accepted. True: stop with it."""
        if self._pending is None:
            raise RuntimeError("Episode.probe without a checkpoint that asked for one")
        tokens, new = self._pending
        self._pending = None
        self.history.append(Probe(tokens, letter, option_logprobs, new, self.options))
        return self.policy.decide(self.history)


@dataclass(frozen=True)
class Outcome:
    """Where a policy stopped one question, offline."""

    letter: str | None
    correct: bool
    tokens: int  # thinking tokens used: the stopping checkpoint, the natural end, or the largest budget
    reason: str  # one of REASONS
    budget: int  # the run's budget whose trace holds the answer
    probes: int  # answers forced at checkpoints (the final answer after a natural end or the cap not counted)


def simulate(policy: Policy, traces: Sequence[Trace]) -> Outcome:
    """Replay one question's dense one-pass sweep (its traces at every budget) under `policy`:
    the online loop, with each probe read from the trace at that budget."""
    if not traces:
        raise ValueError("simulate needs the question's traces")
    ts = sorted(traces, key=lambda t: t.budget)
    episode = Episode(policy, tuple(ts[0].options))
    for t in ts:
        if t.thinking_ended == "natural":  # it ended by itself at t.thinking_tokens <= t.budget
            return Outcome(t.letter, bool(t.correct), t.thinking_tokens, NATURAL_END, t.budget, len(episode.history))
        if episode.checkpoint(t.budget, t.thinking) and episode.probe(t.letter, t.option_logprobs):
            return Outcome(t.letter, bool(t.correct), t.budget, policy.reason, t.budget, len(episode.history))
    last = ts[-1]
    return Outcome(last.letter, bool(last.correct), last.thinking_tokens, BUDGET, last.budget, len(episode.history))


def parse_policy(spec: str) -> Policy:
    """A policy from `--adaptive` text: exactly one of stable=M, confidence=TAU, deer=TAU, with
    every=N (tokens between checkpoints; required online) and, for deer, switch_words=A|B|C.
    E.g. "stable=3,every=64", "confidence=0.9,every=32", "deer=0.9,every=32,switch_words=Wait|But".
    Bad input raises ValueError with one line saying what to write."""
    from difflib import get_close_matches

    known = ("stable", "confidence", "deer", "every", "switch_words")
    fields: dict[str, str] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise ValueError(f"{part!r} is not key=value (e.g. stable=3,every=64)")
        if key not in known:
            near = get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown key {key!r}{hint} (known: {', '.join(known)})")
        if key in fields:
            raise ValueError(f"{key} given twice")
        fields[key] = value.strip()
    kinds = [k for k in ("stable", "confidence", "deer") if k in fields]
    if len(kinds) != 1:
        raise ValueError("name exactly one policy: stable=M, confidence=TAU or deer=TAU (e.g. stable=3,every=64)")
    if "every" not in fields:
        raise ValueError("every=N is needed: the thinking tokens between two checkpoints (e.g. every=64)")
    if "switch_words" in fields and kinds[0] != "deer":
        raise ValueError("switch_words applies to deer only")

    def number(key: str, kind: type) -> float:
        try:
            return kind(fields[key])
        except ValueError:
            raise ValueError(f"{key} must be a {'whole number' if kind is int else 'number'}, "
                             f"got {fields[key]!r}") from None

    every = int(number("every", int))
    if kinds[0] == "stable":
        return Stable(int(number("stable", int)), every)
    tau = float(number(kinds[0], float))
    if kinds[0] == "confidence":
        return Confidence(tau, every)
    words = tuple(w.strip() for w in fields.get("switch_words", "|".join(SWITCH_WORDS)).split("|") if w.strip())
    return Deer(tau, words, every)


def policy_spec(policy: Policy) -> str:
    """The `--adaptive` text that `parse_policy` reads back to `policy` (what a run saves)."""
    if isinstance(policy, Stable):
        head = f"stable={policy.m}"
    elif isinstance(policy, Deer):
        head = f"deer={policy.tau:g}"
        if policy.switch_words != SWITCH_WORDS:
            head += ",switch_words=" + "|".join(policy.switch_words)
    elif isinstance(policy, Confidence):
        head = f"confidence={policy.tau:g}"
    else:
        raise TypeError(f"no spec for {policy!r}")
    return f"{head},every={policy.every}"


def missing_checkpoints(policy: Policy, budgets: Sequence[int]) -> list[int]:
    """Multiples of the policy's `every` up to the largest budget that are not budgets: checkpoints
    an online run would probe and a replay of these budgets cannot ([] for every=None)."""
    if policy.every is None or not budgets:
        return []
    have = set(budgets)
    return [k for k in range(policy.every, max(budgets) + 1, policy.every) if k not in have]


__all__ = ["BUDGET", "CONFIDENT", "NATURAL_END", "REASONS", "STABLE", "SWITCH_WORDS", "Confidence", "Deer",
           "Episode", "Outcome", "Policy", "Probe", "Stable", "added_text", "confidence", "missing_checkpoints",
           "parse_policy", "policy_spec", "simulate"]
