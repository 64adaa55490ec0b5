"""Stage 1, collect: the raw question pools -> one list of Items with shuffled options.

Source kinds (`kind` in the config):
  selfbiorag  dmis-lab/self-biorag instruction files (JSON Lines despite the .json name):
              MedQA-USMLE train (output = the answer's text) and MedMCQA train
              (output "Answer: (A)"); input "QUESTION: ...\\nOption A: ...".
  headqa      the official HEAD-QA release {"exams": {name: {"data": [{qid, qtext, ra,
              answers: [{aid, atext}], image}]}}}, or hub rows with the same fields.
              Questions that need an image are left out (counted in the manifest).
  pubmedqa    ori_pqal.json {pmid: {QUESTION, CONTEXTS, final_decision}} or hub rows
              (pubmed_qa pqa_labeled); shown as HuatuoGPT-o1/m1 show it: abstract, bridge, question.
  items       anything m1's benchmark loaders read (JSON, JSONL, CSV; options as a dict,
              a list or opa.. columns; MedMCQA's `cop` index too).
A source gives either `path` (local) or `hub` (a Hugging Face dataset id, loaded with
`datasets` only when asked for; it needs hub access).

Options are shuffled per item with Random(f"{seed}:{id}"), so an item's order does not
depend on which other items are in the pool.
"""
from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from m1.benchmarks.items import Item
from m1.benchmarks.loaders import parse_bytes, sample
from m1.curation.config import CollectConfig, SourceConfig
from m1.curation.records import reletter
from m1.errors import M1Error

KINDS = ("selfbiorag", "headqa", "pubmedqa", "items")
# HuatuoGPT-o1's PubMedQA layout, which m1 evaluates on (abstract, this bridge, question).
PUBMEDQA_BRIDGE = ("\n\nUsing the above document as a reference, please review the following question "
                   "and choose the option you find most appropriate.\n")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def collect(cfg: CollectConfig, seed: int) -> tuple[list[Item], dict]:
    """All sources' items (options shuffled) and per-source notes for the manifest."""
    if not cfg.sources:
        raise M1Error("collect.sources is empty; list at least one source (name, kind, path or hub)")
    items: list[Item] = []
    notes: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for src in cfg.sources:
        got, skipped = load_source(src)
        got = sample(got, src.limit, seed)
        shuffle = src.shuffle if src.shuffle is not None else (cfg.shuffle_options and src.kind != "pubmedqa")
        for it in got:
            if it.id in seen:
                raise M1Error(f'collect: id "{it.id}" comes from sources "{seen[it.id]}" and "{src.name}"; '
                              "give each source its own name")
            seen[it.id] = src.name
            items.append(shuffle_options(it, seed) if shuffle else it)
        notes[src.name] = {"kind": src.kind, "read": len(got), "skipped": skipped, "shuffled": shuffle,
                           "from": src.path or f"hub:{src.hub}"}
    return items, notes


# Options that point at other options by position keep their order.
_POSITIONAL = re.compile(r"\b(?:all|none|both|any) of the (?:above|following)\b|\b[A-E] (?:and|&|or) [A-E]\b", re.I)


def shuffle_options(item: Item, seed: int) -> Item:
    if any(_POSITIONAL.search(text) for text in item.options.values()):
        return item
    order = list(item.options)
    random.Random(f"{seed}:{item.id}").shuffle(order)
    return reletter(item, order)


def load_source(src: SourceConfig) -> tuple[list[Item], dict[str, int]]:
    """(items, {reason: count} of records left out) for one configured source."""
    if src.kind not in KINDS:
        raise M1Error(f'collect source "{src.name}": unknown kind "{src.kind}"; choose one of {", ".join(KINDS)}')
    if bool(src.path) == bool(src.hub):
        raise M1Error(f'collect source "{src.name}": give exactly one of path (a local file) or hub (a dataset id)')
    if not src.path:  # then src.hub (exactly one of them)
        return from_records(src, _hub_rows(src), f"hub dataset {src.hub}")
    path = Path(src.path)
    if not path.is_file():
        raise M1Error(f'collect source "{src.name}": {path} does not exist; fix its path in the config')
    raw = path.read_bytes()
    if src.kind == "items":
        return parse_bytes(raw, str(path), path.name, src.name, id_prefix=src.name), {}
    return from_records(src, _file_records(src.kind, raw, str(path)), str(path))


def from_records(src: SourceConfig, records: list[tuple[str, object]], where: str) -> tuple[list[Item], dict]:
    """Items from (place, record) pairs; a bad record is an M1Error naming its place."""
    convert = {"selfbiorag": _selfbiorag, "headqa": _headqa, "pubmedqa": _pubmedqa, "items": _generic}[src.kind]
    items: list[Item] = []
    skipped: dict[str, int] = {}
    for index, (place, rec) in enumerate(records):
        if not isinstance(rec, dict):
            raise M1Error(f"{where} {place}: expected a JSON object, got {type(rec).__name__}")
        try:
            item = convert(rec, src.name, index)
        except (KeyError, TypeError, ValueError) as e:
            raise M1Error(f"{where} {place}: not a {src.kind} record ({type(e).__name__}: {e}); "
                          f"check the source's kind") from None
        if isinstance(item, str):  # a reason to leave it out
            skipped[item] = skipped.get(item, 0) + 1
        else:
            items.append(item)
    if not items:
        raise M1Error(f"{where}: no usable {src.kind} questions found; check the file and the source's kind")
    return items, skipped


