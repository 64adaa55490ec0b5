"""Knowledge inserted into the thinking keeps the budget exact, a cut sweep equal to independent
runs, and a question's tokens independent of what runs beside it — on the real embedded model."""
import asyncio

import pytest

from m1.engines.base import run_sync
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep
from m1.thinking.budget import Thinking

TEXT = "\n\n[Knowledge]\nVerapamil slows conduction through the atrioventricular node.\n[End of knowledge]\n\n"


class FixedInjector:
    """Inserts TEXT at each point (what a static knowledge condition does), logging each call."""

    def __init__(self, points, counted=False, every_point=True):
        self.points, self.counted, self.every_point = tuple(points), counted, every_point
        self.calls: list[tuple[int, str]] = []

    async def text_at(self, index, thinking_text, before=()):
        self.calls.append((index, thinking_text))
        if index and not self.every_point:
            return None
        return TEXT, f"query {index}", [{"id": f"p{index}", "source": "test", "title": "", "text": TEXT, "score": 1.0}]


def one_question(ctl, prompt, key, budgets, method, injector):
    return run_sync(ctl.question(prompt, key, budgets, method, injector=injector))


def ctl_for(engine, budget, rounds=0, min_thinking=0):
    return BudgetController(engine, get_format("m1"), ThinkingParams(
        budget=budget, forcing_rounds=rounds, answer_max_tokens=16, min_thinking=min_thinking))


@pytest.mark.parametrize("counted", [False, True])
def test_insertions_sit_at_their_points_and_the_budget_counts_what_it_should(engine, prompts, medqa_items, counted):
    ctl = ctl_for(engine, 40, rounds=2, min_thinking=32)  # min_thinking keeps SmolLM2 thinking past the points
    inserted = engine.tokenize(TEXT)
    for prompt, item in zip(prompts[:3], medqa_items[:3]):
        inj = FixedInjector((10, 30), counted=counted)
        th = run_sync(ctl.think_one(prompt, item.id, 40, injector=inj))
        assert th.used <= 40
        if th.ended == "budget":
            assert th.used == 40
        assert [i.at for i in th.insertions] == sorted(i.at for i in th.insertions)
        for ins in th.insertions:
            assert list(ins.ids) == inserted and ins.text == TEXT
        # the context holds the thinking with each insertion in place
        ctx = th.context_ids()
        assert len(ctx) == len(th.ids) + sum(len(i.in_context) for i in th.insertions)
        if counted:
            assert th.used == len(th.ids) + sum(len(i.in_context) for i in th.insertions)
        else:
            assert th.used == len(th.ids)  # inserted ids are context, not thinking
            # at its point, or just past it where an ignore string ("Wait") crossed it
            wait = len(engine.tokenize("Wait"))
            assert all(pt <= i.at <= pt + wait for i, pt in zip(th.insertions, (10, 30)))
        assert len(th.insertions) >= 1  # min_thinking 32 > the first point: thinking reached it


@pytest.mark.parametrize("counted", [False, True])
def test_cut_sweep_equals_independent_runs_with_insertions(engine, prompts, medqa_items, counted):
    budgets = [0, 6, 10, 11, 28]  # 10: a point itself; 11: just past it; 0: answer at once
    ctl = ctl_for(engine, 28, rounds=1, min_thinking=24)
    for prompt, item in zip(prompts[:2], medqa_items[:2]):
        cut = one_question(ctl, prompt, item.id, budgets, "cut", FixedInjector((10, 16), counted))
        ind = one_question(ctl, prompt, item.id, budgets, "independent", FixedInjector((10, 16), counted))
        for b in budgets:
            (tc, ac), (ti, ai) = cut[b], ind[b]
            assert tc.ids == ti.ids and tc.ended == ti.ended and tc.forced_at == ti.forced_at, (item.id, b)
            assert tc.context_ids() == ti.context_ids(), (item.id, b)
            assert [(i.at, i.in_context) for i in tc.insertions] == [(i.at, i.in_context) for i in ti.insertions]
            assert ac.text == ai.text, (item.id, b)
            assert tc.used <= b
        assert cut[0][0].ids == [] and cut[0][0].insertions == []  # budget 0: no thinking, no insertion
        assert all(i.at < 10 or b > 10 for b in budgets for i in cut[b][0].insertions)


def test_a_counted_insertion_the_budget_cuts_is_completed_by_a_larger_budget(engine, prompts, medqa_items):
    n = len(engine.tokenize(TEXT))
    ctl = ctl_for(engine, 40 + n, min_thinking=40 + n)
    key = medqa_items[0].id
    whole = run_sync(ctl.think_one(prompts[0], key, 40 + n, injector=FixedInjector((10,), True)))
    cut = whole.insertions[0].at + n // 2  # the budget ends half way through the insertion
    small = run_sync(ctl.think_one(prompts[0], key, cut, injector=FixedInjector((10,), True)))
    assert small.insertions[0].kept == n // 2 and small.used == cut
    resumed = run_sync(ctl.think_one(prompts[0], key, 40 + n, resume=small, injector=FixedInjector((10,), True)))
    assert resumed.context_ids() == whole.context_ids() and resumed.ids == whole.ids
    assert whole.at_budget(cut).context_ids() == small.context_ids()


