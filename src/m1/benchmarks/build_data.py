"""Rebuild the shipped benchmark files from their upstream copies (see data/PROVENANCE.md).

    python -m m1.benchmarks.build_data /path/to/shared/data

Writes one normalized JSON Lines file per benchmark, gzip level 9 with mtime 0 and no
file name, so the same input gives the same bytes. A row is
{"id", "question", "options": {letter: text}, "answer": letter, <metadata fields>}.
Ids are local to the file; the registry adds the "<name>-" prefix.
Only maintainers run this; m1 itself never needs the upstream files.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import string
import sys
from pathlib import Path

OUT = Path(__file__).parent / "data"
PUBMEDQA_BRIDGE = ("\n\nUsing the above document as a reference, please review the following question and choose the "
                   "option you find most appropriate.\n")
MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                 "professional_medicine")


def row(id: str, question: str, options: dict[str, str], answer: str, **metadata) -> dict:
    assert answer in options, (id, answer, list(options))
    return {"id": id, "question": question, "options": options, "answer": answer, **metadata}


def medmcqa(src: Path) -> list[dict]:
    items = json.loads((src / "huatuo_o1_eval/MedMCQA_validation.json").read_text())
    rows = [row(f"{i:04d}", it["question"], it["options"], it["answer_idx"]) for i, it in enumerate(items)]
    # The hpc_evaluation copy carries D for item 1; the official MedMCQA key (and the
    # HuatuoGPT-o1 original, Apollo, MedTrace-R1) is A.
    fixed = rows[1]
    assert fixed["question"].startswith("Which of the following is not true about glomerular capillaries")
    assert fixed["answer"] == "D" and fixed["options"]["A"].startswith("The oncotic pressure")
    fixed["answer"] = "A"
    fixed["erratum"] = "answer restored to the official key A (the hpc_evaluation copy has D)"
    return rows


def medqa_5opt(src: Path) -> list[dict]:
    lines = (src / "medreason_eval/medqa_test.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    return [row(f"{i:04d}", it["question"], it["options"], it["answer_idx"], meta_info=it["meta_info"])
            for i, it in enumerate(items)]


def pubmedqa(src: Path) -> list[dict]:
    """pqa-l in file order; the question keeps its abstract, as HuatuoGPT-o1 shows it."""
    labelled = json.loads((src / "pubmedqa/ori_pqal.json").read_text())
    test = json.loads((src / "pubmedqa/test_ground_truth.json").read_text())
    letter = {"yes": "A", "no": "B", "maybe": "C"}
    rows = []
    for pmid, it in labelled.items():
        question = " ".join(it["CONTEXTS"]) + PUBMEDQA_BRIDGE + it["QUESTION"]
        rows.append(row(pmid, question, {"A": "yes", "B": "no", "C": "maybe"}, letter[it["final_decision"]],
                        pmid=pmid, official_test=pmid in test))
    assert sum(r["official_test"] for r in rows) == len(test) == 500
    return rows


def mmlu_pro(src: Path) -> list[dict]:
    """HuatuoGPT-o1's copy (its answers include two later MMLU-Pro fixes); question_id,
    category and src come from the official result files, which hold the same items
    in question_id order."""
    items = json.loads((src / "huatuo_o1_eval/MMLU-Pro_Medical_test.json").read_text())
    official = [t for c in ("biology", "health")
                for t in json.loads((src / f"mmlu_pro/gpt4o_2024-05/{c}_result.json").read_text())]
    official.sort(key=lambda t: t["question_id"])
    rows = []
    for it, t in zip(items, official, strict=True):
        assert it["question"] == t["question"] and list(it["options"].values()) == t["options"]
        rows.append(row(str(t["question_id"]), it["question"], it["options"], it["answer_idx"],
                        category=t["category"], src=t["src"]))
    return rows


def mmlu_medical(src: Path) -> list[dict]:
    rows = []
    for subject in MMLU_SUBJECTS:
        path = src / f"mmlu_medical/final_via_MLILAB-FedLLM/test/{subject}_test.csv"
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            assert next(reader) == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
            for i, (question, *choices, answer) in enumerate(reader):
                options = dict(zip("ABCD", choices, strict=True))
                rows.append(row(f"{subject}-{i:03d}", question, options, "ABCD"[int(answer)], subject=subject))
    return rows


def headqa(src: Path) -> list[dict]:
    """Options lettered A.. in the file's answer order; `image` only where the question has one."""
    doc = json.loads((src / "headqa/test_HEAD_EN.json").read_text())
    rows = []
    for exam, e in doc["exams"].items():
        for q in e["data"]:
            options = {string.ascii_uppercase[i]: a["atext"] for i, a in enumerate(q["answers"])}
            right = [string.ascii_uppercase[i] for i, a in enumerate(q["answers"]) if str(a["aid"]) == str(q["ra"])]
            assert len(right) == 1, (exam, q["qid"])
            extra = {"image": q["image"]} if q.get("image") else {}
            rows.append(row(f"{exam}-{q['qid']}", q["qtext"], options, right[0], category=e["category"],
                            year=e["year"], exam=exam, **extra))
    return rows


BUILDS = {  # output file -> (builder, official size)
    "medmcqa_validation.jsonl.gz": (medmcqa, 4183),
    "medqa_usmle_5opt_test.jsonl.gz": (medqa_5opt, 1273),
    "pubmedqa_pqal.jsonl.gz": (pubmedqa, 1000),
    "mmlu_pro_medical_test.jsonl.gz": (mmlu_pro, 1535),
    "mmlu_medical_test.jsonl.gz": (mmlu_medical, 1089),
    "headqa_en_test.jsonl.gz": (headqa, 2742),
}


def main(src: Path) -> None:
    for name, (build, size) in BUILDS.items():
        rows = build(src)
        assert len(rows) == size and len({r["id"] for r in rows}) == size, name
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        (OUT / name).write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
        print(f"{name:34s} {len(rows):5d} rows  {len(text):9,d} B -> {(OUT / name).stat().st_size:8,d} B  "
              f"sha256 {hashlib.sha256(text).hexdigest()}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data"))
