"""Curation throughput on this machine.

    python bench/distill_throughput.py                       # both parts, defaults below
    python bench/distill_throughput.py --base-url URL/v1     # distill against a server you started
    python bench/distill_throughput.py --skip-dedup --n 32   # distill only

1. distill: N questions through m1's distill stage (bounded concurrency, rate limits,
   retries, SQLite cache) against a local llama-cpp-python server on the embedded model,
   next to the same N requests sent directly with the same concurrency (AsyncOpenAI and
   a semaphore, nothing else). Reports both wall times and pipeline/direct throughput
   (the target is >= 90%), then reruns distill: every answer must come from the cache
   with 0 requests.
2. dedup: a synthetic pool of --pool questions (default 200,000) against --eval eval
   stems (every shipped benchmark, topped up with synthetic stems to 15,000), timed, with
   planted copies and near-copies that must all be found.
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

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "data" / "curation"


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


async def direct(url: str, model: str, messages: list[list[dict]], params: dict, concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(m):
        async with gate:
            await client.chat.completions.create(model=model, messages=m, extra_body=params)

    t = time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    await client.close()
    return time.perf_counter() - t


def bench_distill(a) -> None:
    from m1.curation.config import TeacherConfig
    from m1.curation.distill import distill
    from m1.curation.records import prompt_for, row_to_item
    from m1.curation.teacher import ResponseCache, Teacher

    proc, url = (None, a.base_url) if a.base_url else start_server()
    try:
        rows = questions(a.n)
        params = {"temperature": 0.0, "max_tokens": a.max_tokens}
        cfg = TeacherConfig(base_url=url, params=params, concurrency=a.concurrency, timeout_s=600)
        with tempfile.TemporaryDirectory() as tmp:
            teacher = Teacher(cfg, ResponseCache(Path(tmp) / "probe.sqlite"))
            model = teacher.resolve_model()
            messages = [teacher.messages(prompt_for(row_to_item(r), cfg.prompt)) for r in rows]
            # Warm-up, then alternate so neither side gets a quieter machine.
            asyncio.run(direct(url, model, messages[:2], params, a.concurrency))
            d1 = asyncio.run(direct(url, model, messages, params, a.concurrency))
            cache = Path(tmp) / "teacher.sqlite"
            t = time.perf_counter()
            out, failures, stats = distill(rows, cfg, cache, progress=False)
            p1 = time.perf_counter() - t
            d2 = asyncio.run(direct(url, model, messages, params, a.concurrency))
            cache.unlink()
            t = time.perf_counter()
            distill(rows, cfg, cache, progress=False)
            p2 = time.perf_counter() - t
            t = time.perf_counter()
            _, _, again = distill(rows, cfg, cache, progress=False)
            rerun = time.perf_counter() - t
        d, p = (d1 + d2) / 2, (p1 + p2) / 2
        print(f"distill: {len(rows)} questions, max_tokens {a.max_tokens}, concurrency {a.concurrency}, "
              f"llama-cpp-python server on the embedded SmolLM2")
        print(f"  direct requests   {d1:6.1f} s, {d2:6.1f} s  -> {len(rows) / d:5.2f} q/s")
        print(f"  m1 distill stage  {p1:6.1f} s, {p2:6.1f} s  -> {len(rows) / p:5.2f} q/s "
              f"({100 * d / p:.0f}% of direct; target >= 90%)")
        print(f"  answered {stats['answered']}, failed {len(failures)}, completion tokens {stats['completion_tokens']}")
        print(f"  rerun with the cache: {again['requests']} requests, {again['cache_hits']} cache hits, {rerun:.2f} s")
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


def bench_dedup(a) -> None:
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
    pool = []
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
    print(f"dedup: pool {len(pool)} vs {len(evals)} eval stems ({shipped} shipped) from {len(sentences)} sentences: "
          f"{secs:.1f} s "
          f"({secs / 60:.1f} min, {1e3 * secs / len(pool):.2f} ms/question); removed {by_rule}; "
          f"planted copies found {found}/{n_planted}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", help="an OpenAI-compatible server to use instead of starting one")
    p.add_argument("--n", type=int, default=24, help="questions through distill")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--pool", type=int, default=200_000)
    p.add_argument("--eval", type=int, default=15_000)
    p.add_argument("--skip-distill", action="store_true")
    p.add_argument("--skip-dedup", action="store_true")
    a = p.parse_args()
    if not a.skip_distill:
        bench_distill(a)
    if not a.skip_dedup:
        bench_dedup(a)


if __name__ == "__main__":
    main()
