"""One HTTP client for every OpenAI-compatible server m1 talks to: the engine's backends, the
teacher, the judge (and m1 serve's backend through the engine).

One connection pool per client (one for blocking calls, one per event loop for coroutines: an
async pool belongs to the loop that opened it), one timeout and retry policy, one set of errors.
Requests in flight cost a coroutine, not a thread, and no pool limit sits below what the caller
allows in flight (the caller's gate decides: a vLLM server takes hundreds).

The API key is read from the environment variable named by `api_key_env` at each request and
sent as a bearer token; it is never stored on the client, so it cannot reach a repr, a log or a
result file.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import httpx2 as httpx

from m1.errors import M1Error

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


class RequestFailed(M1Error):
    """A request that got no usable answer. `cause` names why, as retries are counted:
    "connection", "timeout", "malformed" or the HTTP status."""

    cause = "error"
    attempts = 1


class ServerDown(RequestFailed):
    """The server did not answer at all (refused, reset, gone): its requests may go elsewhere."""

    cause = "connection"


class NoAnswer(RequestFailed):
    cause = "timeout"


class Malformed(RequestFailed):
    cause = "malformed"


class StatusError(RequestFailed):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status: int, detail: str, retry_after: float | None):
        super().__init__(message)
        self.status, self.detail, self.retry_after = status, detail, retry_after
        self.cause = str(status)


@dataclass(frozen=True)
class Policy:
    """How long to wait for an answer and how to retry. Retried: connection failures, timeouts,
    answers that are not what was asked for (`validate` raised), 408/409/425/429 and 5xx, with
    exponential backoff and jitter; a server's Retry-After is honoured up to `backoff_max`."""

    timeout: float = 600.0
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self):
        if not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool) or self.timeout <= 0:
            raise M1Error(f"timeout={self.timeout!r}: must be a positive number of seconds")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise M1Error(f"retries={self.retries!r}: must be a whole number >= 0")

    def retryable(self, e: RequestFailed) -> bool:
        return not isinstance(e, StatusError) or e.status in RETRY_STATUS or e.status >= 500

    def wait(self, attempt: int, e: RequestFailed) -> float:
        backoff = min(self.backoff_max, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
        after = e.retry_after if isinstance(e, StatusError) else None
        return max(backoff, min(after or 0.0, self.backoff_max))


Validate = Callable[[Any], Any]


class Client:
    """JSON over HTTP to one server. `base_url` is its OpenAI root (".../v1"); `root=True` on a
    request addresses the server's own root instead (llama-server's /completion, vLLM's /tokenize).

    `on_retry(cause)` is called before each retry, `before_attempt()` awaited before each async
    attempt (a rate limiter's place). `fix`: what a user does about a wrong URL, for messages."""

    def __init__(self, base_url: str, api_key_env: str = "OPENAI_API_KEY", policy: Policy = Policy(),
                 on_retry: Callable[[str], None] | None = None, fix: str = "fix the URL"):
        base_url = str(base_url).strip().rstrip("/")
        if urllib.parse.urlsplit(base_url).password is not None:
            raise M1Error(f"{_redact(base_url)} holds a password; put the key in the environment variable "
                          f"{api_key_env} instead")
        self.base_url, self.api_key_env, self.policy, self.on_retry = base_url, api_key_env, policy, on_retry
        self.fix = fix
        self.root = base_url[:-3] if base_url.endswith("/v1") else base_url
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()  # a judge asks from a pool of threads
        self._async: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, api_key_env={self.api_key_env!r})"

    def url(self, path: str, root: bool = False) -> str:
        return (self.root if root else self.base_url) + path

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = "Bearer " + key
        return headers

    # -- blocking -------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, root: bool = False, timeout: float | None = None,
                validate: Validate | None = None, retries: int | None = None) -> Any:
        url = self.url(path, root)
        with self._sync_lock:
            if self._sync is None:
                self._sync = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        for attempt in range((self.policy.retries if retries is None else retries) + 1):
            try:
                try:
                    resp = self._sync.request(method, url, content=_dump(body), headers=self._headers(),
                                              timeout=timeout or self.policy.timeout)
                except httpx.HTTPError as e:
                    raise self._transport_error(url, e, timeout) from None
                return self._read(url, resp, validate)
            except RequestFailed as e:
                if not self._again(attempt, e, retries):
                    e.attempts = attempt + 1
                    raise
                time.sleep(self.policy.wait(attempt, e))
        raise AssertionError("unreachable")

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw) -> Any:
        return self.request("POST", path, body, **kw)

    def probe(self, method: str, path: str, body: Any = None, *, root: bool = True) -> Any:
        """An endpoint that may not exist: its answer, or None when the server answers with an
        error (connection failures still raise ServerDown)."""
        try:
            return self.request(method, path, body, root=root, timeout=min(self.policy.timeout, 30), retries=0)
        except ServerDown:
            raise
        except RequestFailed:
            return None

    # -- coroutines -----------------------------------------------------------------------
    async def arequest(self, method: str, path: str, body: Any = None, *, root: bool = False,
                       timeout: float | None = None, validate: Validate | None = None,
                       before_attempt: Callable[[], Any] | None = None) -> Any:
        url = self.url(path, root)
        client = self._async_client()
        for attempt in range(self.policy.retries + 1):
            if before_attempt is not None:
                await before_attempt()
            try:
                try:
                    resp = await client.request(method, url, content=_dump(body), headers=self._headers(),
                                                timeout=timeout or self.policy.timeout)
                except httpx.HTTPError as e:
                    raise self._transport_error(url, e, timeout) from None
                return self._read(url, resp, validate)
            except RequestFailed as e:
                if not self._again(attempt, e, None):
                    e.attempts = attempt + 1
                    raise
                await asyncio.sleep(self.policy.wait(attempt, e))
        raise AssertionError("unreachable")

    async def apost(self, path: str, body: Any, **kw) -> Any:
        return await self.arequest("POST", path, body, **kw)

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        for old in [lp for lp in self._async if lp.is_closed()]:
            del self._async[old]  # its loop is gone, and its connections with it
        if loop not in self._async:
            self._async[loop] = httpx.AsyncClient(limits=httpx.Limits(max_connections=None,
                                                                      max_keepalive_connections=None))
        return self._async[loop]

    async def aclose(self) -> None:
        """Close this loop's pool (the others close with their loops)."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        self._async.clear()

    # -- shared ---------------------------------------------------------------------------
    def _again(self, attempt: int, e: RequestFailed, retries: int | None) -> bool:
        limit = self.policy.retries if retries is None else retries
        if attempt >= limit or not self.policy.retryable(e):
            return False
        if self.on_retry is not None:
            self.on_retry(e.cause)
        return True

    def _transport_error(self, url: str, e: Exception, timeout: float | None) -> RequestFailed:
        where = _redact(url)
        if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
            return NoAnswer(f"{where} did not answer within {timeout or self.policy.timeout:g} s; "
                            "raise the timeout or check the server")
        why = "connection refused" if isinstance(e, httpx.ConnectError) and "refused" in str(e).lower() \
            else type(e).__name__
        return ServerDown(f"cannot reach {where}: {why}; start the server or {self.fix}")

    def _read(self, url: str, resp: httpx.Response, validate: Validate | None) -> Any:
        where = _redact(url)
        if resp.status_code >= 400:
            detail = error_text(resp.content)
            hint = f"set {self.api_key_env}" if resp.status_code in (401, 403) else "check the server log and options"
            raise StatusError(f"{where} answered HTTP {resp.status_code}: {detail}; {hint}", resp.status_code,
                              detail, _retry_after(resp.headers.get("retry-after")))
        try:
            data = json.loads(resp.content)
        except ValueError:
            raise Malformed(f"{where} did not answer with JSON; is it an OpenAI-compatible server?") from None
        if validate is not None:
            try:
                return validate(data)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                raise Malformed(f"{where} answered with something else than asked ({type(e).__name__})") from None
        return data


def _dump(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body).encode()


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _redact(url: str) -> str:
    """The URL without credentials or query (a key passed as ?key=... stays out of messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def error_text(raw: bytes) -> str:
    """An error body's message, short: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text."""
    try:
        err = json.loads(raw)
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
    except ValueError:
        msg = raw.decode("utf-8", errors="replace")
    return " ".join(str(msg).split())[:300] or "no detail"
