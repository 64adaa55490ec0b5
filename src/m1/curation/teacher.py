"""A teacher behind an OpenAI-compatible chat API: bounded, rate-limited, retried, cached.

- concurrency: `concurrency` requests in flight at most (a fixed pool of workers);
- rate limits: token buckets for requests/minute and tokens/minute (each request is
  charged its prompt estimate + max_tokens up front and refunded to its real usage);
- retries with exponential backoff and jitter (Retry-After honoured) on 429, 408, 5xx,
  timeouts, dropped connections and bodies that are not a chat completion (truncated
  JSON, no choices); other 4xx fail that one request; 401/403 stop the run;
- a persistent SQLite cache keyed by sha256(model, messages, params): every good
  answer is committed the moment it arrives, so a rerun (or a run after a kill) sends
  no request for anything answered before.
The API key is read from the environment variable `api_key_env` and goes nowhere else.
"""
from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from m1.client import Client, Policy, RequestFailed, StatusError
from m1.curation.config import TeacherConfig
from m1.curation.store import json_hash
from m1.errors import M1Error


@dataclass
class Reply:
    key: str
    reasoning: str  # the teacher's thinking ("" when it gave none)
    content: str  # what it answered after thinking
    reasoning_source: str  # reasoning_content | think_tags | none
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool


@dataclass
class Failure:
    key: str
    error: str
    attempts: int


@dataclass
class Stats:
    requests: int = 0  # HTTP calls made, retries included
    answered: int = 0  # fresh answers
    cache_hits: int = 0
    failed: int = 0
    retries: Counter = field(default_factory=Counter)  # by cause: 429, 500, timeout, malformed, ...
    prompt_tokens: int = 0  # fresh answers only
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "retries": dict(self.retries), "cost": round(self.cost, 6),
                "seconds": round(self.seconds, 3)}


def split_reasoning(message: dict) -> tuple[str, str, str]:
    """(reasoning, final content, where the reasoning came from) of a chat message.

    R1-style servers put the thinking in `reasoning_content` (or `reasoning`); others
    leave "<think>...</think>" inside the content (sometimes without the opening tag,
    when the chat template already emitted it)."""
    content = message.get("content") or ""
    for name in ("reasoning_content", "reasoning"):
        if isinstance(message.get(name), str) and message[name].strip():
            return message[name].strip(), content.strip(), "reasoning_content"
    if "</think>" in content:
        before, after = content.split("</think>", 1)
        return before.replace("<think>", "", 1).strip(), after.strip(), "think_tags"
    if content.lstrip().startswith("<think>"):  # cut off while thinking
        return content.split("<think>", 1)[1].strip(), "", "think_tags"
    return "", content.strip(), "none"