def test_a_question_with_insertions_does_not_depend_on_what_runs_beside_it(engine, prompts, medqa_items):
    ctl = ctl_for(engine, 32, min_thinking=24)

    async def together():
        return await asyncio.gather(*(ctl.think_one(p, it.id, 32, injector=FixedInjector((12, 20)))
                                      for p, it in zip(prompts[:4], medqa_items[:4])))

    batched = run_sync(together())
    alone = [run_sync(ctl.think_one(p, it.id, 32, injector=FixedInjector((12, 20))))
             for p, it in zip(prompts[:4], medqa_items[:4])]
    assert [t.context_ids() for t in batched] == [t.context_ids() for t in alone]


def test_min_thinking_replaces_early_ends_without_using_forcing_rounds(engine, prompts, medqa_items):
    plain = sweep(ctl_for(engine, 48), prompts[:4], [it.id for it in medqa_items[:4]], [48])[48][0]
    short = [i for i, th in enumerate(plain) if th.ended == "natural" and len(th.ids) < 24]
    assert short, "SmolLM2 ends its thinking early on MedQA; min_thinking should have something to do"
    forced = sweep(ctl_for(engine, 48, min_thinking=24), prompts[:4], [it.id for it in medqa_items[:4]], [48])[48][0]
    for i in short:
        th: Thinking = forced[i]
        assert len(th.ids) >= 24 or th.ended == "budget"
        assert th.short_at and all(p < 24 for p in th.short_at)
        assert th.ids[:len(plain[i].ids)] == plain[i].ids  # the same thinking up to where it had stopped


def test_static_text_goes_in_once_and_the_injector_sees_the_thinking_so_far(engine, prompts, medqa_items):
    ctl = ctl_for(engine, 40, min_thinking=40)
    inj = FixedInjector((8, 16, 24), every_point=False)
    th = run_sync(ctl.think_one(prompts[0], medqa_items[0].id, 40, injector=inj))
    wait = len(engine.tokenize("Wait"))
    (first,) = [i for i in th.insertions if i.text]  # once, at the first point (or just past a "Wait" there)
    assert first is th.insertions[0] and 8 <= first.at <= 8 + wait
    assert [c[0] for c in inj.calls] == [0, 1, 2]
    # the injector sees the thinking up to where its text goes
    assert inj.calls[1][1] == engine.detokenize(th.ids[:th.insertions[1].at])


class QueryInjector(FixedInjector):
    """Answers the model's own queries (Search-o1's way): called wherever it writes the closing tag."""

    def __init__(self, tags, counted=False):
        super().__init__((), counted)
        self.query_tags = tags

    async def text_at(self, index, thinking_text, before=()):
        from m1.knowledge.supply import written_query

        assert thinking_text.endswith(self.query_tags[1]) or self.query_tags[1] in thinking_text[-40:]
        self.calls.append((index, thinking_text))
        query = written_query(thinking_text, *self.query_tags)
        return TEXT, query, [{"id": f"p{index}", "source": "test", "title": "", "text": TEXT, "score": 1.0}]


def test_model_written_queries_keep_budgets_exact_and_cut_equal_to_independent(engine, prompts, medqa_items):
    """On the real model, with a closing tag it writes often (a full stop): passages go in right
    after each, the tag stays thinking, and every budget of a cut sweep equals its own run,
    including budgets that cut a tag's ids (a larger budget completes it before retrieving)."""
    tags = (" the", ".")
    budgets = [0, 5, 9, 17, 24, 40]
    ctl = ctl_for(engine, 40, rounds=1, min_thinking=36)
    found = 0
    for prompt, item in zip(prompts[:2], medqa_items[:2]):
        cut = one_question(ctl, prompt, item.id, budgets, "cut", QueryInjector(tags))
        ind = one_question(ctl, prompt, item.id, budgets, "independent", QueryInjector(tags))
        for b in budgets:
            (tc, ac), (ti, ai) = cut[b], ind[b]
            assert tc.ids == ti.ids and tc.context_ids() == ti.context_ids(), (item.id, b)
            assert [(i.at, i.query) for i in tc.insertions] == [(i.at, i.query) for i in ti.insertions]
            assert ac.text == ai.text and tc.used <= b
            for ins in tc.insertions:  # right after a full stop the model wrote
                assert engine.detokenize(tc.ids[:ins.at]).endswith(".") and 0 < ins.at < b
        found += len(cut[40][0].insertions)
    assert found >= 2  # the model wrote full stops: the queries were answered
