"""`m1 knowledge index` and `m1 knowledge search`: build a corpus's retrieval index ahead of
`m1 eval --knowledge retrieve`, and look at what a query retrieves."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from m1.knowledge.retrieval import KINDS

SNIPPET = 100  # characters of each passage that `search` prints


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("knowledge", help="build or search the retrieval index of a knowledge corpus",
                              description="A corpus is MedRAG's chunk JSONL (.jsonl or .jsonl.gz, one "
                              "{id, title, content} a line); the default is the corpus m1 ships. Indexes are "
                              "cached by the corpus's content hash under $M1_CACHE_DIR (default ~/.cache/m1).")
    sub = p.add_subparsers(dest="knowledge_command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--corpus", help="a .jsonl(.gz) of {id, title, content} lines (default: the shipped corpus)")
        s.add_argument("--retriever", default="bm25", choices=KINDS, help="default bm25")
        s.add_argument("--cache-dir", help="cache root (default $M1_CACHE_DIR, else ~/.cache/m1)")

    ix = sub.add_parser("index", help="build the index once (later uses load it from the cache)")
    common(ix)
    ix.set_defaults(func=cmd_index)
    s = sub.add_parser("search", help="print the passages a query retrieves, best first")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=5, help="passages to print (default 5)")
    common(s)
    s.set_defaults(func=cmd_search)
    return p


def _open(a: argparse.Namespace) -> Any:  # one of the retrievers of m1.knowledge.bm25 / .dense
    from m1.knowledge.retrieval import make_retriever

    return make_retriever(a.retriever, a.corpus, a.cache_dir, show_progress=True)


def cmd_index(a: argparse.Namespace) -> int:
    start = time.perf_counter()
    r = _open(a)
    d = r.describe()
    how = "built" if getattr(r, "built", False) else "loaded from the cache (nothing rebuilt)"
    print(f"corpus    {d['corpus']} ({r.corpus.path})")
    print(f"passages  {d['passages']}")
    print(f"hash      {d['corpus_hash']}")
    print(f"index     {d['retriever']}, {how} in {time.perf_counter() - start:.1f} s")
    for folder in _folders(r):
        print(f"cache     {folder}")
    return 0


def _folders(r: Any) -> list[Path]:
    parts = [getattr(r, "bm25", None), getattr(r, "dense", None)]
    return [x.index_dir for x in parts if x is not None] or [r.index_dir]


def cmd_search(a: argparse.Namespace) -> int:
    r = _open(a)
    for rank, p in enumerate(r.search(a.query, a.k), 1):
        text = " ".join(p.text.split())
        print(f"{rank:>3}  {p.score:8.3f}  {p.id}  {p.title}".rstrip())
        print(f"     {text[:SNIPPET]}{'...' if len(text) > SNIPPET else ''}")
    return 0
