"""GPU scale, by SIMULATION (there is no GPU here): how long the paper-scale sweep takes on one
continuously batching server under three schedulers, and what any scheduler could reach.

    python bench/gpu_sim.py [--smoke] [--questions 2000] [--rows abcde]

The bench starts an OpenAI-compatible server on 127.0.0.1 that speaks vLLM's dialect (token-id
prompts, `token_ids` back) but computes nothing: it models a GPU's continuous batching on a
simulated clock. Up to `max_batch` sequences decode together and every decode step takes the
same `step_ms` whatever the batch (a GPU's step time is roughly flat up to its batch limit);
requests beyond `max_batch` wait. A question's thinking length is drawn once (long-tailed, as in
the paper: most end by 1-4K tokens, some run to the budget) and its answer length likewise, so
every scheduler sees the same model. The clock moves only when the client has been quiet for a
moment (no request for `quiet_ms` of real time and the process, client included, next to idle),
straight to the next completion, so simulated hours take real minutes; a slow client reaction
holds the clock rather than leaving the batch it meant to fill half empty.

  (a) chunked    m1's controller before pipelines: 8 questions at a time, 8 requests in flight
  (b) pipelines  m1 today (the `openai` engine, vLLM's defaults: 256 requests in flight, 768
                 questions started), the real client code: each question's thinking in stages
                 that end at each budget, each budget's answer sent as the thinking passes it,
                 and the waiting stages started least-advanced first (GenRequest.priority); every
                 stage is a new request, whose prompt a real server finds in its prefix cache
                 (prefill is not modelled in any row)
  (c) official   the m1 paper's code: one full run per budget, prompts sent in batches of 1,024,
                 the forced answers in a second batch
  (d) clairvoyant longest-first: (b)'s client with one question started per request in flight,
                 in order of decreasing total work (token-steps, as measured in (b)); not
                 realisable, since no scheduler knows a question's lengths before running it; it
                 shows what start order alone can win
  (e) pipelines, one question started per request in flight (open_questions = concurrency):
                 the same client with no waiting room for the priority to act on; first come,
                 first served

Printed: simulated wall time, server utilisation (mean decoding sequences / max_batch) overall and
while questions remain to be started, and the ratios; then an upper bound on the utilisation of
any scheduler with at most max_batch in flight on these very lengths: total token-steps W over
max_batch x the longest single question CP (its thinking, then its answers, which run side by
side), since the wall time is at least max(W / max_batch, CP); and whether the target is
attainable. Targets: (b) >= 90% utilisation, >= 10x less time than (a), >= 3x less than (c).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _baseline import chunked, pipelines  # noqa: I001 (bench/ is on sys.path when a bench runs)
from m1.engines.base import open_questions
from m1.engines.llamacpp import embedded_model_path
from m1.engines.openai_server import OpenAIEngine
from m1.thinking import BudgetController, ThinkingParams, get_format

THINK_END = 1  # SmolLM2's <|im_start|>: the m1 format's end of thinking, a stop token id of think requests
FILLER = 253  # any ordinary token


def draw(key: bytes, what: str, tail: float, median: float, sigma: float, cap: int) -> int:
    """A length from a log-normal with a share `tail` that never ends by itself (runs to any budget)."""
    rnd = random.Random(hashlib.sha256(key + what.encode()).digest())
    if rnd.random() < tail:
        return 10 ** 9
    return max(1, min(cap, int(math.exp(rnd.gauss(math.log(median), sigma)))))


class SimGPU:
    """The simulated server's scheduler: a clock, a waiting queue and a running batch."""

    # The process (the client runs in it, with the server) may use at most this share of one core
    # during a quiet window for the client to count as waiting rather than still reacting.
    IDLE_CPU = 0.1

    def __init__(self, max_batch: int, step_ms: float, quiet_ms: float, lengths: dict):
        self.max_batch, self.step, self.quiet = max_batch, step_ms / 1000, quiet_ms / 1000
        self.lengths = lengths
        self.windows = [0, 0]  # quiet windows: waited, and found the process still computing
        self.cv = threading.Condition()
        self.reset()
        threading.Thread(target=self._run, daemon=True).start()

    def reset(self):
        with self.cv:
            self.now, self.busy, self.waiting, self.running = 0.0, 0.0, [], []
            self.last_event = time.perf_counter()
            self.marked: tuple[float, float] | None = None
            # per question: [thinking token-steps, longest answer, all token-steps]
            self.work: dict[bytes, list[int]] = {}

    def touch(self):
        """HTTP traffic: the client is still reacting, the clock waits."""
        with self.cv:
            self.last_event = time.perf_counter()

    def mark(self):
        """The client starts its last question: utilisation while questions remain ends here."""
        with self.cv:
            self.marked = (self.now, self.busy)

    def submit(self, prompts: list[list[int]], max_tokens: int, stop_ids: list[int]) -> list[dict]:
        """Blocks until every prompt of the request has finished on the simulated clock."""
        jobs: list[dict[str, Any]] = []
        group: dict = {"left": len(prompts), "done": threading.Event()}
        for p in prompts:
            key = question_key(p)
            if THINK_END in stop_ids:  # a thinking request: the question's thinking length
                natural = draw(key, "think", **self.lengths["think"])
                thought = len(p) - _question_len(p)
                n = min(max(natural - thought, 1), max_tokens)
                stop = natural - thought <= max_tokens
            else:  # an answer: the question's answer length
                n = min(draw(key, "answer", **self.lengths["answer"]), max_tokens)
                stop = n < max_tokens
            jobs.append({"left": n, "n": n, "stop": stop, "done": False, "group": group,
                         "key": key, "think": THINK_END in stop_ids})
        with self.cv:
            for j in jobs:
                w = self.work.setdefault(j["key"], [0, 0, 0])
                if j["think"]:
                    w[0] += j["n"]
                else:
                    w[1] = max(w[1], j["n"])
                w[2] += j["n"]
            self.waiting += jobs
            self.last_event = time.perf_counter()
            self.cv.notify_all()
        group["done"].wait()  # only this request's thread wakes when it is done
        return [{"token_ids": [FILLER] * (j["n"] - 1) + [THINK_END if j["stop"] and THINK_END in stop_ids else 2]
                 if j["stop"] else [FILLER] * j["n"], "finish_reason": "stop" if j["stop"] else "length",
                 "stop_reason": (THINK_END if THINK_END in stop_ids else 2) if j["stop"] else None} for j in jobs]

    def _client_quiet(self) -> bool:
        """Called with the lock held; waits one quiet window of real time. True when no request arrived
        or HTTP traffic passed during it and the process used under IDLE_CPU of a core: every thread
        of the client, which runs in this process, is waiting on the server. A client that takes
        longer than the window to react (hundreds of long prompts at once, a busy machine) keeps
        the clock still, instead of finding the batch it meant to fill already stepped on."""
        t0, cpu0, event0 = time.perf_counter(), time.process_time(), self.last_event
        while (left := t0 + self.quiet - time.perf_counter()) > 0:
            self.cv.wait(timeout=left)
        self.windows[0] += 1
        if self.last_event != event0:
            return False
        if time.process_time() - cpu0 > self.IDLE_CPU * (time.perf_counter() - t0):
            self.windows[1] += 1
            return False
        return True

    def _run(self):
        while True:
            with self.cv:
                # Move the clock only once the client has had a moment to react to the last event.
                while not (self.waiting or self.running) or not self._client_quiet():
                    if not (self.waiting or self.running):
                        self.cv.wait(timeout=self.quiet / 4)
                while self.waiting and len(self.running) < self.max_batch:
                    self.running.append(self.waiting.pop(0))
                k = min(j["left"] for j in self.running)
                self.now += k * self.step
                self.busy += k * self.step * len(self.running)
                for j in self.running:
                    j["left"] -= k
                finished = [j for j in self.running if j["left"] == 0]
                self.running = [j for j in self.running if j["left"] > 0]
                for j in finished:
                    j["group"]["left"] -= 1
                    if j["group"]["left"] == 0:  # a whole HTTP request is done: its client may react
                        j["group"]["done"].set()
                        self.last_event = time.perf_counter()


