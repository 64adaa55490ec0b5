"""`m1 serve` for real: the server started here on 127.0.0.1 as a user starts it (`m1 serve`, the
embedded model), driven by the real `openai` client (sync, async, stream, extra_body) and by raw
HTTP for bad input. What a client relies on: exact budgets under every alias, stream == non-stream,
serve == eval, nothing lost under concurrency, a disconnect frees its slot, OpenAI-shaped errors."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx2 as httpx  # the httpx the openai SDK depends on here (m1.client uses it too)
import openai
import pytest

from conftest import free_port
from m1.thinking.policies import BUDGET, REASONS

KEY = "test-key-7f3a"  # a test key, in the server's environment only
QUESTION = ("A 45-year-old man has crushing chest pain for an hour. Which test comes first?\n"
            "A. Electrocardiogram\nB. MRI of the brain\nC. Skin biopsy\nD. EEG\n"
            "Return your final response within \\boxed{}.")


class Served:
    def __init__(self, args: list[str], env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "m1.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail("m1 serve did not start:\n" + self.text()[-2000:])
                time.sleep(0.3)

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server():
    s = Served(["--budget", "32", "--answer-max-tokens", "24", "--engine-opt", "n_slots=4", "ctx_per_slot=1024",
                "--max-queue", "64", "--max-body", "20000", "--max-thinking-budget", "512",
                "--api-key-env", "M1_TEST_KEY", "effort={low: 8, medium: 16, high: 40}"], {"M1_TEST_KEY": KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def ask(client, budget_fields: dict | None = None, question: str = QUESTION, **kw):
    return client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": question}],
                                          extra_body=budget_fields or {}, **kw)


def m1_of(resp) -> dict:
    return resp.model_extra["m1"]


def test_a_spent_budget_is_exact_and_the_answer_is_forced(client):
    for budget in (0, 1, 7, 20):
        r = ask(client, {"thinking_token_budget": budget}, question="Tell me everything about the heart.")
        m = m1_of(r)
        assert r.usage.completion_tokens_details.reasoning_tokens == m["thinking_tokens"] == budget
        assert m["budget_exhausted"] and m["stopped_by"] == "budget" and m["answer_forced"]
        assert r.choices[0].finish_reason in ("stop", "length")  # a budget cut is never "length" by itself
        assert r.usage.completion_tokens == budget + (r.usage.completion_tokens - budget)
        assert "<|im_end|>" not in r.choices[0].message.model_extra["reasoning_content"]


def test_a_natural_end_reports_its_own_length(client):
    r = ask(client, {"thinking_token_budget": 400})
    m = m1_of(r)
    assert m["stopped_by"] == "natural" and not m["budget_exhausted"]
    assert 0 < r.usage.completion_tokens_details.reasoning_tokens == m["thinking_tokens"] < 400
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content  # the reply is the answer (plain)


@pytest.mark.parametrize("fields,budget,source", [
    ({"thinking_token_budget": 5}, 5, "thinking_token_budget"),
    ({"reasoning": {"max_tokens": 6}}, 6, "reasoning.max_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 7}}, 7, "thinking.budget_tokens"),
    ({"thinking_budget_tokens": 9}, 9, "thinking_budget_tokens"),
    ({"reasoning_budget_tokens": 10}, 10, "reasoning_budget_tokens"),
    ({"reasoning_effort": "low"}, 8, "reasoning_effort"),
    ({"reasoning": {"effort": "medium"}}, 16, "reasoning.effort"),
    ({}, 32, "default"),
    ({"chat_template_kwargs": {"enable_thinking": False}, "thinking_token_budget": 50}, 0,
     "chat_template_kwargs.enable_thinking"),
    # the first present wins
    ({"thinking_token_budget": 3, "reasoning": {"max_tokens": 30}, "reasoning_effort": "high"}, 3,
     "thinking_token_budget"),
    ({"thinking_budget_tokens": 4, "reasoning_effort": "high"}, 4, "thinking_budget_tokens"),
])
def test_every_budget_alias(client, fields, budget, source):
    r = ask(client, fields, question="Tell me everything about the kidney.")
    m = m1_of(r)
    assert (m["thinking_budget"], m["budget_from"]) == (budget, source)
    assert m["thinking_tokens"] == r.usage.completion_tokens_details.reasoning_tokens <= budget


def test_max_tokens_caps_thinking_plus_answer(client):
    r = ask(client, {"thinking_token_budget": 20}, question="Tell me everything about the liver.", max_tokens=12)
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert m1_of(r)["stopped_by"] == "max_tokens" and r.choices[0].message.content == ""
    r = ask(client, {"thinking_token_budget": 10}, question="Tell me everything about the liver.",
            max_completion_tokens=13)
    assert r.usage.completion_tokens <= 13 and r.usage.completion_tokens_details.reasoning_tokens == 10


def test_stream_equals_non_stream_and_usage(client):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=client.base_url, api_key=KEY, max_retries=0)
        out = []
        for budget in (6, 30, 300):
            full = await aclient.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": QUESTION}],
                extra_body={"thinking_token_budget": budget})
            stream = await aclient.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": QUESTION}],
                extra_body={"thinking_token_budget": budget}, stream=True, stream_options={"include_usage": True})
            thinking, content, usage, finish, pieces = "", "", None, None, 0
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for c in chunk.choices:
                    extra = c.delta.model_extra or {}
                    assert extra.get("reasoning") == extra.get("reasoning_content")  # both names, same text
                    thinking += extra.get("reasoning_content") or ""
                    content += c.delta.content or ""
                    finish = c.finish_reason or finish
                    pieces += 1
            out.append((full, thinking, content, usage, finish, pieces))
        await aclient.close()
        return out
    for full, thinking, content, usage, finish, pieces in asyncio.run(main()):
        msg = full.choices[0].message
        assert thinking == msg.model_extra["reasoning_content"] and content == msg.content
        assert usage == full.usage and finish == full.choices[0].finish_reason
        assert pieces > 3  # tokens arrived as they were made, not in one piece


def test_serve_gives_what_eval_records(client, tmp_path):
    from m1.config import EvalConfig
    from m1.evaluate import evaluate, load_items

    cfg = EvalConfig(limit=3, budgets=(8, 48))
    run = evaluate(cfg, out=tmp_path / "run")
    by_id = {it.id: it for it in load_items(cfg, ["medqa"])}
    assert len(run.traces) == 6
    for t in run.traces:
        user = f"{by_id[t.id].prompt_text()}\n{cfg.instruction}"
        r = ask(client, {"thinking_token_budget": t.budget, "m1": {"answer_max_tokens": cfg.answer_max_tokens}},
                question=user)
        msg, m = r.choices[0].message, m1_of(r)
        assert msg.model_extra["reasoning_content"] == t.thinking and m["thinking_tokens"] == t.thinking_tokens
        assert r.usage.prompt_tokens == t.prompt_tokens
        assert msg.content == (t.answer if t.answer_tokens or t.thinking_ended == "budget" else t.thinking)


def test_32_concurrent_clients_all_answered(client, server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        qs = [f"Patient {i} has a fever of {38 + i % 3} C. Name one cause." for i in range(32)]
        got = await asyncio.gather(*(aclient.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": q}],
            extra_body={"thinking_token_budget": 16, "m1": {"answer_max_tokens": 4}}) for q in qs))
        alone = await aclient.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": qs[5]}],
            extra_body={"thinking_token_budget": 16, "m1": {"answer_max_tokens": 4}})
        await aclient.close()
        return got, alone
    got, alone = asyncio.run(main())
    assert len({r.id for r in got}) == 32 and all(m1_of(r)["thinking_tokens"] <= 16 for r in got)
    # a request's tokens do not depend on what ran beside it
    assert got[5].choices[0].message.model_extra["reasoning_content"] == \
        alone.choices[0].message.model_extra["reasoning_content"]


def _post(server, body, headers=None, raw: bytes | None = None):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(server.url + "/v1/chat/completions", content=data, headers=h, timeout=60)


GOOD = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "thinking_token_budget": 2,
        "m1": {"answer_max_tokens": 2}}  # a good request that costs a few decode steps


@pytest.mark.parametrize("body,raw,headers,status,param", [
    (None, b'{"model": "smollm2-135m", "messages": [', None, 400, None),  # malformed JSON
    ({**GOOD, "messages": "hello"}, None, None, 400, "messages"),
    ({**GOOD, "messages": [{"role": "doctor", "content": "x"}]}, None, None, 400, "messages.0.role"),
    ({**GOOD, "thinking_token_budget": "many"}, None, None, 400, "thinking_token_budget"),
    ({**GOOD, "thinking_token_budget": -1}, None, None, 400, "thinking_token_budget"),
    ({**GOOD, "thinking_token_budget": 513}, None, None, 400, "thinking_token_budget"),
    ({"model": "smollm2-135m", "messages": GOOD["messages"], "reasoning_effort": "extreme"}, None, None, 400,
     "reasoning_effort"),
    ({**GOOD, "m1": {"forcing": 2}}, None, None, 400, "m1.forcing"),
    ({**GOOD, "temperature": 5}, None, None, 400, "temperature"),
    ({**GOOD, "model": "gpt-4o"}, None, None, 404, "model"),
    ({**GOOD, "messages": [{"role": "user", "content": "x" * 30000}]}, None, None, 413, None),
    (GOOD, None, {"Authorization": "Bearer wrong"}, 401, None),
    (GOOD, None, {"Authorization": ""}, 401, None),
])
def test_bad_input_gets_an_openai_shaped_4xx_and_the_server_goes_on(server, body, raw, headers, status, param):
    r = _post(server, body, headers, raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    assert "Traceback" not in r.text and KEY not in r.text
    assert _post(server, GOOD).status_code == 200


def test_metrics_and_logs_carry_counts_not_content(client, server):
    secret = "Patient Zelda Quintanilla-Rosewater, MRN 99812"
    ask(client, {"thinking_token_budget": 4}, question=secret)
    assert _post(server, {**GOOD, "model": "nope"}).status_code == 404
    r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = r.text
    for series in ("m1_requests_total", "m1_tokens_total", "m1_budget_exhausted_total", "m1_requests_in_flight",
                   "m1_queue_depth", "m1_engine_occupancy"):
        assert series in text
    assert 'm1_requests_total{status="200"}' in text and 'm1_requests_total{status="404"}' in text
    assert KEY not in text and "Zelda" not in text
    assert httpx.get(server.url + "/metrics").status_code == 401
    log = server.text()
    assert "Zelda" not in log and KEY not in log and "prompt=" in log


@pytest.fixture(scope="module")
def one_slot():
    s = Served(["--engine-opt", "n_slots=1", "ctx_per_slot=4096", "--max-queue", "1", "--budget", "16",
                "--answer-max-tokens", "16",
                "--max-thinking-budget", "3000"])
    yield s
    s.stop()


LONG = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Describe the heart."}],
        "thinking_token_budget": 3000, "m1": {"min_thinking_tokens": 3000}}  # thinks its whole budget: ~30+ s here


def test_a_full_queue_gets_429_with_retry_after(one_slot):
    async def main():
        async with httpx.AsyncClient(base_url=one_slot.url, timeout=120) as h:
            running = asyncio.ensure_future(h.post("/v1/chat/completions", json=LONG))
            await asyncio.sleep(1.0)
            waiting = asyncio.ensure_future(h.post("/v1/chat/completions", json=GOOD))
            await asyncio.sleep(0.5)
            refused = await h.post("/v1/chat/completions", json=GOOD)
            running.cancel()  # the client goes away: its slot frees, the waiting one runs
            done = await asyncio.wait_for(waiting, timeout=60)
            return refused, done
    refused, done = asyncio.run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full" and done.status_code == 200


def _cancelled(server) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith('m1_requests_total{status="499"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_disconnect_frees_the_slot_at_once(one_slot):
    before = _cancelled(one_slot)
    # the long request holds the only slot; the client gives up after 2 s
    with pytest.raises(httpx.TimeoutException):
        httpx.post(one_slot.url + "/v1/chat/completions", json=LONG, timeout=2)
    t = time.perf_counter()
    r = httpx.post(one_slot.url + "/v1/chat/completions", json=GOOD, timeout=60)
    assert r.status_code == 200 and time.perf_counter() - t < 10  # not after the 3,000 tokens of the other
    # the same for a stream closed mid-way
    with httpx.stream("POST", one_slot.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if "reasoning" in line:
                break
    t = time.perf_counter()
    r = httpx.post(one_slot.url + "/v1/chat/completions", json=GOOD, timeout=60)
    assert r.status_code == 200 and time.perf_counter() - t < 10
    assert _cancelled(one_slot) == before + 2


def test_openai_engine_in_front_of_a_real_server_that_dies(tmp_path):
    """`m1 serve --engine openai` before llama-cpp-python's server; the backend killed mid-request:
    the client gets a 502 or 503, not a hang, and m1 serve itself keeps answering."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from m1.engines.llamacpp import embedded_model_path

    port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--flash_attn", "false"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline and backend.poll() is None, "backend did not start"
                time.sleep(0.3)
        front = Served(["--engine", "openai", "--base-url", f"http://127.0.0.1:{port}/v1",
                        "--model", str(embedded_model_path()), "--format", "plain", "--served-model-name", "smol",
                        "--engine-opt", "timeout=60", "--budget", "8"])
        try:
            ok = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                            json={**GOOD, "model": "smol", "thinking_token_budget": 8})
            assert ok.status_code == 200 and ok.json()["m1"]["thinking_tokens"] <= 8

            async def main():
                async with httpx.AsyncClient(timeout=60) as h:
                    pending = asyncio.ensure_future(h.post(front.url + "/v1/chat/completions",
                                                           json={**LONG, "model": "smol"}))
                    await asyncio.sleep(2)
                    backend.send_signal(signal.SIGKILL)
                    return await pending
            dead = asyncio.run(main())
            assert dead.status_code in (502, 503), dead.text
            assert dead.json()["error"]["type"] == "server_error"
            assert httpx.get(front.url + "/health").status_code == 200
        finally:
            front.stop()
    finally:
        backend.kill()


