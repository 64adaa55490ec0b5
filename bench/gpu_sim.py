"""GPU scale, by SIMULATION (there is no GPU here): how long the paper-scale sweep takes on one
continuously batching server under three schedulers.

    python bench/gpu_sim.py [--smoke] [--questions 2000]

The bench starts an OpenAI-compatible server on 127.0.0.1 that speaks vLLM's dialect (token-id
prompts, `token_ids` back) but computes nothing: it models a GPU's continuous batching on a
simulated clock. Up to `max_batch` sequences decode together and every decode step takes the
same `step_ms` whatever the batch (a GPU's step time is roughly flat up to its batch limit);
requests beyond `max_batch` wait. A question's thinking length is drawn once (long-tailed, as in
the paper: most end by 1-4K tokens, some run to the budget) and its answer length likewise, so
every scheduler sees the same model. The clock moves only when the client has been quiet for a
moment, straight to the next completion, so simulated hours take real minutes.

  (a) chunked    m1's controller before pipelines: 8 questions at a time, 8 requests in flight
  (b) pipelines  m1 today (the `openai` engine, vLLM's default capacity), the real client code
  (c) official   the m1 paper's code: one full run per budget, prompts sent in batches of 1,024,
                 the forced answers in a second batch

Printed: simulated wall time, server utilisation (mean decoding sequences / max_batch) and the
ratios. Targets: (b) >= 90% utilisation, >= 10x less time than (a), >= 3x less than (c).
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

    def __init__(self, max_batch: int, step_ms: float, quiet_ms: float, lengths: dict):
        self.max_batch, self.step, self.quiet = max_batch, step_ms / 1000, quiet_ms / 1000
        self.lengths = lengths
        self.cv = threading.Condition()
        self.reset()
        threading.Thread(target=self._run, daemon=True).start()

    def reset(self):
        with self.cv:
            self.now, self.busy, self.waiting, self.running = 0.0, 0.0, [], []
            self.last_event = time.perf_counter()
            self.marked: tuple[float, float] | None = None

    def mark(self):
        """The client starts its last question: utilisation while questions remain ends here."""
        with self.cv:
            self.marked = (self.now, self.busy)

    def submit(self, prompts: list[list[int]], max_tokens: int, stop_ids: list[int]) -> list[dict]:
        """Blocks until every prompt of the request has finished on the simulated clock."""
        jobs: list[dict[str, Any]] = []
        group: dict = {"left": len(prompts)}
        for p in prompts:
            if THINK_END in stop_ids:  # a thinking request: the question's thinking length
                key = hashlib.sha256(bytes(json.dumps(_question(p)), "utf8")).digest()
                natural = draw(key, "think", **self.lengths["think"])
                thought = len(p) - _question_len(p)
                n = min(max(natural - thought, 1), max_tokens)
                stop = natural - thought <= max_tokens
            else:  # an answer: the question's answer length
                key = hashlib.sha256(bytes(json.dumps(_question(p)), "utf8")).digest()
                n = min(draw(key, "answer", **self.lengths["answer"]), max_tokens)
                stop = n < max_tokens
            jobs.append({"left": n, "n": n, "stop": stop, "done": False, "group": group})
        with self.cv:
            self.waiting += jobs
            self.last_event = time.perf_counter()
            self.cv.notify_all()
            while not all(j["done"] for j in jobs):
                self.cv.wait()
        return [{"token_ids": [FILLER] * (j["n"] - 1) + [THINK_END if j["stop"] and THINK_END in stop_ids else 2]
                 if j["stop"] else [FILLER] * j["n"], "finish_reason": "stop" if j["stop"] else "length",
                 "stop_reason": (THINK_END if THINK_END in stop_ids else 2) if j["stop"] else None} for j in jobs]

    def _run(self):
        while True:
            with self.cv:
                # Move the clock only once the client has had a moment to react to the last event.
                while not (self.waiting or self.running) or time.perf_counter() - self.last_event < self.quiet:
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
                answered = False
                for j in finished:
                    j["done"] = True
                    j["group"]["left"] -= 1
                    answered |= j["group"]["left"] == 0
                if answered:  # a whole HTTP request is done: its client may react
                    self.last_event = time.perf_counter()
                    self.cv.notify_all()


QUESTION_END: list[int] = []  # the chat template's assistant header: where the question prompt ends (set in main)


def _question_len(p: list[int]) -> int:
    for i in range(len(p) - len(QUESTION_END), -1, -1):
        if p[i:i + len(QUESTION_END)] == QUESTION_END:
            return i + len(QUESTION_END)
    return len(p)


def _question(p: list[int]) -> list[int]:
    return p[:_question_len(p)]


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
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if body["prompt"] and isinstance(body["prompt"][0], list) else [body["prompt"]]
            outs = sim.submit(prompts, body["max_tokens"], body.get("stop_token_ids") or [])
            self._send({"choices": [{"index": i, **o} for i, o in enumerate(outs)]})

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not the figures")
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--budgets", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--step-ms", type=float, default=30.0)
    ap.add_argument("--quiet-ms", type=float, default=20.0, help="real time the clock waits for the client")
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
    for name in ("chunked", "pipelines", "official"):
        concurrency = 8 if name == "chunked" else None  # the old default; None: vLLM's capacity
        engine = OpenAIEngine(base_url=url, tokenizer=tokenizer, concurrency=concurrency)
        params = ThinkingParams(budget=max(budgets), answer_max_tokens=answer_max)
        ctl = BudgetController(engine, get_format("m1"), params)
        prompts = questions(engine, a.questions)
        sim.reset()
        t = time.perf_counter()
        keys = [str(i) for i in range(len(prompts))]
        if name == "chunked":
            chunked(ctl, prompts, keys, budgets, sim.mark)
        elif name == "pipelines":
            pipelines(ctl, prompts, keys, budgets, engine.capacity, sim.mark)
        else:
            run_official(url, ctl, prompts, budgets, answer_max, sim.mark)
        m_now, m_busy = sim.marked or (sim.now, sim.busy)
        rows.append((name, engine.capacity, sim.now, sim.busy / (a.max_batch * max(sim.now, 1e-9)),
                     m_busy / (a.max_batch * max(m_now, 1e-9)), time.perf_counter() - t))
        engine.close()
    httpd.shutdown()
    ours = next(r for r in rows if r[0] == "pipelines")[2]
    print("| scheduler | requests in flight | simulated hours | server utilisation "
          "| utilisation while questions remain | time vs pipelines | real s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cap, now, util, util_remain, real in rows:
        print(f"| {name} | {cap if name != 'official' else 'batches of 1024'} | {now / 3600:.2f} | {util:.0%} "
              f"| {util_remain:.0%} | {now / max(ours, 1e-9):.1f}x | {real:.0f} |")


if __name__ == "__main__":
    main()
