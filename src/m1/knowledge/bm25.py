"""BM25 over a corpus with bm25s, its index built once per corpus and memory-mapped after.

The index lives in <cache root>/bm25/<corpus hash>/<stemmer>/ (see corpus.cache_root): bm25s's own
saved arrays (BM25.save), loaded with BM25.load(mmap=True), plus the passages themselves
(corpus.PassageStore). A corpus is read once, when its index is first built; every later
construction only hashes the file and maps the arrays, so a 1M-passage corpus opens in
seconds and costs little memory until queried. Tokenization is bm25s's (English stopwords;
Snowball stemming when PyStemmer is installed); the cache folder is per stemmer, since an
index built with one cannot answer queries tokenized the other way.

Ranking is deterministic: bm25s's scores, then the k best with equal scores in corpus order
(bm25s's own top-k uses argpartition, whose order among ties is arbitrary).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from m1.errors import M1Error
from m1.knowledge.corpus import (
    Chunk,
    CorpusFile,
    PassageStore,
    StoreRetriever,
    build_once,
    cache_root,
    open_corpus,
    write_store,
)

FORMAT = 1  # of the cache folder; a change rebuilds every cached index once
STOPWORDS = "en"


def load_stemmer() -> tuple[Any, str]:
    """(PyStemmer's English Snowball stemmer, "snowball-english"), or (None, "none") without PyStemmer."""
    try:
        import Stemmer
    except ImportError:
        return None, "none"
    return Stemmer.Stemmer("english"), "snowball-english"


def check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise M1Error(f"k is {k!r}; ask for 1 or more passages")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, best first, equal scores in corpus order. Without sorting all
    rows: everything above the k-th best score, sorted, then the first rows that tie with it."""
    n = len(scores)
    k = min(k, n)
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    above = above[np.lexsort((above, -scores[above]))]
    tied = np.flatnonzero(scores == kth)[: k - len(above)]  # flatnonzero: ascending rows, i.e. corpus order
    return np.concatenate([above, tied])


class BM25Retriever(StoreRetriever):
    """`search(query, k)` over one corpus. `built` says whether this construction built the index
    (False: loaded from the cache); `seconds` is how long building or loading took."""

    kind = "bm25"

    def __init__(self, corpus: str | Path | CorpusFile, cache_dir: str | Path | None = None,
                 show_progress: bool = False):
        import bm25s

        self.corpus = corpus if isinstance(corpus, CorpusFile) else open_corpus(corpus)
        self._stemmer, self.stemmer = load_stemmer()
        self.index_dir = cache_root(cache_dir) / "bm25" / self.corpus.hash / self.stemmer
        self._show_progress = show_progress
        start = time.perf_counter()
        self.built = build_once(self.index_dir, FORMAT, self._build)
        self._model = bm25s.BM25.load(str(self.index_dir), mmap=True, load_corpus=False, show_progress=False)
        self._store = PassageStore(self.index_dir)
        self.seconds = time.perf_counter() - start
        self._extra: dict[str, dict[str, Any]] = {}  # extra fields of passages handed out, for extra()

    def __len__(self) -> int:
        return len(self._store)

    def _build(self, folder: Path) -> dict[str, Any]:
        """Tokenize while streaming the corpus (texts are never all in memory), then let bm25s score and save."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        tokenizer = Tokenizer(stopwords=STOPWORDS, stemmer=self._stemmer)
        chunks: Iterator[Chunk] = write_store(self.corpus.chunks(), folder)
        if self._show_progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="read + tokenize", unit=" passages")
        ids = list(tokenizer.streaming_tokenize(c.text() for c in chunks))
        model = bm25s.BM25()
        model.index(tokenizer.to_tokenized_tuple(ids), show_progress=self._show_progress)
        del ids
        model.save(str(folder), show_progress=False)
        return {"corpus": self.corpus.name, "corpus_hash": self.corpus.hash, "stemmer": self.stemmer,
                "bm25s": bm25s.__version__, "passages": int(model.scores["num_docs"])}

    def rank_many(self, queries: list[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, scores) of the k best passages per query, best first."""
        import bm25s

        check_k(k)
        tokens = bm25s.tokenize(list(queries), stopwords=STOPWORDS, stemmer=self._stemmer, return_ids=False,
                                show_progress=False)
        out = []
        for toks in tokens:
            scores = self._model.get_scores_from_ids(self._model.get_tokens_ids(toks))  # unknown words drop out
            rows = top_k(scores, k)
            out.append((rows, scores[rows]))
        return out

    def describe(self) -> dict[str, Any]:
        return {"retriever": self.kind, "corpus": self.corpus.name, "corpus_hash": self.corpus.hash,
                "passages": len(self), "stemmer": self.stemmer}
