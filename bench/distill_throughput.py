"""Curation throughput on this machine.

    python bench/distill_throughput.py                       # both parts, defaults below
    python bench/distill_throughput.py --base-url URL/v1     # distill against a server you started
    python bench/distill_throughput.py --skip-dedup --n 32   # distill only
    python bench/distill_throughput.py --smoke               # tiny sizes: does it still run? (CI)

1. distill: N questions through m1's distill stage (bounded concurrency, rate limits,
   retries, SQLite cache) against a local llama-cpp-python server on the embedded model,
   next to the same N requests sent directly with the same concurrency (AsyncOpenAI and
   a semaphore, nothing else). Reports both wall times and pipeline/direct throughput
   (the target is >= 90%), then reruns distill: every answer must come from the cache
   with 0 requests.
2. dedup: a synthetic pool of --pool questions (default 200,000) against --eval eval
   stems (every shipped benchmark, topped up with synthetic stems to 15,000), timed, with
   planted copies and near-copies that must all be found.
Each part prints one markdown table. Exits 1 when a must above fails (a request on the
cached rerun, a planted copy not found).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "data" / "curation"
# --smoke: the same code paths at tiny sizes (a few teacher calls, a small pool), for CI.
SMOKE = {"n": 3, "concurrency": 2, "max_tokens": 8, "pool": 1000, "eval": 0}


def start_server() -> tuple[subprocess.Popen, str]:
    from m1.engines.llamacpp import embedded_model_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the llama-cpp-python server did not start")


def questions(n: int) -> list[dict]:
    from m1.curation.collect import collect
    from m1.curation.config import CollectConfig, SourceConfig
    from m1.curation.records import item_to_row

    sources = (SourceConfig("medmcqa", "selfbiorag", str(FIX / "medmc_qa_train.jsonl")),
               SourceConfig("headqa", "headqa", str(FIX / "train_HEAD_EN.json")),
               SourceConfig("medqa", "selfbiorag", str(FIX / "med_qa_train.jsonl")))
    items, _ = collect(CollectConfig(sources), seed=0)
    return [item_to_row(i) for i in items[:n]]


def served_model(url: str, api_key: str) -> str:
    """The first model the server lists: the one the teacher picks when the config names none."""
    from openai import OpenAI

    with OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=60) as client:
        ids = [m.id for m in client.models.list().data]
    if not ids:
        raise SystemExit(f"{url}/models lists no model")
    return ids[0]


async def direct(url: str, api_key: str, model: str, messages: list[list[dict]], params: dict,
                 concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(m: Any) -> None:
        async with gate:
            await client.chat.completions.create(model=model, messages=m, extra_body=params)

    t = time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    await client.close()
    return time.perf_counter() - t


def bench_distill(a: argparse.Namespace) -> bool:
    """True when the cached rerun made no request."""
    import os

    from m1.curation.config import TeacherConfig
    from m1.curation.distill import distill
    from m1.curation.records import prompt_for, row_to_item
    from m1.curation.teacher import ResponseCache, Teacher

    proc: subprocess.Popen | None
    proc, url = (None, a.base_url) if a.base_url else start_server()
    try:
        rows = questions(a.n)
        params = {"temperature": 0.0, "max_tokens": a.max_tokens}
        cfg = TeacherConfig(base_url=url, params=params, concurrency=a.concurrency, timeout_s=600)
        api_key = os.environ.get(cfg.api_key_env) or "none"  # as the teacher reads it
        model = served_model(url, api_key)
        with tempfile.TemporaryDirectory() as tmp:
            teacher = Teacher(cfg, ResponseCache(Path(tmp) / "probe.sqlite"))
            messages = [teacher.messages(prompt_for(row_to_item(r), cfg.prompt)) for r in rows]
            teacher.cache.close()
            # Warm-up, then alternate so neither side gets a quieter machine.
            asyncio.run(direct(url, api_key, model, messages[:2], params, a.concurrency))
            d1 = asyncio.run(direct(url, api_key, model, messages, params, a.concurrency))
            cache = Path(tmp) / "teacher.sqlite"
            t = time.perf_counter()
            out, failures, stats = distill(rows, cfg, cache, progress=False)
            p1 = time.perf_counter() - t
            d2 = asyncio.run(direct(url, api_key, model, messages, params, a.concurrency))
            cache.unlink()
            t = time.perf_counter()
            distill(rows, cfg, cache, progress=False)
            p2 = time.perf_counter() - t
            t = time.perf_counter()
            _, _, again = distill(rows, cfg, cache, progress=False)
            rerun = time.perf_counter() - t
        d, p = (d1 + d2) / 2, (p1 + p2) / 2
        server = a.base_url or "llama-cpp-python server on the embedded SmolLM2"
        print(f"distill: {len(rows)} questions, max_tokens {a.max_tokens}, concurrency {a.concurrency}, {server}; "
              f"{stats['answered']} answered, {len(failures)} failed, {stats['completion_tokens']} completion tokens "
              f"per pass; target: the stage at >= 90% of direct throughput, no request on the rerun\n")
        print("| method | run 1 s | run 2 s | q/s | % of direct | requests | cache hits |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(f"| direct requests | {d1:.2f} | {d2:.2f} | {len(rows) / d:.2f} | 100% | {len(rows)} | |")
        print(f"| m1 distill stage | {p1:.2f} | {p2:.2f} | {len(rows) / p:.2f} | {100 * d / p:.0f}% "
              f"| {stats['requests']} | {stats['cache_hits']} |")
        print(f"| m1 distill, rerun on its cache | {rerun:.2f} | | {len(rows) / rerun:.2f} | | "
              f"{again['requests']} | {again['cache_hits']} |")
        print()
        ok = again["requests"] == 0 and again["cache_hits"] == len(rows)
        if not ok:
            print(f"FAIL: the cached rerun made {again['requests']} requests ({again['cache_hits']} cache hits "
                  f"for {len(rows)} questions); it must make none", file=sys.stderr)
        return ok
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)


def synthetic_stem(rng: random.Random, words: list[str], sentences: list[str]) -> str:
    """Real exam sentences recombined, a few words swapped: realistic shared phrasing
    ("Which of the following ...", vital signs) without being copies."""
    toks = " ".join(rng.sample(sentences, rng.randint(1, 4))).split()
    for j in rng.sample(range(len(toks)), min(len(toks), 3)):
        toks[j] = rng.choice(words)
    return " ".join(toks)


def bench_dedup(a: argparse.Namespace) -> bool:
    """True when every planted copy was found."""
    from m1.benchmarks.items import Item
    from m1.curation.config import DedupConfig
    from m1.curation.dedup import dedup, load_eval_items

    rng = random.Random(0)
    cfg = DedupConfig()
    evals, _ = load_eval_items(cfg)
    words = sorted({w for e in evals for w in e.question.split() if w.isalpha()})
    sentences = sorted({s.strip() + "." for q in questions(10 ** 6) for s in q["question"].split(". ") if s.strip()})
    shipped = len(evals)
    evals += [Item(f"syn-eval-{i}", synthetic_stem(rng, words, sentences), {"A": "x", "B": "y"}, "A", "syn")
              for i in range(max(0, a.eval - shipped))]
    planted = rng.sample(range(len(evals)), 200)
    pool: list[Item] = []
    for i in range(a.pool):
        if i % (a.pool // 200) == 0 and planted:
            e = evals[planted.pop()]
            toks = e.question.split()
            if len(planted) % 2 and len(toks) > 30:  # a near-copy: two words changed
                for j in rng.sample(range(len(toks)), 2):
                    toks[j] = rng.choice(words)
            options = list(e.options.values())
            rng.shuffle(options)  # a copy with its options in another order
            pool.append(Item(f"p{i}", " ".join(toks), dict(zip("ABCDEFGHIJ", options)), "A", "planted"))
        else:
            pool.append(Item(f"p{i}", synthetic_stem(rng, words, sentences), {"A": "1", "B": "2"}, "A", "pool"))
    t = time.perf_counter()
    kept, removed, by_rule = dedup(pool, evals, cfg)
    secs = time.perf_counter() - t
    found = sum(r["source"] == "planted" for r in removed)
    n_planted = sum(p.source == "planted" for p in pool)
    print(f"dedup: synthetic pool from {len(sentences)} exam sentences; removed by rule {by_rule}\n")
    print("| pool | eval stems | shipped eval stems | wall s | ms/question | removed | planted copies found |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(pool)} | {len(evals)} | {shipped} | {secs:.1f} | {1e3 * secs / len(pool):.2f} | {len(removed)} "
          f"| {found}/{n_planted} |")
    print()
    if found != n_planted:
        print(f"FAIL: dedup found {found} of {n_planted} planted copies; it must find all", file=sys.stderr)
    return found == n_planted


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--base-url", help="an OpenAI-compatible server to use instead of starting one")
    p.add_argument("--n", type=int, default=24, help="questions through distill")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--pool", type=int, default=200_000)
    p.add_argument("--eval", type=int, default=15_000)
    p.add_argument("--skip-distill", action="store_true")
    p.add_argument("--skip-dedup", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (" + ", ".join(f"{k} {v}" for k, v in SMOKE.items())
                   + "): checks that the bench runs, measures nothing")
    a = p.parse_args()
    if a.smoke:  # flags given explicitly still win
        p.set_defaults(**SMOKE)
        a = p.parse_args()
    ok = True
    if not a.skip_distill:
        ok = bench_distill(a) and ok
    if not a.skip_dedup:
        ok = bench_dedup(a) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
