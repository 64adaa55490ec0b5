"""`m1 serve` against `m1 eval` on the same work, on the embedded engine, side by side in one run.

    python bench/serve.py [--smoke] [--repeats 3] [--clients 16]

The work: the README main job's questions (50 MedQA, seed 0, the plain format, m1's instruction)
at its largest budget (256 thinking tokens, answers capped at 64), greedy. Two ways, alternating
`--repeats` times so that both see the same machine:

  eval    `m1.evaluate` in this process: every question its own pipeline, 8 slots
  serve   `m1 serve` started here on 127.0.0.1 (8 slots), `--clients` openai clients each sending
          one question at a time until all are answered

Printed per run: wall seconds, the engine's generated tokens per second (its own count in both:
metrics.json for eval, /metrics for serve), engine occupancy while work waited (eval: while
questions remained to start; serve: while requests queued, from the server's cumulative busy
counter), and how many of the server's replies equal what eval recorded (thinking and answer,
token for token). Then the median ratio serve / eval. Target: serve's tokens/s >= 90% of eval's,
occupancy >= 90% while requests wait.

Then time to the first streamed thinking token, one request at a time: the client's median time
from sending to the first `reasoning_content` delta, against the engine's own time to evaluate
that prompt and sample one token (a LlamaCppEngine in this process, one slot, the same prompts in
the same order, so both reuse the chat template's prefix alike). Target: within 1.2x.

Exits 1 when a reply differs from eval's or spends more than its budget. Not here yet: the
overhead against bench/gpu_sim.py's simulated server at 512 clients.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

from m1.benchmarks import load_benchmark
from m1.config import EvalConfig
from m1.engines.base import GenRequest, run_sync
from m1.engines.llamacpp import LlamaCppEngine
from m1.evaluate import evaluate

MODEL = "smollm2-135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "m1.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.log.seek(0)
                    sys.exit("m1 serve did not start:\n" + self.log.read().decode(errors="replace")[-2000:])
                time.sleep(0.3)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def user_text(item, cfg: EvalConfig) -> str:
    return f"{item.prompt_text()}\n{cfg.instruction}"


def run_eval(cfg: EvalConfig, out: Path) -> dict:
    t = time.perf_counter()
    run = evaluate(cfg, out=out)
    wall = time.perf_counter() - t
    load = json.loads((out / "metrics.json").read_text()).get("engine_load") or run.engine_load or {}
    return {"wall": wall, "tokens_per_s": load.get("generated_tokens", 0) / max(load.get("seconds", wall), 1e-9),
            "occupancy_waiting": (load.get("while_questions_remain") or {}).get("occupancy", float("nan")),
            "traces": {t.id: t for t in run.traces}}


async def _clients(url: str, jobs: list[tuple[str, str]], clients: int, budget: int, answer_max: int):
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    todo = list(jobs)
    replies = {}

    async def worker():
        while todo:
            qid, text = todo.pop(0)
            replies[qid] = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": text}],
                extra_body={"thinking_token_budget": budget, "m1": {"answer_max_tokens": answer_max}})
    await asyncio.gather(*(worker() for _ in range(clients)))
    await client.close()
    return replies


def run_serve(server: Server, cfg: EvalConfig, items, clients: int) -> dict:
    jobs = [(it.id, user_text(it, cfg)) for it in items]
    samples: list[tuple[float, float, float]] = []  # (t, busy request-seconds, queue depth)
    stop = False

    def poll():
        while not stop:
            m = server.metrics()
            samples.append((time.perf_counter(), m["m1_engine_busy_request_seconds"], m["m1_queue_depth"]))
            time.sleep(0.2)
    import threading

    before = server.metrics()
    poller = threading.Thread(target=poll, daemon=True)
    t = time.perf_counter()
    poller.start()
    replies = asyncio.run(_clients(server.url, jobs, clients, cfg.budgets[0], cfg.answer_max_tokens))
    wall = time.perf_counter() - t
    stop = True
    poller.join()
    after = server.metrics()
    generated = after["m1_engine_generated_tokens"] - before["m1_engine_generated_tokens"]
    waiting = [s for s in samples if s[2] > 0]
    capacity = after["m1_engine_capacity"]
    occ = ((waiting[-1][1] - waiting[0][1]) / (capacity * (waiting[-1][0] - waiting[0][0]))
           if len(waiting) > 1 and waiting[-1][0] > waiting[0][0] else float("nan"))
    return {"wall": wall, "tokens_per_s": generated / wall, "occupancy_waiting": occ, "replies": replies}


def agree(replies: dict, traces: dict, budget: int) -> tuple[int, int]:
    """(replies equal to eval's trace, replies over their budget)."""
    same = over = 0
    for qid, r in replies.items():
        t, m = traces[qid], r.model_extra["m1"]
        msg = r.choices[0].message
        content = t.answer if t.answer_tokens or t.thinking_ended == "budget" else t.thinking
        same += msg.model_extra["reasoning_content"] == t.thinking and msg.content == content and \
            m["thinking_tokens"] == t.thinking_tokens
        over += m["thinking_tokens"] > budget
    return same, over


async def _first_token(url: str, text: str) -> float:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    t = time.perf_counter()
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                                  extra_body={"thinking_token_budget": 8}, stream=True)
    first = float("nan")
    async for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") and first != first:
            first = time.perf_counter() - t
    await client.close()
    return first


