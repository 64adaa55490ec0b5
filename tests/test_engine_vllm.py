"""vLLM engine: request mapping (pure) and the missing-extra error; no GPU needed."""
import importlib.util
import math
from types import SimpleNamespace

import pytest

from m1.engines.base import GenRequest
from m1.engines.vllm_engine import VLLMEngine, build_sampling_kwargs, locate_stop, to_result
from m1.errors import M1Error


def test_greedy_request_maps_to_exact_sampling_params():
    req = GenRequest(prompt_ids=(1, 2, 3), max_new_tokens=37, stop_token_ids=(2, 7), stop_strings=("</think>",))
    kw = build_sampling_kwargs(req)
    assert kw["temperature"] == 0.0
    assert kw["max_tokens"] == 37
    assert kw["stop_token_ids"] == [2, 7]
    assert kw["stop"] == ["</think>"]
    # the text must keep what the ids hold, or stop_index could not be recovered from it
    assert kw["include_stop_str_in_output"] is True
    assert kw["skip_special_tokens"] is False


def test_sampled_request_keeps_temperature_top_p_seed():
    kw = build_sampling_kwargs(GenRequest((5,), 10, temperature=0.7, top_p=0.9, seed=3))
    assert (kw["temperature"], kw["top_p"], kw["seed"]) == (0.7, 0.9, 3)


def test_vllm_params_names_match_installed_vllm():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed")
    from vllm import SamplingParams

    SamplingParams(**build_sampling_kwargs(GenRequest((1,), 4, stop_token_ids=(2,))))


def test_missing_vllm_gives_install_hint():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(M1Error) as e:
        VLLMEngine("Qwen/Qwen2.5-0.5B-Instruct")
    assert "pip install 'm1[vllm]'" in str(e.value)
    assert "\n" not in str(e.value)


# A toy detokenizer: token i is the i-th string below.
PIECES = ["The", " answer", " is", " B", ".</", "think", ">", " ok", "<eos>"]


def detok(ids):
    return "".join(PIECES[i] for i in ids)


def test_stop_string_index_is_the_token_where_it_begins():
    ids = [0, 1, 2, 3, 4, 5, 6]
    # "</think>" starts inside token 4 (".</"): the stop begins at token 4
    assert locate_stop(ids, "</think>", detok) == 4
    assert locate_stop(ids, " is", detok) == 2
    assert locate_stop(ids, "nothing", detok) is None
    assert locate_stop([0, 8], 8, detok) == 1


def test_vllm_output_mapping():
    req = GenRequest((0,), 10, stop_token_ids=(8,), stop_strings=("</think>",))
    out = SimpleNamespace(token_ids=(0, 1, 4, 5, 6), text="The answer.</think>", finish_reason="stop",
                          stop_reason="</think>")
    r = to_result(out, req, detok)
    assert (r.finish_reason, r.stop_index, r.matched_stop) == ("stop", 2, "</think>")
    out = SimpleNamespace(token_ids=(0, 1, 8), text="The answer<eos>", finish_reason="stop", stop_reason=8)
    r = to_result(out, req, detok)
    assert (r.stop_index, r.token_ids[: r.stop_index]) == (2, [0, 1])
    out = SimpleNamespace(token_ids=(0, 1, 2), text="The answer is", finish_reason="length", stop_reason=None)
    r = to_result(out, req, detok)
    assert (r.finish_reason, r.stop_index) == ("length", 3)


# -- the engine's request handling, on a stand-in for vLLM ---------------------------------
# vLLM needs a GPU; this stand-in has the same `LLM.llm_engine` surface (add_request, step,
# abort_request) and a continuous-batching scheduler of its own, so the code around it
# (admission, stepping, results to the right caller) runs for real. Token t of a request is
# a function of its prompt and position only, as under greedy decoding.
class _FakeScheduler:
    def __init__(self, max_num_seqs):
        self.max_num_seqs, self.waiting, self.running, self.peak, self.added_while_running = max_num_seqs, [], {}, 0, 0

    def add_request(self, rid, prompt, params):
        if self.running:
            self.added_while_running += 1
        self.waiting.append((rid, list(prompt["prompt_token_ids"]), params))

    def abort_request(self, ids):
        for rid in ids:
            self.running.pop(rid, None)

    def step(self):
        while self.waiting and len(self.running) < self.max_num_seqs:
            rid, prompt, params = self.waiting.pop(0)
            self.running[rid] = (prompt, params, [])
        self.peak = max(self.peak, len(self.running))
        outs = []
        for rid, (prompt, params, gen) in list(self.running.items()):
            tok = (sum(prompt) * 31 + len(gen) * 7) % 50 + 1
            gen.append(tok)
            stop = tok in params.stop_token_ids
            if stop or len(gen) >= params.max_tokens:
                del self.running[rid]
                out = SimpleNamespace(token_ids=tuple(gen), text=detok_num(gen),
                                      finish_reason="stop" if stop else "length", stop_reason=tok if stop else None)
                outs.append(SimpleNamespace(request_id=rid, finished=True, outputs=[out]))
        return outs


def detok_num(ids):
    return " ".join(str(i) for i in ids)


class _FakeTokenizer:
    bos_token_id, eos_token_id, chat_template = None, 50, None

    def encode(self, text, add_special_tokens=False):
        return [int(x) for x in text.split()]

    def decode(self, ids, **_):
        return detok_num(ids)


