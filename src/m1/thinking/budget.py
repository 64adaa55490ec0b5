"""Exact per-question thinking budgets, budget forcing, and the answer phase.

Accounting. A question's thinking is the token ids between the think-start delimiter
and the answer delimiter, as they sit in the model's context: the tokens the model
generated plus any ignore string ("Wait") that forcing inserted. It never holds more
than B ids. Each generation round may run `len(think_end)` tokens past the remaining
budget so that a model ending its thinking on exactly the B-th token is seen as ending
by itself; anything past B is dropped, never kept in context.

Why one run at the largest budget answers every smaller one: under greedy decoding
the run at budget B sees the same context as the run at B' > B until its thinking
reaches B ids, so its thinking is the first B ids of the longer run's, cut by the
budget (`Thinking.at_budget`). A forcing round happens at the same position in both,
and a round whose ignore string does not fit is a budget cut in both, which keeps
the prefix property with forcing on. Under sampling the same holds in distribution.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

from m1.engines.base import Engine, GenRequest
from m1.errors import M1Error
from m1.thinking.formats import ReasoningFormat

Ending = Literal["natural", "budget"]


@dataclass(frozen=True)
class ThinkingParams:
    """How to think and answer. `budget` caps thinking ids per question."""

    budget: int
    forcing_rounds: int = 0
    ignore_str: str = "Wait"
    answer_max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.budget <= 0:
            raise M1Error(f"thinking budget must be a positive number of tokens, got {self.budget}")
        if self.forcing_rounds < 0:
            raise M1Error(f"forcing rounds must be >= 0, got {self.forcing_rounds}")
        if self.answer_max_tokens <= 0:
            raise M1Error(f"answer max tokens must be positive, got {self.answer_max_tokens}")


@dataclass
class Thinking:
    """One question's thinking, as ids in context."""

    ids: list[int]
    ended: Ending
    forced_at: list[int] = field(default_factory=list)  # positions where "Wait" went in
    finish_reasons: list[str] = field(default_factory=list)
    generated: int = 0  # ids the engine produced, dropped delimiters included
    # Text of the stop that ended the last round (the think delimiter, or the end of the
    # turn when the model skipped it); None when the budget ended thinking.
    stop: str | None = None

    @property
    def rounds(self) -> int:
        return len(self.forced_at)

    def at_budget(self, budget: int) -> "Thinking":
        """The thinking a run at `budget` would have produced (see module docstring)."""
        if self.ended == "natural" and len(self.ids) <= budget:
            return self
        return Thinking(
            ids=self.ids[:budget],
            ended="budget",
            forced_at=[p for p in self.forced_at if p < budget],
            finish_reasons=self.finish_reasons,
            generated=self.generated,
        )


@dataclass
class Answer:
    ids: list[int]
    text: str
    finish_reason: str
    prefix: str  # the answer delimiter that was appended before generating


def request_seed(base: int, *keys: object) -> int:
    """A stable per-request seed, so reruns and resumed runs sample the same."""
    h = hashlib.sha256(repr((base,) + keys).encode()).digest()
    return int.from_bytes(h[:4], "little")


