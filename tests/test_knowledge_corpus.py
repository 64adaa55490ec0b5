"""The knowledge corpus m1 ships: MedRAG chunks, free of the shipped benchmarks' test questions,
every removal listed, and a build that gives the same bytes twice."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from m1.benchmarks import BENCHMARKS, load_benchmark
from m1.benchmarks.items import Item
from m1.curation.config import DedupConfig
from m1.curation.dedup import EvalIndex
from m1.errors import M1Error
from m1.knowledge import build_corpus
from m1.knowledge.build_corpus import CORPUS, REMOVED, build, distinct_stems

DATA = Path(build_corpus.__file__).parent / "data"
SCREENED = ("medqa", "medmcqa", "mmlu_medical", "mmlu_pro", "headqa", "medqa_5opt")
RULES = {"exact", "ngram", "fuzzy", "duplicate", "near_duplicate"}


def read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return read_gz(DATA / CORPUS)


# ---- the shipped files ----

def test_shipped_corpus_is_medrag_jsonl_with_unique_ids(corpus):
    assert len(corpus) > 5000
    for p in corpus:
        assert all(isinstance(p[k], str) and p[k] for k in ("id", "title", "content", "source")), p["id"]
        assert p["id"].startswith(p["source"] + "-")
        if p["source"] == "pubmedqa":
            assert p["id"] == f"pubmedqa-{p['pmid']}"
    ids = [p["id"] for p in corpus]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert {p["source"] for p in corpus} >= {"pubmedqa", "mesh", "medqa_5opt_train", "medmcqa_train", "headqa_train"}
    assert (DATA / CORPUS).stat().st_size < 4_000_000  # shipped in the wheel: keep it small


def test_provenance_names_the_shipped_bytes(corpus):
    """PROVENANCE.md is written by hand from the build's output; it must describe these very bytes."""
    raw = gzip.decompress((DATA / CORPUS).read_bytes())
    provenance = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    assert hashlib.sha256(raw).hexdigest() in provenance
    assert f"{len(corpus)} passages" in provenance


def as_screened(p: dict) -> Item:
    """The passage as the build's decontamination saw it: a question's stem and options, else its text."""
    m = re.fullmatch(r"(?s)(.*?)\n((?:[A-J]\. [^\n]*\n)+)Answer: [^\n]*", p["content"])
    if m is None:
        return Item(p["id"], p["content"], {}, "", p["source"])
    options = dict(re.findall(r"([A-J])\. ([^\n]*)", m[2]))
    return Item(p["id"], m[1], options, "", p["source"])


def test_no_shipped_passage_carries_a_shipped_benchmark_question(corpus):
    """The curation check, re-run over what ships. PubMedQA passages are screened too: these
    benchmarks are not theirs (the PubMedQA benchmark's own PMID is excluded at retrieval)."""
    items = [as_screened(p) for p in corpus]
    assert sum(bool(it.options) for it in items) > 4000  # the layout parses back: questions are screened as such
    cfg = DedupConfig()
    hits = []
    for name in SCREENED:
        index = EvalIndex.build(distinct_stems(load_benchmark(name), cfg), cfg.ngram)
        hits += [(it.id, name, m.rule, index.items[m.other].id) for it in items if (m := index.match(it, cfg))]
    assert hits == []


def test_every_removal_names_its_match(corpus):
    removed = read_gz(DATA / REMOVED)
    kept = {p["id"] for p in corpus}
    assert removed
    for r in removed:
        assert r["rule"] in RULES and r["id"] not in kept and r["matched_id"] and r["matched_question"], r["id"]
        if r["rule"] in ("exact", "ngram", "fuzzy"):
            assert r["matched_source"] in BENCHMARKS
            assert not (r["source"] == "pubmedqa" and r["matched_source"].startswith("pubmedqa"))
    assert {"exact", "ngram", "fuzzy"} <= {r["rule"] for r in removed}


# ---- the build, on a small folder laid out as the shared data ----

