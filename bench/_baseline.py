"""The two schedulers the benches compare, over one BudgetController.

  chunked    m1's controller before pipelines (a re-statement of the removed code path):
             8 questions at a time, all think, then all answer, then the next 8
  pipelines  what `m1 eval` does: every question its own pipeline, `in_flight` started at once
             (m1 eval: engines.base.open_questions)
"""
from __future__ import annotations

import asyncio
import functools
from typing import Callable

from m1.engines.base import bounded, run_sync
from m1.thinking.budget import ContextLog

Answers = dict  # (question key, budget) -> answer ids


def chunked(ctl, prompts, keys, budgets, mark: Callable[[], None], chunk: int = 8) -> Answers:
    """`mark()` is called when the last chunk starts (no question is left to start)."""
    out = {}
    for k in range(0, len(prompts), chunk):
        if k + chunk >= len(prompts):
            mark()
        ps, ks = prompts[k:k + chunk], keys[k:k + chunk]
        longest = _think(ctl, ps, ks, max(budgets))
        flat = [(p, key, th.at_budget(b), b) for b in sorted(budgets, reverse=True)
                for p, key, th in zip(ps, ks, longest)]
        answers = _answer(ctl, [f[0] for f in flat], [f[2] for f in flat], [f[1] for f in flat])
        out.update({(f[1], f[3]): a.ids for f, a in zip(flat, answers)})
    return out


def _think(ctl, prompts, keys, budget):
    """Every prompt's thinking at once (the chunk's barrier: all think, then all answer)."""
    async def all_():
        return list(await asyncio.gather(*(ctl.think_one(p, k, budget) for p, k in zip(prompts, keys))))
    return run_sync(all_())


def _answer(ctl, prompts, thinkings, keys):
    """The answer after each thinking; identical contexts generated once, as the old controller did."""
    firsts: dict[tuple, int] = {}
    for i, (p, t) in enumerate(zip(prompts, thinkings)):
        firsts.setdefault((tuple(p), tuple(t.ids), ctl.answer_prefix(t)), i)
    unique = sorted(set(firsts.values()))

    async def all_():
        return await asyncio.gather(*(ctl.answers(prompts[i], [thinkings[i]], keys[i]) for i in unique))
    got = dict(zip(unique, (a for (a,) in run_sync(all_()))))
    return [got[firsts[(tuple(p), tuple(t.ids), ctl.answer_prefix(t))]] for p, t in zip(prompts, thinkings)]


def pipelines(ctl, prompts, keys, budgets, in_flight: int, mark: Callable[[], None]) -> tuple[Answers, int]:
    """Answers, and the context the engine had to evaluate at the least (ContextLog, summed)."""
    async def one(p, key):
        log = ContextLog()
        res = await ctl.question(p, key, budgets, "cut", log)
        return {(key, b): a.ids for b, (_, a) in res.items()}, log.minimum

    got = run_sync(bounded([functools.partial(one, p, k) for p, k in zip(prompts, keys)], in_flight, mark))
    out: Answers = {}
    for answers, _ in got:
        out.update(answers)
    return out, sum(m for _, m in got)
