"""vLLM engine: request mapping (pure) and the missing-extra error; no GPU needed."""
import importlib.util
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
