"""Any OpenAI-compatible completions server: vLLM, SGLang, llama.cpp's llama-server,
llama-cpp-python's server, TGI, hosted APIs.

Budgets count engine tokens, so each server is driven through the most exact path it
offers (found by probing it once, or set with `server=`):

  vllm, sglang        /v1/completions with the prompt as token ids; the generated ids
                      come back (`return_token_ids`, or logprobs as `token_id:N`). Exact.
  llama-server        its native /completion with the prompt as token ids and
                      `return_tokens`: every sampled id, EOS and stop tokens included. Exact.
  llama-cpp-python    text only: /v1/completions takes no token-id prompt and its logprobs
  and anything else   fail. The prompt goes as its text; the generated ids are recovered
                      by tokenizing the returned text (token_source="retokenized").

The retokenized fallback: such servers cut a stop out of the text, so when one fired
we append the stop's own tokens (the stop token id, or the tokenization of the stop
string) after the retokenized content. Then, as for the exact servers,
`token_ids[:stop_index]` is the content, `token_ids[stop_index:]` the stop, and the
content never exceeds `max_new_tokens`. Which stop fired is read from the server where
it says (`stop_reason`, `stopping_word`), else inferred from the usage count
(llama-cpp-python counts stop-string tokens but not EOS). Retokenizing can differ from
what the model sampled (a word split differently), so budgets there are close, not
exact: prefer an exact server for measurements.

Tokenize/detokenize/chat template use a local tokenizer when one is given (`tokenizer=`
an HF tokenizer folder or hub id, or a .gguf file read with llama.cpp's vocabulary
only), else the server's endpoints (/tokenize and /detokenize for vLLM, SGLang and
llama-server; /extras/tokenize for llama-cpp-python, whose detokenize drops special
tokens, so when its model id is a local .gguf file we read that file's vocabulary).

Stop token ids go as `stop_token_ids` (vLLM/SGLang) and also as stop strings of their
text, so a server without that extension still stops. The API key is read from the
environment variable named by `api_key_env` at each request; it is never stored.

Option-letter probes (a request with `option_letters`, see engines/probes.py) come from the
server's top-k log-probabilities of each generated token: `logprobs: TOP_K` on
/v1/completions (vLLM, SGLang, llama-cpp-python), `n_probs: TOP_K` on llama-server's
/completion (its `top_logprobs`, from the full distribution, plus the sampled token's own
logprob), `logprobs: 5` (OpenAI's cap) for any other server. A text-path server that refuses
(llama-cpp-python's answers HTTP 500 when started with `--logits_all false`) is asked once:
the request is resent without, and that server is never asked again. Letters outside the
top-k are absent from the result. With retokenized ids the probe is kept only where the
server's tokens before the answer position spell exactly the text of our ids before it.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

from m1.engines import probes
from m1.engines.base import (
    OPEN_PER_REQUEST_WITH_PREFIX_CACHE,
    GenRequest,
    GenResult,
    LoadMeter,
    PriorityGate,
    StreamingGenerate,
)
from m1.engines.vllm_engine import locate_stop
from m1.errors import M1Error, first_line

SERVERS = ("vllm", "sglang", "llama-server", "llama-cpp-python", "generic")
EXACT = ("vllm", "sglang", "llama-server")


# Requests worth keeping in flight per server when `concurrency` is not given: vLLM's and
# SGLang's default batch sizes (max_num_seqs, max_running_requests are in the hundreds on a
# GPU); llama-server's own slot count (read from /props); llama-cpp-python's server runs one
# request at a time; an unknown server gets a moderate number.
DEFAULT_CAPACITY = {"vllm": 256, "sglang": 256, "llama-server": 8, "llama-cpp-python": 2, "generic": 64}
# Servers that keep the KV of finished requests in a shared prefix cache, so a question can
# pause between thinking stages at no cost (base.OPEN_PER_REQUEST_WITH_PREFIX_CACHE).
# llama-server caches a prompt per slot only, and the others not at all: one question per
# request there.
PREFIX_CACHED = ("vllm", "sglang")


class ServerDown(M1Error):
    """A server did not answer at all (refused, reset, gone): its requests may go elsewhere."""


@dataclass
class _Server:
    """One replica behind --base-url: its dialect, capacity and load."""

    base_url: str
    kind: str
    capacity: int
    in_flight: int = 0
    alive: bool = True
    logprobs: bool = True  # False once a generic server refused a logprobs request

    @property
    def root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url


class OpenAIEngine(StreamingGenerate):
    """One or several OpenAI-compatible servers (replicas of one model).

    Every request runs on a worker thread of a pool as large as the servers' capacity
    together, so that many are in flight; each goes to the live server with the lowest
    load (in flight ÷ capacity), and a request whose server stops answering is sent to
    another one with the same ids (the question's state lives here, not on the server)."""

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | list[str] = "http://127.0.0.1:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", tokenizer: str | None = None, concurrency: int | None = None,
                 timeout: float = 600, server: str | None = None, skip_unreachable: bool = False,
                 open_questions: int | None = None):
        if server is not None and server not in SERVERS:
            raise M1Error(f"unknown server kind {server!r}: choose one of {', '.join(SERVERS)}")
        if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                        or concurrency < 1):
            raise M1Error(f"--engine-opt concurrency={concurrency!r}: must be a whole number >= 1 "
                          "(requests in flight per server)")
        if open_questions is not None and (not isinstance(open_questions, int) or isinstance(open_questions, bool)
                                           or open_questions < 1):
            raise M1Error(f"--engine-opt open_questions={open_questions!r}: must be a whole number >= 1 "
                          "(questions kept started at once)")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise M1Error(f"--engine-opt timeout={timeout!r}: must be a positive number of seconds")
        urls = base_url if isinstance(base_url, (list, tuple)) else str(base_url).split(",")
        urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not urls:
            raise M1Error("--base-url is empty: pass http://HOST:PORT/v1 (several, comma-separated, for replicas)")
        for url in urls:
            if urllib.parse.urlsplit(url).password is not None:
                raise M1Error(f"base_url holds a password; put the key in the environment variable {api_key_env} "
                              "instead")
        self.api_key_env = api_key_env  # the name only: the key stays in the environment
        self.timeout = float(timeout)
        self.model = model
        self._servers: list[_Server] = []
        for url in urls:
            try:
                models = self._call("GET", url + "/models")  # also: is anyone there?
            except ServerDown as e:
                if len(urls) > 1 and skip_unreachable:
                    print(f"m1: warning: {e}; carrying on with the other servers", file=sys.stderr)
                    continue
                more = ("; or pass --engine-opt skip_unreachable=true to carry on with the others"
                        if len(urls) > 1 else "")
                raise ServerDown(f"{e}{more}") from None
            data = [m for m in models.get("data", []) if isinstance(m, dict)]
            if self.model is None:
                self.model = data[0].get("id") if data else None
            if not self.model:
                raise M1Error(f"{url}/models lists no model; pass --model with the served model's name")
            owner = next((m.get("owned_by") for m in data if m.get("id") == self.model), None)
            srv = _Server(url, "generic", 1)
            srv.kind = server or self._detect(srv, owner)
            srv.capacity = concurrency or self._default_capacity(srv)
            self._servers.append(srv)
        if not self._servers:
            raise M1Error(f"no server in --base-url answers ({', '.join(urls)}); start them or fix the list")
        self.capacity = sum(s.capacity for s in self._servers)
        self.open_questions = open_questions or sum(
            s.capacity * (OPEN_PER_REQUEST_WITH_PREFIX_CACHE if s.kind in PREFIX_CACHED else 1) for s in self._servers)
        self.meter = LoadMeter(self.capacity)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._gate: PriorityGate | None = None  # `capacity` requests on the wire, by priority
        self.tokenizer_source = tokenizer
        if tokenizer is None and self.server == "llama-cpp-python" and str(self.model).endswith(".gguf") \
                and Path(str(self.model)).is_file():
            self.tokenizer_source = self.model  # same machine: read the served file's vocabulary
        self._local = load_tokenizer(self.tokenizer_source) if self.tokenizer_source else None
        self._bos: int | None | bool = False  # False: not looked up yet
        self._props: dict | None = None
        self._pieces: dict[int, str] = {}  # token id -> its text (stop tokens, probed answers)
        self._letter_ids: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}
        self._eos: tuple[int, ...] | None = None
        self._tokenizer_sha256: str | None = None

    # The first live server answers tokenizer and template questions (replicas serve one model).
    def _primary(self) -> _Server:
        for srv in self._servers:
            if srv.alive:
                return srv
        raise M1Error("every server in --base-url stopped answering; restart them and rerun "
                      "(finished questions are kept)")

    @property
    def base_url(self) -> str:
        return self._primary().base_url

    @property
    def root(self) -> str:
        return self._primary().root

    @property
    def server(self) -> str:
        return self._primary().kind

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, server={self.server!r})"

    # -- HTTP ---------------------------------------------------------------------------
    def _call(self, method: str, url: str, body: dict | None = None, timeout: float | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = "Bearer " + key
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = url
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_text(e.read())
            hint = f"set {self.api_key_env}" if e.code in (401, 403) else "check the server log and options"
            raise M1Error(f"{where} answered HTTP {e.code}: {detail}; {hint}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise M1Error(f"{where} did not answer within {self.timeout:g} s; "
                              "raise timeout or check the server") from None
            why = "connection refused" if isinstance(e.reason, ConnectionRefusedError) else str(e.reason)
            raise ServerDown(f"cannot reach {where}: {why}; start the server or pass --base-url") from None
        except TimeoutError:
            raise M1Error(f"{where} did not answer within {self.timeout:g} s; "
                          "raise timeout or check the server") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise ServerDown(f"cannot reach {where}: {e.__class__.__name__}; "
                             "start the server or pass --base-url") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise M1Error(f"{where} did not answer with JSON; is it an OpenAI-compatible server?") from None

    def _try(self, method: str, url: str, body: dict | None = None) -> dict | None:
        """A probe: the answer, or None if this server lacks the endpoint."""
        try:
            return self._call(method, url, body, timeout=min(self.timeout, 30))
        except ServerDown:
            raise
        except M1Error:
            return None

    def _detect(self, srv: _Server, owner: str | None) -> str:
        known = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama-server"}
        if owner in known:
            return known[owner]
        props = self._try("GET", srv.root + "/props")
        if props and "default_generation_settings" in props:
            return "llama-server"
        if self._try("POST", srv.root + "/extras/tokenize", {"input": "a"}) is not None:
            return "llama-cpp-python"
        return "generic"

    def _default_capacity(self, srv: _Server) -> int:
        if srv.kind == "llama-server":
            slots = (self._try("GET", srv.root + "/props") or {}).get("total_slots")
            if isinstance(slots, int) and slots > 0:
                return slots
        return DEFAULT_CAPACITY[srv.kind]

    # -- text <-> ids ---------------------------------------------------------------
    def _server_tokenize(self, text: str, add_special: bool) -> list[int]:
        s = self.server
        if s in ("vllm", "sglang"):
            out = self._call("POST", self.root + "/tokenize",
                             {"model": self.model, "prompt": text, "add_special_tokens": add_special})
            return list(out["tokens"])
        if s == "llama-server":
            out = self._call("POST", self.root + "/tokenize",
                             {"content": text, "add_special": add_special, "parse_special": True})
            return [t["id"] if isinstance(t, dict) else t for t in out["tokens"]]
        if s == "llama-cpp-python":  # always adds BOS where the model wants one
            ids = list(self._call("POST", self.root + "/extras/tokenize", {"input": text})["tokens"])
            bos = self._bos_id()
            return ids if add_special or bos is None or ids[:1] != [bos] else ids[1:]
        raise M1Error(f"the server at {self.base_url} has no tokenize endpoint m1 knows; "
                      f"pass tokenizer=<HF tokenizer folder or the model's .gguf file>")

    def _bos_id(self) -> int | None:
        if self._bos is False:
            if self._local is not None:
                self._bos = self._local.bos_token_id
            elif self.server == "llama-cpp-python":
                empty = self._call("POST", self.root + "/extras/tokenize", {"input": ""})["tokens"]
                self._bos = empty[0] if empty else None
            else:
                ids = self._server_tokenize("", add_special=True)
                self._bos = ids[0] if ids else None
        return self._bos

    def tokenize(self, text: str) -> list[int]:
        if self._local is not None:
            return self._local.tokenize(text)
        return self._server_tokenize(text, add_special=False)

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenize(text)
        bos = self._bos_id()
        return [bos] + ids if bos is not None and ids[:1] != [bos] else ids

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = [int(t) for t in ids]
        if not ids:
            return ""
        if self._local is not None:
            return self._local.detokenize(ids)
        s = self.server
        if s in ("vllm", "sglang"):
            return self._call("POST", self.root + "/detokenize", {"model": self.model, "tokens": ids})["prompt"]
        if s == "llama-server":
            return self._call("POST", self.root + "/detokenize", {"tokens": ids})["content"]
        if s == "llama-cpp-python":
            return self._call("POST", self.root + "/extras/detokenize", {"tokens": ids})["text"]
        raise M1Error(f"the server at {self.base_url} has no detokenize endpoint m1 knows; "
                      f"pass tokenizer=<HF tokenizer folder or the model's .gguf file>")

    def render_chat(self, messages: list[dict]) -> str:
        if self._local is not None:
            return self._local.render_chat(messages)
        if self.server == "llama-server":
            out = self._try("POST", self.root + "/apply-template", {"messages": messages})
            if out and "prompt" in out:
                return out["prompt"]
        if self.server in ("vllm", "sglang"):
            out = self._try("POST", self.root + "/tokenize", {"model": self.model, "messages": messages,
                                                              "add_generation_prompt": True,
                                                              "add_special_tokens": False})
            if out and "tokens" in out:
                return self.detokenize(out["tokens"])
        raise M1Error(f"cannot get {self.model}'s chat template from the server at {self.base_url}; "
                      f"pass tokenizer=<HF tokenizer folder or the model's .gguf file>")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self._local is not None:
            return self._local.eos_token_ids
        if self._eos is None:
            self._eos = ()  # unknown unless the server says; it still stops on its own EOS
            info = None
            if self.server == "llama-server":
                info = self._llama_server_props()
            elif self.server in ("vllm", "sglang"):
                info = self._try("GET", self.root + "/tokenizer_info")
            text = (info or {}).get("eos_token")
            text = text.get("content") if isinstance(text, dict) else text
            if isinstance(text, str) and text:
                ids = self._server_tokenize(text, add_special=False)
                self._eos = tuple(ids) if len(ids) == 1 else ()
        return self._eos

    def _llama_server_props(self) -> dict:
        if self._props is None:
            self._props = self._try("GET", self.root + "/props") or {}
        return self._props

    def describe(self) -> dict:
        info: dict[str, object] = {"engine": self.name, "model": self.model, "base_url": self.base_url,
                "servers": [{"base_url": s.base_url, "server": s.kind, "capacity": s.capacity} for s in self._servers],
                "server": self.server, "token_source": "exact" if self.server in EXACT else "retokenized",
                "tokenizer": self.tokenizer_source, "capacity": self.capacity,
                "open_questions": self.open_questions}
        if self.server == "llama-server":
            info["server_build"] = self._llama_server_props().get("build_info")
        if self.server == "vllm":
            info["server_version"] = (self._try("GET", self.root + "/version") or {}).get("version")
        if self.tokenizer_source and str(self.tokenizer_source).endswith(".gguf"):
            if self._tokenizer_sha256 is None:
                from m1.engines.llamacpp import file_sha256

                self._tokenizer_sha256 = file_sha256(Path(self.tokenizer_source))
            info["tokenizer_sha256"] = self._tokenizer_sha256  # the served file, when it is local
        try:
            info["versions"] = {"m1": metadata.version("m1")}
        except metadata.PackageNotFoundError:
            info["versions"] = {}
        return info

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._local = None

    # -- generation -------------------------------------------------------------------
    async def submit(self, request: GenRequest) -> GenResult:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="m1-openai")
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate.loop is not loop:
            self._gate = PriorityGate(self.capacity)
        gate = self._gate
        await gate.enter(request.priority)
        try:
            res = await loop.run_in_executor(self._pool, self._routed, request)
        finally:
            gate.leave()
        self.meter.count(generated=len(res.token_ids), requests=1)
        return res

    def _routed(self, req: GenRequest) -> GenResult:
        """Run `req` on the least loaded live server; on another one if that one is gone."""
        while True:
            with self._lock:
                live = [s for s in self._servers if s.alive]
                if not live:
                    raise M1Error("every server in --base-url stopped answering; restart them and rerun "
                                  "(finished questions are kept)")
                srv = min(live, key=lambda s: s.in_flight / s.capacity)
                srv.in_flight += 1
            self.meter.add(1)  # in flight: on the wire, not waiting for a worker
            try:
                return self._one(srv, req)
            except ServerDown as e:
                with self._lock:
                    if srv.alive and len(self._servers) > 1:
                        print(f"m1: warning: {e}; its requests go to the other servers", file=sys.stderr)
                    srv.alive = False
                if len(self._servers) == 1:
                    raise
            finally:
                self.meter.add(-1)
                with self._lock:
                    srv.in_flight -= 1

    def _stop_texts(self, req: GenRequest) -> list[str]:
        texts = list(req.stop_strings)
        for t in req.stop_token_ids:
            if t not in self._pieces:
                self._pieces[t] = self.detokenize([t])
            s = self._pieces[t]
            if s.strip() and s not in texts:  # an empty stop string would end at once
                texts.append(s)
        return texts

    def _one(self, srv: _Server, req: GenRequest) -> GenResult:
        if req.max_new_tokens <= 0:
            return GenResult([], "", "length", 0)
        if srv.kind == "llama-server":
            return self._llama_server(srv, req)
        if srv.kind in ("vllm", "sglang"):
            return self._ids_completion(srv, req)
        return self._text_completion(srv, req)

    def _sampling(self, req: GenRequest) -> dict:
        greedy = req.temperature <= 0
        body = {"temperature": 0.0 if greedy else float(req.temperature), "top_p": 1.0 if greedy else float(req.top_p)}
        if req.seed is not None:
            body["seed"] = int(req.seed)
        return body

    def _ids_completion(self, srv: _Server, req: GenRequest) -> GenResult:
        body = {"model": self.model, "prompt": list(req.prompt_ids), "max_tokens": req.max_new_tokens,
                "stop": self._stop_texts(req), "stop_token_ids": list(req.stop_token_ids),
                "skip_special_tokens": False, "spaces_between_special_tokens": False,
                "return_token_ids": True, **self._sampling(req)}
        if srv.kind == "vllm":  # keep the stop in the text; older vLLM gives ids only via logprobs
            body.update(include_stop_str_in_output=True, logprobs=0, return_tokens_as_token_ids=True)
        else:
            body.update(no_stop_trim=True)  # SGLang's name for the same
        if req.option_letters:
            body["logprobs"] = probes.TOP_K
        resp = self._call("POST", srv.base_url + "/completions", body)
        choice = resp["choices"][0]
        ids = _ids_from_choice(choice)
        if ids is None:
            res = self._from_text(req, choice, resp.get("usage"))
        else:
            hint = choice.get("stop_reason", choice.get("matched_stop"))
            res = self._from_ids(req, ids, choice.get("finish_reason"), hint)
        return self._probe(req, res, _completion_steps(choice.get("logprobs")))

    def _llama_server(self, srv: _Server, req: GenRequest) -> GenResult:
        body = {"prompt": list(req.prompt_ids), "n_predict": req.max_new_tokens, "stop": self._stop_texts(req),
                "return_tokens": True, "cache_prompt": True,
                # only temperature and top_p shape sampling, as in the other engines
                "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                **self._sampling(req)}
        if req.option_letters:  # top_logprobs of every generated token, from the full distribution
            body.update(n_probs=probes.TOP_K, post_sampling_probs=False)
        resp = self._call("POST", srv.root + "/completion", body)
        evaluated = (resp.get("timings") or {}).get("prompt_n")
        if isinstance(evaluated, int):
            self.meter.count(context=evaluated)
        ids = resp.get("tokens") or [p["id"] for p in resp.get("completion_probabilities") or []]
        stop_type = resp.get("stop_type")
        finish = "length" if stop_type in ("limit", "none", None) else "stop"
        steps = _llama_server_steps(resp.get("completion_probabilities"))
        if not ids:  # a build without return_tokens: only text came back
            res = self._from_text(req, {"text": resp.get("content", ""), "finish_reason": finish,
                                        "stop_reason": resp.get("stopping_word") or None}, None)
            return self._probe(req, res, steps)
        hint = resp.get("stopping_word") or (ids[-1] if stop_type == "eos" else None)
        return self._probe(req, self._from_ids(req, list(ids), finish, hint), steps)

    def _text_completion(self, srv: _Server, req: GenRequest) -> GenResult:
        ids = list(req.prompt_ids)
        bos = self._bos_id()
        if bos is not None and ids[:1] == [bos]:
            ids = ids[1:]  # the server adds its own BOS to a text prompt
        body = {"model": self.model, "prompt": self.detokenize(ids), "max_tokens": req.max_new_tokens,
                "stop": self._stop_texts(req) or None, **self._sampling(req)}
        if srv.kind == "llama-cpp-python":  # its defaults: top_k 40, min_p 0.05, repeat_penalty 1.1
            body.update(top_k=0, min_p=0.0, repeat_penalty=1.0)
        # Asked until the server refuses (llama-cpp-python's HTTP 500 without logits_all)
        ask = bool(req.option_letters) and srv.logprobs
        if ask:
            k = probes.TOP_K if srv.kind == "llama-cpp-python" else 5  # 5: OpenAI's cap
            try:
                resp = self._call("POST", srv.base_url + "/completions", {**body, "logprobs": k})
            except ServerDown:
                raise
            except M1Error as e:
                if "answered HTTP" not in str(e):
                    raise  # a timeout or a malformed answer: not a refusal
                srv.logprobs = False  # it does not do logprobs: ask without, and never again
                ask = False
        if not ask:
            resp = self._call("POST", srv.base_url + "/completions", body)
        choice = resp["choices"][0]
        got = _ids_from_choice(choice)
        if got is not None:
            res = self._from_ids(req, got, choice.get("finish_reason"), choice.get("stop_reason"))
        else:
            res = self._from_text(req, choice, resp.get("usage"))
        return self._probe(req, res, _completion_steps(choice.get("logprobs")) if ask else [])

    # -- option-letter probes (engines/probes.py) -------------------------------------------
    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.detokenize([token])
        return self._pieces[token]

    def _letter_token_ids(self, letters: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        if letters not in self._letter_ids:
            self._letter_ids[letters] = probes.letter_token_ids(self.tokenize, letters)
        return self._letter_ids[letters]

    def _probe(self, req: GenRequest, res: GenResult, steps: list[_Step]) -> GenResult:
        """`res` with the probe read from the server's per-token log-probabilities (`steps`,
        one per token it generated, in order)."""
        letters = tuple(req.option_letters)
        if not letters or not steps:
            return res
        texts = [text for _, text, _ in steps]
        if res.token_source == "exact":
            pos = None
            for i in range(min(res.stop_index, len(steps))):
                tid, text, _ = steps[i]
                if tid is not None and tid != res.token_ids[i]:
                    return res  # the server's list does not follow its ids: no probe
                piece = text if text is not None else self._piece(res.token_ids[i])
                if probes.letter_of(piece, letters) is not None:
                    pos = i
                    break
            if pos is None:
                return res
            ours = pos
        else:  # retokenized: find the server's position, then ours where the texts agree
            if any(t is None for t in texts):
                return res
            pos = probes.find_position(texts, letters, len(texts))  # type: ignore[arg-type]
            if pos is None:
                return res
            before = "".join(texts[:pos])  # type: ignore[arg-type]
            ours = -1
            for q in range(res.stop_index):
                text = self.detokenize(res.token_ids[:q])
                if text == before:
                    ours = q
                    break
                if len(text) > len(before):
                    break
            if not 0 <= ours < res.stop_index or \
                    probes.letter_of(self._piece(res.token_ids[ours]), letters) != probes.letter_of(texts[pos] or "",
                                                                                                  letters):
                return res
        entries = steps[pos][2]
        ids = self._letter_token_ids(letters) if any(t is not None for t, _, _ in entries) \
            else {letter: () for letter in letters}
        res.option_position, res.option_logprobs = ours, probes.from_top(entries, ids)
        return res

    def _from_ids(self, req: GenRequest, ids: list[int], finish: str | None, hint) -> GenResult:
        """Exact ids from the server: find where the stop begins, if one fired."""
        found = _find_stop(ids, req, hint, self.detokenize)
        if found is None and finish == "stop" and ids:
            # the server stopped on something we did not ask for (its own EOS)
            found = (len(ids) - 1, len(ids), hint if hint is not None else ids[-1])
        if found is None:
            ids = ids[: req.max_new_tokens]
            return GenResult(ids, self.detokenize(ids), "length", len(ids))
        start, end, matched = found
        ids = ids[:end]  # nothing after the stop, even if the server went on
        return GenResult(ids, self.detokenize(ids), "stop", start, matched)

    def _from_text(self, req: GenRequest, choice: dict, usage: dict | None) -> GenResult:
        """The retokenized fallback (see the module docstring)."""
        content = self.tokenize(choice.get("text") or "")
        if choice.get("finish_reason") != "stop":
            content = content[: req.max_new_tokens]
            return GenResult(content, self.detokenize(content), "length", len(content), token_source="retokenized")
        n_gen = (usage or {}).get("completion_tokens")
        matched = choice.get("stop_reason", choice.get("matched_stop"))
        if matched is None:
            matched = self._guess_stop(req, None if n_gen is None else n_gen - len(content))
        if isinstance(matched, str):  # the text of a stop token id stands for that id
            by_text = {self.detokenize([t]): t for t in req.stop_token_ids}
            matched = by_text.get(matched, matched)
        tail = [] if matched is None else [matched] if isinstance(matched, int) else self.tokenize(matched)
        content = content[: max(0, req.max_new_tokens - len(tail))]
        ids = content + tail
        return GenResult(ids, self.detokenize(ids), "stop", len(content), matched, token_source="retokenized")

    def _guess_stop(self, req: GenRequest, n_stop: int | None):
        """Which stop fired when the server does not say. n_stop: its tokens, if known."""
        # the model's own EOS first: when several ids could have ended it, the likeliest
        eos = self.eos_token_ids
        stop_ids = [t for t in eos if t in req.stop_token_ids] + [t for t in req.stop_token_ids if t not in eos]
        stop_ids += [t for t in eos if t not in stop_ids]
        strings = list(req.stop_strings)
        if n_stop == 0 or not strings:  # nothing counted after the content: an EOS-like token
            return stop_ids[0] if stop_ids else None
        if n_stop is not None:
            for s in strings:
                if len(self.tokenize(s)) == n_stop:
                    return s
        return strings[0]


def _find_stop(ids: list[int], req: GenRequest, hint, detokenize) -> tuple[int, int, str | int] | None:
    """(start, end, stop) of the earliest stop in ids: tokens [start, end) hold it."""
    best: tuple[int, int, str | int] | None = None
    stops: list[int] = [t for t in req.stop_token_ids if t in ids]
    if isinstance(hint, int) and hint in ids and hint not in stops:
        stops.append(hint)
    for t in stops:
        i = ids.index(t)
        if best is None or i < best[0]:
            best = (i, i + 1, t)
    for s in req.stop_strings:
        at = locate_stop(ids, s, detokenize)
        if at is not None and (best is None or at < best[0]):
            best = (at, _stop_end(ids, s, at, detokenize), s)
    return best


def _stop_end(ids: list[int], stop: str, start: int, detokenize) -> int:
    """One past the token that completes `stop` (its first occurrence)."""
    lo, hi = start, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if stop in detokenize(ids[: mid + 1]):
            hi = mid
        else:
            lo = mid + 1
    return lo + 1


def _ids_from_choice(choice: dict) -> list[int] | None:
    """Generated ids, wherever this server puts them; None if it gives only text."""
    for key in ("token_ids", "response_token_ids", "output_token_ids", "output_ids"):
        if isinstance(choice.get(key), list):
            return [int(t) for t in choice[key]]
    lp = choice.get("logprobs") or {}
    toks = lp.get("tokens") if isinstance(lp, dict) else None
    if toks and all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
        return [int(t.split(":", 1)[1]) for t in toks]
    content = lp.get("content") if isinstance(lp, dict) else None
    if content and all(isinstance(c, dict) and "id" in c for c in content):
        return [int(c["id"]) for c in content]
    return None


# One generated token as a server reports it: (id or None, text or None, top-k entries
# (id or None, text or None, logprob), the sampled token's own entry included).
_Step = tuple[int | None, str | None, list[tuple[int | None, str | None, float]]]


def _split_token(token: object) -> tuple[int | None, str | None]:
    """vLLM's `return_tokens_as_token_ids` spells tokens "token_id:N"; others give their text."""
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].lstrip("-").isdigit():
        return int(token[9:]), None
    return None, token if isinstance(token, str) else None


def _completion_steps(lp: object) -> list[_Step]:
    """Per-token log-probabilities of an OpenAI /v1/completions choice (vLLM, SGLang, others):
    `tokens`, `token_logprobs`, `top_logprobs` (a {token: logprob} per token), or a chat-style
    `content` list."""
    if not isinstance(lp, dict):
        return []
    steps: list[_Step] = []
    content = lp.get("content")
    if isinstance(content, list):
        for c in content:
            if not isinstance(c, dict):
                return []
            tid, text = _split_token(c.get("token"))
            entries = [(*_split_token(t.get("token")), t.get("logprob")) for t in c.get("top_logprobs") or []
                       if isinstance(t, dict)]
            steps.append((tid, text, [*entries, (tid, text, c.get("logprob"))]))  # type: ignore[list-item]
        return steps
    tokens, tops, own = lp.get("tokens"), lp.get("top_logprobs"), lp.get("token_logprobs")
    if not isinstance(tokens, list):
        return []
    for i, token in enumerate(tokens):
        tid, text = _split_token(token)
        top = tops[i] if isinstance(tops, list) and i < len(tops) and isinstance(tops[i], dict) else {}
        entries = [(*_split_token(k), v) for k, v in top.items()]
        if isinstance(own, list) and i < len(own):
            entries.append((tid, text, own[i]))
        steps.append((tid, text, entries))  # type: ignore[arg-type]
    return steps


def _llama_server_steps(probs: object) -> list[_Step]:
    """llama-server's `completion_probabilities`: {id, token, logprob, top_logprobs: [...]} per
    token (older builds: {content, probs: [{tok_str, prob}]}, probabilities)."""
    if not isinstance(probs, list):
        return []
    steps: list[_Step] = []
    for e in probs:
        if not isinstance(e, dict):
            return []
        if "top_logprobs" in e:
            entries = [(t.get("id"), t.get("token"), t.get("logprob")) for t in e["top_logprobs"] or []
                       if isinstance(t, dict)]
            entries.append((e.get("id"), e.get("token"), e.get("logprob")))
            steps.append((e.get("id"), e.get("token"), entries))  # type: ignore[arg-type]
        else:
            entries = [(None, t.get("tok_str"), math.log(t["prob"]) if t.get("prob", 0) > 0 else -math.inf)
                       for t in e.get("probs") or [] if isinstance(t, dict)]
            steps.append((None, e.get("content"), entries))  # type: ignore[arg-type]
    return steps


def _error_text(raw: bytes) -> str:
    try:
        err = json.loads(raw)
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
    except ValueError:
        msg = raw.decode("utf-8", errors="replace")
    return " ".join(str(msg).split())[:300] or "no detail"


# -- local tokenizers ---------------------------------------------------------------------
class _HFTokenizer:
    def __init__(self, source: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise M1Error("tokenizer= with a Hugging Face tokenizer needs transformers: pip install 'm1[hf]'") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            first = first_line(e)
            raise M1Error(f"cannot load tokenizer {source}: {first}") from None
        first = self._tok("", add_special_tokens=True)["input_ids"][:1]
        self.bos_token_id = first[0] if first and first[0] == self._tok.bos_token_id else None
        self.eos_token_ids = (self._tok.eos_token_id,) if self._tok.eos_token_id is not None else ()

    def tokenize(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def render_chat(self, messages: list[dict]) -> str:
        if not getattr(self._tok, "chat_template", None):
            raise M1Error("the tokenizer has no chat template; pass one that has, or use a plain prompt format")
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def load_tokenizer(source: str):
    """Tokenizer and chat template without a model: from a .gguf file or an HF tokenizer folder / hub id."""
    if str(source).endswith(".gguf"):
        if not Path(source).is_file():
            raise M1Error(f"tokenizer file not found: {source} (pass an existing .gguf file)")
        from m1.engines.llamacpp import GGUFTokenizer

        return GGUFTokenizer(source, vocab_only=True)
    return _HFTokenizer(source)
