"""Batch calls over a controller for tests that hold a list of prompts: every question's thinking
(or its answer) at once, each in its own pipeline, as `m1 eval` runs them."""
from __future__ import annotations

import asyncio

from m1.engines.base import run_sync


def think(ctl, prompts, keys, budget=None):
    """Each prompt's thinking under `budget` (default: the controller's), forcing as configured."""
    async def all_():
        return list(await asyncio.gather(*(ctl.think_one(p, k, budget) for p, k in zip(prompts, keys))))
    return run_sync(all_())


def answer(ctl, prompts, thinkings, keys):
    """The answer after each thinking."""
    async def all_():
        got = await asyncio.gather(*(ctl.answers(p, [t], k) for p, t, k in zip(prompts, thinkings, keys)))
        return [a for (a,) in got]
    return run_sync(all_())