def selfbiorag_line(question: str, options: dict[str, str], output: str) -> str:
    text = "QUESTION: " + question + "".join(f"\nOption {k}: {v}" for k, v in options.items())
    return json.dumps({"id": "seed_task_0", "name": "med_qa", "instances": {"input": text, "output": output}})


def headqa_doc(questions: list[dict]) -> dict:
    return {"version": "1.0", "language": "en",
            "exams": {"Cuaderno_2013_1_B": {"name": "Cuaderno_2013_1_B", "category": "biology", "year": "2013",
                                            "data": questions}}}


def headqa_q(qid: str, text: str, answers: list[str], right: int, image: str = "") -> dict:
    return {"qid": qid, "qtext": text, "ra": str(right), "image": image,
            "answers": [{"aid": i + 1, "atext": a} for i, a in enumerate(answers)]}


def make_folder(root: Path, planted: Item) -> Path:
    for sub in ("pubmedqa", "m1_mesh", "selfbiorag", "headqa", "mmlu_medical/final_via_MLILAB-FedLLM/dev"):
        (root / sub).mkdir(parents=True)
    (root / "pubmedqa/ori_pqal.json").write_text(json.dumps({
        "101": {"QUESTION": "Does aspirin lower fever in adults?", "CONTEXTS": ["Fever is common.", "We gave aspirin."],
                "LONG_ANSWER": "Aspirin lowered fever.", "MESHES": ["Aspirin", "Fever"], "final_decision": "yes"},
        "102": {"QUESTION": "Is sleep needed?", "CONTEXTS": ["Sleep was studied in mice."],
                "LONG_ANSWER": "Sleep is needed.", "MESHES": [], "final_decision": "yes"}}))
    (root / "m1_mesh/qualifier_scope_note.tsv").write_text(
        "Name\tAbbreviation\tShort Form\tScope Notes\n"
        "Abnormalities\tAB\tABNORM\tUsed with organs for congenital defects.\n"
        "Adverse Effects\tAE\tADV EFF\tUsed with drugs in accepted dosage for unwanted effects.\n")
    vignette = ("A 30-year-old man comes to the physician because of a three day history of a painful red rash on "
                "both of his forearms after a long hike. Which of the following is the most likely cause?")
    options5 = {"A": "Poison ivy", "B": "Sunburn", "C": "Scabies", "D": "Psoriasis", "E": "Lupus"}
    (root / "selfbiorag/med_qa_5options_train.json").write_text("\n".join([
        selfbiorag_line(vignette, options5, "Poison ivy"),
        selfbiorag_line(planted.question, planted.options, planted.options[planted.answer])]) + "\n")
    (root / "selfbiorag/med_qa_train.json").write_text("\n".join([  # the vignette again, one option fewer
        selfbiorag_line(vignette, {k: v for k, v in options5.items() if k != "E"}, "Poison ivy"),
        selfbiorag_line("Which vitamin deficiency causes scurvy in sailors on long voyages without fresh fruit "
                        "and vegetables?", {"A": "Vitamin C", "B": "Vitamin D", "C": "Vitamin A", "D": "Niacin"},
                        "Vitamin C")]) + "\n")
    (root / "selfbiorag/medmc_qa_train.json").write_text(selfbiorag_line(
        "Drug of choice for absence seizures in a young child is:", {"A": "Ethosuximide", "B": "Phenytoin",
                                                                    "C": "Carbamazepine", "D": "Phenobarbital"},
        "Answer: (A)") + "\n")
    (root / "headqa/train_HEAD_EN.json").write_text(json.dumps(headqa_doc([
        headqa_q("1", "The excitatory postsynaptic potentials:", ["Are all or nothing.", "Can be added."], 2),
        headqa_q("2", "The structure shown in image 3 is:", ["Liver.", "Spleen."], 1, image="images/3.png")])))
    (root / "headqa/dev_HEAD_EN.json").write_text(json.dumps(headqa_doc([
        headqa_q("7", "The equilibrium potential of a permeant ion is given by:", ["Ohm's law.", "Nernst."], 2)])))
    for subject in build_corpus.MMLU_SUBJECTS:
        with open(root / f"mmlu_medical/final_via_MLILAB-FedLLM/dev/{subject}_dev.csv", "w", newline="") as f:
            csv.writer(f).writerows([["question", "choice0", "choice1", "choice2", "choice3", "answer"],
                                     [f"A {subject} question about the kidney?", "One", "Two", "Three", "Four", 1]])
    return root


