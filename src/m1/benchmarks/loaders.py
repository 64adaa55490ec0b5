"""Turn benchmark files into `Item`s: the packaged registry and user-supplied files.

Accepted file shapes (JSON or JSON Lines, optionally gzip-compressed):
  (a) {"<source>": [record, ...], ...}   the HuatuoGPT-o1 / m1 eval format
  (b) [record, ...]
  (c) one record per line (JSONL)
A record is {"question", "options", "answer_idx"} with optional "answer" and "id";
"options" is a dict letter -> text or a list (lettered A, B, C, ...). Every other
field is kept in Item.metadata.

Every problem with a file becomes an M1Error whose one-line message names the file,
the place (1-based JSONL line, or 0-based item index for JSON) and the field, so the CLI never shows
a traceback for bad data.
"""
from __future__ import annotations

import gzip
import json
import random
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from m1.benchmarks.items import Item
from m1.errors import M1Error

ROW_HINT = "each row needs question, options and answer_idx"
KNOWN_FIELDS = ("id", "question", "options", "answer", "answer_idx")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark shipped inside the package (m1/benchmarks/data/<filename>)."""

    description: str
    size: int
    filename: str
    aliases: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    "medqa": Benchmark(
        description="MedQA-USMLE 4-option test (US medical licensing exam questions)",
        size=1273,
        filename="medqa_usmle_4opt_test.json.gz",
        aliases=("medqa_usmle", "medqa-usmle"),
    ),
}


def load_benchmark(name: str, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Items of a registered benchmark; `limit` takes a seeded, file-ordered sample."""
    key = _canonical_name(name)
    bench = BENCHMARKS[key]
    where = f"m1 package data file {bench.filename}"
    resource = resources.files("m1.benchmarks") / "data" / bench.filename
    try:
        raw = resource.read_bytes()
    except OSError:
        raise M1Error(f"{where} is missing; the m1 install is incomplete, reinstall m1") from None
    items = _parse(_decode(raw, where, gzipped=True), where, default_source=key)
    if len(items) != bench.size:
        # A silent change in size would make results incomparable between installs.
        raise M1Error(f"{where} has {len(items)} questions, expected {bench.size}; reinstall m1")
    return sample(items, limit, seed)


