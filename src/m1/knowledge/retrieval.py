"""Pick a retriever by name over a corpus (the shipped one by default), and build its queries.

Queries follow MedRAG: the question and its options' texts, so a passage about the right
option ranks even when the stem never names it. Inside the thinking, the query is the
question plus the latest stretch of thinking, which carries what the model is weighing now.
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.knowledge.corpus import FORMAT_HINT, open_corpus
from m1.knowledge.passages import Retriever

KINDS = ("bm25", "dense", "hybrid")
SHIPPED_NAME = "m1-knowledge"  # the Passage.source of the shipped corpus's passages
SHIPPED = Path(str(files("m1.knowledge") / "data" / "m1_knowledge.jsonl.gz"))


def shipped_corpus() -> Path:
    if not SHIPPED.exists():
        raise M1Error(f"the shipped knowledge corpus {SHIPPED} is not built yet; give --corpus FILE ({FORMAT_HINT})")
    return SHIPPED


def make_retriever(kind: str = "bm25", corpus: str | Path | None = None, cache_dir: str | Path | None = None,
                   show_progress: bool = False) -> Retriever:
    """A retriever over `corpus` (None: the shipped corpus), its index built on first use and cached
    under `cache_dir` (default: see m1.knowledge.corpus.cache_root)."""
    if kind not in KINDS:
        raise M1Error(f"unknown retriever {kind!r}; use one of {', '.join(KINDS)}")
    cf = open_corpus(shipped_corpus(), name=SHIPPED_NAME) if corpus is None else open_corpus(corpus)
    if kind == "bm25":
        from m1.knowledge.bm25 import BM25Retriever

        return BM25Retriever(cf, cache_dir, show_progress=show_progress)
    from m1.knowledge.dense import DenseRetriever, HybridRetriever

    cls = DenseRetriever if kind == "dense" else HybridRetriever
    return cls(cf, cache_dir, show_progress=show_progress)


def query_for(item: Item) -> str:
    """The question, then every option's text (MedRAG's retrieval query)."""
    return " ".join([item.question, *item.options.values()])


def query_in_thinking(item: Item, thinking: str, last_chars: int = 800) -> str:
    """The question, then the last `last_chars` characters of the thinking so far (from a word start)."""
    if last_chars < 0:
        raise M1Error(f"last_chars is {last_chars}; use 0 (the question alone) or more")
    tail = thinking[-last_chars:] if last_chars else ""
    if last_chars < len(thinking) and not thinking[-last_chars - 1].isspace():
        tail = re.sub(r"^\S*", "", tail)  # the cut fell inside a word: drop its end
    return f"{item.question}\n{tail.strip()}".strip()
