"""Turn question files into `Item`s (the packaged sets are listed in registry.py).

Accepted file shapes (optionally gzip-compressed, e.g. questions.jsonl.gz):
  (a) {"<source>": [record, ...], ...}   the HuatuoGPT-o1 / m1 eval format (also GPQA, NEJM, Lancet)
  (b) [record, ...]
  (c) one record per line (JSONL): MedBullets, MedXpertQA, Humanity's Last Exam, m1's own data files
  (d) CSV with a header row (the official MedBullets release)
  (e) a pandas column dump {"question": {"0": ...}, "opa": {"0": ...}, ...}
A record is {"question", "options", "answer_idx"} with optional "answer" and "id";
"options" is a dict letter -> text or a list (lettered A, B, C, ...). Without
"options", columns opa, opb, ... (or A, B, ..., or choice0, choice1, ...) are the options.
The answer is "answer_idx" (a letter), else "answer" (a letter, an option's exact text,
or "C. text" as in HLE; a number for choice0.. columns, which count from 0), else
"label" (a letter, as in MedXpertQA), else "cop" (MedMCQA's official release: the correct option
counted from 1). Every other field is kept in Item.metadata (MedBullets' "explanation", MedMCQA's
"exp": the knowledge conditions read them).

Every problem with a file becomes an M1Error whose one-line message names the file,
the place (1-based JSONL/CSV line, or 0-based item index for JSON) and the field, so the CLI never shows
a traceback for bad data.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import string
from pathlib import Path

from m1.benchmarks.items import Item
from m1.errors import M1Error

ROW_HINT = "each row needs question, options and answer_idx"
KNOWN_FIELDS = ("id", "question", "options", "answer", "answer_idx", "cop")
DATA_SUFFIXES = (".gz", ".jsonl", ".ndjson", ".json", ".csv")


def load_file(path: str | Path, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Items from a user's .json / .jsonl / .csv file (see module docstring for shapes)."""
    return sample(read_file(path), limit, seed)


def read_file(path: str | Path, source: str | None = None, id_prefix: str | None = None) -> list[Item]:
    """Every item of a file. `source` names the items (default: the file name);
    `id_prefix` makes ids "<prefix>-<id in file, or 4-digit position>" (the registry's ids)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise M1Error(f"{path} {what}; give the path of a .json, .jsonl or .csv question file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise M1Error(f"{path} cannot be read ({e.strerror}); check its permissions") from None
    return parse_bytes(raw, str(path), path.name, source or _source_name(path), id_prefix)


def parse_bytes(raw: bytes, where: str, filename: str, source: str, id_prefix: str | None = None) -> list[Item]:
    """Items from a file's bytes; its name's suffixes pick gzip, CSV or JSON Lines."""
    suffixes = [s.lower() for s in Path(filename).suffixes]
    text = _decode(raw, where, gzipped=suffixes[-1:] == [".gz"])
    return _parse(text, where, source, jsonl_hint=bool({".jsonl", ".ndjson"} & set(suffixes)),
                  csv_hint=".csv" in suffixes, id_prefix=id_prefix)


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


def _source_name(path: Path) -> str:
    """File name without its data suffixes: questions.jsonl.gz -> questions."""
    name = path.name
    for suffix in DATA_SUFFIXES:
        name = name.removesuffix(suffix)
    return name or "file"


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


def _parse(text: str, where: str, default_source: str, jsonl_hint: bool = False,
           csv_hint: bool = False, id_prefix: str | None = None) -> list[Item]:
    if not text.strip():
        raise M1Error(f"{where} is empty; it should hold a JSON list or JSON lines of questions ({ROW_HINT})")
    if csv_hint:
        rows = _csv_rows(text, where, default_source)
    elif jsonl_hint:
        rows = _jsonl_rows(text, where, default_source)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if _first_line_is_json(text):  # a JSONL file with a .json name
                rows = _jsonl_rows(text, where, default_source)
            else:
                raise M1Error(f"{where} line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); "
                              "fix the syntax") from None
        else:
            rows = _document_rows(doc, where, default_source)
    if not rows:
        raise M1Error(f"{where} contains no questions; {ROW_HINT}")
    if id_prefix:  # a named benchmark: one source, named after the benchmark
        sources = list(dict.fromkeys(r[0] for r in rows))
        if len(sources) > 1:
            raise M1Error(f'{where} holds several sources ({", ".join(sources)}); a file for benchmark "{id_prefix}" '
                          "must hold one: keep only its list of questions")
        rows = [(default_source, index, place, record) for _, index, place, record in rows]
    items: list[Item] = []
    seen: dict[str, str] = {}
    for source, index, place, record in rows:
        item = _item(record, f"{where} {place}", source, f"{id_prefix or source}-{index:04d}", id_prefix)
        if item.id in seen:
            raise M1Error(f'{where} {place}: field "id" is "{item.id}", already used at {seen[item.id]}; '
                          "ids must be unique")
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
            raise M1Error(f"{where} line {lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                          "each line must be one JSON object") from None
        rows.append((source, len(rows), f"line {lineno}", record))
    return rows


def _csv_rows(text: str, where: str, source: str) -> list[Row]:
    """A CSV with a header row; cells can span lines (MedBullets explanations do), so
    each row is named by the line it starts on."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        if "question" not in header:
            raise M1Error(f'{where} line 1: no "question" column (header: {_short(",".join(header), 60)}); '
                          "the first row must name the columns, e.g. question,opa,opb,opc,opd,answer_idx")
        rows: list[Row] = []
        start = reader.line_num + 1
        for record in reader:
            if None in record:  # DictReader files surplus cells under the key None
                raise M1Error(f"{where} line {start}: {len(header) + len(record[None])} cells but the header names "
                              f"{len(header)} columns; quote cells that contain commas")
            rows.append((source, len(rows), f"line {start}", {k: v or "" for k, v in record.items()}))
            start = reader.line_num + 1
    except csv.Error as e:
        raise M1Error(f"{where} line {reader.line_num}: unreadable CSV ({e}); fix the quoting") from None
    return rows


