"""Streaming out of the engine and the controller (engines/base.py, thinking/stream.py), on the
fake engine: what a listener receives is exactly the thinking and answer the request records,
and a cancelled request leaves the engine at once. `m1 serve` streams through these
(tests/test_serve.py proves stream == non-stream on the real model)."""
from __future__ import annotations

import asyncio
import random

import pytest

from m1.config import EvalConfig
from m1.engines.base import GenRequest
from m1.engines.fake import FakeEngine
from m1.evaluate import build_prompt
from m1.thinking import BudgetController, ThinkingParams, get_format
from m1.thinking.stream import Round, TextStream, holdback


@pytest.fixture(scope="module")
def items():
    from m1.benchmarks import load_benchmark

    return load_benchmark("medqa", limit=6, seed=2)


class Collect:
    def __init__(self):
        self.thought: list[int] = []
        self.answered: list[int] = []
        self.calls = 0

    def thinking(self, ids):
        self.calls += 1
        self.thought += ids

    def answer(self, ids):
        self.calls += 1
        self.answered += ids


def test_engine_streams_every_generated_id_in_order_per_step():
    eng = FakeEngine(capacity=3, end_every=1000)  # long runs: many steps
    try:
        async def main():
            got: list[list[int]] = [[] for _ in range(5)]
            reqs = [GenRequest(prompt_ids=tuple(eng.tokenize(f"question {i}")), max_new_tokens=20 + i)
                    for i in range(5)]
            results = await asyncio.gather(*(eng.submit(r, got[i].extend) for i, r in enumerate(reqs)))
            return got, results
        got, results = asyncio.run(main())
        for ids, res in zip(got, results):
            assert ids == res.token_ids and len(ids) >= 20
    finally:
        eng.close()


def test_a_cancelled_request_frees_its_slot_at_once():
    eng = FakeEngine(capacity=1, latency=0.002, end_every=10**9)
    try:
        async def main():
            seen: list[int] = []
            long = asyncio.ensure_future(eng.submit(GenRequest(prompt_ids=(5, 6), max_new_tokens=100_000), seen.extend))
            while len(seen) < 5:  # it is running and streaming
                await asyncio.sleep(0.005)
            long.cancel()
            # the one slot is taken until the cancel reaches the engine: the next request finishes
            # in about its own 10 steps, not after the 100,000 of the cancelled one
            short = await asyncio.wait_for(eng.submit(GenRequest(prompt_ids=(7,), max_new_tokens=10)), timeout=5)
            return long, short, eng.meter.in_flight
        long, short, in_flight = asyncio.run(main())
        assert long.cancelled() and len(short.token_ids) == 10 and in_flight == 0
    finally:
        eng.close()


@pytest.mark.parametrize("fmt", ["m1", "r1", "plain"])
@pytest.mark.parametrize("forcing", [0, 2])
def test_listener_gets_exactly_the_thinking_and_answer(items, fmt, forcing):
    eng = FakeEngine(capacity=4, end_every=12)
    try:
        f = get_format(fmt)
        ctl = BudgetController(eng, f, ThinkingParams(budget=64, forcing_rounds=forcing, answer_max_tokens=16))
        cfg = EvalConfig(format=fmt)

        async def one(item, budget):
            ids = eng.encode_prompt(build_prompt(eng, item, cfg))
            got = Collect()
            th = await ctl.think_one(ids, item.id, budget, listener=got)
            (ans,) = await ctl.answers(ids, [th], item.id, listener=got)
            return got, th, ans

        async def main():
            return await asyncio.gather(*(one(it, b) for it in items for b in (0, 5, 17, 64)))
        for got, th, ans in asyncio.run(main()):
            assert got.thought == th.ids  # forced "Wait"s included, nothing past the budget
            assert got.answered == ans.ids  # no stop token, no id past the answer's cap
        assert any(th.rounds for _, th, _ in asyncio.run(main())) == bool(forcing)
    finally:
        eng.close()


def test_round_never_emits_an_id_the_request_does_not_keep():
    """A stop string of up to `hold` bytes ends a result; whatever chunks the engine hands over,
    what went out is exactly what is kept (a prefix of the ids, within the room)."""
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 40)
        ids = [rng.randrange(1000) for _ in range(n)]
        room = rng.randint(0, n)
        stop_len = rng.randint(1, 6)  # tokens spelling the stop (at most its bytes)
        stop_at = rng.randint(0, n - 1) if rng.random() < 0.7 else None
        sent: list[int] = []
        by_id = rng.random() < 0.3  # a stop token: the last id, seen by its id
        if by_id and stop_at is not None:
            stop_len, ids[stop_at] = 1, 5000
        r = Round(sent.extend, room, 0 if by_id else holdback(["x" * stop_len]), (5000,))
        end = n if stop_at is None else min(n, stop_at + stop_len)  # the stop completes here
        pos = 0
        while pos < end:
            step = rng.randint(1, 4)
            r(ids[pos:min(end, pos + step)])
            pos += step
            assert len(sent) <= (room if stop_at is None else min(room, stop_at))
        kept = ids[:room] if stop_at is None else ids[:min(stop_at, room)]
        r.finish(kept)
        assert sent == kept


def test_text_stream_pieces_add_up_to_the_decoded_text():
    eng = FakeEngine()
    text = "Wait, a naïve 🩺 patient</think> Final Answer: (B)<|im_end|> ÿ"
    ids = eng.tokenize(text)
    rng = random.Random(1)
    for _ in range(50):
        ts, out, pos = TextStream(eng.detokenize), "", 0
        while pos < len(ids):
            k = rng.randint(1, 3)
            out += ts.push(ids[pos:pos + k])
            pos += k
        out += ts.close()
        assert out == eng.detokenize(ids) == text
