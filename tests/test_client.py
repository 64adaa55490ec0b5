"""m1's one client layer (m1.client): retries, errors and concurrency against a real HTTP server
started by the test on 127.0.0.1 (a scripted stdlib server in a subprocess), and each dialect's
wire format."""
import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from m1.client import Client, Malformed, NoAnswer, Policy, ServerDown, StatusError
from m1.client import dialects as D
from m1.engines.base import GenRequest
from m1.errors import M1Error

# A server whose answers a request chooses: POST {"script": [...]} sets what the next requests get
# (a status, "slow" for a 2 s stall, "junk" for a body that is not JSON), then 200 {"ok": n}.
SERVER = textwrap.dedent('''
    import json, sys, time, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    script, lock, seen = [], threading.Lock(), {"n": 0, "auth": []}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _send(self, code, body, headers=()):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            for k, v in headers: self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw))); self.end_headers(); self.wfile.write(raw)
        def do_GET(self):
            self._send(200, seen)
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path == "/script":
                with lock: script[:] = body["script"]; seen["n"] = 0; seen["auth"] = []
                return self._send(200, {})
            with lock:
                seen["n"] += 1; seen["auth"].append(self.headers.get("Authorization"))
                step = script.pop(0) if script else 200
            if step == "slow": time.sleep(2); step = 200
            if step == "sleep": time.sleep(0.3); step = 200
            if step == "junk": return self._send(200, b"<html>")
            if step == 200: return self._send(200, {"ok": body.get("i")})
            headers = [("Retry-After", "0")] if step == 429 else []
            self._send(step, {"error": {"message": f"scripted {step}"}}, headers)

    class S(ThreadingHTTPServer):
        request_queue_size = 512  # a listen backlog for hundreds of connections at once (default 5)
    srv = S(("127.0.0.1", 0), H); srv.daemon_threads = True
    print(srv.server_address[1], flush=True); srv.serve_forever()
''')


@pytest.fixture(scope="module")
def url():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}/v1"
    proc.kill()
    proc.wait()


def script(url, *steps):
    Client(url.removesuffix("/v1")).post("/script", {"script": list(steps)})


def served(url) -> dict:
    return Client(url.removesuffix("/v1")).get("/")


def test_retries_count_causes_and_then_succeed(url):
    causes: list[str] = []
    client = Client(url, policy=Policy(retries=3, backoff=0.01), on_retry=causes.append)
    script(url, 500, 429, "junk")
    assert client.post("/x", {"i": 7}) == {"ok": 7}
    assert causes == ["500", "429", "malformed"] and served(url)["n"] == 4


def test_a_client_error_is_not_retried_and_names_the_status(url):
    client = Client(url, policy=Policy(retries=3, backoff=0.01))
    script(url, 400)
    with pytest.raises(StatusError) as e:
        client.post("/x", {})
    assert (e.value.status, e.value.attempts, served(url)["n"]) == (400, 1, 1)
    assert "HTTP 400: scripted 400" in str(e.value) and "\n" not in str(e.value)


def test_retries_run_out_with_the_attempt_count(url):
    client = Client(url, policy=Policy(retries=2, backoff=0.01))
    script(url, 503, 503, 503, 503)
    with pytest.raises(StatusError) as e:
        asyncio.run(client.apost("/x", {}))
    assert (e.value.status, e.value.attempts) == (503, 3)


def test_timeout_and_unreachable_server_are_told_apart(url):
    client = Client(url, policy=Policy(timeout=0.5))
    script(url, "slow")
    with pytest.raises(NoAnswer, match="did not answer within 0.5 s"):
        client.post("/x", {})
    from conftest import free_port

    gone = Client(f"http://127.0.0.1:{free_port()}/v1", fix="pass --base-url")
    with pytest.raises(ServerDown, match="connection refused; start the server or pass --base-url"):
        gone.get("/models")


def test_validate_failures_are_malformed_and_retried(url):
    client = Client(url, policy=Policy(retries=1, backoff=0.01))
    script(url)
    with pytest.raises(Malformed):
        client.post("/x", {"i": 1}, validate=lambda body: body["choices"])
    assert served(url)["n"] == 2


def test_the_key_is_read_at_each_request_and_never_shown(url, monkeypatch):
    secret = "sk-m1-client-test-NEVER-SHOWN"
    client = Client(url, api_key_env="M1_CLIENT_TEST_KEY")
    script(url)
    client.post("/x", {})
    monkeypatch.setenv("M1_CLIENT_TEST_KEY", secret)
    client.post("/x", {})
    assert served(url)["auth"] == [None, "Bearer " + secret]
    script(url, 401)
    with pytest.raises(StatusError) as e:
        client.post("/x", {})
    assert secret not in str(e.value) + repr(client) and "set M1_CLIENT_TEST_KEY" in str(e.value)
    with pytest.raises(M1Error, match="environment variable"):
        Client("http://user:pw@127.0.0.1:1/v1")