def _document_rows(doc: object, where: str, default_source: str) -> list[Row]:
    if isinstance(doc, list):
        return [(default_source, i, f"item {i}", r) for i, r in enumerate(doc)]
    if isinstance(doc, dict) and isinstance(doc.get("question"), dict):  # pandas DataFrame.to_json()
        return _column_rows(doc, where, default_source)
    if isinstance(doc, dict) and "question" in doc:  # a one-line JSONL file
        return [(default_source, 0, "line 1", doc)]
    if isinstance(doc, dict):
        rows: list[Row] = []
        for source, records in doc.items():
            if not isinstance(records, list):
                raise M1Error(f'{where}: key "{source}" should map to a list of questions, got '
                              f'{_type_name(records)}; use {{"<source>": [{{question, options, answer_idx}}, ...]}}')
            rows += [(source, i, f'"{source}" item {i}', r) for i, r in enumerate(records)]
        return rows
    raise M1Error(f"{where}: top level is {_type_name(doc)}; expected a list of questions or an object mapping "
                  "source names to lists")


def _column_rows(doc: dict, where: str, source: str) -> list[Row]:
    """{"question": {"0": q0, ...}, "opa": {"0": ...}, ...} -> one record per row key."""
    for column, cells in doc.items():
        if not isinstance(cells, dict):
            raise M1Error(f'{where}: column "{column}" is {_type_name(cells)}; in a column dump every key maps row '
                          'numbers to cells, as "question" does')
    keys = list(doc["question"])
    return [(source, i, f'row "{k}"', {c: cells.get(k) for c, cells in doc.items()}) for i, k in enumerate(keys)]


def _item(record: object, where: str, source: str, default_id: str, id_prefix: str | None = None) -> Item:
    if not isinstance(record, dict):
        raise M1Error(f"{where}: expected a JSON object, got {_type_name(record)}; {ROW_HINT}")
    record = _columns_to_options(record)
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
    elif id_prefix:
        item_id = f"{id_prefix}-{item_id}"
    known = KNOWN_FIELDS + (("label",) if _label_is_answer(record) else ())
    metadata = {k: v for k, v in record.items() if k not in known}
    return Item(id=str(item_id), question=question, options=options, answer=answer, source=source, metadata=metadata)


