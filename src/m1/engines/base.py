"""The engine protocol: token ids in, token ids out, one request at a time.

Every budget in m1 is counted on the ids an engine returns, never by re-tokenizing
text, so an engine must report exactly which tokens it generated.

Requests arrive as a stream: `await engine.submit(request)` returns when that request is
done, whatever else is in flight, so each question advances on its own and the engine
is refilled the moment a sequence finishes. `capacity` is how many requests the engine
can usefully hold at once (slots, a server's batch). `open_questions` (see
`open_questions()`) is how many questions the caller keeps started: the capacity, or more
where the engine keeps the prefixes of requests that are not running (a server's prefix
cache), so that more requests wait than run and the engine picks among them by
`GenRequest.priority`. `generate(list)` is the same thing for code that wants a plain
batch call.

Streaming: `submit(request, on_tokens)` also hands the generated ids to `on_tokens`, in order,
on the event loop, as the engine produces them (per decode step in process; at the end where
an engine only has whole results). Their concatenation is `result.token_ids`. Cancelling the
`submit` (a client gone) drops the request from the engine at its next step: its slot is free.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Literal, Protocol, Sequence, TypeVar, runtime_checkable

FinishReason = Literal["stop", "length"]
# Called with each run of newly generated ids (engines/base.py module doc); must not raise.
TokenSink = Callable[[list[int]], None]


@dataclass(frozen=True)
class GenRequest:
    """One generation: continue `prompt_ids` for at most `max_new_tokens` tokens."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    # Ask for the log-probabilities of these option letters at the answer position (the
    # first generated token naming one of them); see engines/probes.py. Empty: none asked,
    # and the engine does no extra work.
    option_letters: tuple[str, ...] = ()
    # Which waiting request the engine starts first when more wait than it can run: lower
    # first, then in arrival order. It changes when a request runs, never what it generates,
    # so it is not part of the request's identity. The controller gives a question's next
    # thinking stage the number of ids it has thought so far (least-advanced first: the
    # questions that will think longest are not left to start last) and answers -1.
    priority: int = field(default=0, compare=False)


@dataclass
class GenResult:
    """What an engine generated for one request.

    `token_ids` holds every generated token, including the token(s) that completed a
    stop. `stop_index` is how many of them come before the stop began, so
    `token_ids[:stop_index]` is the content without the stop; it equals
    `len(token_ids)` when generation ended by length.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stop_index: int
    matched_stop: str | int | None = None
    # "exact" when the ids came from the engine itself; "retokenized" when a server
    # gave only text and the ids were recovered by tokenizing it (documented fallback).
    token_source: str = "exact"
    # For a request with option_letters (see engines/probes.py): letter -> log-probability
    # at the answer position, `token_ids[option_position]` (< stop_index); None when the
    # engine gives none or no generated token names a letter. Letters the engine could not
    # score (outside a server's top-k) are absent.
    option_logprobs: dict[str, float] | None = None
    option_position: int | None = None


@runtime_checkable
class Engine(Protocol):
    """A text generator m1 can drive. See engines/llamacpp.py for the reference one."""

    name: str
    capacity: int  # requests worth keeping in flight to fill the engine
    meter: LoadMeter

    async def submit(self, request: GenRequest, on_tokens: TokenSink | None = None) -> GenResult:
        """Generate for one request; returns when it is done, whatever else is in flight.
        `on_tokens` gets the generated ids as they come (module doc)."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Run all requests (batched as the engine sees fit); results in input order."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        ...

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a full prompt: like tokenize, plus BOS where the model wants one."""
        ...

    def render_chat(self, messages: list[dict]) -> str:
        """The model's own chat template over `messages`, ready for the assistant turn."""
        ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ...

    def describe(self) -> dict:
        """What produced the tokens: engine, model path or id, file hash, versions."""
        ...

    def close(self) -> None:
        ...


