"""One chat request through m1's controller: think under the request's exact budget, force the
answer after a cut, and say what happened. No HTTP here (that is app.py), so a notebook or a
test can drive it directly.

Every request is its own pipeline on the shared controller, as every question is in `m1 eval`:
the engine is filled by many requests at once and a question's tokens do not depend on what
runs beside it, so a request here gives the thinking and answer `m1 eval` records for the same
prompt, budget and greedy settings (tests/test_serve.py checks it).
"""
from __future__ import annotations

import asyncio
import random
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from m1.engines import Engine, make_engine
from m1.engines.base import PriorityGate, open_questions
from m1.errors import M1Error
from m1.models import EMBEDDED, is_embedded
from m1.serve.config import ServeConfig
from m1.serve.schema import BadField, ChatRequest, budget_of
from m1.thinking.budget import BudgetController, Thinking, ThinkingParams
from m1.thinking.formats import get_format
from m1.thinking.policies import parse_policy
from m1.thinking.stream import Listener

_OPTION = re.compile(r"^\s*([A-J])[.)]\s+(.+?)\s*$", re.MULTILINE)


class QueueFull(Exception):
    """More requests wait than the operator allows (--max-queue)."""


@dataclass(frozen=True)
class Ask:
    """What one request asks for, resolved against the server's defaults."""

    prompt_ids: tuple[int, ...]
    budget: int
    budget_from: str
    params: ThinkingParams  # its budget field is unused: `budget` is passed per request
    max_tokens: int | None  # thinking plus answer, as OpenAI defines max_tokens
    adaptive: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # the question's lettered options (adaptive reads the letter)


@dataclass
class Reply:
    """What the model thought and answered for one request, and why it stopped."""

    prompt_tokens: int
    thinking_ids: list[int]
    answer_ids: list[int]
    thinking: str
    content: str
    budget: int
    budget_exhausted: bool
    rounds_forced: int
    stopped_by: str  # "natural" | "budget" | "max_tokens" | an adaptive policy's reason
    answer_forced: bool  # the answer delimiter went in after a cut
    finish_reason: str  # "stop" | "length" (max_tokens, or the answer's own cap, ran out)

    @property
    def thinking_tokens(self) -> int:
        return len(self.thinking_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.thinking_ids) + len(self.answer_ids)