@pytest.fixture
def fake_vllm(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("vllm")

    class LLM:
        def __init__(self, model, max_num_seqs, **_):
            self.llm_engine = _FakeScheduler(max_num_seqs)

        def get_tokenizer(self):
            return _FakeTokenizer()

    setattr(mod, "LLM", LLM)  # noqa: B010 (a module built at run time)
    setattr(mod, "SamplingParams", lambda **kw: SimpleNamespace(**kw))  # noqa: B010
    monkeypatch.setitem(sys.modules, "vllm", mod)

    def no_hub(*_, **__):  # "stand-in" is no hub id: fail as offline, not after the hub's retries
        raise OSError("stand-in model: no generation_config")

    monkeypatch.setattr("transformers.GenerationConfig.from_pretrained", no_hub)
    return mod


def test_vllm_engine_hands_every_ready_request_to_the_scheduler(fake_vllm):
    eng = VLLMEngine("stand-in", max_num_seqs=64)
    try:
        assert eng.capacity == 64
        reqs = [GenRequest((i, i + 1), max_new_tokens=3 + i % 17, stop_token_ids=(13,)) for i in range(100)]
        results = eng.generate(reqs)
        sched = eng._llm.llm_engine
        assert sched.peak == 64  # not 8: all that fit run together
        for req, res in zip(reqs, results):  # each result reached its own caller
            assert len(res.token_ids) <= req.max_new_tokens
            want = [(sum(req.prompt_ids) * 31 + k * 7) % 50 + 1 for k in range(len(res.token_ids))]
            assert res.token_ids == want
    finally:
        eng.close()


def test_vllm_engine_takes_requests_while_others_run(fake_vllm):
    """The budget controller's pipelines submit follow-ups (forcing rounds, answers) as soon as
    a request returns; they join the running batch instead of waiting for it to drain."""
    from m1.thinking import BudgetController, ThinkingParams, get_format, sweep

    eng = VLLMEngine("stand-in", max_num_seqs=256)
    try:
        fmt = get_format("m1", think_start="1", think_end="2", answer_start="3", answer_forced="4", answer_end="50")
        ctl = BudgetController(eng, fmt, ThinkingParams(budget=40, forcing_rounds=1, ignore_str="7",
                                                        answer_max_tokens=5))
        prompts = [[i, 2 * i + 1] for i in range(30)]
        out = sweep(ctl, prompts, [str(i) for i in range(30)], [10, 40])
        assert all(len(t.ids) <= b for b, (ths, _) in out.items() for t in ths)
        assert eng._llm.llm_engine.added_while_running > 0
    finally:
        eng.close()


def test_option_letters_ask_vllm_for_logprobs_and_map_them():
    assert "logprobs" not in build_sampling_kwargs(GenRequest((1,), 4))
    req = GenRequest((0,), 10, stop_token_ids=(8,), option_letters=("A", "B"))
    assert build_sampling_kwargs(req)["logprobs"] == 20
    pieces = ["The", " answer", " is", " B", ".", "<eos>", "B", " A"]

    def det(ids):
        return "".join(pieces[i] for i in ids)

    lp = SimpleNamespace
    # vLLM: per generated token {token id: Logprob}, the top-k plus the sampled one
    logprobs = [{0: lp(logprob=-0.1)}, {1: lp(logprob=-0.2)}, {2: lp(logprob=-0.3)},
                {3: lp(logprob=-0.5), 6: lp(logprob=-1.5), 7: lp(logprob=-2.0), 4: lp(logprob=-3.0)},
                {4: lp(logprob=-0.1)}, {5: lp(logprob=-0.1)}]
    out = SimpleNamespace(token_ids=(0, 1, 2, 3, 4, 5), text=det([0, 1, 2, 3, 4, 5]), finish_reason="stop",
                          stop_reason=5, logprobs=logprobs)
    ids = {"A": (7,), "B": (6, 3)}
    r = to_result(out, req, det, ids)
    assert r.option_position == 3
    both = math.log(math.exp(-0.5) + math.exp(-1.5))  # " B" and "B"
    assert r.option_logprobs == {"A": pytest.approx(-2.0), "B": pytest.approx(both)}
    # the letter only inside the stop (here the EOS-like last token): no probe
    r = to_result(SimpleNamespace(**{**vars(out), "token_ids": (0, 3), "logprobs": logprobs[2:4]}), req, det, ids)
    assert r.stop_index == 1 and r.option_logprobs is None


def test_vllm_engine_starts_waiting_requests_lowest_priority_first(fake_vllm):
    """Past max_num_seqs, requests wait in m1, not in vLLM's first-come queue: the lowest
    priority is handed to vLLM first; with prefix caching (a paused question costs nothing)
    three times max_num_seqs questions are kept started."""
    eng = VLLMEngine("stand-in", max_num_seqs=2)
    try:
        assert eng.open_questions == 6
        sched = eng._llm.llm_engine
        added = []
        add = sched.add_request

        def record(rid, prompt, params):
            added.append(prompt["prompt_token_ids"][0])
            add(rid, prompt, params)

        sched.add_request = record
        # the first number of each prompt names the request; all six arrive at once
        reqs = [GenRequest((90 + i, 1), 8, priority=50) for i in range(2)]
        reqs += [GenRequest((pr + 10, 2), 3, priority=pr) for pr in (7, 1, 4, -1)]
        out = eng.generate(reqs)
        assert added == [9, 11, 14, 17, 90, 91]  # by priority, then arrival
        for req, res in zip(reqs, out):  # each result reached its own caller
            assert len(res.token_ids) == req.max_new_tokens
            assert res.token_ids == [(sum(req.prompt_ids) * 31 + k * 7) % 50 + 1 for k in range(req.max_new_tokens)]
    finally:
        eng.close()
    assert VLLMEngine("stand-in", max_num_seqs=2, enable_prefix_caching=False).open_questions == 2
