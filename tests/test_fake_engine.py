"""The controller and the pipelines on the fake engine (m1.engines.fake): their logic in seconds,
with no model. The same properties are proved exact on the real embedded model in
tests/test_budget.py, test_pipelines.py, test_probes.py and test_adaptive.py (marked slow).

The fake engine's script is a known function of the context (`FakeEngine.next_token`), so
several tests replay it by hand: the thinking and the answer the controller must produce are
computed here token by token and compared id for id.
"""
from __future__ import annotations

import asyncio

import pytest

from batch import answer, think
from m1.config import EvalConfig, parse_budgets
from m1.engines import engine_options, make_engine
from m1.engines.base import GenRequest
from m1.engines.fake import CHAR_BASE, FakeEngine, Script, extend_hash
from m1.engines.vllm_engine import locate_stop
from m1.errors import M1Error
from m1.evaluate import build_prompt, evaluate
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep
from m1.thinking.budget import Thinking
from m1.thinking.policies import BUDGET, NATURAL_END, Confidence, Stable, policy_spec, simulate

LETTERS = ("A", "B", "C", "D")


@pytest.fixture(scope="module")
def fake():
    eng = FakeEngine(capacity=4)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def items():
    from m1.benchmarks import load_benchmark

    return load_benchmark("medqa", limit=8, seed=1)


@pytest.fixture(scope="module")
def prompts(fake, items):
    cfg = EvalConfig()
    return [fake.encode_prompt(build_prompt(fake, it, cfg)) for it in items]


def ids_of(items):
    return [it.id for it in items]


def run(coro):
    return asyncio.run(coro)


# -- the engine itself ----------------------------------------------------------------------

