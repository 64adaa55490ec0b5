"""`m1 serve`'s HTTP face: OpenAI's chat-completions API on FastAPI, over serve/service.py.

Each request runs as its own task (a pipeline on the shared controller); the handler only
waits for it, and a client that goes away cancels it, which frees its place and its engine
slot at once. Errors are OpenAI-shaped JSON with the right 4xx/5xx status, never a traceback;
logs carry ids, token counts and timings, and prompt or answer text only with --log-content.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from m1.client.http import RequestFailed
from m1.errors import M1Error
from m1.serve.metrics import CONTENT_TYPE, Metrics
from m1.serve.schema import BadField, ChatRequest
from m1.serve.service import Ask, QueueFull, Reply, Service
from m1.thinking.stream import TextStream

log = logging.getLogger("m1.serve")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers
        self.counted = False  # in /metrics already (a request's task counts its own outcome)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a body over `limit` bytes with 413, by its Content-Length or as it arrives."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await _send_error(send, self._error())
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > self.limit:
                raise _TooLarge
            return message
        await self.app(scope, limited, send)

    def _error(self) -> ApiError:
        return ApiError(413, f"the request body is over this server's limit of {self.limit} bytes "
                             "(m1 serve --max-body)", code="request_too_large")


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_app(service: Service) -> FastAPI:
    """The FastAPI application serving `service` (uvicorn runs it: serve/cli.py)."""
    cfg = service.cfg
    app = FastAPI(title="m1 serve", description="Exact thinking budgets behind OpenAI's chat-completions API",
                  version="1")
    metrics = Metrics(service.engine.meter, lambda: service.waiting, lambda: service.active)
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else None
    if cfg.api_key_env and not key:
        raise M1Error(f"--api-key-env {cfg.api_key_env}: that environment variable is empty or unset; "
                      "export the key there (it is never read from the command line)")
    names = {service.model_name}
    app.add_middleware(BodyLimit, limit=cfg.max_body)

    def answer_error(err: ApiError) -> JSONResponse:
        if not err.counted:
            metrics.requests.labels(str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return answer_error(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return answer_error(_explain(err))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        if isinstance(err.__cause__, _TooLarge):
            return answer_error(BodyLimit(None, cfg.max_body)._error())
        if err.status_code == 400:  # FastAPI could not read the body
            return answer_error(ApiError(400, "the body is not valid JSON", code="invalid_json"))
        return answer_error(ApiError(err.status_code, str(err.detail), code="not_found"
                                     if err.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")  # the traceback stays in the server's log
        return answer_error(ApiError(500, "internal error in m1 serve; see its log", "server_error"))

    async def authorized(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                           "authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def get_metrics() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "m1"}
                                           for n in sorted(names)]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)], response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        if body.model not in names:
            raise ApiError(404, f"the model {body.model!r} does not exist here; this server serves "
                                f"{', '.join(sorted(names))} (GET /v1/models)", param="model", code="model_not_found")
        try:
            ask = service.ask(body)
        except BadField as e:
            raise ApiError(400, str(e), param=e.param) from None
        except M1Error as e:
            raise ApiError(400, str(e)) from None
        try:
            service.reserve()
        except QueueFull:
            raise ApiError(429, f"the server is full: {service.waiting} requests already wait "
                                f"(m1 serve --max-queue {cfg.max_queue}); retry shortly", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        job = _Job(service, ask, body, metrics)
        if body.stream:
            return StreamingResponse(job.events(service.model_name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        reply = await job.until_disconnect(request)
        if reply is None:  # the client went away: nobody reads this
            return JSONResponse({}, status_code=499)
        return JSONResponse(_completion(job.id, service.model_name, reply, ask))

    app.state.service = service
    app.state.metrics = metrics
    return app


class _Job:
    """One request running as its own task. Its place among the running requests (Service) is
    released when the task ends, however it ends; cancelling the task frees the engine slot."""

    def __init__(self, service: Service, ask: Ask, body: ChatRequest, metrics: Metrics):
        self.service, self.ask, self.metrics = service, ask, metrics
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.body = body if service.cfg.log_content else None
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.start = time.perf_counter()
        self.first: float | None = None
        self._thinking = TextStream(service.engine.detokenize)
        self._answer = TextStream(service.engine.detokenize)
        self.task = asyncio.ensure_future(self._run())
        self.task.add_done_callback(lambda _: service.release())

    # the Listener the controller streams into (thinking/stream.py)
    def thinking(self, ids: list[int]) -> None:
        self._put("reasoning", self._thinking.push(ids))

    def answer(self, ids: list[int]) -> None:
        self._put("content", self._answer.push(ids))

    def _put(self, kind: str, text: str) -> None:
        if text:
            if self.first is None:
                self.first = time.perf_counter()
                self.metrics.first_token.observe(self.first - self.start)
            self.queue.put_nowait((kind, text))

    async def _run(self) -> Reply:
        status = "200"
        try:
            async with self.service.running():
                reply = await self.service.reply(self.ask, self)
            self._put("reasoning", self._thinking.close())
            if reply.content and not reply.answer_ids:  # no answer phase: the reply itself was the answer
                self._put("content", reply.content)
            self._put("content", self._answer.close())
            self._count(reply)
            return reply
        except asyncio.CancelledError:
            status = "499"  # the client closed the connection
            raise
        except Exception as e:
            err = _generation_error(e)
            status, err.counted = str(err.status), True
            raise err from None
        finally:
            if status != "200":
                self.metrics.requests.labels(status).inc()
            self.metrics.seconds.observe(time.perf_counter() - self.start)

    def _count(self, reply: Reply) -> None:
        m = self.metrics
        m.requests.labels("200").inc()
        m.tokens.labels("prompt").inc(reply.prompt_tokens)
        m.tokens.labels("thinking").inc(reply.thinking_tokens)
        m.tokens.labels("answer").inc(len(reply.answer_ids))
        if reply.budget_exhausted:
            m.exhausted.inc()
        log.info("%s 200 prompt=%d thinking=%d/%d answer=%d stopped_by=%s finish=%s seconds=%.3f", self.id,
                 reply.prompt_tokens, reply.thinking_tokens, reply.budget, len(reply.answer_ids), reply.stopped_by,
                 reply.finish_reason, time.perf_counter() - self.start)
        if self.body is not None:  # --log-content
            log.info("%s messages=%s thinking=%r content=%r", self.id,
                     json.dumps([m.model_dump() for m in self.body.messages]), reply.thinking, reply.content)

    async def until_disconnect(self, request: Request) -> Reply | None:
        """The reply, or None when the client disconnects first (the task is then cancelled)."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({self.task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not self.task.done():
            self.task.cancel()
            log.info("%s client disconnected; request cancelled", self.id)
            return None
        return self.task.result()  # an ApiError goes to its handler

    async def events(self, model: str) -> AsyncIterator[str]:
        """Server-sent events: the role, reasoning and content deltas as they come, the finish,
        usage when asked, then [DONE]. A failure after the first event is an error event."""
        created = int(time.time())

        def delta_of(kind: str, text: str) -> dict:
            return {"reasoning_content": text, "reasoning": text} if kind == "reasoning" else {"content": text}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": self.id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            if self.include_usage:
                body.setdefault("usage", None)
            return f"data: {json.dumps(body)}\n\n"
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield chunk(delta_of(*getter.result()))
                    continue
                getter.cancel()
                break
            while not self.queue.empty():
                yield chunk(delta_of(*self.queue.get_nowait()))
            try:
                reply = self.task.result()
            except ApiError as err:
                yield f"data: {json.dumps(err.body())}\n\n"
            else:
                yield chunk({}, reply.finish_reason, m1=_m1_block(reply, self.ask))
                if self.include_usage:
                    body = {"id": self.id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [], "usage": _usage(reply)}
                    yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not self.task.done():  # the client went away mid-stream
                self.task.cancel()
                log.info("%s client disconnected; request cancelled", self.id)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _generation_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, RequestFailed):  # the backend server (--engine openai) failed or went away
        return ApiError(502, f"the backend server failed: {e}", "server_error", code="backend_error")
    if isinstance(e, M1Error):
        text = str(e)
        if "stopped answering" in text:
            return ApiError(503, text, "server_error", code="backend_unavailable")
        return ApiError(400, text)
    log.error("internal error: %s", type(e).__name__, exc_info=e)
    return ApiError(500, "internal error in m1 serve; see its log", "server_error")


def _usage(r: Reply) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": r.thinking_tokens}}


def _m1_block(r: Reply, ask: Ask) -> dict:
    return {"thinking_budget": r.budget, "budget_from": ask.budget_from, "thinking_tokens": r.thinking_tokens,
            "budget_exhausted": r.budget_exhausted, "rounds_forced": r.rounds_forced, "stopped_by": r.stopped_by,
            "answer_forced": r.answer_forced}


def _completion(cid: str, model: str, r: Reply, ask: Ask) -> dict:
    message = {"role": "assistant", "content": r.content, "reasoning_content": r.thinking, "reasoning": r.thinking}
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": r.finish_reason}],
            "usage": _usage(r), "m1": _m1_block(r, ask)}


def _explain(err: RequestValidationError) -> ApiError:
    """FastAPI's first complaint as one line naming the field."""
    first = (err.errors() or [{}])[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                        code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if param is None:  # the body as a whole: not JSON (no JSON content type), or not an object
        return ApiError(400, "the body must be a JSON object sent as Content-Type: application/json "
                             f"({first.get('msg', 'invalid')})", code="invalid_json")
    where = f"{param}: " if param else "the body: "
    return ApiError(400, f"{where}{first.get('msg', 'invalid value')}", param=param, code="invalid_value")