def test_m1_data_teacher_through_m1_serve(server, tmp_path, monkeypatch):
    """The curation teacher (m1 data's distill stage) takes its traces from `m1 serve`: the
    thinking arrives in reasoning_content, capped at the budget the teacher's params ask."""
    from m1.curation.config import TeacherConfig
    from m1.curation.teacher import Reply, ResponseCache, Teacher

    monkeypatch.setenv("M1_TEST_KEY", KEY)
    cfg = TeacherConfig(base_url=server.url + "/v1", api_key_env="M1_TEST_KEY", concurrency=2,
                        params={"temperature": 0.0, "max_tokens": 48, "thinking_token_budget": 16})
    teacher = Teacher(cfg, ResponseCache(tmp_path / "cache.sqlite"))
    replies = teacher.run([teacher.messages(QUESTION), teacher.messages("Name one cause of anemia.")])
    assert teacher.model == "smollm2-135m" and len(replies) == 2
    for r in replies:
        assert isinstance(r, Reply), r
        assert r.reasoning and r.reasoning_source == "reasoning_content" and r.completion_tokens <= 48


def test_m1_options_forcing_and_adaptive(client):
    r = ask(client, {"thinking_token_budget": 120, "m1": {"forcing_rounds": 2, "ignore_str": " Wait,"}})
    m, thinking = m1_of(r), r.choices[0].message.model_extra["reasoning_content"]
    assert m["rounds_forced"] >= 1 and " Wait," in thinking  # the forced string counts as thinking
    assert m["thinking_tokens"] == r.usage.completion_tokens_details.reasoning_tokens <= 120
    r = ask(client, {"thinking_token_budget": 64, "m1": {"adaptive": "stable=2,every=8", "min_thinking_tokens": 64}})
    m = m1_of(r)
    assert m["stopped_by"] in REASONS and m["thinking_tokens"] <= 64
    assert m["stopped_by"] == BUDGET or m["thinking_tokens"] % 8 == 0  # it stops at a checkpoint