def test_vocabulary_round_trips_any_text_and_knows_the_delimiters(fake):
    text = "<|im_start|>user\nA 45-year-old naïve 🩺 patient</think> Wait<|im_end|>\n"
    ids = fake.tokenize(text)
    assert fake.detokenize(ids) == text
    assert fake.tokenize("<|im_start|>") == [1] and fake.eos_token_ids == (2,)
    assert len(fake.tokenize("Wait")) == 1 and len(fake.tokenize("</think>")) == 4  # one id, and several
    assert fake.tokenize("é") == [CHAR_BASE + ord("é")]
    assert fake.encode_prompt(text) == ids  # no BOS
    assert fake.render_chat([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="no token"):
        fake.detokenize([CHAR_BASE - 1])


def test_selectable_by_name_with_its_options_checked():
    eng = make_engine("fake", None, capacity=2, latency=0.001, end_every=5)
    try:
        assert isinstance(eng, FakeEngine) and eng.capacity == eng.meter.capacity == 2
        assert eng.script.end_every == 5
        d = eng.describe()
        assert d["engine"] == "fake" and d["model"] == "fake-script" and d["script"]["end_every"] == 5
    finally:
        eng.close()
    assert "latency" in engine_options("fake")
    with pytest.raises(M1Error, match="has no such option"):
        make_engine("fake", None, slots=2)
    with pytest.raises(M1Error, match="capacity"):
        FakeEngine(capacity=0)
    with pytest.raises(M1Error, match="end_every"):
        Script(end_every=0)


def test_greedy_output_is_a_function_of_the_context(fake, prompts):
    """The next token depends on the context only: what one request generated, a request on its
    context plus a prefix of that output continues exactly; another engine gives the same."""
    first = fake.generate([GenRequest(tuple(prompts[0]), max_new_tokens=40)])[0].token_ids
    assert len(first) == 40
    rest = fake.generate([GenRequest(tuple(prompts[0] + first[:15]), max_new_tokens=25)])[0].token_ids
    assert first[15:] == rest
    other = FakeEngine(capacity=1)
    try:
        assert other.generate([GenRequest(tuple(prompts[0]), max_new_tokens=40)])[0].token_ids == first
    finally:
        other.close()
    assert [fake.next_token(prompts[0] + first[:i]) for i in range(40)] == first


def test_max_new_tokens_is_never_exceeded_in_a_mixed_batch(fake, prompts):
    caps = [1, 5, 17, 40, 3, 64, 2, 9]
    reqs = [GenRequest(tuple(p), max_new_tokens=c) for p, c in zip(prompts, caps)]
    for cap, res in zip(caps, fake.generate(reqs)):
        assert len(res.token_ids) == cap and res.finish_reason == "length" and res.stop_index == cap


def test_stops_by_id_and_by_string_as_the_real_engines_report_them(fake, prompts):
    end, think = fake.tokenize("<|im_start|>"), fake.tokenize("</think>")
    reqs = [GenRequest(tuple(p), max_new_tokens=400, stop_token_ids=tuple(end)) for p in prompts] + \
           [GenRequest(tuple(p), max_new_tokens=400, stop_strings=("</think>",)) for p in prompts]
    results = fake.generate(reqs)
    by_id, by_string = results[:len(prompts)], results[len(prompts):]
    assert all(r.finish_reason == "stop" for r in results), "the script ends within 400 tokens"
    for r in by_id:
        assert r.token_ids[-1] == end[0] and r.stop_index == len(r.token_ids) - 1 and r.matched_stop == end[0]
        assert end[0] not in r.token_ids[:-1]
    for r in by_string:
        # the stop string spans four tokens: it begins at stop_index, and generation ended on its last
        assert r.matched_stop == "</think>" and r.token_ids[r.stop_index:] == think
        assert r.stop_index == locate_stop(r.token_ids, "</think>", fake.detokenize)
        assert "</think>" not in fake.detokenize(r.token_ids[:r.stop_index]) and r.text.endswith("</think>")


def test_batched_generation_matches_one_at_a_time(prompts):
    wide, narrow = FakeEngine(capacity=4), FakeEngine(capacity=1)
    try:
        reqs = [GenRequest(tuple(p), max_new_tokens=48) for p in prompts]
        together = [r.token_ids for r in wide.generate(reqs)]
        alone = [narrow.generate([r])[0].token_ids for r in reqs]
    finally:
        wide.close()
        narrow.close()
    assert together == alone
    assert len({tuple(t) for t in together}) == len(prompts)  # the questions differ


def test_seeded_sampling_repeats_and_differs_from_greedy(fake, prompts):
    sampled = GenRequest(tuple(prompts[0]), max_new_tokens=30, temperature=0.8, seed=7)
    a, b = (fake.generate([sampled])[0].token_ids for _ in range(2))
    assert a == b
    assert a != fake.generate([GenRequest(tuple(prompts[0]), max_new_tokens=30)])[0].token_ids


def test_waiting_requests_start_lowest_priority_first():
    eng = FakeEngine(capacity=1)
    order = []

    async def one(name, priority):
        await eng.submit(GenRequest((5, 6, name), max_new_tokens=3, priority=priority))
        order.append(name)

    async def main():
        await asyncio.gather(*(one(n, p) for n, p in ((10, 5), (11, 9), (12, -1), (13, 0), (14, 5))))
    try:
        run(main())
    finally:
        eng.close()
    # all five arrive before the first step: lowest priority first, ties in arrival order
    assert order == [12, 13, 10, 14, 11]


def test_bad_requests_are_refused_in_the_callers_context(fake):
    with pytest.raises(M1Error, match="empty prompt"):
        fake.generate([GenRequest((), max_new_tokens=4)])
    with pytest.raises(M1Error, match="max_new_tokens"):
        fake.generate([GenRequest((1, 2), max_new_tokens=0)])


def test_the_meter_counts_requests_tokens_and_context():
    eng = FakeEngine(capacity=3)
    try:
        before = eng.meter.reading()
        eng.generate([GenRequest(tuple(range(300, 300 + n)), max_new_tokens=m) for n, m in ((4, 10), (7, 3))])
        after = eng.meter.reading()
    finally:
        eng.close()
    assert (after.requests - before.requests, after.generated - before.generated, after.context - before.context) \
        == (2, 13, 11)
    assert eng.meter.in_flight == 0


# -- the controller: a hand replay of the script ------------------------------------------------

class Model:
    """The fake engine's script stepped by hand over a growing context."""

    def __init__(self, eng: FakeEngine, context):
        self.eng, self.context = eng, list(context)
        self.hashes = eng.context_hashes(self.context)

    def next(self) -> int:
        return self.eng.next_token(self.context, self.hashes)

    def push(self, ids) -> None:
        for t in ids:
            self.context.append(t)
            self.hashes.append(extend_hash(self.hashes[-1], t))


def replay_thinking(eng: FakeEngine, ctl: BudgetController, prompt, budget: int) -> tuple[list[int], str, list[int]]:
    """What the controller must produce for one question under `budget`, computed token by token:
    the thinking ids, how it ended, where the ignore string went in (single-token think stops)."""
    if budget == 0:  # "answer at once": the model is not asked
        return [], "budget", []
    model = Model(eng, ctl.think_prompt(prompt))
    ids: list[int] = []
    forced: list[int] = []
    rounds = ctl.params.forcing_rounds
    while True:
        tok = model.next()
        if tok in ctl.think_stop_ids:
            if len(forced) >= rounds:
                return ids, "natural", forced
            if len(ids) == budget:  # the ignore string does not fit
                return ids, "budget", forced
            forced.append(len(ids))
            wait = ctl.ignore_ids[:budget - len(ids)]
        elif len(ids) == budget:  # the model went on past the budget
            return ids, "budget", forced
        else:
            wait = [tok]
        ids += wait
        model.push(wait)


def replay_answer(eng: FakeEngine, ctl: BudgetController, prompt, th: Thinking) -> list[int]:
    model = Model(eng, ctl.think_prompt(prompt) + th.context_ids() + eng.tokenize(ctl.answer_prefix(th)))
    out: list[int] = []
    while len(out) < ctl.params.answer_max_tokens:
        tok = model.next()
        if tok in ctl.answer_stop_ids:
            break
        out.append(tok)
        model.push([tok])
    return out


@pytest.mark.parametrize("rounds", [0, 1, 3])
@pytest.mark.parametrize("budget", [0, 1, 7, 64])
def test_thinking_is_exactly_the_scripts_under_every_budget(fake, prompts, items, budget, rounds):
    """Budget never overrun; every forcing round counted where the model stopped, the ignore
    string put in there; the answer forced after a cut; all id for id as a hand replay gives."""
    fmt = get_format("m1")
    ctl = BudgetController(fake, fmt, ThinkingParams(budget=budget, forcing_rounds=rounds, answer_max_tokens=8))
    thinkings = think(ctl, prompts, ids_of(items))
    answers = answer(ctl, prompts, thinkings, ids_of(items))
    wait = fake.tokenize("Wait")
    for p, th, ans in zip(prompts, thinkings, answers):
        ids, ended, forced = replay_thinking(fake, ctl, p, budget)
        assert (th.ids, th.ended, th.forced_at) == (ids, ended, forced)
        assert len(th.ids) <= budget and th.used == len(th.ids)
        assert th.rounds == len(th.forced_at) <= rounds
        if th.ended == "budget":
            assert len(th.ids) == budget
        else:
            assert th.stop in ("<|im_start|>", "<|im_end|>") and th.rounds == rounds
        for at in th.forced_at:
            assert th.ids[at:at + len(wait)] == wait[:budget - at]
        assert ans.prefix == (fmt.answer_forced if th.ended == "budget" else fmt.answer_start)
        assert ans.ids == replay_answer(fake, ctl, p, th)
        # the script answers a forced "Final Answer:" with one letter, then ends its turn
        if th.ended == "budget":
            assert len(ans.ids) == 1 and ans.text.strip() in LETTERS and ans.finish_reason == "stop"
    endings = {th.ended for th in thinkings}  # the test sees both endings, and forcing fire
    if budget >= 7:
        assert "budget" in endings or budget == 64 and rounds == 0
    if budget == 64:
        assert "natural" in endings and bool(rounds) == any(th.forced_at for th in thinkings)


def test_forcing_rounds_insert_a_multi_token_ignore_string_and_count_exactly(fake, prompts, items):
    ignore = " Wait, let me check that again."
    ctl = BudgetController(fake, get_format("m1"), ThinkingParams(budget=200, forcing_rounds=4, ignore_str=ignore))
    n = len(ctl.ignore_ids)
    assert n >= 5 and fake.detokenize(ctl.ignore_ids) == ignore
    for p, th in zip(prompts, think(ctl, prompts, ids_of(items))):
        ids, ended, forced = replay_thinking(fake, ctl, p, 200)
        assert (th.ids, th.ended, th.forced_at) == (ids, ended, forced)
        text = fake.detokenize(th.ids)
        assert text.count(ignore) == th.rounds  # the script's words never spell it on their own
        for at in th.forced_at:
            assert th.ids[at:at + n] == ctl.ignore_ids[:200 - at]
        assert th.finish_reasons.count("stop") == th.rounds + (th.ended == "natural")


@pytest.mark.parametrize("fmt", ["m1", "r1", "plain"])
@pytest.mark.parametrize("rounds", [0, 2])
def test_cut_sweep_equals_independent_runs(fake, prompts, items, fmt, rounds):
    params = ThinkingParams(budget=96, forcing_rounds=rounds, answer_max_tokens=12)
    ctl = BudgetController(fake, get_format(fmt), params)
    budgets = [1, 7, 8, 24, 64, 96]  # 0: see test_budget_0_in_a_cut_sweep_where_the_model_ends_at_once
    letters = [LETTERS] * len(prompts)
    cut = sweep(ctl, prompts, ids_of(items), budgets, "cut", letters)
    ind = sweep(ctl, prompts, ids_of(items), budgets, "independent", letters)
    ended = set()
    for b in budgets:
        for (t1, a1), (t2, a2) in zip(zip(*cut[b]), zip(*ind[b])):
            assert len(t1.ids) <= b
            assert (t1.ids, t1.ended, t1.forced_at) == (t2.ids, t2.ended, t2.forced_at)
            assert (a1.ids, a1.prefix, a1.finish_reason) == (a2.ids, a2.prefix, a2.finish_reason)
            assert (a1.option_logprobs, a1.option_position) == (a2.option_logprobs, a2.option_position)
            ended.add(t1.ended)
    assert ended == {"natural", "budget"}, "the sweep should see both endings"


def test_stages_complete_an_ignore_string_a_smaller_budget_cut(fake, prompts, items):
    """Budgets every 3 tokens and a 9-token ignore string: forcing rounds straddle stage boundaries,
    and the cut sweep still equals independent runs (think_one's resume)."""
    ignore = " Wait, let me check that again."
    ctl = BudgetController(fake, get_format("m1"), ThinkingParams(budget=120, forcing_rounds=3, ignore_str=ignore,
                                                                  answer_max_tokens=6))
    n = len(ctl.ignore_ids)
    budgets = list(range(3, 121, 3))
    cut = sweep(ctl, prompts, ids_of(items), budgets, "cut")
    straddled = sum(1 for q in range(len(prompts)) for p in cut[120][0][q].forced_at for b in budgets if p < b < p + n)
    assert straddled, "no forcing round crossed a budget: the test does not exercise the stage resume"
    check = [3, 6, 30, 60, 90, 117, 120]
    ind = sweep(ctl, prompts, ids_of(items), check, "independent")
    for b in check:
        for (t1, a1), (t2, a2) in zip(zip(*cut[b]), zip(*ind[b])):
            assert (t1.ids, t1.ended, t1.forced_at) == (t2.ids, t2.ended, t2.forced_at), b
            if b == 120:  # one finish reason per round, not one per stage
                assert t1.finish_reasons == t2.finish_reasons
            assert (a1.ids, a1.prefix) == (a2.ids, a2.prefix)


def test_a_question_does_not_depend_on_what_runs_beside_it(prompts, items):
    """One question alone on a one-request engine, and the same question among seven others on a
    four-request engine with a latency (so they interleave): the same sweep, id for id."""
    params = ThinkingParams(budget=64, forcing_rounds=2, answer_max_tokens=8)
    alone_eng, busy_eng = FakeEngine(capacity=1), FakeEngine(capacity=4, latency=0.0005)
    try:
        alone = sweep(BudgetController(alone_eng, get_format("m1"), params), prompts[3:4], ids_of(items)[3:4],
                      [8, 32, 64], "cut")
        busy = sweep(BudgetController(busy_eng, get_format("m1"), params), prompts, ids_of(items), [8, 32, 64], "cut")
    finally:
        alone_eng.close()
        busy_eng.close()
    for b in (8, 32, 64):
        (t1,), (a1,) = alone[b]
        t2, a2 = busy[b][0][3], busy[b][1][3]
        assert (t1.ids, t1.ended, t1.forced_at, a1.ids) == (t2.ids, t2.ended, t2.forced_at, a2.ids)


def test_r1_stops_on_its_multi_token_delimiter_and_never_keeps_it(fake, prompts, items):
    ctl = BudgetController(fake, get_format("r1"), ThinkingParams(budget=200, answer_max_tokens=8))
    assert ctl.think_stop_strs == ("</think>",) and ctl.delimiter_len == 4
    th = think(ctl, prompts, ids_of(items))
    assert any(t.stop == "</think>" for t in th)
    for t in th:
        assert "</think>" not in fake.detokenize(t.ids) and len(t.ids) <= 200
    for t, a in zip(th, answer(ctl, prompts, th, ids_of(items))):
        if t.ended == "natural" and t.stop == "</think>":
            assert a.prefix == "</think>\n\n" and a.text.startswith("Answer: ")


def test_a_delimiter_on_the_budgets_last_token_is_a_natural_end():
    """The round runs `delimiter_len` past the remaining budget, so a model that ends its thinking on
    exactly the B-th token ends naturally at B, and a longer delimiter there is never kept."""
    eng = FakeEngine(capacity=2)
    try:
        for fmt_name in ("m1", "r1"):
            ctl = BudgetController(eng, get_format(fmt_name), ThinkingParams(budget=300))
            found = 0
            for q in range(30):
                prompt = eng.tokenize(f"question {q}?")
                th = think(ctl, [prompt], [str(q)])[0]
                if th.ended != "natural":
                    continue
                b = len(th.ids)  # the natural length: a budget of exactly that ends naturally too
                if b == 0:  # budget 0 asks the model nothing (see the budget-0 test below)
                    continue
                edge = think(ctl, [prompt], [str(q)], budget=b)[0]
                assert (edge.ids, edge.ended, edge.stop) == (th.ids, "natural", th.stop)
                short = think(ctl, [prompt], [str(q)], budget=b - 1)[0]
                assert (short.ids, short.ended) == (th.ids[:-1], "budget")
                found += 1
            assert found >= 10
    finally:
        eng.close()


def test_plain_format_skips_the_answer_phase_when_the_model_answered(fake, prompts, items):
    ctl = BudgetController(fake, get_format("plain"), ThinkingParams(budget=48, answer_max_tokens=8))
    th = think(ctl, prompts, ids_of(items))
    ans = answer(ctl, prompts, th, ids_of(items))
    assert {t.ended for t in th} == {"natural", "budget"}
    for t, a in zip(th, ans):
        if t.ended == "natural":
            assert a.ids == [] and a.finish_reason == "none" and t.stop == "<|im_end|>"
        else:
            assert a.prefix == "\nFinal Answer:" and a.text.strip() in LETTERS


def test_min_thinking_replaces_early_ends_without_counting_rounds(fake, prompts, items):
    ctl = BudgetController(fake, get_format("m1"), ThinkingParams(budget=96, min_thinking=40))
    for th in think(ctl, prompts, ids_of(items)):
        assert len(th.ids) >= 40 or th.ended == "budget"
        assert th.short_at == th.forced_at and all(p < 40 for p in th.short_at)
        assert th.ended == "budget" or len(th.ids) >= 40


def test_a_thinking_the_engines_context_cuts_ends_short_and_does_not_loop(prompts, items):
    eng = FakeEngine(capacity=1, n_ctx=len(prompts[0]) + 40, script=Script(end_every=10**9))  # never ends
    try:
        ctl = BudgetController(eng, get_format("m1"), ThinkingParams(budget=100))
        th = think(ctl, prompts[:1], ids_of(items)[:1])[0]
    finally:
        eng.close()
    room = 40 - len(ctl.think_start_ids)
    assert (len(th.ids), th.ended, th.finish_reasons) == (room, "budget", ["length"])


def test_each_budgets_answer_is_sent_while_the_thinking_goes_on(prompts, items):
    eng = FakeEngine(capacity=4, latency=0.0005)
    events = []
    submit = eng.submit

    async def watch(req, on_tokens=None):
        kind = "answer" if req.priority == -1 else "think"
        events.append(("send", kind, req.priority))
        res = await submit(req, on_tokens)
        events.append(("done", kind, req.priority))
        return res

    eng.submit = watch  # type: ignore[method-assign]
    try:
        ctl = BudgetController(eng, get_format("m1"), ThinkingParams(budget=64, forcing_rounds=20, answer_max_tokens=4))
        out = sweep(ctl, prompts[:1], ids_of(items)[:1], [8, 16, 64], "cut")
    finally:
        eng.close()
    assert [len(out[b][0][0].ids) for b in (8, 16, 64)] == [8, 16, 64]
    thinks = [p for e, k, p in events if e == "send" and k == "think"]
    assert thinks[0] == 0 and thinks == sorted(thinks)
    assert all(any(b <= p <= b + 1 for p in thinks) for b in (8, 16)), thinks
    first_answer = events.index(next(e for e in events if e[:2] == ("send", "answer")))
    last_think_done = max(i for i, e in enumerate(events) if e[:2] == ("done", "think"))
    assert first_answer < last_think_done


def test_budget_0_in_a_cut_sweep_where_the_model_ends_at_once():
    """A model that ends its thinking at once (SmolLM2 does in the m1 format): an independent run at
    budget 0 asks it nothing and forces the answer ("budget"); the cut sweep should give the same."""
    eng = FakeEngine(capacity=2, script=Script(end_every=1, ends=("<|im_end|>",)))
    try:
        ctl = BudgetController(eng, get_format("m1"), ThinkingParams(budget=8, answer_max_tokens=4))
        prompt = [eng.tokenize("question?")]
        cut = sweep(ctl, prompt, ["q"], [0, 8], "cut")
        ind = sweep(ctl, prompt, ["q"], [0, 8], "independent")
    finally:
        eng.close()
    assert (cut[8][0][0].ids, cut[8][0][0].ended) == (ind[8][0][0].ids, ind[8][0][0].ended) == ([], "natural")
    assert (ind[0][0][0].ended, ind[0][1][0].prefix) == ("budget", get_format("m1").answer_forced)
    assert (cut[0][0][0].ended, cut[0][1][0].prefix) == (ind[0][0][0].ended, ind[0][1][0].prefix)


def test_a_thinking_the_budget_ended_has_no_stop(fake, prompts, items):
    ctl = BudgetController(fake, get_format("m1"), ThinkingParams(budget=7, forcing_rounds=1))
    cut = [th for th in think(ctl, prompts, ids_of(items)) if th.ended == "budget"]
    assert cut and all(th.stop is None for th in cut)


# -- pipelines: evaluate() on the fake engine --------------------------------------------------------

@pytest.fixture
def no_report(monkeypatch):
    """evaluate() without its report (plots, analyses: seconds each; tested in the reporting tests)."""
    monkeypatch.setattr("m1.reporting.report.report", lambda *args, **kwargs: None)

class StepLog:
    """Wraps a stepped engine's `_advance` to see each step's batch (as tests/test_pipelines.py)."""

    def __init__(self, engine):
        self.engine, self.steps = engine, []
        self._advance = engine._advance
        engine._advance = self

    def __call__(self, new):
        out = self._advance(new)
        self.steps.append(len(self.engine._running) + len(out))
        return out

    def undo(self):
        del self.engine._advance


def test_pipelines_keep_the_engine_full_and_records_land_as_questions_finish(tmp_path, no_report):
    eng = FakeEngine(capacity=4, latency=0.005)  # a step's time well above the event loop's hops
    cfg = EvalConfig(limit=16, budgets=(16, 48), answer_max_tokens=6, format="m1", forcing_rounds=1)
    log = StepLog(eng)
    seen = []

    def progress(done, total, load):
        on_disk = tmp_path / "run" / "traces.jsonl"
        n = len(on_disk.read_text().splitlines()) if on_disk.exists() else 0
        seen.append((done, n, len(log.steps), eng.meter.in_flight))

    try:
        result = evaluate(cfg, out=tmp_path / "run", engine=eng, progress=progress)
    finally:
        log.undo()
        eng.close()
    assert len(result.traces) == 32 and {t.budget for t in result.traces} == {16, 48}
    for done, n, _, _ in seen[1:]:
        assert n == 2 * done  # each question's records are on disk when it is reported done
    last_start_step = seen[-4][2]  # 4 in flight: the 4th last to finish started before this step
    full = [n == 4 for n in log.steps[:last_start_step]]
    assert len(full) > 20 and sum(full) >= 0.95 * len(full), log.steps[:last_start_step]
    assert max(log.steps) == 4
    load = result.engine_load
    assert load is not None
    assert load["capacity"] == 4 and load["generated_tokens"] > 0 and load["requests"] >= 3 * 16
    assert load["while_questions_remain"]["occupancy"] > 0.8, load
    assert load["context_tokens"] >= load["context_minimum"] > 0  # no prefix cache: every prompt in full


def test_pipelines_give_the_same_records_in_any_order(tmp_path, no_report):
    """One request at a time or four with a latency: the same traces (a question's tokens do not
    depend on its neighbours, nor on the order in which the pipelines advance)."""
    cfg = EvalConfig(limit=6, budgets=(8, 32), answer_max_tokens=10, forcing_rounds=1, format="m1")
    key = lambda t: (t.id, t.budget)  # noqa: E731
    fields = ("thinking", "forced_at", "answer", "thinking_ended", "letter", "option_logprobs")
    got = []
    for capacity, latency in ((4, 0.0005), (1, 0.0)):
        eng = FakeEngine(capacity=capacity, latency=latency)
        try:
            r = evaluate(cfg, out=tmp_path / f"c{capacity}", engine=eng)
        finally:
            eng.close()
        got.append([[getattr(t, f) for f in fields] for t in sorted(r.traces, key=key)])
    assert got[0] == got[1] and len(got[0]) == 12
    assert any(row[5] for row in got[0])  # the probes were answered


@pytest.mark.parametrize("policy", [Stable(2, 8), Confidence(0.8, 8)], ids=str)
def test_online_adaptive_stops_where_the_offline_replay_does(tmp_path, no_report, policy):
    eng = FakeEngine(capacity=4, script=Script(end_every=40))
    base: dict = dict(limit=8, seed=3, format="m1", answer_max_tokens=6)
    try:
        dense = evaluate(EvalConfig(budgets=parse_budgets("8:64:8"), **base), out=tmp_path / "dense", engine=eng)
        online = evaluate(EvalConfig(budgets=(64,), adaptive=policy_spec(policy), **base), out=tmp_path / "online",
                          engine=eng)
    finally:
        eng.close()
    by_question: dict[str, list] = {}
    for t in dense.traces:
        by_question.setdefault(t.id, []).append(t)
    reasons = set()
    for t in online.traces:
        off = simulate(policy, by_question[t.id])
        assert (t.stopped_by, t.letter, t.correct, t.thinking_tokens) == (off.reason, off.letter, off.correct,
                                                                            off.tokens), t.id
        assert t.probes is not None and len(t.probes) == off.probes
        if t.stopped_by not in (NATURAL_END, BUDGET):
            assert t.thinking_tokens % 8 == 0
        reasons.add(t.stopped_by)
    assert policy.reason in reasons, reasons  # the policy stopped some question early



class _Queries:
    """An injector answering the model's own search queries (Injector.query_tags)."""

    points: tuple[int, ...] = ()
    counted = False
    query_tags = ("[search]", "[/search]")

    async def text_at(self, index, thinking_text, before=()):
        from m1.knowledge.supply import written_query

        return f" <<passage {index}>> ", written_query(thinking_text, *self.query_tags), []


def test_search_queries_the_model_writes_are_answered_in_place_and_sweeps_stay_exact(items):
    """The fake model writes "[search] fever cause[/search]" now and then (one of its ends): the
    passages go in right after each closing tag, the tag and query are thinking (counted), a
    budget that cuts a tag leaves no insertion, and a cut sweep equals independent runs at every
    budget, tags cut by a smaller budget included."""
    query = "[search] fever cause[/search]"
    eng = FakeEngine(capacity=4, script=Script(end_every=9, ends=("<|im_start|>", query)))
    try:
        ctl = BudgetController(eng, get_format("m1"), ThinkingParams(budget=160, forcing_rounds=3,
                                                                     answer_max_tokens=4))
        prompts = [eng.encode_prompt(build_prompt(eng, it, EvalConfig(format="m1"))) for it in items]
        tag_len = len(eng.tokenize("[/search]"))
        budgets = sorted({0, 7, 30, 60, 100, 160} | {b for b in range(1, 160, 13)})
        cut = sweep(ctl, prompts, ids_of(items), budgets, "cut", injector=_Queries())
        ind = sweep(ctl, prompts, ids_of(items), budgets, "independent", injector=_Queries())
        seen = 0
        for b in budgets:
            for tc, ti in zip(cut[b][0], ind[b][0]):
                assert tc.ids == ti.ids and tc.context_ids() == ti.context_ids() and tc.used <= b
                for ins in tc.insertions:
                    assert eng.detokenize(tc.ids[:ins.at]).endswith("[/search]") and ins.query == "fever cause"
                    assert ins.at < b  # never at the budget's edge: the budget was spent there
                seen += len(tc.insertions)
                text = eng.detokenize(tc.ids)
                if text.endswith(eng.detokenize(eng.tokenize("[/search]")[:tag_len - 1])) and tc.ended == "budget":
                    assert not tc.insertions or tc.insertions[-1].at < len(tc.ids)  # a cut tag: nothing after it
        assert seen > 10
    finally:
        eng.close()
