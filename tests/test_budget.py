"""Exact thinking budgets, forcing and the one-pass sweep, on the real embedded model."""
import pytest

from batch import answer, think
from m1.engines.base import GenRequest
from m1.errors import M1Error
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep


def keys(items):
    return [it.id for it in items]


def test_engine_never_exceeds_max_new_tokens_in_a_mixed_batch(engine, prompts):
    # Different caps in one batch: the official code used one max_tokens per batch.
    caps = [1, 5, 17, 40, 3, 64]
    reqs = [GenRequest(tuple(p), max_new_tokens=c) for p, c in zip(prompts, caps)]
    for cap, res in zip(caps, engine.generate(reqs)):
        assert len(res.token_ids) <= cap
        if res.finish_reason == "length":
            assert len(res.token_ids) == cap


def test_batched_generation_matches_one_at_a_time(engine, prompts):
    # Batch invariance: a question's tokens do not depend on its batch mates or on
    # whether its prompt came from the prefix cache (what makes cut == independent).
    reqs = [GenRequest(tuple(p), max_new_tokens=48) for p in prompts[:4]]
    together = [r.token_ids for r in engine.generate(reqs)]
    alone = [engine.generate([r])[0].token_ids for r in reqs]
    assert together == alone


@pytest.mark.parametrize("budget,rounds", [(7, 0), (33, 2), (100, 3)])
def test_thinking_never_exceeds_budget_with_forcing(engine, prompts, medqa_items, budget, rounds):
    ctl = BudgetController(engine, get_format("m1"), ThinkingParams(budget=budget, forcing_rounds=rounds))
    for th in think(ctl, prompts, keys(medqa_items)):
        assert len(th.ids) <= budget
        assert th.rounds <= rounds
        if th.ended == "budget":
            assert len(th.ids) == budget
        assert all(0 <= p < budget for p in th.forced_at)


def test_forcing_inserts_the_ignore_string_where_the_model_stopped(engine, prompts, medqa_items):
    ctl = BudgetController(engine, get_format("m1"), ThinkingParams(budget=160, forcing_rounds=2))
    wait = engine.tokenize("Wait")
    forced = [th for th in think(ctl, prompts, keys(medqa_items)) if th.forced_at]
    assert forced, "SmolLM2 ends its thinking early on MedQA; forcing should have fired"
    for th in forced:
        for p in th.forced_at:
            assert th.ids[p:p + len(wait)] == wait[: len(th.ids) - p]


@pytest.mark.parametrize("rounds", [0, 2])
def test_cut_sweep_equals_independent_runs(engine, prompts, medqa_items, rounds):
    ctl = BudgetController(engine, get_format("m1"),
                           ThinkingParams(budget=96, forcing_rounds=rounds, answer_max_tokens=24))
    budgets = [8, 24, 96]
    cut = sweep(ctl, prompts[:4], keys(medqa_items)[:4], budgets, "cut")
    ind = sweep(ctl, prompts[:4], keys(medqa_items)[:4], budgets, "independent")
    for b in budgets:
        for (t1, a1), (t2, a2) in zip(zip(*cut[b]), zip(*ind[b])):
            assert (t1.ids, t1.ended, t1.forced_at) == (t2.ids, t2.ended, t2.forced_at)
            assert (a1.ids, a1.prefix) == (a2.ids, a2.prefix)


def test_answer_prefix_depends_on_how_thinking_ended(engine, prompts, medqa_items):
    fmt = get_format("m1")
    ctl = BudgetController(engine, fmt, ThinkingParams(budget=4, answer_max_tokens=8))
    th = think(ctl, prompts[:2], keys(medqa_items)[:2])
    ans = answer(ctl, prompts[:2], th, keys(medqa_items)[:2])
    for t, a in zip(th, ans):
        assert a.prefix == (fmt.answer_forced if t.ended == "budget" else fmt.answer_start)
        assert len(a.ids) <= 8


def test_r1_format_stops_on_a_multi_token_delimiter(engine, prompts, medqa_items):
    fmt = get_format("r1")
    ctl = BudgetController(engine, fmt, ThinkingParams(budget=64, answer_max_tokens=16))
    assert "</think>" in ctl.think_stop_strs  # several tokens on SmolLM2: matched as text
    th = think(ctl, prompts[:3], keys(medqa_items)[:3])
    for t in th:
        assert "</think>" not in engine.detokenize(t.ids)
        assert len(t.ids) <= 64


def test_plain_format_skips_the_answer_phase_when_the_model_answered(engine, prompts, medqa_items):
    ctl = BudgetController(engine, get_format("plain"), ThinkingParams(budget=256, answer_max_tokens=16))
    th = think(ctl, prompts[:3], keys(medqa_items)[:3])
    ans = answer(ctl, prompts[:3], th, keys(medqa_items)[:3])
    for t, a in zip(th, ans):
        if t.ended == "natural":
            assert a.ids == [] and a.finish_reason == "none"
        else:
            assert a.prefix == "\nFinal Answer:"


def test_bad_budget_is_a_clear_error():
    with pytest.raises(M1Error, match="0 or more"):
        ThinkingParams(budget=-1)
    assert ThinkingParams(budget=0).budget == 0  # budget 0: answer at once