def test_requests_in_flight_are_coroutines_not_threads(url):
    """200 requests at once, each held 0.3 s by the server: one event loop, no thread per request,
    all in flight together (far less than 200 x 0.3 s)."""
    client = Client(url)
    script(url, *["sleep"] * 200)
    peak = []

    async def main():
        async def watch():
            while True:
                peak.append(threading.active_count())
                await asyncio.sleep(0.05)

        w = asyncio.create_task(watch())
        t = time.monotonic()
        out = await asyncio.gather(*[client.apost("/x", {"i": i}) for i in range(200)])
        w.cancel()
        await client.aclose()
        return out, time.monotonic() - t

    before = threading.active_count()
    out, seconds = asyncio.run(main())
    assert [o["ok"] for o in out] == list(range(200))
    assert max(peak) <= before + 1 and seconds < 30


# -- dialects: what goes on the wire and how answers are read --------------------------------------

REQ = GenRequest((1, 2, 3), 8, stop_token_ids=(9,), stop_strings=("</think>",))


def test_each_dialect_sends_what_its_server_reads():
    vllm = D.VLLM().completion("m", REQ, [1, 2, 3], ["</think>"], None)
    assert vllm[:2] == ("/completions", False)
    assert {"prompt": [1, 2, 3], "stop_token_ids": [9], "return_token_ids": True, "include_stop_str_in_output": True,
            "temperature": 0.0, "top_p": 1.0}.items() <= vllm[2].items()
    sglang = D.SGLang().completion("m", REQ, [1, 2, 3], ["</think>"], 20)
    assert sglang[2]["no_stop_trim"] and sglang[2]["logprobs"] == 20 and "include_stop_str_in_output" not in sglang[2]
    path, root, body = D.LlamaServer().completion("m", REQ, [1, 2, 3], ["</think>"], None)
    assert (path, root, body["n_predict"], body["return_tokens"], body["cache_prompt"]) == ("/completion", True, 8,
                                                                                           True, True)
    assert "n_probs" not in body and D.LlamaServer().completion("m", REQ, [1], [], 20)[2]["n_probs"] == 20
    text = D.LlamaCppPython().completion("m", REQ, "the prompt", [], None)[2]
    assert (text["prompt"], text["stop"], text["top_k"], text["repeat_penalty"]) == ("the prompt", None, 0, 1.0)


# Shaped after vLLM's CompletionResponse with return_token_ids (vLLM >= 0.10.2) and logprobs=0 with
# return_tokens_as_token_ids, and SGLang's with matched_stop: transcribed from their protocol
# definitions, NOT recorded from a running server (no GPU here).
VLLM_RESPONSE = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [{
    "index": 0, "text": " 4</think>", "finish_reason": "stop", "stop_reason": "</think>",
    "token_ids": [220, 19, 522, 26865, 29], "prompt_token_ids": [1, 2, 3],
    "logprobs": {"tokens": ["token_id:220", "token_id:19", "token_id:522", "token_id:26865", "token_id:29"],
                 "token_logprobs": [-0.1, -0.2, -0.3, -0.01, -0.02], "top_logprobs": None, "text_offset": [0] * 5}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
SGLANG_RESPONSE = {"id": "1", "object": "text_completion", "model": "m", "choices": [{
    "index": 0, "text": "B", "finish_reason": "stop", "matched_stop": 9, "output_ids": [33, 9],
    "logprobs": None}], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
LLAMA_SERVER_RESPONSE = {"content": " 4", "tokens": [220, 19, 2], "stop": True, "stop_type": "eos",
                         "stopping_word": "", "timings": {"prompt_n": 3, "predicted_n": 3}}


def test_each_dialect_reads_ids_stops_and_counts():
    v = D.VLLM().read(VLLM_RESPONSE)
    assert (v.ids, v.finish, v.hint, v.completion_tokens) == ([220, 19, 522, 26865, 29], "stop", "</think>", 5)
    assert [s[0] for s in v.steps] == v.ids  # logprobs spelled token_id:N map back to the ids
    s = D.SGLang().read(SGLANG_RESPONSE)
    assert (s.ids, s.hint) == ([33, 9], 9)
    ls = D.LlamaServer().read(LLAMA_SERVER_RESPONSE)
    assert (ls.ids, ls.finish, ls.hint, ls.prompt_evaluated) == ([220, 19, 2], "stop", 2, 3)
    text = D.Generic().read({"choices": [{"text": "B.", "finish_reason": "length"}]})
    assert (text.ids, text.text, text.finish) == (None, "B.", "length")


def test_replicas_of_different_kinds_are_refused(url, monkeypatch):
    """The engine's dialect is one per engine: replicas that are not the same kind are named."""
    from m1.engines import openai_server

    kinds = iter(["vllm", "llama-server"])
    monkeypatch.setattr(openai_server, "detect", lambda client, owner: next(kinds))
    monkeypatch.setattr(Client, "get", lambda self, path, **kw: {"data": [{"id": "m"}]})
    with pytest.raises(M1Error, match="different kinds.*vllm.*llama-server"):
        openai_server.OpenAIEngine(base_url=[url, url.replace("/v1", "/w/v1")])