QUESTION_END: list[int] = []  # the chat template's assistant header: where the question prompt ends (set in main)


def _question_len(p: list[int]) -> int:
    """Up to the end of the (only) assistant header; searched from the start, which is near, since
    the thinking and answers after it are thousands of tokens long."""
    n = len(QUESTION_END)
    for i in range(len(p) - n + 1):
        if p[i] == QUESTION_END[0] and p[i:i + n] == QUESTION_END:
            return i + n
    return len(p)


def _question(p: list[int]) -> list[int]:
    return p[:_question_len(p)]


def question_key(p: list[int]) -> bytes:
    """Which question a prompt belongs to: the key its lengths are drawn from."""
    return hashlib.sha256(bytes(json.dumps(_question(p)), "utf8")).digest()


def serve(sim: SimGPU) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _send(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.endswith("/models"):
                return self._send({"data": [{"id": "sim", "owned_by": "vllm"}]})
            self._send({})

        def do_POST(self):
            sim.touch()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if body["prompt"] and isinstance(body["prompt"][0], list) else [body["prompt"]]
            outs = sim.submit(prompts, body["max_tokens"], body.get("stop_token_ids") or [])
            self._send({"choices": [{"index": i, **o} for i, o in enumerate(outs)]})
            sim.touch()

    class Server(ThreadingHTTPServer):
        request_queue_size = 4096  # hundreds of connections open at once, as at a real server

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def questions(engine, n: int) -> list[list[int]]:
    rnd = random.Random(0)
    words = ["fever", "cough", "renal", "cardiac", "acute", "chronic", "lesion", "dose", "patient", "history"]
    out = []
    for i in range(n):
        text = f"Question {i}: " + " ".join(rnd.choice(words) for _ in range(40)) + "\nA. x\nB. y\nC. z\nD. w"
        out.append(engine.encode_prompt(engine.render_chat([{"role": "user", "content": text}])))
    return out


def run_official(url, ctl, prompts, budgets, answer_max, mark, batch=1024):
    """One full run per budget; thinking in batches of `batch` prompts, then the forced answers."""
    import urllib.request

    def post(prompt_list, max_tokens, stops):
        body = {"model": "sim", "prompt": prompt_list, "max_tokens": max_tokens, "stop_token_ids": stops}
        req = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=10 ** 6).read())["choices"]

    fmt_answer = ctl._prefix_ids(ctl.fmt.answer_forced)
    for b in budgets:
        for k in range(0, len(prompts), batch):
            if b == budgets[-1] and k + batch >= len(prompts):
                mark()
            ps = [ctl.think_prompt(p) for p in prompts[k:k + batch]]
            outs = post(ps, b, [THINK_END])
            post([p + o["token_ids"][:b] + fmt_answer for p, o in zip(ps, outs)], answer_max, [2])


