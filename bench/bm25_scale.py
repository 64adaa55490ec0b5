"""BM25 retrieval at corpus scale: index build, query rate, and the cache that makes rebuilding unnecessary.

    python bench/bm25_scale.py [--passages 1000000] [--queries 500] [--cache DIR]
    python bench/bm25_scale.py --smoke      # 2,000 passages, 20 queries: does it run? (CI)

Writes a synthetic MedRAG-layout corpus (deterministic: ~60 words a passage drawn from a
Zipf-like distribution over 50,000 made-up words), builds m1's BM25 index over it (bm25s),
then times queries of 6 words sampled from a random passage: as one search_many batch and
one search at a time, with hit@10 (the passage the words came from is in the top 10).
Then it constructs the retriever a second time and checks that nothing was rebuilt: the
cache says "loaded", the index files keep their modification times, and the same queries
rank the same passages. Exits 1 if any of that fails. Peak RSS is this process's maximum.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from m1.knowledge.bm25 import BM25Retriever
from m1.knowledge.corpus import open_corpus

SMOKE = {"passages": 2000, "queries": 20}
VOCAB = 50_000
WORDS_PER_PASSAGE = 60
QUERY_WORDS = 6
SEED = 0


def vocabulary(n: int) -> list[str]:
    """n distinct made-up words (consonant-vowel syllables), none an English stopword."""
    from bm25s.stopwords import STOPWORDS_EN

    cons, vows = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in cons for v in vows]
    stop = set(STOPWORDS_EN)
    words: list[str] = []
    i = 0
    while len(words) < n:
        j, w = i, ""
        while True:  # i written in base len(syllables), at least two syllables
            w += syllables[j % len(syllables)]
            j //= len(syllables)
            if j == 0 and len(w) >= 4:
                break
        if w not in stop:
            words.append(w)
        i += 1
    return words


def write_corpus(path: Path, n: int) -> float:
    start = time.perf_counter()
    words = vocabulary(VOCAB)
    ranks = np.arange(1, VOCAB + 1)
    p = 1.0 / (ranks + 2.7) ** 1.07  # Zipf-Mandelbrot, roughly English word frequencies
    p /= p.sum()
    rng = np.random.default_rng(SEED)
    with open(path, "w", encoding="utf-8") as f:
        for block in range(0, n, 20_000):
            m = min(20_000, n - block)
            draws = rng.choice(VOCAB, size=(m, WORDS_PER_PASSAGE), p=p)
            titles = rng.choice(VOCAB, size=(m, 2), p=p)
            for i, (t, d) in enumerate(zip(titles.tolist(), draws.tolist())):
                f.write(json.dumps({"id": f"syn-{block + i}", "title": " ".join(words[w] for w in t),
                                    "content": " ".join(words[w] for w in d)}) + "\n")
    return time.perf_counter() - start


def make_queries(path: Path, n_passages: int, n: int) -> tuple[list[str], list[str]]:
    """(queries, id of the passage each came from): QUERY_WORDS words sampled from a random passage."""
    rng = np.random.default_rng(SEED + 1)
    targets = set(rng.choice(n_passages, size=min(n, n_passages), replace=False).tolist())
    picked: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f):
            if row in targets:
                picked[row] = json.loads(line)
    queries, ids = [], []
    for row in sorted(picked):
        words = picked[row]["content"].split()
        queries.append(" ".join(rng.choice(words, size=QUERY_WORDS, replace=False)))
        ids.append(picked[row]["id"])
    order = rng.permutation(len(queries))
    return [queries[i] for i in order], [ids[i] for i in order]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--cache", help="folder for the corpus and index (default: a temporary one, removed after)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (2,000 passages, 20 queries), for CI")
    a = ap.parse_args()
    if a.smoke:
        a.passages, a.queries = min(a.passages, SMOKE["passages"]), min(a.queries, SMOKE["queries"])
    own = a.cache is None
    root = Path(tempfile.mkdtemp(prefix="m1-bm25-bench-")) if own else Path(a.cache)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return run(a, root)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def run(a: argparse.Namespace, root: Path) -> int:
    corpus = root / f"synthetic-{a.passages}.jsonl"
    write_s = write_corpus(corpus, a.passages)
    queries, truth = make_queries(corpus, a.passages, a.queries)
    cf = open_corpus(corpus)
    shutil.rmtree(root / "bm25" / cf.hash, ignore_errors=True)  # time a real build, even in a reused --cache

    t = time.perf_counter()
    first = BM25Retriever(corpus, cache_dir=root)  # as a user constructs it: hash the file, then build
    build_s, rss_build = time.perf_counter() - t, peak_rss_gb()
    files = mtimes(first.index_dir)
    t = time.perf_counter()
    batch = first.search_many(queries, 10)
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    single = [first.search(q, 10) for q in queries]
    single_s = time.perf_counter() - t
    hits = sum(tid in [p.id for p in got] for tid, got in zip(truth, batch))

    t = time.perf_counter()
    second = BM25Retriever(corpus, cache_dir=root)  # hash the file, find the index, map it
    load_s = time.perf_counter() - t
    again = second.search_many(queries, 10)
    changed = sum(files.get(name) != m for name, m in mtimes(second.index_dir).items()) + len(
        set(files) - set(mtimes(second.index_dir)))
    same = [[p.id for p in r] for r in again] == [[p.id for p in r] for r in batch] == [
        [p.id for p in r] for r in single]

    print(f"BM25 over {a.passages:,} synthetic passages ({WORDS_PER_PASSAGE} words each), {len(queries)} queries of "
          f"{QUERY_WORDS} words; stemmer: {first.stemmer}; index: {first.index_dir}\n")
    print("| step | passages | queries | seconds | rate | hit@10 | peak RSS GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| write corpus | {a.passages} | | {write_s:.1f} | {a.passages / write_s:,.0f} passages/s | | |")
    print(f"| build index (first construction) | {len(first)} | | {build_s:.1f} | "
          f"{len(first) / build_s:,.0f} passages/s | | {rss_build:.2f} |")
    print(f"| search_many, one batch, k=10 | {len(first)} | {len(batch)} | {batch_s:.2f} | "
          f"{len(batch) / batch_s:,.1f} q/s | {hits / max(1, len(batch)):.3f} | |")
    print(f"| search, one at a time, k=10 | {len(first)} | {len(single)} | {single_s:.2f} | "
          f"{len(single) / single_s:,.1f} q/s | | |")
    print(f"| second construction (hash + load from cache) | {len(second)} | | {load_s:.2f} | | | "
          f"{peak_rss_gb():.2f} |")
    print()
    print("| construction | built | seconds | index files changed | same rankings |")
    print("|---|---|---:|---:|---|")
    print(f"| first | {'yes' if first.built else 'no'} | {build_s:.2f} | | |")
    print(f"| second | {'yes' if second.built else 'no'} | {load_s:.2f} | {changed} | "
          f"{'yes' if same else 'no'} |")
    problems = [msg for bad, msg in [
        (not first.built, "the first construction did not build"),
        (second.built, "the second construction rebuilt the index"),
        (changed != 0, f"{changed} index files changed on the second construction"),
        (not same, "rankings differ between batch, single and cached searches"),
        (len(batch) != len(queries), f"{len(batch)} results for {len(queries)} queries"),
    ] if bad]
    for msg in problems:
        print(f"FAILED: {msg}", file=sys.stderr)
    if not problems:
        print("\nsecond construction rebuilt nothing: loaded from the cache, index files untouched, same rankings")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