def test_thinking_records_which_stop_ended_it(engine, prompts, medqa_items):
    # SmolLM2 was never trained on m1's delimiters: it ends its turn instead of closing its thinking.
    m1 = BudgetController(engine, get_format("m1"), ThinkingParams(budget=64))
    for t in think(m1, prompts[:3], keys(medqa_items)[:3]):
        assert t.ended == "natural" and t.stop == "<|im_end|>"
    # Cut by the budget: no stop; and the cut view of a natural ending keeps none either.
    plain = BudgetController(engine, get_format("plain"), ThinkingParams(budget=4))
    for t in think(plain, prompts[:3], keys(medqa_items)[:3]):
        assert t.ended == "budget" and t.stop is None and len(t.ids) == 4


def test_priority_gate_lets_the_lowest_in_first():
    import asyncio

    from m1.engines.base import PriorityGate

    async def main():
        gate = PriorityGate(2)
        got = []

        async def one(name, priority, hold):
            await gate.enter(priority)
            got.append(name)
            await asyncio.sleep(hold)
            gate.leave()

        first = [asyncio.create_task(one(n, 9, 0.05)) for n in ("a", "b")]
        await asyncio.sleep(0)  # both hold their places
        late = [asyncio.create_task(one(n, p, 0)) for n, p in (("x", 4), ("y", -1), ("z", 4), ("w", 0))]
        cancelled = asyncio.create_task(one("never", -5, 0))
        await asyncio.sleep(0)
        cancelled.cancel()  # a waiter that gives up passes nothing on and takes no place
        await asyncio.gather(*first, *late)
        assert got == ["a", "b", "y", "w", "x", "z"]
        assert gate.held == 0

    asyncio.run(main())


def test_stages_continue_an_ignore_string_the_smaller_budget_cut(engine, prompts, medqa_items):
    """The cut sweep thinks in stages that end at each budget. A multi-token ignore string that
    one stage had to cut is completed by the next, as one request to the larger budget has it:
    the sweep still equals independent runs, with budgets every few tokens so that some
    forcing round straddles a stage boundary."""
    ignore = " Wait, let me check that again."
    ctl = BudgetController(engine, get_format("m1"), ThinkingParams(
        budget=120, forcing_rounds=3, ignore_str=ignore, answer_max_tokens=6))
    n = len(engine.tokenize(ignore))
    assert n >= 5
    budgets = list(range(3, 121, 3))
    cut = sweep(ctl, prompts[:3], keys(medqa_items)[:3], budgets, "cut")
    straddled = 0
    for q in range(3):
        longest = cut[120][0][q]
        straddled += sum(1 for p in longest.forced_at for b in budgets if p < b < p + n)
    assert straddled, "no forcing round crossed a budget: the test does not exercise the stage resume"
    ind = sweep(ctl, prompts[:3], keys(medqa_items)[:3], [6, 60, 120], "independent")
    for b in (6, 60, 120):
        for (t1, a1), (t2, a2) in zip(zip(*cut[b]), zip(*ind[b])):
            assert (t1.ids, t1.ended, t1.forced_at) == (t2.ids, t2.ended, t2.forced_at)
            if b == 120:  # the longest thinking: one finish reason per round, not one per stage
                assert t1.finish_reasons == t2.finish_reasons
            assert (a1.ids, a1.prefix) == (a2.ids, a2.prefix)


def test_each_budgets_answer_is_sent_while_the_thinking_goes_on(engine, prompts, medqa_items):
    """An answer for a small budget is submitted before the thinking to the largest budget has
    returned, with priority -1; thinking stages carry the ids thought so far."""
    events = []
    submit = engine.submit

    async def watch(req):
        kind = "answer" if req.priority == -1 else "think"
        events.append(("send", kind, req.priority))
        res = await submit(req)
        events.append(("done", kind, req.priority))
        return res

    engine.submit = watch  # an instance attribute shadows the method
    try:
        # forcing keeps the thinking going to the largest budget
        ctl = BudgetController(engine, get_format("m1"), ThinkingParams(budget=64, forcing_rounds=8,
                                                                       answer_max_tokens=4))
        out = sweep(ctl, prompts[:1], keys(medqa_items)[:1], [8, 16, 64], "cut")
    finally:
        del engine.submit
    assert [len(out[b][0][0].ids) for b in (8, 16, 64)] == [8, 16, 64]
    thinks = [p for e, k, p in events if e == "send" and k == "think"]
    # a stage per budget: it starts there, or just past the ignore string where the model had ended on
    # the budget's last id (the stage forces at once instead of asking the model to end again)
    wait = len(engine.tokenize("Wait"))
    assert thinks[0] == 0 and thinks == sorted(thinks)
    assert all(any(b <= p <= b + wait for p in thinks) for b in (8, 16)), thinks
    first_answer = events.index(next(e for e in events if e[:2] == ("send", "answer")))
    last_think_done = max(i for i, e in enumerate(events) if e[:2] == ("done", "think"))
    assert first_answer < last_think_done