def ttft(server: Server, texts: list[str]) -> tuple[list[float], list[float]]:
    served = [asyncio.run(_first_token(server.url, text)) for text in texts]
    engine = LlamaCppEngine(n_slots=1)
    own = []
    try:
        for text in texts:
            ids = engine.encode_prompt(engine.render_chat([{"role": "user", "content": text}]))
            t = time.perf_counter()
            run_sync(engine.submit(GenRequest(prompt_ids=tuple(ids), max_new_tokens=1)))
            own.append(time.perf_counter() - t)
    finally:
        engine.close()
    return served, own


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not the figures")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    a = ap.parse_args()
    n, budget, answer_max, repeats, n_ttft = (6, 16, 8, 1, 3) if a.smoke else (50, 256, 64, a.repeats, 10)
    cfg = EvalConfig(limit=n, budgets=(budget,), answer_max_tokens=answer_max).resolved()
    items = load_benchmark(cfg.benchmark, limit=n, seed=cfg.seed)
    # time to the first token on questions the server has not seen (no prompt in its cache)
    fresh = [it for it in load_benchmark(cfg.benchmark, limit=n + 4 * n_ttft, seed=cfg.seed + 1)
             if it.id not in {i.id for i in items}][:n_ttft]
    print(f"{n} MedQA questions (the README main job's), budget {budget}, answers <= {answer_max}, greedy, "
          f"embedded SmolLM2-135M, 8 slots; serve: {a.clients} clients; {repeats} alternating repeat(s); "
          f"{os.cpu_count()} CPU cores")
    server = Server(["--budget", str(budget), "--answer-max-tokens", str(answer_max), "--max-queue", "1024"])
    rows, bad = [], 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(repeats):
                ev = run_eval(cfg, Path(tmp) / f"eval{rep}")
                sv = run_serve(server, cfg, items, a.clients)
                same, over = agree(sv["replies"], ev["traces"], budget)
                bad += (same != len(items)) + over
                equal = f"{same}/{len(items)}" + (f", {over} over" if over else "")
                rows += [("eval", rep, ev, ""), ("serve", rep, sv, equal)]
        print("\n| way | repeat | wall s | tokens/s | occupancy while work waits | replies equal to eval |")
        print("|---|---|---|---|---|---|")
        for way, rep, r, eq in rows:
            print(f"| {way} | {rep + 1} | {r['wall']:.1f} | {r['tokens_per_s']:.1f} | {r['occupancy_waiting']:.1%} "
                  f"| {eq} |")
        ratio = [s[2]["tokens_per_s"] / e[2]["tokens_per_s"] for e, s in zip(rows[::2], rows[1::2])]
        print(f"\nserve / eval tokens/s: median {statistics.median(ratio):.1%} (each repeat: "
              f"{', '.join(f'{x:.1%}' for x in ratio)}); target >= 90%")
        texts = [user_text(it, cfg) for it in fresh]
        served, own = ttft(server, texts)
    finally:
        server.stop()
    print("\n| prompt | prompt chars | first thinking token via m1 serve s | engine prompt eval + 1 token s | ratio |")
    print("|---|---|---|---|---|")
    for i, (s, o) in enumerate(zip(served, own)):
        print(f"| {i + 1} | {len(texts[i])} | {s:.3f} | {o:.3f} | {s / o:.2f} |")
    s, o = statistics.median(served), statistics.median(own)
    print(f"\nmedian time to the first thinking token: {s:.3f} s against {o:.3f} s of the engine's own "
          f"(ratio {s / o:.2f}; target <= 1.2)")
    if bad:
        print(f"FAIL: {bad} run(s) where a reply differed from eval's or spent more than its budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