class BudgetController:
    """Drives an engine through think → (force) → answer for a batch of prompts."""

    def __init__(self, engine: Engine, fmt: ReasoningFormat, params: ThinkingParams):
        self.engine, self.fmt, self.params = engine, fmt, params
        tok = engine.tokenize
        self.think_start_ids = tok(fmt.think_start) if fmt.think_start else []
        self.ignore_ids = tok(params.ignore_str) if params.ignore_str else []
        if params.forcing_rounds and not self.ignore_ids:
            raise M1Error("budget forcing needs a non-empty ignore string (--ignore-str)")
        # Ending the turn during thinking also ends thinking.
        end_ids, end_strs = self._stops(fmt.answer_end)
        think_ids, think_strs = self._stops(fmt.think_end)
        self.think_stop_ids = tuple(dict.fromkeys(think_ids + end_ids + list(engine.eos_token_ids)))
        self.think_stop_strs = tuple(think_strs + end_strs)
        self.answer_stop_ids = tuple(dict.fromkeys(end_ids + list(engine.eos_token_ids)))
        self.answer_stop_strs = tuple(end_strs)
        self.delimiter_len = max([len(tok(fmt.think_end))] if fmt.think_end else [1])

    def _stops(self, text: str | None) -> tuple[list[int], list[str]]:
        """A delimiter that is one token stops by id (exact); longer ones by string."""
        if not text:
            return [], []
        ids = self.engine.tokenize(text)
        return (ids, []) if len(ids) == 1 else ([], [text])

    def think_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        return list(prompt_ids) + self.think_start_ids

    def think(self, prompts: Sequence[Sequence[int]], keys: Sequence[str], budget: int | None = None) -> list[Thinking]:
        """Think on every prompt under `budget` (default: params.budget), forcing as configured."""
        budget = budget or self.params.budget
        p = self.params
        states = [Thinking(ids=[], ended="budget") for _ in prompts]
        active = list(range(len(prompts)))
        while active:
            requests = [
                GenRequest(
                    prompt_ids=tuple(self.think_prompt(prompts[i]) + states[i].ids),
                    max_new_tokens=budget - len(states[i].ids) + self.delimiter_len,
                    stop_token_ids=self.think_stop_ids,
                    stop_strings=self.think_stop_strs,
                    temperature=p.temperature,
                    top_p=p.top_p,
                    seed=request_seed(p.seed, keys[i], "think", states[i].rounds),
                )
                for i in active
            ]
            results = self.engine.generate(requests)
            still = []
            for i, res in zip(active, results):
                s = states[i]
                s.generated += len(res.token_ids)
                s.finish_reasons.append(res.finish_reason)
                room = budget - len(s.ids)
                if res.finish_reason == "stop" and res.stop_index <= room:
                    s.ids += res.token_ids[: res.stop_index]
                    s.stop = self.engine.detokenize(res.token_ids[res.stop_index:])
                    if s.rounds >= p.forcing_rounds:
                        s.ended = "natural"
                        continue
                    room = budget - len(s.ids)
                    if room == 0:  # the ignore string does not fit: the budget ends it
                        continue
                    s.forced_at.append(len(s.ids))
                    s.ids += self.ignore_ids[:room]
                    if len(s.ids) < budget:
                        still.append(i)
                else:
                    s.ids += res.token_ids[:room]
            active = still
        return states

    def answer_prefix(self, thinking: Thinking) -> str:
        return self.fmt.answer_start if thinking.ended == "natural" else self.fmt.answer_forced

    def needs_answer_phase(self, thinking: Thinking) -> bool:
        # In the plain format a natural end means the model already answered.
        return not (self.fmt.think_end is None and thinking.ended == "natural")

    def answer(self, prompts: Sequence[Sequence[int]], thinkings: Sequence[Thinking], keys: Sequence[str]) -> list[Answer]:
        """Generate the answer after each thinking; identical contexts are generated once."""
        p = self.params
        out: list[Answer | None] = [None] * len(prompts)
        unique: dict[tuple[int, ...], list[int]] = {}
        for i, (prompt, th) in enumerate(zip(prompts, thinkings)):
            if not self.needs_answer_phase(th):
                out[i] = Answer(ids=[], text="", finish_reason="none", prefix="")
                continue
            ctx = tuple(self.think_prompt(prompt) + th.ids + self.engine.tokenize(self.answer_prefix(th)))
            unique.setdefault(ctx, []).append(i)
        contexts = list(unique)
        requests = [
            GenRequest(
                prompt_ids=ctx,
                max_new_tokens=p.answer_max_tokens,
                stop_token_ids=self.answer_stop_ids,
                stop_strings=self.answer_stop_strs,
                temperature=p.temperature,
                top_p=p.top_p,
                # The answer seed depends on the question only: the same context gets
                # the same answer whichever sweep method produced it.
                seed=request_seed(p.seed, keys[unique[ctx][0]], "answer"),
            )
            for ctx in contexts
        ]
        for ctx, res in zip(contexts, self.engine.generate(requests)):
            ids = res.token_ids[: res.stop_index]
            for i in unique[ctx]:
                out[i] = Answer(ids=ids, text=self.engine.detokenize(ids), finish_reason=res.finish_reason,
                                prefix=self.answer_prefix(thinkings[i]))
        return out  # type: ignore[return-value]


def sweep(controller: BudgetController, prompts, keys, budgets: Sequence[int], method: str = "cut"):
    """Thinking and answers for every budget. Returns {budget: (thinkings, answers)}.

    method "cut": think once at the largest budget and cut (exact, see module doc).
    method "independent": rerun thinking from scratch for each budget (the official way).
    """
    budgets = sorted(set(budgets), reverse=True)
    if method == "cut":
        longest = controller.think(prompts, keys, budgets[0])
        per_budget = {b: [t.at_budget(b) for t in longest] for b in budgets}
    elif method == "independent":
        per_budget = {b: controller.think(prompts, keys, b) for b in budgets}
    else:
        raise M1Error(f"unknown sweep method {method!r}: use 'cut' or 'independent'")
    # One answer call for all budgets, largest first, so an engine that keeps the KV
    # cache of a shared prefix finds the thinking already computed.
    flat_prompts, flat_th, flat_keys = [], [], []
    for b in budgets:
        flat_prompts += list(prompts)
        flat_th += per_budget[b]
        flat_keys += list(keys)
    answers = controller.answer(flat_prompts, flat_th, flat_keys)
    n = len(prompts)
    return {b: (per_budget[b], answers[k * n:(k + 1) * n]) for k, b in enumerate(budgets)}


def with_budget(params: ThinkingParams, budget: int) -> ThinkingParams:
    return replace(params, budget=budget)
