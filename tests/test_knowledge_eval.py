"""`m1 eval --knowledge`: each condition puts what it should in front of the model and nothing of
the answer where it must not; budgets stay exact and a cut sweep equals independent runs with
passages in the thinking. The real embedded model, a real bm25s index over a small corpus."""
import json
from pathlib import Path
from typing import Any

import pytest

from m1.benchmarks import load_file
from m1.cli import main
from m1.config import EvalConfig
from m1.errors import M1Error
from m1.evaluate import evaluate
from m1.knowledge.conditions import answer_leaks

DATA = Path(__file__).parent / "data"
ITEMS, CORPUS = DATA / "knowledge_items.jsonl", DATA / "knowledge_corpus.jsonl"
BASE: dict[str, Any] = dict(data=str(ITEMS), limit=None, budgets=(0, 8, 24), answer_max_tokens=12, format="m1",
                            min_thinking=24)


def run(tmp_path, engine, name, **kw):
    cfg = EvalConfig(**{**BASE, **kw})
    return evaluate(cfg, out=tmp_path / name, engine=engine)


def by_id(result, budget):
    return {t.id: t for t in result.traces if t.budget == budget}


@pytest.fixture(scope="module")
def items():
    return {it.id: it for it in load_file(ITEMS)}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("M1_CACHE_DIR", str(tmp_path / "cache"))


def test_gold_puts_the_items_own_explanation_before_the_question(tmp_path, engine, items):
    result = run(tmp_path, engine, "gold", knowledge="gold")
    traces = by_id(result, 24)
    assert set(traces) == {"k1", "k2", "k3", "k4", "k5"}  # k6 has no explanation: not evaluated
    env = json.loads((tmp_path / "gold" / "config.json").read_text())["environment"]
    assert env["knowledge"]["skipped"] == ["k6"]
    for t in traces.values():
        expl = items[t.id].metadata["explanation"]
        (ins,) = t.insertions
        assert ins["where"] == "prompt" and expl in ins["text"] and expl in t.prompt
        assert t.prompt.index(expl) < t.prompt.index(items[t.id].question)  # before the question
        assert t.knowledge == "gold" and t.knowledge_tokens == ins["tokens"] > 20
        assert t.thinking_tokens <= 24


def test_gold_background_and_placebo_carry_no_answer(tmp_path, engine, items):
    for cond in ("gold-background", "placebo"):
        result = run(tmp_path, engine, cond, knowledge=cond)
        for t in by_id(result, 24).values():
            (ins,) = t.insertions
            assert ins["text"].strip() and not answer_leaks(items[t.id], ins["text"]), (cond, t.id)
            if cond == "placebo":
                donor = ins["passages"][0]["id"]
                assert donor != t.id and items[donor].metadata["explanation"] in ins["text"]


def test_counterfactual_argues_for_a_wrong_option(tmp_path, engine, items):
    result = run(tmp_path, engine, "cf", knowledge="counterfactual")
    for t in by_id(result, 24).values():
        (ins,) = t.insertions
        supports = ins["passages"][0]["supports"]
        it = items[t.id]
        right, wrong = it.options[it.answer].lower(), it.options[supports].lower()
        gold, cf = it.metadata["explanation"].lower(), ins["text"].lower()
        assert supports != it.answer and wrong in cf
        # the two options' texts trade places: the right one's stands only where gold named the wrong one
        assert cf.count(wrong) >= gold.count(right) and cf.count(right) == gold.count(wrong)


def test_retrieval_brings_k_passages_and_never_the_test_question(tmp_path, engine, items):
    result = run(tmp_path, engine, "ret", knowledge="retrieve", knowledge_corpus=str(CORPUS), knowledge_k=2)
    traces = by_id(result, 24)
    assert set(traces) == set(items)  # retrieval serves every question
    for t in traces.values():
        (ins,) = t.insertions
        # at most k, each sharing a word with the query (BM25's zero scores are not knowledge)
        assert 1 <= len(ins["passages"]) <= 2 and all(p["source"] and p["score"] > 0 for p in ins["passages"])
        assert "leak-k2" not in [p["id"] for p in ins["passages"]]
        assert items[t.id].question not in ins["text"]
    assert "leak-k2" in [s["id"] for s in traces["k2"].screened]  # removed, and the trace says so
    assert traces["k2"].insertions[0]["passages"][0]["id"] == "c2"  # the right passage ranks first
    env = json.loads((tmp_path / "ret" / "config.json").read_text())["environment"]
    assert env["knowledge"]["retriever"]["corpus_hash"]