class Service:
    """The model, its controllers and the admission queue, shared by every request."""

    def __init__(self, cfg: ServeConfig, engine: Engine | None = None):
        self.cfg = cfg = cfg.resolved()
        self.own_engine = engine is None
        self.engine = engine or make_engine(cfg.engine, cfg.model, **cfg.engine_options)
        self.fmt = get_format(cfg.format, **cfg.format_overrides)
        described = self.engine.describe()
        embedded = EMBEDDED if cfg.engine == "llamacpp" and is_embedded(cfg.model) else None
        self.model_name = (cfg.served_model_name or embedded or cfg.model
                           or Path(str(described.get("model") or cfg.engine)).name)
        self.running_limit = open_questions(self.engine)
        self.active = 0  # requests admitted (running or waiting at the gate)
        self._gate: PriorityGate | None = None
        self._controllers: dict[ThinkingParams, BudgetController] = {}

    # -- a request, resolved ------------------------------------------------------------
    def ask(self, req: ChatRequest) -> Ask:
        """The request against the server's defaults; a value that cannot run raises BadField."""
        cfg, m1 = self.cfg, req.m1
        budget, source = budget_of(req, cfg)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        try:
            ids = self.engine.encode_prompt(self.engine.render_chat(messages))
        except (M1Error, OSError):
            raise
        except Exception as e:  # a chat template that refuses these roles or this order
            raise BadField("messages", f"the model's chat template refused these messages: {e}") from None
        seed = req.seed if req.seed is not None else random.getrandbits(31)
        temperature = cfg.temperature if req.temperature is None else req.temperature

        def pick(name: str, default):
            return default if m1 is None or getattr(m1, name) is None else getattr(m1, name)
        params = ThinkingParams(
            budget=0, forcing_rounds=pick("forcing_rounds", cfg.forcing_rounds),
            ignore_str=pick("ignore_str", cfg.ignore_str),
            answer_max_tokens=pick("answer_max_tokens", cfg.answer_max_tokens),
            temperature=temperature, top_p=cfg.top_p if req.top_p is None else req.top_p,
            seed=seed if temperature > 0 else 0, min_thinking=pick("min_thinking_tokens", cfg.min_thinking))
        if params.forcing_rounds and not params.ignore_str:
            raise BadField("m1.ignore_str", "budget forcing needs a non-empty m1.ignore_str")
        adaptive, options = None, ()
        if m1 is not None and m1.adaptive:
            try:
                policy = parse_policy(m1.adaptive)
            except ValueError as e:
                raise BadField("m1.adaptive", f"m1.adaptive {m1.adaptive!r}: {e}") from None
            options = tuple(_OPTION.findall(messages[-1]["content"]))
            if len(options) < 2:
                raise BadField("m1.adaptive", "m1.adaptive reads the letter of each forced answer: the last "
                                              "message must list the options as lines 'A. ...', 'B. ...'")
            adaptive = m1.adaptive if policy.every else None
            if adaptive is None:
                raise BadField("m1.adaptive", "m1.adaptive needs every=N (tokens between forced answers)")
        max_tokens = req.max_completion_tokens or req.max_tokens
        return Ask(tuple(ids), budget, source, params, max_tokens, adaptive, options)

    def controller(self, params: ThinkingParams) -> BudgetController:
        if params not in self._controllers:
            if len(self._controllers) > 64:  # per-request seeds or ignore strings: keep the cache small
                self._controllers.clear()
            self._controllers[params] = BudgetController(self.engine, self.fmt, params)
        return self._controllers[params]

    # -- admission ------------------------------------------------------------------------
    def reserve(self) -> None:
        """Count a new request in, or QueueFull when more than --max-queue already wait. Each
        reserve is matched by one `release`, whatever becomes of the request."""
        if self.active >= self.running_limit + self.cfg.max_queue:
            raise QueueFull
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A place among the running requests, first come first served; leaving it (a finished
        or cancelled request) lets the next one in at once."""
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate.loop is not loop:
            self._gate = PriorityGate(self.running_limit)
        gate = self._gate
        await gate.enter(0)  # one priority: arrival order
        try:
            yield
        finally:
            gate.leave()

    @property
    def waiting(self) -> int:
        return max(0, self.active - self.running_limit)

    # -- generation -----------------------------------------------------------------------
    async def reply(self, ask: Ask, listener: Listener | None = None) -> Reply:
        """Think under the budget, then answer (thinking/budget.py). `max_tokens` caps thinking
        plus answer: thinking that uses all of it leaves no answer ("length")."""
        ctl = self.controller(ask.params)
        budget = ask.budget if ask.max_tokens is None else min(ask.budget, ask.max_tokens)
        key = "m1-serve"  # the request seed's key: one question, as in a run
        if ask.adaptive:
            th, ans, stopped_by = await self._adaptive(ctl, ask, budget, listener)
        else:
            th = await ctl.think_one(ask.prompt_ids, key, budget, listener=listener)
            stopped_by, ans = th.ended, None
        exhausted = th.ended == "budget"
        if exhausted and ask.max_tokens is not None and len(th.ids) >= ask.max_tokens:
            return self._reply(ask, th, [], "", "max_tokens", False, "length")
        room = ctl.params.answer_max_tokens
        if ask.max_tokens is not None:
            room = min(room, ask.max_tokens - len(th.ids))
        if ans is None:
            (ans,) = await ctl.answers(ask.prompt_ids, [th], key, listener=listener, max_new_tokens=room)
        if not ctl.needs_answer_phase(th):  # a format with no thinking delimiter: the reply was the answer
            return self._reply(ask, th, [], self.engine.detokenize(th.ids), stopped_by, False, "stop")
        return self._reply(ask, th, ans.ids, ans.text, stopped_by, exhausted,
                           "length" if ans.finish_reason == "length" else "stop")

    async def _adaptive(self, ctl: BudgetController, ask: Ask, cap: int, listener: Listener | None):
        """m1.adaptive: forced answers every N tokens, stop when they settle (thinking/policies.py).
        The probes' answers are not streamed; the final one is the reply's."""
        from m1.grading.strict import extract_letter

        options = dict(ask.options)
        policy = parse_policy(ask.adaptive or "")
        th, ans, _, why = await ctl.adaptive(ask.prompt_ids, "m1-serve", cap, policy,
                                             lambda t, a: extract_letter(a.text if ctl.needs_answer_phase(t)
                                                                         else self.engine.detokenize(t.ids), options),
                                             option_letters=tuple(options))
        if listener is not None:
            listener.thinking(list(th.ids))
            if ctl.needs_answer_phase(th):
                listener.answer(list(ans.ids))
        return th, ans, why

    def _reply(self, ask: Ask, th: Thinking, answer_ids: list[int], content: str, stopped_by: str,
               forced: bool, finish: str) -> Reply:
        return Reply(prompt_tokens=len(ask.prompt_ids), thinking_ids=list(th.ids), answer_ids=list(answer_ids),
                     thinking=self.engine.detokenize(th.ids), content=content, budget=ask.budget,
                     budget_exhausted=th.ended == "budget", rounds_forced=th.rounds, stopped_by=stopped_by,
                     answer_forced=forced, finish_reason=finish)

    def close(self) -> None:
        if self.own_engine:
            self.engine.close()

