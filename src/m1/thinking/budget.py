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

Scheduling. Each question is its own pipeline (`BudgetController.question`): its thinking
in stages that end at each budget of the sweep, the answer for a budget sent the moment
the thinking passes it while the next stage goes on, each step submitted the moment the
previous one returns, so many questions advance together with no barrier between them
and the engine stays full (see engines/base.py). A stage continues the thinking exactly
(`think_one`'s `resume`), so under greedy decoding the stages give the ids one request to
the largest budget gives. Every request carries a priority: a thinking stage the number
of ids thought so far, an answer -1. An engine with more requests waiting than it can run
starts the least-advanced question first, so the questions that will think longest do
not start last and hold the engine half empty at the end of a run. A question's tokens
never depend on what runs beside it, so the order in which questions advance changes
nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence

from m1.engines.base import Engine, GenRequest, GenResult, common_prefix, run_sync
from m1.errors import M1Error
from m1.thinking.formats import ReasoningFormat
from m1.thinking.policies import BUDGET, NATURAL_END, Episode, Policy
from m1.thinking.stream import Listener, Round, holdback

if TYPE_CHECKING:
    from m1.config import EvalConfig

Ending = Literal["natural", "budget"]


@dataclass(frozen=True)
class ThinkingParams:
    """How to think and answer. `budget` caps thinking ids per question. Its defaults are
    EvalConfig's; `from_config` makes the controller's from a run's config."""

    budget: int
    forcing_rounds: int = 0
    ignore_str: str = "Wait"
    answer_max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    min_thinking: int = 0  # an end before this many thinking ids is replaced by the ignore string

    def __post_init__(self):
        if self.budget < 0:
            raise M1Error(f"thinking budget must be 0 or more tokens, got {self.budget}")
        if self.min_thinking < 0:
            raise M1Error(f"minimum thinking must be >= 0 tokens, got {self.min_thinking}")
        if self.forcing_rounds < 0:
            raise M1Error(f"forcing rounds must be >= 0, got {self.forcing_rounds}")
        if self.answer_max_tokens <= 0:
            raise M1Error(f"answer max tokens must be positive, got {self.answer_max_tokens}")

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> ThinkingParams:
        """The controller's settings for a run: thinking to its largest budget."""
        return cls(budget=max(cfg.budgets), forcing_rounds=cfg.forcing_rounds, ignore_str=cfg.ignore_str,
                   answer_max_tokens=cfg.answer_max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                   seed=cfg.seed, min_thinking=cfg.min_thinking)


@dataclass(frozen=True)
class Insertion:
    """Text put into the thinking (knowledge, m1.knowledge): context the model reads, not thinking
    it wrote. `at`: thinking ids before it; `kept`: its ids in context (all of them, unless it
    counts against the budget and the budget cut it)."""

    at: int
    ids: tuple[int, ...]
    text: str
    counted: bool = False
    kept: int = -1  # -1: all
    query: str | None = None
    passages: tuple[dict, ...] = ()

    @property
    def in_context(self) -> tuple[int, ...]:
        return self.ids if self.kept < 0 else self.ids[: self.kept]


@dataclass
class Thinking:
    """One question's thinking, as ids in context."""

    ids: list[int]  # the thinking: generated ids plus any ignore strings (what the budget counts)
    ended: Ending
    forced_at: list[int] = field(default_factory=list)  # positions where "Wait" went in
    finish_reasons: list[str] = field(default_factory=list)
    generated: int = 0  # ids the engine produced, dropped delimiters included
    # Text of the stop that ended the last round (the think delimiter, or the end of the turn
    # when the model skipped it); None when the budget ended thinking.
    stop: str | None = None
    insertions: list[Insertion] = field(default_factory=list)  # by position
    short_at: list[int] = field(default_factory=list)  # the forced_at that --min-thinking made
    # The model ended on the budget's last id and forcing would have gone on, but the ignore
    # string did not fit: a larger budget (think_one's resume) puts it in before anything else.
    ended_at_edge: bool = False
    # The rest of a search query's closing tag the budget cut (Injector.query_tags): a larger
    # budget (resume) takes these ids first, then retrieves. `search_due`: the tag ended on the
    # budget's last id, so its passages are the first thing a larger budget puts in.
    overflow: list[int] = field(default_factory=list)
    search_due: bool = False

    @property
    def rounds(self) -> int:
        return len(self.forced_at)

    @property
    def used(self) -> int:
        """What the budget has spent: the thinking, plus inserted ids where they count."""
        return len(self.ids) + sum(len(i.in_context) for i in self.insertions if i.counted)

    def context_ids(self) -> list[int]:
        """The thinking as the model's context holds it: insertions in place."""
        out: list[int] = []
        pos = 0
        for ins in self.insertions:
            out += self.ids[pos:ins.at]
            out += ins.in_context
            pos = ins.at
        return out + self.ids[pos:]

    def at_budget(self, budget: int) -> Thinking:
        """The thinking a run at `budget` would have produced (see module docstring): the
        context cut where the budget is spent. An insertion the budget reaches first is not
        made; one that counts against the budget may be cut."""
        # budget 0 never asks the model (an independent run there is a cut, whatever it would do)
        if self.ended == "natural" and self.used <= budget and budget > 0:
            return self
        remaining, pos = budget, 0
        kept: list[Insertion] = []
        for ins in self.insertions:
            step = min(ins.at - pos, remaining)
            remaining, pos = remaining - step, pos + step
            if remaining <= 0:
                break
            if ins.counted:
                n = min(len(ins.in_context), remaining)
                remaining -= n
                ins = replace(ins, kept=n)
            kept.append(ins)
        n_ids = min(len(self.ids), pos + remaining)
        return Thinking(
            ids=self.ids[:n_ids],
            ended="budget",
            forced_at=[p for p in self.forced_at if p < n_ids],
            finish_reasons=self.finish_reasons,
            generated=self.generated,
            insertions=kept,
            short_at=[p for p in self.short_at if p < n_ids],
        )


class Injector(Protocol):
    """Puts text into one question's thinking at `points` (positions in budget spent): what
    `text_at` returns for the i-th point, given the thinking so far and the insertions made in
    it (None: nothing there). It must depend on nothing else: independent runs of one question
    at several budgets share it. An injector with `query_tags` (open, close) is also called
    wherever the model writes `close` (a search query, Search-o1's way): the query and its tags
    are thinking the model wrote, and the text goes in right after them."""

    points: tuple[int, ...]
    counted: bool

    async def text_at(self, index: int, thinking_text: str, before: Sequence[Insertion]
                      ) -> tuple[str, str | None, list[dict]] | None: ...


@dataclass
class Answer:
    ids: list[int]
    text: str
    finish_reason: str
    prefix: str  # the answer delimiter that was appended before generating
    # Option-letter log-probabilities (engines/probes.py), when the question has option letters: letter ->
    # log-probability at the answer position, ids[option_position]; None when the engine
    # gives none or the answer names no letter.
    option_logprobs: dict[str, float] | None = None
    option_position: int | None = None


def request_seed(base: int, *keys: object) -> int:
    """A stable per-request seed, so reruns and resumed runs sample the same."""
    h = hashlib.sha256(repr((base,) + keys).encode()).digest()
    return int.from_bytes(h[:4], "little")


class BudgetController:
    """Drives an engine through think → (force) → answer, one pipeline per question."""

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
        self.think_hold, self.answer_hold = holdback(self.think_stop_strs), holdback(self.answer_stop_strs)
        self._prefix_cache: dict[str, list[int]] = {}

    def _stops(self, text: str | None) -> tuple[list[int], list[str]]:
        """A delimiter that is one token stops by id (exact); longer ones by string."""
        if not text:
            return [], []
        ids = self.engine.tokenize(text)
        return (ids, []) if len(ids) == 1 else ([], [text])

    def think_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        return list(prompt_ids) + self.think_start_ids

    async def think_one(self, prompt: Sequence[int], key: str, budget: int | None = None,
                        log: ContextLog | None = None, resume: Thinking | None = None,
                        injector: Injector | None = None, listener: Listener | None = None) -> Thinking:
        """One question's thinking under `budget` (default: params.budget), forcing as configured.

        `resume`: thinking cut by a smaller budget, continued from where it stopped. Under
        greedy decoding (and a batch-invariant engine) that gives the same ids as thinking
        to `budget` in one go, since every request sees the same context up to each token.
        `injector`: text put into the thinking at its points; a round stops at each point, and
        the text goes in at the start of the next round, so every budget of a sweep inserts at
        the same places (a point the budget reaches first is never inserted).
        `listener`: gets the thinking's ids as they are decided (thinking/stream.py)."""
        budget = self.params.budget if budget is None else budget
        p = self.params
        s = Thinking(ids=[], ended="budget")
        if resume is not None:
            s = Thinking(ids=list(resume.ids), ended="budget", forced_at=list(resume.forced_at),
                         finish_reasons=list(resume.finish_reasons), generated=resume.generated,
                         insertions=list(resume.insertions), short_at=list(resume.short_at),
                         overflow=list(resume.overflow), search_due=resume.search_due)
            if s.finish_reasons[-1:] == ["length"]:
                s.finish_reasons.pop()  # that round goes on here: one entry per round, as in one request
            self._complete_cut(s, budget)
            if resume.ended_at_edge and s.used < budget:
                self._force(s, budget)
        points = injector.points if injector is not None else ()
        tags = getattr(injector, "query_tags", None)
        close = tags[1] if tags else None
        stop_strs = self.think_stop_strs + ((close,) if close else ())
        extra = max(self.delimiter_len, len(self._prefix_ids(close)) if close else 0)  # past the room: see a stop
        streamed = len(s.ids)  # ids the listener has (a resumed thinking's were sent before)

        def emit(ids: list[int]) -> None:
            nonlocal streamed
            if listener is not None and ids:
                streamed += len(ids)
                listener.thinking(ids)
        while s.used < budget:
            emit(s.ids[streamed:])  # forced ignore strings
            if (s.overflow or s.search_due) and injector is not None:  # a query a smaller budget cut
                take = s.overflow[:budget - s.used]
                s.ids += take
                s.overflow = s.overflow[len(take):]
                await self._searched(s, injector, budget)
                continue
            due = [i for i, pt in enumerate(points) if pt <= s.used and i >= len(s.insertions)]
            if due and injector is not None:
                await self._insert(s, injector, due[0], budget)
                continue
            upcoming = [pt for i, pt in enumerate(points) if i >= len(s.insertions) and pt > s.used]
            limit = min([budget, *upcoming[:1]])
            room = limit - s.used
            req = GenRequest(
                prompt_ids=tuple(self.think_prompt(prompt) + s.context_ids()),
                max_new_tokens=room + extra,
                stop_token_ids=self.think_stop_ids,
                stop_strings=stop_strs,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=request_seed(p.seed, key, "think", s.rounds, *((len(s.insertions),) if s.insertions else ())),
                priority=len(s.ids),  # least-advanced first (module doc)
            )
            res = await self._submit(req, log, Round(emit, room, self.think_hold, self.think_stop_ids)
                                     if listener else None)
            s.generated += len(res.token_ids)
            s.finish_reasons.append(res.finish_reason)
            if close is not None and res.finish_reason == "stop" and res.matched_stop == close:
                # a search query: all of it, the closing tag too, is thinking; what the budget cuts
                # a larger budget completes (resume); then the passages go in (the loop's top)
                s.ids += res.token_ids[:room]
                s.overflow = list(res.token_ids[room:])
                if injector is not None:
                    await self._searched(s, injector, budget)
                continue
            if res.finish_reason == "stop" and res.stop_index <= room:
                s.ids += res.token_ids[: res.stop_index]
                s.stop = self.engine.detokenize(res.token_ids[res.stop_index:])
                short = len(s.ids) < p.min_thinking
                if not short and s.rounds - len(s.short_at) >= p.forcing_rounds:
                    s.ended = "natural"
                    break
                if s.used == budget:  # the ignore string does not fit: the budget ends it
                    s.ended_at_edge = True
                    break
                self._force(s, budget)
            else:
                s.ids += res.token_ids[:room]
                if limit == budget or len(res.token_ids) < room:  # the budget, or the context, is spent
                    break
        emit(s.ids[streamed:])
        if s.ended == "budget":
            s.stop = None  # an earlier round's stop was replaced; this thinking did not stop
        return s

    def _force(self, s: Thinking, budget: int) -> None:
        """Replace the model's end of thinking with the ignore string (cut by the budget if need be)."""
        if len(s.ids) < self.params.min_thinking:
            s.short_at.append(len(s.ids))
        s.forced_at.append(len(s.ids))
        s.ids += self.ignore_ids[:budget - s.used]

    def _complete_cut(self, s: Thinking, budget: int) -> None:
        """A smaller budget cut an ignore string or a counted insertion mid-way; a run to `budget`
        has the rest of it."""
        if s.forced_at and len(s.ids) - s.forced_at[-1] < len(self.ignore_ids):
            s.ids += self.ignore_ids[len(s.ids) - s.forced_at[-1]:][:budget - s.used]
        if s.insertions and s.insertions[-1].at == len(s.ids) and 0 <= s.insertions[-1].kept:
            last = s.insertions[-1]
            kept = min(len(last.ids), last.kept + budget - s.used)
            s.insertions[-1] = replace(last, kept=-1 if kept == len(last.ids) else kept)

    async def _searched(self, s: Thinking, injector: Injector, budget: int) -> None:
        """After a search query's closing tag: its passages go in now, or, where the budget ended
        on the tag, first thing in a larger budget (an independent run there inserts them here)."""
        s.search_due = not s.overflow and s.used >= budget
        if not s.overflow and not s.search_due:
            await self._insert(s, injector, len(s.insertions), budget)

    async def _insert(self, s: Thinking, injector: Injector, index: int, budget: int) -> None:
        got = await injector.text_at(index, self.engine.detokenize(s.ids), list(s.insertions))
        text, query, passages = got if got is not None else ("", None, [])
        ids = tuple(self.engine.tokenize(text)) if text else ()
        ins = Insertion(at=len(s.ids), ids=ids, text=text, counted=injector.counted, query=query,
                        passages=tuple(passages))
        if injector.counted and len(ids) > budget - s.used:  # the budget cuts it
            ins = replace(ins, kept=budget - s.used)
        s.insertions.append(ins)  # an empty one too: the point is passed

    async def _submit(self, req: GenRequest, log: ContextLog | None, stream: Round | None = None) -> GenResult:
        if stream is None:
            res = await self.engine.submit(req)
        else:
            res = await self.engine.submit(req, stream)
            # what the controller keeps of it: up to the stop, within the room (Round's)
            stream.finish(res.token_ids[:min(res.stop_index, stream.room)])
        if log is not None:
            log.add(req, res)
        return res

    def answer_request(self, prompt: Sequence[int], thinking: Thinking, key: str,
                       option_letters: Sequence[str] = (), max_new_tokens: int | None = None) -> GenRequest | None:
        """The answer phase's request after `thinking`; None when the model already answered.

        With `option_letters` (the keys of the item's options) the engine is asked for the
        letters' log-probabilities at the answer position (engines/probes.py); that does
        not change what is generated."""
        if not self.needs_answer_phase(thinking):
            return None
        p = self.params
        return GenRequest(
            prompt_ids=tuple(self.think_prompt(prompt) + thinking.context_ids()
                             + self._prefix_ids(self.answer_prefix(thinking))),
            max_new_tokens=p.answer_max_tokens if max_new_tokens is None else max_new_tokens,
            stop_token_ids=self.answer_stop_ids,
            stop_strings=self.answer_stop_strs,
            temperature=p.temperature,
            top_p=p.top_p,
            # The answer seed depends on the question only: the same context gets
            # the same answer whichever sweep method produced it.
            seed=request_seed(p.seed, key, "answer"),
            option_letters=tuple(option_letters),
            priority=-1,  # an answer finishes a question: it goes before any thinking
        )

    def _prefix_ids(self, text: str) -> list[int]:
        if text not in self._prefix_cache:
            self._prefix_cache[text] = self.engine.tokenize(text)
        return self._prefix_cache[text]

    async def answers(self, prompt: Sequence[int], thinkings: Sequence[Thinking], key: str,
                      log: ContextLog | None = None, option_letters: Sequence[str] = (),
                      listener: Listener | None = None, max_new_tokens: int | None = None) -> list[Answer]:
        """The answer after each of one question's thinkings; identical contexts are generated once.

        All are submitted together, longest context first: an engine that schedules them one
        after another in the slot holding the thinking evaluates only each answer's new tokens
        (each capped at answer_max_tokens: a dense sweep costs one thinking pass plus short
        answer phases over the reused prefix). `listener` (one thinking only): gets the answer's
        ids as they are decided. `max_new_tokens`: instead of params.answer_max_tokens."""
        reqs = [self.answer_request(prompt, th, key, option_letters, max_new_tokens) for th in thinkings]
        unique = sorted({r.prompt_ids: r for r in reqs if r is not None}.values(), key=lambda r: -len(r.prompt_ids))
        if listener is not None and len(thinkings) != 1:
            raise ValueError("a listener follows one answer: pass one thinking")
        results = await asyncio.gather(*(self._submit(r, log, Round(listener.answer, r.max_new_tokens,
                                                                     self.answer_hold, self.answer_stop_ids)
                                                               if listener else None)
                                         for r in unique))
        by_ctx = dict(zip((r.prompt_ids for r in unique), results))
        out = []
        for th, req in zip(thinkings, reqs):
            if req is None:
                out.append(Answer(ids=[], text="", finish_reason="none", prefix=""))
                continue
            res = by_ctx[req.prompt_ids]
            ids = res.token_ids[: res.stop_index]
            letter_found = res.option_logprobs is not None and res.option_position is not None \
                and res.option_position < len(ids)
            out.append(Answer(ids=ids, text=self.engine.detokenize(ids), finish_reason=res.finish_reason,
                              prefix=self.answer_prefix(th),
                              option_logprobs=dict(res.option_logprobs) if letter_found and res.option_logprobs
                              else None,
                              option_position=res.option_position if letter_found else None))
        return out

    async def question(self, prompt: Sequence[int], key: str, budgets: Sequence[int], method: str = "cut",
                       log: ContextLog | None = None, option_letters: Sequence[str] = (),
                       injector: Injector | None = None) -> dict[int, tuple[Thinking, Answer]]:
        """One question's whole sweep: {budget: (thinking, answer)}.

        method "cut": think once at the largest budget and cut (exact, see module doc).
        method "independent": think from scratch for each budget (the official way).
        `option_letters`: the item's option letters, whose log-probabilities every answer reads (answer_request).
        `injector`: knowledge put into the thinking (think_one), at the same places for every budget."""
        budgets = sorted(set(budgets), reverse=True)
        if method == "independent":
            thinkings = list(await asyncio.gather(*(self.think_one(prompt, key, b, log, injector=injector)
                                                    for b in budgets)))
            answers = await self.answers(prompt, thinkings, key, log, option_letters)
            return {b: (t, a) for b, t, a in zip(budgets, thinkings, answers)}
        if method != "cut":
            raise M1Error(f"unknown sweep method {method!r}: use 'cut' or 'independent'")
        early: dict[int, asyncio.Future] = {}  # budget -> its answer, sent as the thinking passed it
        stage: Thinking | None = None
        try:
            for b in reversed(budgets):
                stage = await self.think_one(prompt, key, b, log, resume=stage, injector=injector)
                if stage.ended == "natural" or b == budgets[0]:
                    break
                early[b] = asyncio.ensure_future(self.answers(prompt, [stage], key, log, option_letters))
            assert stage is not None
            # The thinking each budget gets is the cut of the longest, as one request to the
            # largest budget would give it (records as before staging); the early answers saw
            # the same ids and ending.
            thinkings = [stage.at_budget(b) for b in budgets]
            late = [(b, t) for b, t in zip(budgets, thinkings) if b not in early]
            rest = await self.answers(prompt, [t for _, t in late], key, log, option_letters)
            answer_of = dict(zip((b for b, _ in late), rest))
            for b, fut in early.items():
                (answer_of[b],) = await fut
        finally:
            for fut in early.values():
                fut.cancel()  # a failed stage: the answers already sent are not waited for
        return {b: (t, answer_of[b]) for b, t in zip(budgets, thinkings)}

    async def adaptive(self, prompt: Sequence[int], key: str, cap: int, policy: Policy,
                       letter_of: Callable[[Thinking, Answer], str | None], log: ContextLog | None = None,
                       option_letters: Sequence[str] = ()) -> tuple[Thinking, Answer, Episode, str]:
        """One question under an adaptive policy: think to each checkpoint (every `policy.every`
        tokens, up to `cap`), force an answer there, and stop when the policy says so.

        Returns (thinking, answer, episode, why it stopped: policies.REASONS). Each probe is the
        request the one-pass sweep makes at that budget, and the thinking is continued exactly
        (think_one's `resume`), so under greedy decoding this stops where `policies.simulate`
        stops on a sweep with a budget at every checkpoint, with the same answer."""
        episode = Episode(policy, tuple(option_letters))
        every = policy.every or cap
        stops = list(range(every, cap + 1, every))
        if not stops or stops[-1] != cap:
            stops.append(cap)
        s: Thinking | None = None
        answer: Answer | None = None
        for c in stops:
            s = await self.think_one(prompt, key, c, log, resume=s)
            answer = None
            if s.ended == "natural":
                (answer,) = await self.answers(prompt, [s], key, log, option_letters)
                return s, answer, episode, NATURAL_END
            if episode.checkpoint(len(s.ids), self.engine.detokenize(s.ids)):
                (answer,) = await self.answers(prompt, [s], key, log, option_letters)
                if episode.probe(letter_of(s, answer), answer.option_logprobs):
                    return s, answer, episode, policy.reason
        assert s is not None
        if answer is None:  # the cap is no checkpoint: answer there
            (answer,) = await self.answers(prompt, [s], key, log, option_letters)
        return s, answer, episode, BUDGET

    def answer_prefix(self, thinking: Thinking) -> str:
        return self.fmt.answer_start if thinking.ended == "natural" else self.fmt.answer_forced

    def needs_answer_phase(self, thinking: Thinking) -> bool:
        # In the plain format a natural end means the model already answered.
        return not (self.fmt.think_end is None and thinking.ended == "natural")


class ContextLog:
    """The context a question's requests must evaluate at the least: each prompt only past
    what an earlier request of the same question already evaluated (its prompt and all but
    its last generated token), as an engine that keeps every computed prefix would."""

    def __init__(self):
        self.contexts: list[list[int]] = []
        self.minimum = 0

    def add(self, req: GenRequest, res: GenResult) -> None:
        prompt = list(req.prompt_ids)
        seen = max((common_prefix(c, prompt) for c in self.contexts), default=0)
        self.minimum += len(prompt) - seen
        self.contexts.append(prompt + list(res.token_ids[:-1]))


def sweep(controller: BudgetController, prompts, keys, budgets: Sequence[int], method: str = "cut",
          option_letters: Sequence[Sequence[str]] | None = None, injector: Injector | None = None):
    """Thinking and answers for every budget, every question in its own pipeline (a list of
    prompts in, for notebooks and benches; `m1 eval` runs the same pipelines over a run's items).
    Returns {budget: (thinkings, answers)} in the order of `prompts`. `option_letters`: each
    question's option letters, whose log-probabilities its answers read; `injector`: knowledge
    put into every question's thinking (BudgetController.question)."""
    letters = option_letters if option_letters is not None else [()] * len(prompts)

    async def all_():
        return await asyncio.gather(*(controller.question(p, k, budgets, method, option_letters=o, injector=injector)
                                      for p, k, o in zip(prompts, keys, letters)))
    per_question = run_sync(all_())
    return {b: ([q[b][0] for q in per_question], [q[b][1] for q in per_question])
            for b in sorted(set(budgets), reverse=True)}