@pytest.mark.parametrize("counted", [False, True])
def test_passages_in_the_thinking_keep_budgets_exact_and_cut_equal_to_independent(tmp_path, engine, counted):
    kw = dict(knowledge="retrieve", knowledge_corpus=str(CORPUS), knowledge_k=1, knowledge_where="thinking",
              knowledge_at="8,16", knowledge_counted=counted, budgets=(0, 8, 12, 24), min_thinking=24)
    cut = run(tmp_path, engine, f"cut{counted}", **kw)
    ind = run(tmp_path, engine, f"ind{counted}", method="independent", **kw)
    seen_inside = 0
    for b in (0, 8, 12, 24):
        c, i = by_id(cut, b), by_id(ind, b)
        assert set(c) == set(i)
        for qid in c:
            tc, ti = c[qid], i[qid]
            assert (tc.thinking, tc.answer, tc.insertions) == (ti.thinking, ti.answer, ti.insertions), (qid, b)
            spent = tc.thinking_tokens + (tc.knowledge_tokens if counted else 0)
            assert spent <= b and (not tc.hit_budget or spent == b)
            assert all(x["where"] == "thinking" and x["at"] < b for x in tc.insertions)
            for x in tc.insertions:
                assert 0 <= x["char_at"] <= len(tc.thinking)
                assert x["query"].startswith(" ".join(tc.question.split()[:3]))
            seen_inside += len(tc.insertions)
    assert seen_inside, "min_thinking 24 > the points: passages must have gone in"


def test_model_written_queries_through_m1_eval(tmp_path, engine):
    """`--knowledge-at search`: retrieval wherever the model closes a query. Tags SmolLM2 writes
    (" the" ... "."; in the plain format it writes prose): each closing tag gets passages right
    after it, the trace records the query and the place, and a cut sweep equals independent runs.
    (What a query is, tags off, is tested on the fake engine, whose script writes real ones.)"""
    kw = dict(knowledge="retrieve", knowledge_corpus=str(CORPUS), knowledge_k=1, knowledge_where="thinking",
              knowledge_at="search", knowledge_search_tags=(" the", "."), budgets=(0, 8, 16, 32), format="plain",
              min_thinking=0)
    cut = run(tmp_path, engine, "search-cut", **kw)
    ind = run(tmp_path, engine, "search-ind", method="independent", **kw)
    queries = 0
    for b in (0, 8, 16, 32):
        c, i = by_id(cut, b), by_id(ind, b)
        assert set(c) == set(i) and c
        for qid in c:
            tc = c[qid]
            assert (tc.thinking, tc.answer, tc.insertions) == (i[qid].thinking, i[qid].answer, i[qid].insertions)
            assert tc.thinking_tokens <= b
            for x in tc.insertions:
                assert tc.thinking[:x["char_at"]].endswith(".") and x["at"] < b and x["query"]
            queries += len(tc.insertions)
    assert queries, "SmolLM2 writes full stops: some queries must have been answered"
    other = EvalConfig(**{**BASE, **kw, "knowledge_search_tags": ("<search>", "</search>")})
    assert other.fingerprint() != EvalConfig(**{**BASE, **kw}).fingerprint()
    with pytest.raises(M1Error, match="--knowledge-at search"):
        EvalConfig(**{**BASE, "knowledge": "gold", "knowledge_where": "thinking", "knowledge_at": "search"})


def test_written_query_is_the_text_between_the_tags():
    from m1.knowledge.supply import written_query

    tags = ("<|begin_search_query|>", "<|end_search_query|>")
    text = "I need facts. <|begin_search_query|>old query<|end_search_query|> [passages] Hmm. " \
           "<|begin_search_query|> verapamil AV node <|end_search_query|>"
    assert written_query(text, *tags) == "verapamil AV node"
    assert written_query("no opening tag<|end_search_query|>", *tags) == ""


def test_knowledge_is_part_of_the_runs_identity(tmp_path, engine):
    a = EvalConfig(**{**BASE, "knowledge": "gold"})
    b = EvalConfig(**{**BASE, "knowledge": "placebo"})
    none = EvalConfig(**BASE)
    assert len({a.fingerprint(), b.fingerprint(), none.fingerprint()}) == 3
    # runs without knowledge hash as before the knowledge fields existed
    assert "knowledge" not in EvalConfig.identity(none.to_dict())


@pytest.mark.parametrize("args,needle", [
    (["--knowledge", "gold", "--benchmark", "medqa"], "explanation"),
    (["--knowledge", "retrieve", "--corpus", "/nonexistent/corpus.jsonl"], "does not exist"),
    (["--knowledge", "retrieve", "--knowledge-k", "0"], "knowledge-k"),
    (["--knowledge", "oracle"], "--knowledge must be one of"),
    (["--knowledge", "retrieve", "--knowledge-where", "thinking", "--knowledge-at", "2/1"], "--knowledge-at"),
])
def test_bad_knowledge_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code = main(["eval", "--limit", "2", "--budgets", "8", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written


def test_a_malformed_corpus_line_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "t", "content": "ok"}\n{"id": "b", "title": "t"}\n')
    code = main(["eval", "--limit", "2", "--budgets", "8", "--out", str(tmp_path / "run"), "--quiet",
                 "--knowledge", "retrieve", "--corpus", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "line 2" in err and "content" in err and len(err.splitlines()) == 1, err


def test_gold_without_explanations_names_where_to_find_them():
    with pytest.raises(M1Error, match="MedBullets"):
        evaluate(EvalConfig(benchmark="medqa", limit=2, budgets=(8,), knowledge="gold"))
