"""Build the knowledge corpus m1 ships (data/m1_knowledge.jsonl.gz) from public upstream copies.

    python -m m1.knowledge.build_corpus /path/to/shared/data [--out src/m1/knowledge/data]

The input folder is laid out as the project's shared data folder (see data/PROVENANCE.md for
every file's origin and licence). Only maintainers run this; m1 itself needs only the output.

Output, in MedRAG's chunk format: one JSON object a line, {"id", "title", "content", "source"}
(+ "pmid" for PubMedQA), sorted by id, UTF-8, gzip level 9 with mtime 0 and no file name, so the
same input gives the same bytes. Passage ids are "<source>-<local id>".

Sources (only ones whose licences allow redistribution):
  pubmedqa          PubMedQA pqa-l abstracts: contexts, then the long answer (MIT)
  mesh              MeSH qualifier scope notes (NLM; copied through UCSC-VLAA/m1, Apache-2.0)
  medqa_5opt_train  MedQA-USMLE train questions with their answer (MIT), self-biorag's 5-option sample
  medqa_train       the same, 4-option sample; repeats of the 5-option file are dropped
  medmcqa_train     MedMCQA train sample with its answer (MIT), no explanations
  headqa_train/dev  HEAD-QA English train and dev (MIT + Spanish Ministry of Health reuse terms)
  mmlu_dev          MMLU's few-shot dev split, six medical subjects (MIT)
Every question is laid out as its stem, the lettered options and "Answer: <text>", so a passage
reads whole, and a test can re-derive the stem and options the decontamination saw.

Decontamination: the curation stage's own dedup (m1.curation.dedup), against every benchmark m1
knows that is shipped or present in the input folder (or one of its sub-folders). It runs once per
benchmark: the dedup treats an n-gram found in two eval stems as boilerplate, and benchmarks that
share stems (medqa and medqa_5opt, pubmedqa and pubmedqa_test, medbullets op4 and op5) would
otherwise switch the n-gram rule off for each other (so would a benchmark's own repeated stems:
`distinct_stems`). PubMedQA abstracts are not screened against the PubMedQA benchmark, whose
questions are these very abstracts: the evaluation excludes a test item's own PMID at retrieval
time instead. Every removal goes to data/m1_knowledge_removed.jsonl.gz.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from m1.benchmarks import BENCHMARKS, load_file
from m1.benchmarks.items import Item
from m1.benchmarks.loaders import read_file
from m1.benchmarks.registry import canonical_name, is_present
from m1.curation.collect import load_source
from m1.curation.config import DedupConfig, SourceConfig
from m1.curation.dedup import dedup, load_eval_items, normalize
from m1.errors import M1Error

OUT = Path(__file__).parent / "data"
CORPUS = "m1_knowledge.jsonl.gz"
REMOVED = "m1_knowledge_removed.jsonl.gz"
PUBMEDQA_BENCHMARKS = ("pubmedqa", "pubmedqa_test")  # the abstracts' own questions: excluded at retrieval
MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                 "professional_medicine")


@dataclass
class Source:
    """One corpus source: its passages and, per passage id, the view the dedup screens."""

    name: str
    files: list[str]
    passages: list[dict] = field(default_factory=list)
    screen: list[Item] = field(default_factory=list)  # same ids as passages
    skipped: dict[str, int] = field(default_factory=dict)


# ---- sources ----

def question_passage(item: Item, title: str) -> dict:
    """Stem, lettered options, "Answer: <text>" (newlines inside options folded, so each is one line)."""
    options = "\n".join(f"{k}. {' '.join(v.split())}" for k, v in item.options.items())
    answer = " ".join(item.options[item.answer].split())
    return {"id": item.id, "title": title, "content": f"{item.question.strip()}\n{options}\nAnswer: {answer}",
            "source": item.source}


def from_questions(src: Path, name: str, kind: str, path: str, title: Callable[[Item], str]) -> Source:
    items, skipped = load_source(SourceConfig(name=name, kind=kind, path=str(_need(src, path))))
    return Source(name, [path], [question_passage(it, title(it)) for it in items], items, skipped)


def medqa_5opt_train(src: Path) -> Source:
    return from_questions(src, "medqa_5opt_train", "selfbiorag", "selfbiorag/med_qa_5options_train.json",
                          lambda it: "MedQA-USMLE training question")


def medqa_train(src: Path) -> Source:
    return from_questions(src, "medqa_train", "selfbiorag", "selfbiorag/med_qa_train.json",
                          lambda it: "MedQA-USMLE training question")


def medmcqa_train(src: Path) -> Source:
    return from_questions(src, "medmcqa_train", "selfbiorag", "selfbiorag/medmc_qa_train.json",
                          lambda it: "MedMCQA training question")


def headqa_train(src: Path) -> Source:
    return from_questions(src, "headqa_train", "headqa", "headqa/train_HEAD_EN.json", _headqa_title)


def headqa_dev(src: Path) -> Source:
    return from_questions(src, "headqa_dev", "headqa", "headqa/dev_HEAD_EN.json", _headqa_title)


def _headqa_title(it: Item) -> str:
    return f"HEAD-QA {it.metadata.get('category')} exam question ({it.metadata.get('exam')})"


def mmlu_dev(src: Path) -> Source:
    out = Source("mmlu_dev", [])
    for subject in MMLU_SUBJECTS:
        path = f"mmlu_medical/final_via_MLILAB-FedLLM/dev/{subject}_dev.csv"
        items = read_file(_need(src, path), source="mmlu_dev", id_prefix=f"mmlu_dev-{subject}")
        out.files.append(path)
        out.screen += items
        out.passages += [question_passage(it, f"MMLU {subject.replace('_', ' ')} question") for it in items]
    return out


def mesh(src: Path) -> Source:
    path = "m1_mesh/qualifier_scope_note.tsv"
    out = Source("mesh", [path])
    with open(_need(src, path), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for line, r in enumerate(rows, 2):
        try:
            name, abbr, note = r["Name"].strip(), r["Abbreviation"].strip(), r["Scope Notes"].strip()
        except (KeyError, AttributeError):
            raise M1Error(f"{src / path} line {line}: needs columns Name, Abbreviation and Scope Notes; "
                          "use the m1 qualifier_scope_note.tsv") from None
        pid = f"mesh-{abbr}"
        out.passages.append({"id": pid, "title": f"MeSH qualifier: {name} ({abbr})", "content": note,
                             "source": "mesh"})
        out.screen.append(Item(pid, note, {}, "", "mesh"))
    return out


def pubmedqa(src: Path) -> Source:
    path = "pubmedqa/ori_pqal.json"
    out = Source("pubmedqa", [path])
    try:
        doc = json.loads(_need(src, path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise M1Error(f"{src / path} line {e.lineno}: invalid JSON ({e.msg}); use PubMedQA's ori_pqal.json") from None
    if not isinstance(doc, dict):
        raise M1Error(f"{src / path}: expected PubMedQA's ori_pqal.json, a mapping of PMID -> record")
    for pmid, rec in doc.items():
        try:
            content = " ".join(rec["CONTEXTS"]) + "\n" + rec["LONG_ANSWER"].strip()
            meshes = rec.get("MESHES") or []
        except (KeyError, TypeError, AttributeError):
            raise M1Error(f'{src / path} PMID "{pmid}": needs CONTEXTS and LONG_ANSWER; '
                          "use PubMedQA's ori_pqal.json") from None
        # A neutral title: the record's MeSH headings, never its question.
        title = "PubMed abstract; MeSH: " + "; ".join(meshes) if meshes else f"PubMed abstract PMID {pmid}"
        pid = f"pubmedqa-{pmid}"
        out.passages.append({"id": pid, "title": title, "content": content, "source": "pubmedqa", "pmid": pmid})
        out.screen.append(Item(pid, content, {}, "", "pubmedqa", {"pmid": pmid}))
    return out


# Order matters: within the questions, the first copy of a repeated stem is kept (5-option MedQA
# over its 4-option twin).
QUESTION_SOURCES = (medqa_5opt_train, medqa_train, medmcqa_train, headqa_train, headqa_dev, mmlu_dev, mesh)


def _need(src: Path, path: str) -> Path:
    p = src / path
    if not p.is_file():
        raise M1Error(f"{p} is missing; build_corpus reads the shared data folder laid out as its PROVENANCE.md "
                      "describes (give that folder as the first argument)")
    return p


# ---- decontamination ----

def eval_benchmarks(src: Path, cfg: DedupConfig) -> tuple[dict[str, list[Item]], dict[str, str]]:
    """Per benchmark (cfg.benchmarks, or every one m1 knows), its items: shipped ones, and user-supplied
    ones found in `src` or one of its sub-folders (the first in name order that has the file). Also,
    per benchmark, where it came from or that it is not present (an error for one named on purpose)."""
    every = cfg.benchmarks is None or list(cfg.benchmarks) == ["all"]
    folders = [src, *sorted(p for p in src.iterdir() if p.is_dir())]
    items: dict[str, list[Item]] = {}
    where: dict[str, str] = {}
    for name in list(BENCHMARKS) if every else [canonical_name(n) for n in cfg.benchmarks or ()]:
        folder = next((d for d in folders if is_present(name, d)), None)
        if folder is None and every:
            where[name] = "not present"
            continue
        got, _ = load_eval_items(DedupConfig(benchmarks=(name,), data_dir=str(folder or src)))
        items[name] = got
        where[name] = "shipped" if BENCHMARKS[name].shipped else f"{(folder or src).relative_to(src)}/"
    for path in cfg.eval_files:  # more eval sets, each screened as one more benchmark
        items[str(path)] = load_file(path)
        where[str(path)] = "eval file"
    return items, where


def distinct_stems(items: list[Item], cfg: DedupConfig) -> list[Item]:
    """The items less repeats of a long stem, which would mark each other's n-grams as boilerplate
    (MMLU-Pro repeats 161 long stems with other options). Long stems match whatever their options,
    so the first copy stands for all; short ones need shared options and are all kept."""
    seen: set[str] = set()
    out = []
    for it in items:
        stem = normalize(it.question)
        if len(stem.split()) >= cfg.min_stem_tokens:
            if stem in seen:
                continue
            seen.add(stem)
        out.append(it)
    return out


def decontaminate(pool: list[Item], benchmarks: dict[str, list[Item]], cfg: DedupConfig
                  ) -> tuple[list[Item], list[dict]]:
    """The curation dedup, one benchmark at a time (see the module docstring), then within the pool."""
    removed: list[dict] = []
    each = replace(cfg, within_pool=False)
    for name in sorted(benchmarks):
        pool, rows, _ = dedup(pool, distinct_stems(benchmarks[name], cfg), each)
        removed += rows
    if cfg.within_pool:
        pool, rows, _ = dedup(pool, [], cfg)
        removed += rows
    return pool, removed


# ---- build ----

def build(src: Path, out: Path, cfg: DedupConfig | None = None) -> dict:
    """Write the corpus and the removal list into `out`; returns the build's summary."""
    cfg = cfg or DedupConfig()
    if not src.is_dir():
        raise M1Error(f"{src} is not a folder; give the shared data folder (see PROVENANCE.md)")
    questions = [f(src) for f in QUESTION_SOURCES]  # first, so a missing file fails fast
    abstracts = pubmedqa(src)
    benchmarks, where = eval_benchmarks(src, cfg)
    kept_q, removed_q = decontaminate([it for s in questions for it in s.screen], benchmarks, cfg)
    others = {k: v for k, v in benchmarks.items() if k not in PUBMEDQA_BENCHMARKS}
    kept_a, removed_a = decontaminate(abstracts.screen, others, cfg)

    keep = {it.id for it in kept_q + kept_a}
    sources = [*questions, abstracts]
    passages = sorted((p for s in sources for p in s.passages if p["id"] in keep), key=lambda p: p["id"])
    if len({p["id"] for p in passages}) != len(passages):
        raise M1Error("build_corpus: two passages share an id; give each source its own name")
    removed = sorted(removed_q + removed_a, key=lambda r: r["id"])
    out.mkdir(parents=True, exist_ok=True)
    text = _write(out / CORPUS, passages)
    _write(out / REMOVED, removed)
    return {"passages": len(passages), "sha256": hashlib.sha256(text).hexdigest(), "bytes": len(text),
            "compressed": (out / CORPUS).stat().st_size, "benchmarks": {k: (len(benchmarks.get(k, [])), v)
                                                                       for k, v in sorted(where.items())},
            "sources": _counts(sources, removed, keep)}