def test_build_is_reproducible_and_lists_a_planted_test_question(tmp_path):
    planted = load_benchmark("medqa_5opt")[0]
    src = make_folder(tmp_path / "shared", planted)
    cfg = DedupConfig(benchmarks=("medqa", "medqa_5opt", "gpqa"))  # two are enough here, and fast
    with pytest.raises(M1Error, match='"gpqa" is not shipped'):  # named on purpose, so it must be there
        build(src, tmp_path / "one", cfg)
    cfg = DedupConfig(benchmarks=("medqa", "medqa_5opt"))
    summary = build(src, tmp_path / "one", cfg)
    build(src, tmp_path / "two", cfg)
    for name in (CORPUS, REMOVED):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    passages = read_gz(tmp_path / "one" / CORPUS)
    assert [p["id"] for p in passages] == [
        "headqa_dev-Cuaderno_2013_1_B-7", "headqa_train-Cuaderno_2013_1_B-1", "medmcqa_train-00000",
        "medqa_5opt_train-00000", "medqa_train-00001", "mesh-AB", "mesh-AE",
        *(f"mmlu_dev-{s}-0000" for s in build_corpus.MMLU_SUBJECTS), "pubmedqa-101", "pubmedqa-102"]
    by_id = {p["id"]: p for p in passages}
    assert by_id["medmcqa_train-00000"]["content"].endswith("\nA. Ethosuximide\nB. Phenytoin\nC. Carbamazepine\n"
                                                            "D. Phenobarbital\nAnswer: Ethosuximide")
    assert by_id["pubmedqa-101"] == {"id": "pubmedqa-101", "title": "PubMed abstract; MeSH: Aspirin; Fever",
                                     "content": "Fever is common. We gave aspirin.\nAspirin lowered fever.",
                                     "source": "pubmedqa", "pmid": "101"}
    assert "Does aspirin" not in json.dumps(passages)  # the PubMedQA question never ships as a title

    removed = {r["id"]: r for r in read_gz(tmp_path / "one" / REMOVED)}
    assert removed["medqa_5opt_train-00001"]["rule"] == "exact"  # the planted test question ...
    assert removed["medqa_5opt_train-00001"]["matched_id"] == "medqa-0000"  # ... named with its match
    assert removed["medqa_train-00000"]["matched_id"] == "medqa_5opt_train-00000"  # the 4-option twin
    assert set(removed) == {"medqa_5opt_train-00001", "medqa_train-00000"}
    assert summary["sources"]["headqa_train"]["skipped"] == {"needs an image": 1}
    assert summary["benchmarks"] == {"medqa": (1273, "shipped"), "medqa_5opt": (1273, "shipped")}


def test_a_missing_source_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "pubmedqa").mkdir()
    with pytest.raises(M1Error, match=r"med_qa_5options_train\.json is missing"):
        build(tmp_path, tmp_path / "out")
    assert build_corpus.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_user_supplied_benchmarks_are_found_in_sub_folders(tmp_path):
    """The shared data folder keeps MedBullets in medbullets/; the build must still screen against it."""
    (tmp_path / "medbullets").mkdir()
    with open(tmp_path / "medbullets/medbullets_op4.csv", "w", newline="") as f:
        csv.writer(f).writerows([["question", "opa", "opb", "opc", "opd", "answer_idx"],
                                 ["A 20-year-old woman has a rash. What is the diagnosis?", "a", "b", "c", "d", "A"]])
    items, where = build_corpus.eval_benchmarks(tmp_path, DedupConfig(benchmarks=("medbullets4",)))
    assert where == {"medbullets_op4": "medbullets/"} and [it.id for it in items["medbullets_op4"]] == [
        "medbullets_op4-0000"]