@dataclass
class StopMatcher:
    """Incremental stop detection shared by the in-process engines.

    Feed generated ids one at a time; `push` returns the stop that fired (or None).
    Stop strings are searched in the decoded text of the generated tokens, so a stop
    string spanning several tokens is found on the token that completes it.
    """

    stop_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    detokenize: Callable[[Sequence[int]], str]
    ids: list[int] = field(default_factory=list)
    stop_index: int = -1  # set when push returns a stop

    def push(self, token_id: int) -> str | int | None:
        self.ids.append(token_id)
        if token_id in self.stop_token_ids:
            self.stop_index = len(self.ids) - 1
            return token_id
        if not self.stop_strings:
            return None
        # Only the tail can contain a newly completed stop string.
        longest = max(len(s) for s in self.stop_strings)
        text = self.detokenize(self.ids)
        for s in self.stop_strings:
            pos = text.find(s, max(0, len(text) - longest - 32))
            if pos >= 0:
                self.stop_index = self._token_index_at(pos)
                return s
        return None

    def _token_index_at(self, char_pos: int) -> int:
        """Index of the token whose text contains character `char_pos`."""
        for i in range(len(self.ids)):
            if len(self.detokenize(self.ids[: i + 1])) > char_pos:
                return i
        return len(self.ids) - 1


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two lists (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


# -- streaming --------------------------------------------------------------------------
T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also inside a notebook whose
    event loop is already running (there it runs on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def bounded(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int,
                  on_last_start: Callable[[], None] | None = None) -> list[T]:
    """Run `jobs` in order, at most `limit` at a time, each started the moment another ends;
    `on_last_start` is called when the last one starts (no job is left waiting)."""
    slots = asyncio.Semaphore(max(1, limit))

    async def one(k: int, job: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            if k == len(jobs) - 1 and on_last_start:
                on_last_start()
            return await job()

    return list(await asyncio.gather(*(one(k, job) for k, job in enumerate(jobs))))


# Questions kept started per request in flight where a shared prefix cache (vLLM's, SGLang's)
# holds a paused question's KV: enough waiting stages for the least-advanced to go first
# (bench/gpu_sim.py: 93% utilisation against 81% with one per request).
OPEN_PER_REQUEST_WITH_PREFIX_CACHE = 3


def open_questions(engine: Engine) -> int:
    """How many questions to keep started at once on `engine`: its `open_questions` where it
    sets one (servers with a prefix cache), else its capacity."""
    return max(1, int(getattr(engine, "open_questions", engine.capacity)))


class PriorityGate:
    """At most `limit` holders at once; waiters get in lowest priority first, then in arrival
    order. Bound to the event loop it was made on."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self.loop = asyncio.get_running_loop()
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._arrival = itertools.count()

    async def enter(self, priority: int) -> None:
        if self.held < self.limit and not self._waiting:
            self.held += 1
            return
        fut = self.loop.create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed the place, then cancelled: pass it on
                self.leave()
            raise

    def leave(self) -> None:
        while self._waiting:
            fut = heapq.heappop(self._waiting)[2]
            if not fut.done():
                fut.set_result(None)  # the place goes straight to the waiter: `held` stays
                return
        self.held -= 1


async def submit_all(engine: Engine, requests: Sequence[GenRequest]) -> list[GenResult]:
    return list(await asyncio.gather(*(engine.submit(r) for r in requests)))


class StreamingGenerate:
    """`generate(list)` for engines whose native interface is `submit`."""

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return run_sync(submit_all(self, requests))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Reading:
    """A LoadMeter's counters at one moment; the difference of two is an interval's load."""

    t: float
    busy: float  # integral of requests in flight over time (request-seconds)
    active: float  # seconds with at least one request in flight
    generated: int
    context: int  # prompt tokens the engine evaluated (0 where it cannot tell)
    requests: int


class LoadMeter:
    """Requests in flight over time, against the engine's capacity.

    Occupancy over an interval is (busy₂ − busy₁) / (capacity · (t₂ − t₁)): 1.0 when the
    engine held `capacity` requests all the time."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._n = 0
        self._t = time.perf_counter()
        self._busy = self._active = 0.0
        self.generated = self.context = self.requests = 0

    def _advance(self) -> None:
        now = time.perf_counter()
        self._busy += self._n * (now - self._t)
        self._active += (now - self._t) if self._n > 0 else 0.0
        self._t = now

    def set(self, in_flight: int) -> None:
        with self._lock:
            self._advance()
            self._n = in_flight

    def add(self, delta: int) -> None:
        with self._lock:
            self._advance()
            self._n += delta

    def count(self, generated: int = 0, context: int = 0, requests: int = 0) -> None:
        with self._lock:
            self.generated += generated
            self.context += context
            self.requests += requests

    @property
    def in_flight(self) -> int:
        return self._n

    def reading(self) -> Reading:
        with self._lock:
            self._advance()
            return Reading(self._t, self._busy, self._active, self.generated, self.context, self.requests)


def load_between(a: Reading, b: Reading, capacity: int) -> dict:
    """Occupancy, tokens/s and counts between two readings of one meter."""
    dt = max(b.t - a.t, 1e-9)
    return {"seconds": round(dt, 3), "capacity": capacity,
            "occupancy": round((b.busy - a.busy) / (capacity * dt), 4),
            "mean_in_flight": round((b.busy - a.busy) / dt, 2), "engine_idle": round(1 - (b.active - a.active) / dt, 4),
            "generated_tokens": b.generated - a.generated, "tokens_per_s": round((b.generated - a.generated) / dt, 2),
            "context_tokens": b.context - a.context, "requests": b.requests - a.requests}


@dataclass
class _Waiter:
    """A submitted request's caller: the future that gets its result, and its token sink with
    how many ids it has been given."""

    request: GenRequest
    fut: asyncio.Future
    sink: TokenSink | None = None
    sent: int = 0

    def tokens(self, ids: Sequence[int]) -> None:
        if self.sink is not None and ids and not self.fut.done():
            self.sent += len(ids)
            self.sink(list(ids))

    def finish(self, result: GenResult) -> None:
        if not self.fut.done():
            self.tokens(result.token_ids[self.sent:])
            self.fut.set_result(result)


def _queued(queue: list, request: GenRequest, sink: TokenSink | None) -> asyncio.Future:
    """Append a _Waiter to an engine's queue; its future gets the result."""
    fut: asyncio.Future = asyncio.get_running_loop().create_future()
    queue.append(_Waiter(request, fut, sink))
    return fut


def _running(task: asyncio.Task | None, work: Callable[[], Coroutine]) -> asyncio.Task:
    """The engine's worker task on this event loop: `task` if it still runs here, else a new one."""
    loop = asyncio.get_running_loop()
    if task is None or task.done() or task.get_loop() is not loop:
        task = loop.create_task(work())
    return task


Token = object  # what a stepped engine hands back with a finished result (its caller's future)


class _QueuedEngine(StreamingGenerate):
    """An in-process engine fed through a queue: `submit` queues (request, future) and makes
    sure the engine's worker task runs on this event loop; `_work` empties the queue on the
    engine's own worker thread."""

    name = "queued"

    def _start_queue(self, capacity: int) -> None:
        self.capacity = capacity
        self.meter = LoadMeter(capacity)
        self._queue: list[_Waiter] = []
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"m1-{self.name}")

    def check_request(self, request: GenRequest) -> None:
        """Raise M1Error for a request the engine can never serve (in the caller's context)."""

    async def submit(self, request: GenRequest, on_tokens: TokenSink | None = None) -> GenResult:
        self.check_request(request)
        fut = _queued(self._queue, request, on_tokens)
        self._task = _running(self._task, self._work)
        return await fut

    async def _work(self) -> None:
        raise NotImplementedError

    def _close_worker(self) -> None:
        self._worker.shutdown(wait=True)


class SteppedEngine(_QueuedEngine):
    """Base for in-process engines that advance all their sequences together, one step at a
    time (llama.cpp's decode, vLLM's LLMEngine.step).

    `submit` puts a request in the inbox and awaits its future. One driver task per event
    loop hands the inbox to `_advance` on the engine's own worker thread: it admits what it
    can, runs one step and returns the requests that finished. While a step runs, the
    pipelines that just got results submit their next requests, which join at the next step.
    """

    name = "stepped"

    # Implemented by each engine; all of them run on the worker thread only.
    def _advance(self, new: list[tuple[GenRequest, Token]]) -> list[tuple[Token, GenResult]]:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Drop every request in progress (their caller is gone)."""
        raise NotImplementedError

    def _drop(self, gone: set[Token]) -> None:
        """Drop these requests, waiting or running: their callers cancelled (a client went away)."""

    def _progress(self, sent: dict[Token, int]) -> dict[Token, list[int]]:
        """The ids each running request in `sent` generated past the first `sent[token]` (for
        streaming; an engine that returns {} streams each result whole, at its end)."""
        return {}

    def _cycle(self, new, gone, sent):
        if gone:
            self._drop(gone)
        done = self._advance(new)
        return done, (self._progress(sent) if sent else {})

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        # A driver of an earlier event loop may have been cut off mid-run (an exception, a
        # Ctrl-C): its sequences have nobody waiting. The worker runs one thing at a time,
        # so this also waits for a step still running from then.
        await loop.run_in_executor(self._worker, self._abandon)
        waiting: dict[int, _Waiter] = {}
        try:
            while self._queue or waiting:
                new, self._queue = self._queue, []
                new = [w for w in new if not w.fut.cancelled()]
                for w in new:
                    waiting[id(w.fut)] = w
                gone = {k for k, w in waiting.items() if w.fut.cancelled()}
                for k in gone:
                    del waiting[k]
                sent = {k: w.sent for k, w in waiting.items() if w.sink is not None}
                batch: list[tuple[GenRequest, Token]] = [(w.request, id(w.fut)) for w in new]
                done, progress = await loop.run_in_executor(self._worker, self._cycle, batch, gone, sent)
                for key, ids in progress.items():
                    if key in waiting:
                        waiting[key].tokens(ids)
                for key, result in done:
                    waiting.pop(key).finish(result)
                # Let the pipelines that were waiting on these results submit their next
                # requests before the next step (a few hops: task -> gather -> parent).
                for _ in range(4):
                    await asyncio.sleep(0)
        except BaseException as e:
            for w in list(waiting.values()) + self._queue:
                if w.fut.done():
                    continue
                if isinstance(e, Exception):
                    w.fut.set_exception(e)
                else:
                    w.fut.cancel()
            self._queue = []
            self._worker.submit(self._abandon)
            raise


class BatchedSubmit(_QueuedEngine):
    """`submit` for engines that only generate whole batches (hf): the requests that arrive
    while a batch runs form the next one, up to `capacity`. Each batch waits for its
    slowest member, which is why the stepped engines exist; fine for small models. A request
    whose caller is gone still runs with its batch (hf's generate cannot drop one)."""

    name = "batched"

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        raise NotImplementedError

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            for _ in range(4):  # let the requests submitted together join this batch
                await asyncio.sleep(0)
            queue = [w for w in self._queue if not w.fut.cancelled()]
            batch, self._queue = queue[: self.capacity], queue[self.capacity:]
            if not batch:
                continue
            self.meter.set(len(batch))
            try:
                results = await loop.run_in_executor(self._worker, self.generate, [w.request for w in batch])
            except Exception as e:
                for w in batch:
                    if not w.fut.done():
                        w.fut.set_exception(e)
                continue
            finally:
                self.meter.set(0)
            self.meter.count(generated=sum(len(r.token_ids) for r in results), requests=len(batch))
            for w, res in zip(batch, results):
                w.finish(res)  # a whole batch at a time: its ids reach a sink at the end