def _file_records(kind: str, raw: bytes, where: str) -> list[tuple[str, object]]:
    text = raw.decode("utf-8-sig")
    if kind == "selfbiorag":  # JSON Lines whatever the name says
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise M1Error(f"{where} line {n}: invalid JSON ({e.msg}); "
                                  "self-biorag files hold one object a line") from None
        return out
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise M1Error(f"{where} line {e.lineno}: invalid JSON ({e.msg}); fix the file") from None
    if kind == "headqa":
        if not isinstance(doc, dict) or not isinstance(doc.get("exams"), dict):
            raise M1Error(f'{where}: no "exams" object; expected the official HEAD-QA release file')
        return [(f'exam "{name}" item {i}', {**q, "exam": name, "category": exam.get("category")})
                for name, exam in doc["exams"].items() for i, q in enumerate(exam.get("data", []))]
    if kind == "pubmedqa":
        if not isinstance(doc, dict):
            raise M1Error(f"{where}: expected PubMedQA's ori_pqal.json, a mapping of PMID -> record")
        return [(f'PMID "{pmid}"', {**rec, "pubid": pmid}) for pmid, rec in doc.items()]
    raise AssertionError(kind)


def _hub_rows(src: SourceConfig) -> list[tuple[str, object]]:
    try:
        import datasets
    except ImportError:
        raise M1Error(f'collect source "{src.name}": hub sources need the `datasets` package: '
                      "pip install datasets") from None
    try:
        ds = datasets.load_dataset(src.hub, src.hub_config, split=src.split)
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise M1Error(f'collect source "{src.name}": could not load hub dataset {src.hub} ({type(e).__name__}: '
                      f'{str(e)[:200]}); check access (huggingface-cli login) or give a local path') from None
    return [(f"row {i}", dict(r)) for i, r in enumerate(ds)]


# ---- one converter per kind: record -> Item, or a string saying why it is left out ----

_OPTION_LINE = re.compile(r"^\s*Option\s+([A-Z])\s*:\s?(.*)$", re.M)
_ANSWER_LETTER = re.compile(r"^\s*Answer\s*:\s*\(?([A-Z])\)?\s*$")


def _selfbiorag(rec: dict, source: str, index: int) -> Item | str:
    text = rec["instances"]["input"]
    output = rec["instances"]["output"].strip()
    marks = list(_OPTION_LINE.finditer(text))
    if len(marks) < 2:
        return "fewer than 2 options"
    question = re.sub(r"^\s*question\s*:\s*", "", text[: marks[0].start()], flags=re.I).strip()
    options = {m[1]: m[2].strip() for m in marks}
    m = _ANSWER_LETTER.match(output)
    if m and m[1] in options:
        answer = m[1]
    else:  # MedQA: the output is the answer's text (a few carry a stray '\n"' after it)
        want = output.strip('" \n').casefold()
        hits = [k for k, v in options.items() if v.strip().casefold() == want]
        if len(hits) != 1:
            return "answer matches no single option"
        answer = hits[0]
    return Item(id=f"{source}-{index:05d}", question=question, options=options, answer=answer, source=source,
                metadata={"upstream": rec.get("name")})


def _headqa(rec: dict, source: str, index: int) -> Item | str:
    if rec.get("image"):
        return "needs an image"
    answers = sorted(rec["answers"], key=lambda a: int(a["aid"]))
    options = {string.ascii_uppercase[i]: a["atext"].strip() for i, a in enumerate(answers)}
    right = [i for i, a in enumerate(answers) if str(a["aid"]) == str(rec["ra"])]
    if len(right) != 1:
        return "right answer id not among the answers"
    exam = rec.get("exam") or rec.get("name") or "exam"
    return Item(id=f"{source}-{exam}-{rec['qid']}", question=rec["qtext"].strip(), options=options,
                answer=string.ascii_uppercase[right[0]], source=source,
                metadata={"category": rec.get("category"), "exam": exam})


def _pubmedqa(rec: dict, source: str, index: int) -> Item | str:
    question = rec.get("QUESTION") or rec["question"]
    contexts = rec["CONTEXTS"] if "CONTEXTS" in rec else rec["context"]["contexts"]
    decision = (rec.get("final_decision") or "").strip().lower()
    letter = {v: k for k, v in PUBMEDQA_OPTIONS.items()}.get(decision)
    if letter is None:
        return "no yes/no/maybe decision"
    return Item(id=f"{source}-{rec['pubid']}", question=" ".join(contexts) + PUBMEDQA_BRIDGE + question,
                options=dict(PUBMEDQA_OPTIONS), answer=letter, source=source, metadata={"pmid": str(rec["pubid"])})


def _generic(rec: dict, source: str, index: int) -> Item | str:
    """A hub row in any shape m1's loaders read; MedMCQA's `cop` (0-based index) as the answer."""
    rec = dict(rec)
    if isinstance(rec.get("cop"), int) and "answer_idx" not in rec:
        rec["answer_idx"] = string.ascii_uppercase[rec.pop("cop")]
    rec.setdefault("id", f"{index:05d}")
    line = json.dumps(rec, ensure_ascii=False, default=str).encode()
    return parse_bytes(line, f"row {index}", "row.jsonl", source, id_prefix=source)[0]