NAMES = {"chunked": "(a) chunked", "pipelines": "(b) pipelines", "official": "(c) official",
         "clairvoyant": "(d) clairvoyant longest-first (not realisable: lengths unknown in advance)",
         "fcfs": "(e) pipelines, first come first served (one question per request in flight)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not the figures")
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--budgets", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--step-ms", type=float, default=30.0)
    ap.add_argument("--quiet-ms", type=float, default=20.0, help="real time the clock waits for the client")
    ap.add_argument("--rows", default="abcde", help="which schedulers to run (d needs b's lengths: b runs too)")
    a = ap.parse_args()
    budgets = [int(x) for x in a.budgets.split(",")]
    if a.smoke:
        a.questions, budgets, a.max_batch = 24, [128, 1024], 16
    answer_max = 1024
    lengths = {"think": {"tail": 0.1, "median": 1500.0, "sigma": 0.6, "cap": 10 ** 9},
               "answer": {"tail": 0.0, "median": 120.0, "sigma": 0.5, "cap": answer_max}}
    sim = SimGPU(a.max_batch, a.step_ms, a.quiet_ms, lengths)
    httpd, url = serve(sim)
    print("SIMULATION (no GPU): a continuously batching server on a simulated clock")
    print(f"parameters: {a.questions} questions x budgets {budgets}; max batch {a.max_batch} sequences; "
          f"decode step {a.step_ms:g} ms flat up to the batch limit; prefill not modelled (prefix cache); "
          f"thinking length log-normal (median {lengths['think']['median']:g}, sigma {lengths['think']['sigma']}) "
          f"with {lengths['think']['tail']:.0%} never ending by itself; answers log-normal (median "
          f"{lengths['answer']['median']:g}, cap {answer_max}); m1 format, greedy\n")
    tokenizer = str(embedded_model_path())
    QUESTION_END[:] = OpenAIEngine(base_url=url, tokenizer=tokenizer).tokenize("<|im_start|>assistant\n")
    rows = []
    work: dict[bytes, list[int]] = {}  # per question, as measured in (b)
    held: dict[str, float] = {}  # share of the clock's quiet windows in which the client was still computing
    chosen = set(a.rows) | ({"b"} if "d" in a.rows else set())
    for name in [n for n in NAMES if NAMES[n][1] in chosen]:
        concurrency = 8 if name == "chunked" else None  # the old default; None: vLLM's capacity
        engine = OpenAIEngine(base_url=url, tokenizer=tokenizer, concurrency=concurrency)
        params = ThinkingParams(budget=max(budgets), answer_max_tokens=answer_max)
        ctl = BudgetController(engine, get_format("m1"), params)
        prompts = questions(engine, a.questions)
        keys = [str(i) for i in range(len(prompts))]
        if name == "clairvoyant":  # the same client as (b), the questions by decreasing total work
            order = sorted(range(len(prompts)), key=lambda i: -work[question_key(ctl.think_prompt(prompts[i]))][2])
            prompts, keys = [prompts[i] for i in order], [keys[i] for i in order]
        sim.reset()
        sim.windows[:] = [0, 0]
        t = time.perf_counter()
        if name == "chunked":
            chunked(ctl, prompts, keys, budgets, sim.mark)
        elif name == "pipelines":
            pipelines(ctl, prompts, keys, budgets, open_questions(engine), sim.mark)
        elif name in ("clairvoyant", "fcfs"):
            pipelines(ctl, prompts, keys, budgets, engine.capacity, sim.mark)
        else:
            run_official(url, ctl, prompts, budgets, answer_max, sim.mark)
        if name == "pipelines":
            work = dict(sim.work)
            assert sum(w[2] for w in work.values()) == round(sim.busy / sim.step), "work not fully recorded"
        m_now, m_busy = sim.marked or (sim.now, sim.busy)
        remain = f"{m_busy / (a.max_batch * m_now):.0%}" if m_now > 0 else "n/a (all start at once)"
        started = {"chunked": "8", "official": "batches of 1024",
                   "pipelines": str(open_questions(engine))}.get(name, str(engine.capacity))
        rows.append((name, engine.capacity, started, sim.now, sim.busy / (a.max_batch * max(sim.now, 1e-9)),
                     remain, time.perf_counter() - t))
        held[name] = sim.windows[1] / max(sim.windows[0], 1)
        engine.close()
    httpd.shutdown()
    ours = next((r for r in rows if r[0] == "pipelines"), rows[0])[3]
    print("| scheduler | requests in flight | questions started at once | simulated hours | server utilisation "
          "| utilisation while questions remain | time vs pipelines | real s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, cap, started, now, util, util_remain, real in rows:
        print(f"| {NAMES[name]} | {cap if name != 'official' else 'batches of 1024'} | {started} "
              f"| {now / 3600:.2f} | {util:.0%} "
              f"| {util_remain} | {now / max(ours, 1e-9):.1f}x | {real:.0f} |")

    print("\nthe clock's quiet windows in which the client was still computing (and the clock waited): "
          + ", ".join(f"{NAMES[n][:3]} {h:.0%}" for n, h in held.items()))
    if not work:
        return
    # Any scheduler with at most max_batch decoding needs at least max(W / max_batch, CP) steps.
    total = sum(w[2] for w in work.values())
    longest = max(work.values(), key=lambda w: w[0] + w[1])
    cp = longest[0] + longest[1]
    bound = min(1.0, total / (a.max_batch * cp))
    fewest = max(total / a.max_batch, cp)
    print(f"upper bound on utilisation, any scheduler with <= {a.max_batch} in flight, these lengths: "
          f"min(1, W / ({a.max_batch} x CP)) = {bound:.0%}  (W = {total:,} token-steps, the whole sweep; "
          f"CP = {cp:,} steps, the longest question: {longest[0]:,} thinking, then {longest[1]:,} answer; "
          f"no schedule takes under {fewest:,.0f} steps = {fewest * a.step_ms / 3.6e6:.2f} h)")
    util = {name: u for name, _, _, _, u, _, _ in rows}
    if util.get("pipelines", 0) >= 0.9:
        verdict = (f"the >= 90% target is MET by m1's pipelines: {util['pipelines']:.0%} "
                   f"(the bound for any scheduler on these lengths: {bound:.0%})")
    elif bound < 0.9:
        verdict = f"the >= 90% target is INFEASIBLE on this workload: no scheduler can pass {bound:.0%}"
    elif "clairvoyant" not in util:
        verdict = "run row d for a verdict"
    elif util["clairvoyant"] < 0.9:
        verdict = (f"the >= 90% target is not reached even by the clairvoyant order ({util['clairvoyant']:.0%}): "
                   f"INFEASIBLE for a scheduler that cannot know the lengths")
    else:
        realisable = {n: u for n, u in util.items() if n in ("pipelines", "fcfs")}
        best = max(realisable, key=realisable.__getitem__, default=None)
        verdict = (f"the >= 90% target is ATTAINABLE: the clairvoyant order reaches {util['clairvoyant']:.0%} "
                   f"({(util['clairvoyant'] - 0.9) * 100:+.0f} points over the target); ")
        if best is None:
            verdict += "no realisable row ran"
        elif realisable[best] >= 0.9:
            verdict += f"a realisable client meets it too ({NAMES[best]}: {realisable[best]:.0%})"
        else:
            verdict += (f"the best realisable row, {NAMES[best]}, reaches {realisable[best]:.0%} "
                        f"({(realisable[best] - 0.9) * 100:+.0f} points): what is missing is start order, which needs "
                        f"the lengths before running")
    if a.smoke:
        verdict = "none at smoke sizes (figures meaningless; " + verdict + ")"
    print(f"verdict (SIMULATION): {verdict}")


if __name__ == "__main__":
    main()
