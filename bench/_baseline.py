"""The two schedulers the benches compare, over one BudgetController.

  chunked    m1's controller before pipelines (a re-statement of the removed code path):
             8 questions at a time, all think, then all answer, then the next 8
  pipelines  what `m1 eval` does: every question its own pipeline, `in_flight` started at once
             (m1 eval: engines.base.open_questions)
"""
from __future__ import annotations

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
        longest = ctl.think(ps, ks, max(budgets))
        flat = [(p, key, th.at_budget(b), b) for b in sorted(budgets, reverse=True)
                for p, key, th in zip(ps, ks, longest)]
        answers = ctl.answer([f[0] for f in flat], [f[2] for f in flat], [f[1] for f in flat])
        out.update({(f[1], f[3]): a.ids for f, a in zip(flat, answers)})
    return out


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