class ResponseCache:
    """key -> the teacher's whole JSON answer, in one SQLite file (WAL: a kill loses nothing committed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, request TEXT, response TEXT, "
                        "created REAL)")
        self.db.commit()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT response FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict, response: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                        (key, json.dumps(request, ensure_ascii=False), json.dumps(response, ensure_ascii=False),
                         time.time()))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class Bucket:
    """A token bucket holding at most one minute's allowance."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.t = time.monotonic()

    async def take(self, n: float) -> None:
        n = min(n, self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now
            if self.level >= n:
                self.level -= n
                return
            await asyncio.sleep((n - self.level) / self.rate)

    def refund(self, n: float) -> None:
        self.level = min(self.capacity, self.level + n)


class Teacher:
    def __init__(self, cfg: TeacherConfig, cache: ResponseCache):
        if cfg.concurrency < 1 or cfg.max_retries < 0:
            raise M1Error(f"teacher: concurrency must be >= 1 and max_retries >= 0 (got {cfg.concurrency}, "
                          f"{cfg.max_retries}); fix them in the config")
        self.cfg, self.cache = cfg, cache
        self.model = cfg.model
        self.stats = Stats()

    # -- requests and keys --------------------------------------------------------------
    def messages(self, user: str) -> list[dict]:
        msgs = [{"role": "user", "content": user}]
        if self.cfg.system:
            msgs.insert(0, {"role": "system", "content": self.cfg.system})
        return msgs

    def key(self, messages: list[dict], params: dict | None = None) -> str:
        if self.model is None:
            raise RuntimeError("the model is resolved when run() starts")
        body = {"model": self.model, "messages": messages, "params": self.cfg.params if params is None else params}
        return json_hash(body)

    def _client(self) -> Client:
        """m1's client layer, with the teacher's retry policy; retries are counted by cause."""
        cfg = self.cfg
        policy = Policy(timeout=cfg.timeout_s, retries=cfg.max_retries, backoff=cfg.backoff_s,
                        backoff_max=cfg.backoff_max_s)
        return Client(cfg.base_url, cfg.api_key_env, policy, on_retry=self._retried,
                      fix="fix the teacher's base_url in the config")

    def _retried(self, cause: str) -> None:
        self.stats.retries[cause] += 1

    async def _resolve_model(self, client: Client) -> None:
        if self.model is not None:
            return
        try:
            models = await client.arequest("GET", "/models")
            ids = [m["id"] for m in models["data"]]
        except (RequestFailed, KeyError, TypeError) as e:
            why = e.cause if isinstance(e, RequestFailed) else "not a model list"
            raise M1Error(f"teacher: cannot list models at {self.cfg.base_url} ({why}); start the "
                          "server, fix base_url, or set the model name in the config") from None
        if not ids:
            raise M1Error(f"teacher: {self.cfg.base_url}/models lists no model; set the model name in the config")
        self.model = ids[0]

    # -- running ------------------------------------------------------------------------
    def run(self, jobs: list[list[dict]], params: dict | None = None, on_result=None) -> list[Reply | Failure]:
        """Answer every job (a message list); results in job order. `on_result(i, result)`
        is called as each arrives (cache hits first)."""
        return asyncio.run(self.run_async(jobs, params, on_result))

    async def run_async(self, jobs: list[list[dict]], params: dict | None = None, on_result=None):
        start = time.monotonic()
        params = dict(self.cfg.params if params is None else params)
        results: list[Reply | Failure | None] = [None] * len(jobs)
        client = None
        if self.model is None:
            client = self._client()
            await self._resolve_model(client)
        todo: asyncio.Queue[tuple[int, str, list[dict]]] = asyncio.Queue()
        for i, messages in enumerate(jobs):
            key = self.key(messages, params)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = _reply(key, hit, cached=True)
                self.stats.cache_hits += 1
                if on_result:
                    on_result(i, results[i])
            else:
                todo.put_nowait((i, key, messages))
        if not todo.empty():
            client = client or self._client()
            rpm = Bucket(self.cfg.rpm) if self.cfg.rpm else None
            tpm = Bucket(self.cfg.tpm) if self.cfg.tpm else None
            workers = [asyncio.create_task(self._worker(client, todo, params, results, rpm, tpm, on_result))
                       for _ in range(min(self.cfg.concurrency, todo.qsize()))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
        if client is not None:
            await client.aclose()
        self.stats.seconds += time.monotonic() - start
        return results

    async def _worker(self, client, todo: asyncio.Queue, params, results, rpm, tpm, on_result):
        while not todo.empty():
            i, key, messages = todo.get_nowait()
            results[i] = await self._ask(client, key, messages, params, rpm, tpm)
            if on_result:
                on_result(i, results[i])

    async def _ask(self, client: Client, key: str, messages: list[dict], params: dict, rpm, tpm) -> Reply | Failure:
        cfg = self.cfg
        budget = sum(len(m["content"]) for m in messages) / 4 + (params.get("max_tokens")
                                                                 or params.get("max_completion_tokens") or 1024)

        async def before_attempt():
            if rpm:
                await rpm.take(1)
            if tpm:
                await tpm.take(budget)
            self.stats.requests += 1

        try:
            body = await client.apost("/chat/completions", {"model": self.model, "messages": messages, **params},
                                      validate=_chat_completion, before_attempt=before_attempt)
        except StatusError as e:
            if e.status in (401, 403):
                raise M1Error(f"teacher at {cfg.base_url} refused the key (HTTP {e.status}); set "
                              f"{cfg.api_key_env} in the environment") from None
            self.stats.failed += 1
            if not client.policy.retryable(e):
                return Failure(key, f"HTTP {e.status}: {_short(e.detail)}", e.attempts)
            return Failure(key, f"HTTP {e.status} after {e.attempts} attempts", e.attempts)
        except RequestFailed as e:
            self.stats.failed += 1
            why = {"timeout": f"no answer within {cfg.timeout_s:g} s", "malformed": "not a chat completion"}
            return Failure(key, f"{why.get(e.cause, _short(str(e)))} after {e.attempts} attempts", e.attempts)
        usage = body.get("usage") or {}
        if tpm:
            tpm.refund(max(0.0, budget - (usage.get("total_tokens") or budget)))
        self.cache.put(key, {"model": self.model, "messages": messages, "params": params}, body)
        reply = _reply(key, body, cached=False)
        self.stats.answered += 1
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        self.stats.cost += (reply.prompt_tokens * cfg.price_in_per_mtok
                            + reply.completion_tokens * cfg.price_out_per_mtok) / 1e6
        return reply


def _chat_completion(body: dict) -> dict:
    """`body` if it is a chat completion with a message (else the client retries it as malformed)."""
    message = body["choices"][0]["message"]
    if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
        raise ValueError("no message")
    return body


def _reply(key: str, body: dict, cached: bool) -> Reply:
    choice = body["choices"][0]
    reasoning, content, source = split_reasoning(choice["message"])
    usage = body.get("usage") or {}
    return Reply(key=key, reasoning=reasoning, content=content, reasoning_source=source,
                 finish_reason=choice.get("finish_reason"), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0), model=str(body.get("model") or ""),
                 cached=cached)


def _short(text: str, width: int = 160) -> str:
    text = re.sub(r"\s+", " ", text or "")
    return text if len(text) <= width else text[: width - 3] + "..."