# Option columns: opa.. (MedMCQA, MedBullets), A.. (letter columns), choice0.. (MMLU CSVs).
OPTION_COLUMN = re.compile(r"op([a-z])|([A-Z])|choice(\d{1,2})")


def _columns_to_options(record: dict) -> dict:
    """A record without "options" but with option columns -> the same record with "options"."""
    if "options" in record:
        return record
    letters = {}
    for key in record:
        m = OPTION_COLUMN.fullmatch(key)
        if m and (m[3] is None or int(m[3]) < 26):
            letters[key] = m[1].upper() if m[1] else m[2] or string.ascii_uppercase[int(m[3])]
    if not letters:
        return record
    out = {k: v for k, v in record.items() if k not in letters}
    # Empty cells are absent options (a 4-option row in a 5-column file), not empty answers.
    out["options"] = {letter: record[key] for key, letter in sorted(letters.items(), key=lambda kv: kv[1])
                      if not (record[key] is None or (isinstance(record[key], str) and not record[key].strip()))}
    answer = record.get("answer")
    counted = any(key.startswith("choice") for key in letters)
    if counted and out.get("answer_idx") is None and isinstance(answer, (int, str)) and str(answer).strip().isdigit():
        # MMLU's CSVs give the answer as a position counting from 0.
        position = int(str(answer).strip())
        if position < 26:
            out["answer_idx"] = string.ascii_uppercase[position]
    return out


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
    """The answer letter: answer_idx, else `answer` as a letter, an option's text or
    "C. text" (HLE), else label (MedXpertQA)."""
    letters = ", ".join(options)
    for field in ("answer_idx", "label"):
        if record.get(field) is None or (field == "label" and not _label_is_answer(record)):
            continue
        value = record[field]
        if not isinstance(value, str):
            raise _bad_type(where, field, 'a letter such as "B"', value)
        letter = value.strip().upper()
        if letter not in options:
            raise M1Error(f'{where}: field "{field}" is "{value}", not one of the options {letters}; '
                          "use one of those letters")
        return letter
    if record.get("answer") is None and record.get("cop") is not None:
        return _cop(record["cop"], options, where)
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
    prefixed = re.match(r"\s*\(?([A-Za-z])[.):](\s|$)", value)  # "C. text\n", "(C) text"
    if not matches and prefixed and prefixed[1].upper() in options:
        return prefixed[1].upper()
    if len(value.strip()) == 1 and value.strip().isalpha():
        raise M1Error(f'{where}: field "answer" is "{value}", not one of the options {letters}; '
                      "use one of those letters")
    problem = "matches several options" if matches else "is neither an option letter nor the exact text of an option"
    raise M1Error(f'{where}: field "answer" ("{_short(value)}") {problem}; add "answer_idx" with the letter')


def _cop(value: object, options: dict[str, str], where: str) -> str:
    """MedMCQA's official release: "cop", the correct option counted from 1 (1 = opa = A). Its
    Hugging Face export counts from 0, so a 0 there would shift every answer: refused."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise _bad_type(where, "cop", "a whole number from 1 (MedMCQA's official release)", value)
    position = int(value)
    letters = list(options)
    if not 1 <= position <= len(letters):
        raise M1Error(f'{where}: field "cop" is {value!r}; ' "MedMCQA's official release counts options from 1 to "
                      f"{len(letters)} (a 0-based export needs answer_idx with the letter)")
    return letters[position - 1]


def _label_is_answer(record: dict) -> bool:
    """MedXpertQA's "label" is its answer letter; elsewhere "label" may mean anything."""
    return record.get("label") is not None and record.get("answer_idx") is None and record.get("answer") is None


def _bad_type(where: str, field: str, wanted: str, got: object) -> M1Error:
    return M1Error(f'{where}: field "{field}" must be {wanted}, got {_type_name(got)}; {ROW_HINT}')


def _type_name(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