def _write(path: Path, rows: list[dict]) -> bytes:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    return text


def _counts(sources: list[Source], removed: list[dict], keep: set[str]) -> dict[str, dict]:
    rules = Counter((r["source"], r["rule"]) for r in removed)
    matched = Counter((r["source"], r["matched_source"]) for r in removed if r["rule"] not in ("duplicate",
                                                                                                 "near_duplicate"))
    out = {}
    for s in sources:
        out[s.name] = {"files": s.files, "read": len(s.passages) + sum(s.skipped.values()), "skipped": s.skipped,
                       "kept": sum(p["id"] in keep for p in s.passages),
                       "removed": {rule: n for (name, rule), n in sorted(rules.items()) if name == s.name},
                       "matched": {b: n for (name, b), n in sorted(matched.items()) if name == s.name}}
    return out


def markdown(summary: dict) -> str:
    """The count tables PROVENANCE.md carries."""
    lines = ["| source | read | left out | removed: exact | ngram | fuzzy | duplicate | near_duplicate | kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    total: Counter[int] = Counter()
    for name, c in summary["sources"].items():
        r = c["removed"]
        cells = [c["read"], sum(c["skipped"].values()), *(r.get(k, 0) for k in
                 ("exact", "ngram", "fuzzy", "duplicate", "near_duplicate")), c["kept"]]
        total.update(dict(enumerate(cells)))
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    lines.append("| **all** | " + " | ".join(str(total[i]) for i in range(8)) + " |")
    lines += ["", "| benchmark | items | from | removed passages matched to it |", "|---|---|---|---|"]
    hits: Counter[str] = Counter()
    for c in summary["sources"].values():
        hits.update(c["matched"])
    for name, (n, where) in summary["benchmarks"].items():
        lines.append(f"| {name} | {n or '-'} | {where} | {hits.get(name, 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m1.knowledge.build_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="the shared data folder (see data/PROVENANCE.md)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args(argv)
    try:
        summary = build(args.src, args.out)
    except M1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(summary))
    print(f"\n{summary['passages']} passages, {summary['bytes']:,} B -> {summary['compressed']:,} B; "
          f"sha256 of the uncompressed JSONL {summary['sha256']}")
    for name, c in summary["sources"].items():
        if c["skipped"]:
            print(f"{name}: left out {c['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
