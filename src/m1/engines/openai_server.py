"""Any OpenAI-compatible completions server: vLLM, SGLang, llama.cpp's llama-server,
llama-cpp-python's server, TGI, hosted APIs, and replicas of one of them.

Budgets count engine tokens, so each server is driven through the most exact path it offers
(m1.client.dialects: found by probing it once, or set with `server=`): token-id prompts and
ids back on vLLM, SGLang and llama-server; the text path elsewhere.

The retokenized fallback (text-only servers): such servers cut a stop out of the text, so when
one fired we append the stop's own tokens (the stop token id, or the tokenization of the stop
string) after the retokenized content. Then, as for the exact servers, `token_ids[:stop_index]`
is the content, `token_ids[stop_index:]` the stop, and the content never exceeds
`max_new_tokens`. Which stop fired is read from the server where it says (`stop_reason`,
`stopping_word`), else inferred from the usage count (llama-cpp-python counts stop-string
tokens but not EOS). Retokenizing can differ from what the model sampled (a word split
differently), so budgets there are close, not exact: prefer an exact server for measurements.

Tokenize/detokenize/chat template use a local tokenizer when one is given (`tokenizer=` an HF
tokenizer folder or hub id, or a .gguf file read with llama.cpp's vocabulary only), else the
server's endpoints (llama-cpp-python's detokenize drops special tokens, so when its model id is
a local .gguf file we read that file's vocabulary).

Stop token ids go as `stop_token_ids` (vLLM/SGLang) and also as stop strings of their text, so
a server without that extension still stops. The API key is read from the environment variable
named by `api_key_env` at each request; it is never stored.

Option-letter probes (a request with `option_letters`, see engines/probes.py) come from the
server's top-k log-probabilities of each generated token (`dialect.top_k` of them). A server
that refuses (llama-cpp-python's answers HTTP 500 when started with `--logits_all false`) is
asked once: the request is resent without, and that server is never asked again. Letters
outside the top-k are absent from the result. With retokenized ids the probe is kept only where
the server's tokens before the answer position spell exactly the text of our ids before it.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

from m1.client import Client, Policy, RequestFailed, ServerDown
from m1.client.dialects import DIALECTS, Completion, Generic, detect, refused
from m1.client.wire import Step
from m1.engines import probes, stops
from m1.engines.base import (
    OPEN_PER_REQUEST_WITH_PREFIX_CACHE,
    GenRequest,
    GenResult,
    LoadMeter,
    PriorityGate,
    StreamingGenerate,
    TokenSink,
)
from m1.engines.tokenizers import load_tokenizer
from m1.errors import M1Error

__all__ = ["OpenAIEngine"]


@dataclass
class _Server:
    """One replica behind --base-url: its client, capacity and load."""

    client: Client
    capacity: int
    in_flight: int = 0
    alive: bool = True
    logprobs: bool = True  # False once it refused a logprobs request

    @property
    def base_url(self) -> str:
        return self.client.base_url


class OpenAIEngine(StreamingGenerate):
    """One or several OpenAI-compatible servers (replicas of one model, of one kind).

    Every request is a coroutine on the caller's event loop (no thread per request): up to the
    servers' capacity together are on the wire, the rest wait by priority; each goes to the live
    server with the lowest load (in flight ÷ capacity), and a request whose server stops
    answering is sent to another one with the same ids (the question's state lives here, not on
    the server)."""

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | list[str] = "http://127.0.0.1:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", tokenizer: str | None = None, concurrency: int | None = None,
                 timeout: float = 600, server: str | None = None, skip_unreachable: bool = False,
                 open_questions: int | None = None):
        urls = base_url if isinstance(base_url, (list, tuple)) else str(base_url).split(",")
        urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not urls:
            raise M1Error("--base-url is empty: pass http://HOST:PORT/v1 (several, comma-separated, for replicas)")
        self.api_key_env = api_key_env  # the name only: the key stays in the environment
        self.timeout = float(timeout)
        self.model = model
        self._servers: list[_Server] = []
        kinds: dict[str, str] = {}
        for url in urls:
            # no retries: a request whose server is gone goes to another one (_routed)
            client = Client(url, api_key_env, Policy(timeout=self.timeout), fix="pass --base-url")
            try:
                models = client.get("/models")  # also: is anyone there?
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
            kinds[url] = server or detect(client, next((m.get("owned_by") for m in data if m.get("id") == self.model),
                                                       None))
            if len(set(kinds.values())) > 1:
                raise M1Error("the servers in --base-url are of different kinds ("
                              + ", ".join(f"{u}: {k}" for u, k in kinds.items())
                              + "); replicas must be one kind of server serving one model")
            self._servers.append(_Server(client, 1))
        if not self._servers:
            raise M1Error(f"no server in --base-url answers ({', '.join(urls)}); start them or fix the list")
        self.dialect: Generic = DIALECTS[next(iter(kinds.values()))]()
        for srv in self._servers:
            srv.capacity = concurrency or self.dialect.capacity(srv.client)
        self.capacity = sum(s.capacity for s in self._servers)
        self.open_questions = open_questions or self.capacity * (
            OPEN_PER_REQUEST_WITH_PREFIX_CACHE if self.dialect.prefix_cached else 1)
        self.meter = LoadMeter(self.capacity)
        self._gate: PriorityGate | None = None  # `capacity` requests on the wire, by priority
        self.tokenizer_source = tokenizer or self.dialect.local_tokenizer(str(self.model))
        self._local = load_tokenizer(self.tokenizer_source) if self.tokenizer_source else None
        self._bos: int | None | bool = False  # False: not looked up yet
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
    def client(self) -> Client:
        return self._primary().client

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def server(self) -> str:
        return self.dialect.kind

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r}, server={self.server!r})"

    # -- text <-> ids ---------------------------------------------------------------
    def _bos_id(self) -> int | None:
        if self._bos is False:
            self._bos = self._local.bos_token_id if self._local is not None \
                else self.dialect.bos_id(self.client, str(self.model))
        return self._bos

    def tokenize(self, text: str) -> list[int]:
        if self._local is not None:
            return self._local.tokenize(text)
        return self.dialect.tokenize(self.client, str(self.model), text, add_special=False)

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
        return self.dialect.detokenize(self.client, str(self.model), ids)

    def render_chat(self, messages: list[dict]) -> str:
        if self._local is not None:
            return self._local.render_chat(messages)
        text = self.dialect.render_chat(self.client, str(self.model), messages)
        if text is None:
            raise M1Error(f"cannot get {self.model}'s chat template from the server at {self.base_url}; "
                          f"pass tokenizer=<HF tokenizer folder or the model's .gguf file>")
        return text

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self._local is not None:
            return self._local.eos_token_ids
        if self._eos is None:
            self._eos = ()  # unknown unless the server says; it still stops on its own EOS
            text = self.dialect.eos_text(self.client)
            if text:
                ids = self.dialect.tokenize(self.client, str(self.model), text, add_special=False)
                self._eos = tuple(ids) if len(ids) == 1 else ()
        return self._eos

    def describe(self) -> dict:
        info: dict[str, object] = {
            "engine": self.name, "model": self.model, "base_url": self.base_url,
            "servers": [{"base_url": s.base_url, "server": self.server, "capacity": s.capacity}
                        for s in self._servers],
            "server": self.server, "token_source": "exact" if self.dialect.exact else "retokenized",
            "tokenizer": self.tokenizer_source, "capacity": self.capacity, "open_questions": self.open_questions,
            **self.dialect.describe(self.client)}
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
        for srv in self._servers:
            srv.client.close()
        self._local = None

    # -- generation -------------------------------------------------------------------
    async def submit(self, request: GenRequest, on_tokens: TokenSink | None = None) -> GenResult:
        # The ids reach `on_tokens` whole, at the end: the server's own stream is not read yet.
        # Cancelling closes the connection, and the server drops the request.
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate.loop is not loop:
            self._gate = PriorityGate(self.capacity)
        gate = self._gate
        await gate.enter(request.priority)
        try:
            res = await self._routed(request)
        finally:
            gate.leave()
        self.meter.count(generated=len(res.token_ids), requests=1)
        if on_tokens is not None and res.token_ids:
            on_tokens(list(res.token_ids))
        return res

    async def _routed(self, req: GenRequest) -> GenResult:
        """Run `req` on the least loaded live server; on another one if that one is gone."""
        while True:
            live = [s for s in self._servers if s.alive]
            if not live:
                raise M1Error("every server in --base-url stopped answering; restart them and rerun "
                              "(finished questions are kept)")
            srv = min(live, key=lambda s: s.in_flight / s.capacity)
            srv.in_flight += 1
            self.meter.add(1)  # in flight: on the wire, not waiting at the gate
            try:
                return await self._one(srv, req)
            except ServerDown as e:
                if srv.alive and len(self._servers) > 1:
                    print(f"m1: warning: {e}; its requests go to the other servers", file=sys.stderr)
                srv.alive = False
                if len(self._servers) == 1:
                    raise
            finally:
                self.meter.add(-1)
                srv.in_flight -= 1

    def _stop_texts(self, req: GenRequest) -> list[str]:
        texts = list(req.stop_strings)
        for t in req.stop_token_ids:
            s = self._piece(t)
            if s.strip() and s not in texts:  # an empty stop string would end at once
                texts.append(s)
        return texts

    async def _one(self, srv: _Server, req: GenRequest) -> GenResult:
        if req.max_new_tokens <= 0:
            return GenResult([], "", "length", 0)
        prompt: list[int] | str = list(req.prompt_ids)
        if not self.dialect.prompt_ids:
            bos = self._bos_id()
            ids = req.prompt_ids[1:] if bos is not None and req.prompt_ids[:1] == [bos] else req.prompt_ids
            prompt = self.detokenize(ids)  # the server adds its own BOS to a text prompt
        stop_texts = self._stop_texts(req)
        top_k = self.dialect.top_k if req.option_letters and srv.logprobs else None
        path, root, body = self.dialect.completion(str(self.model), req, prompt, stop_texts, top_k)
        try:
            resp = await srv.client.apost(path, body, root=root)
        except RequestFailed as e:
            if top_k is None or not refused(e):
                raise
            srv.logprobs = False  # it does not do logprobs: ask without, and never again
            top_k = None
            path, root, body = self.dialect.completion(str(self.model), req, prompt, stop_texts, None)
            resp = await srv.client.apost(path, body, root=root)
        try:
            out = self.dialect.read(resp)
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise M1Error(f"{srv.base_url} answered with something else than a completion "
                          f"({type(e).__name__}); is it an OpenAI-compatible server?") from None
        if out.prompt_evaluated is not None:
            self.meter.count(context=out.prompt_evaluated)
        res = self._from_ids(req, out.ids, out.finish, out.hint) if out.ids is not None else self._from_text(req, out)
        return self._probe(req, res, out.steps if top_k else [])

    # -- option-letter probes (engines/probes.py) -------------------------------------------
    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.detokenize([token])
        return self._pieces[token]

    def _letter_token_ids(self, letters: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        if letters not in self._letter_ids:
            self._letter_ids[letters] = probes.letter_token_ids(self.tokenize, letters)
        return self._letter_ids[letters]

    def _probe(self, req: GenRequest, res: GenResult, steps: list[Step]) -> GenResult:
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
        found = stops.find_stop(ids, req.stop_token_ids, req.stop_strings, hint, self.detokenize)
        if found is None and finish == "stop" and ids:
            # the server stopped on something we did not ask for (its own EOS)
            found = (len(ids) - 1, len(ids), hint if hint is not None else ids[-1])
        if found is None:
            ids = ids[: req.max_new_tokens]
            return GenResult(ids, self.detokenize(ids), "length", len(ids))
        start, end, matched = found
        ids = ids[:end]  # nothing after the stop, even if the server went on
        return GenResult(ids, self.detokenize(ids), "stop", start, matched)

    def _from_text(self, req: GenRequest, out: Completion) -> GenResult:
        """The retokenized fallback (see the module docstring)."""
        content = self.tokenize(out.text)
        if out.finish != "stop":
            content = content[: req.max_new_tokens]
            return GenResult(content, self.detokenize(content), "length", len(content), token_source="retokenized")
        n_gen = out.completion_tokens
        matched = out.hint
        if matched is None:
            matched = self._guess_stop(req, None if n_gen is None else n_gen - len(content))
        if isinstance(matched, str):  # the text of a stop token id stands for that id
            by_text = {self._piece(t): t for t in req.stop_token_ids}
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