def load_file(path: str | Path, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Items from a user's .json / .jsonl file (see module docstring for shapes)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise M1Error(f"{path} {what}; give the path of a .json or .jsonl question file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise M1Error(f"{path} cannot be read ({e.strerror}); check its permissions") from None
    text = _decode(raw, str(path), gzipped=path.suffix == ".gz")
    items = _parse(text, str(path), default_source=_source_name(path), jsonl_hint=_is_jsonl_name(path))
    return sample(items, limit, seed)


def sample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """A fixed subset: same seed -> same questions, kept in file order."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise M1Error(f"limit must be a positive whole number, got {limit!r}; leave it out to use all questions")
    if limit >= len(items):
        return items
    picked = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in picked]


def _canonical_name(name: str) -> str:
    wanted = name.strip().lower()
    for key, bench in BENCHMARKS.items():
        if wanted == key or wanted in bench.aliases:
            return key
    known = ", ".join(
        f"{k} ({b.size} questions" + (f"; also {', '.join(b.aliases)})" if b.aliases else ")")
        for k, b in BENCHMARKS.items()
    )
    raise M1Error(f'unknown benchmark "{name}"; known benchmarks: {known}; or give the path of a .json/.jsonl file')


def _source_name(path: Path) -> str:
    """File name without its data suffixes: questions.jsonl.gz -> questions."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        name = name.removesuffix(suffix)
    return name or "file"


def _is_jsonl_name(path: Path) -> bool:
    return any(s in (".jsonl", ".ndjson") for s in path.suffixes)


def _decode(raw: bytes, where: str, gzipped: bool) -> str:
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise M1Error(f"{where} is not a valid gzip file ({e}); decompress it or re-create it") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate the BOM some editors add
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise M1Error(f"{where} line {line}: not valid UTF-8 text; save the file as UTF-8") from None


def _parse(text: str, where: str, default_source: str, jsonl_hint: bool = False) -> list[Item]:
    if not text.strip():
        raise M1Error(f"{where} is empty; it should hold a JSON list or JSON lines of questions ({ROW_HINT})")
    if jsonl_hint:
        rows = _jsonl_rows(text, where, default_source)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if _first_line_is_json(text):  # a JSONL file with a .json name
                rows = _jsonl_rows(text, where, default_source)
            else:
                raise M1Error(f"{where} line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax") from None
        else:
            rows = _document_rows(doc, where, default_source)
    if not rows:
        raise M1Error(f"{where} contains no questions; {ROW_HINT}")
    items, seen = [], {}
    for source, index, place, record in rows:
        item = _item(record, f"{where} {place}", source, f"{source}-{index:04d}")
        if item.id in seen:
            raise M1Error(f'{where} {place}: field "id" is "{item.id}", already used at {seen[item.id]}; ids must be unique')
        seen[item.id] = place
        items.append(item)
    return items


# A row is (source, index within source, place for messages, record).
Row = tuple[str, int, str, object]


def _first_line_is_json(text: str) -> bool:
    first = next(line for line in text.splitlines() if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _jsonl_rows(text: str, where: str, source: str) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise M1Error(f"{where} line {lineno}: invalid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
        rows.append((source, len(rows), f"line {lineno}", record))
    return rows


def _document_rows(doc: object, where: str, default_source: str) -> list[Row]:
    if isinstance(doc, list):
        return [(default_source, i, f"item {i}", r) for i, r in enumerate(doc)]
    if isinstance(doc, dict) and "question" in doc:  # a one-line JSONL file
        return [(default_source, 0, "line 1", doc)]
    if isinstance(doc, dict):
        rows: list[Row] = []
        for source, records in doc.items():
            if not isinstance(records, list):
                raise M1Error(f'{where}: key "{source}" should map to a list of questions, got {_type_name(records)}; use {{"<source>": [{{question, options, answer_idx}}, ...]}}')
            rows += [(source, i, f'"{source}" item {i}', r) for i, r in enumerate(records)]
        return rows
    raise M1Error(f"{where}: top level is {_type_name(doc)}; expected a list of questions or an object mapping source names to lists")


def _item(record: object, where: str, source: str, default_id: str) -> Item:
    if not isinstance(record, dict):
        raise M1Error(f"{where}: expected a JSON object, got {_type_name(record)}; {ROW_HINT}")
    question = _required(record, "question", where)
    if not isinstance(question, str):
        raise _bad_type(where, "question", "a string", question)
    if not question.strip():
        raise M1Error(f'{where}: field "question" is empty; {ROW_HINT}')
    options = _options(_required(record, "options", where), where)
    answer = _answer(record, options, where)
    item_id = record.get("id")
    if item_id is None:
        item_id = default_id
    elif isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise _bad_type(where, "id", "a string or number", item_id)
    metadata = {k: v for k, v in record.items() if k not in KNOWN_FIELDS}
    return Item(id=str(item_id), question=question, options=options, answer=answer, source=source, metadata=metadata)


def _required(record: dict, field: str, where: str) -> object:
    if field not in record or record[field] is None:
        raise M1Error(f'{where}: field "{field}" is missing; {ROW_HINT}')
    return record[field]


def _options(raw: object, where: str) -> dict[str, str]:
    if isinstance(raw, list):
        if len(raw) > len(string.ascii_uppercase):
            raise M1Error(f'{where}: field "options" has {len(raw)} entries; at most 26 are supported')
        raw = dict(zip(string.ascii_uppercase, raw))
    if not isinstance(raw, dict):
        raise _bad_type(where, "options", "an object of letter -> text or a list of texts", raw)
    if len(raw) < 2:
        raise M1Error(f'{where}: field "options" has {len(raw)} entries; a multiple-choice question needs at least 2')
    options = {}
    for key, text in raw.items():
        letter = key.strip().upper()
        if len(letter) != 1 or letter not in string.ascii_uppercase:
            raise M1Error(f'{where}: field "options" key "{key}" is not a single letter; name options A, B, C, ...')
        if not isinstance(text, str):
            raise _bad_type(where, f"options.{key}", "a string", text)
        if letter in options:
            raise M1Error(f'{where}: field "options" has letter "{letter}" twice; each option needs its own letter')
        options[letter] = text
    return options


def _answer(record: dict, options: dict[str, str], where: str) -> str:
    """The answer letter: answer_idx if given, else `answer` as a letter or as option text."""
    letters = ", ".join(options)
    if record.get("answer_idx") is not None:
        value = record["answer_idx"]
        if not isinstance(value, str):
            raise _bad_type(where, "answer_idx", 'a letter such as "B"', value)
        letter = value.strip().upper()
        if letter not in options:
            raise M1Error(f'{where}: field "answer_idx" is "{value}", not one of the options {letters}; use one of those letters')
        return letter
    if record.get("answer") is None:
        raise M1Error(f'{where}: field "answer_idx" is missing (and no "answer" to derive it from); {ROW_HINT}')
    value = record["answer"]
    if not isinstance(value, str):
        raise _bad_type(where, "answer", "an option letter or an option's text", value)
    if value.strip().upper() in options and len(value.strip()) == 1:
        return value.strip().upper()
    matches = [k for k, text in options.items() if text.strip().casefold() == value.strip().casefold()]
    if len(matches) == 1:
        return matches[0]
    if len(value.strip()) == 1 and value.strip().isalpha():
        raise M1Error(f'{where}: field "answer" is "{value}", not one of the options {letters}; use one of those letters')
    problem = "matches several options" if matches else "is neither an option letter nor the exact text of an option"
    raise M1Error(f'{where}: field "answer" ("{_short(value)}") {problem}; add "answer_idx" with the letter')


def _bad_type(where: str, field: str, wanted: str, got: object) -> M1Error:
    return M1Error(f'{where}: field "{field}" must be {wanted}, got {_type_name(got)}; {ROW_HINT}')


def _type_name(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
