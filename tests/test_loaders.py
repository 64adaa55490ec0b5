import gzip
import json

import pytest

from m1.benchmarks import BENCHMARKS, load_benchmark, load_file
from m1.errors import M1Error

ROW = {
    "question": "Which drug is fibrin-specific?",
    "options": {"A": "Streptokinase", "B": "Tenecteplase", "C": "Urokinase", "D": "Heparin"},
    "answer": "Tenecteplase",
    "answer_idx": "B",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the packaged MedQA ----

def test_medqa_shipped_in_full():
    items = load_benchmark("medqa")
    assert len(items) == 1273 == BENCHMARKS["medqa"].size
    assert items[0].id == "medqa-0000" and items[-1].id == "medqa-1272"
    assert len({i.id for i in items}) == 1273
    assert all(i.answer in i.options and list(i.options) == ["A", "B", "C", "D"] for i in items)
    assert all(i.source == "medqa" for i in items)
    assert items[0].question.startswith("A junior orthopaedic surgery resident")
    assert items[0].answer == "B"


@pytest.mark.parametrize("alias", ["medqa_usmle", "MedQA-USMLE", " medqa "])
def test_medqa_aliases(alias):
    assert [i.id for i in load_benchmark(alias, limit=3)] == [i.id for i in load_benchmark("medqa", limit=3)]


def test_seeded_sample_is_stable_and_in_file_order():
    first = load_benchmark("medqa", limit=50, seed=0)
    again = load_benchmark("medqa", limit=50, seed=0)
    other = load_benchmark("medqa", limit=50, seed=1)
    ids = [i.id for i in first]
    assert len(first) == 50 and ids == [i.id for i in again]
    assert ids == sorted(ids)
    assert ids != [i.id for i in other]


def test_limit_at_or_above_size_gives_everything():
    assert len(load_benchmark("medqa", limit=5000)) == 1273


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_limit(bad):
    with pytest.raises(M1Error, match="limit"):
        load_benchmark("medqa", limit=bad)


def test_unknown_benchmark_lists_known_names():
    with pytest.raises(M1Error) as e:
        load_benchmark("pubmedqa_v9")
    assert "pubmedqa_v9" in str(e.value) and "medqa" in str(e.value) and "medmcqa" in str(e.value)


# ---- user files: formats ----

def test_source_keyed_object(tmp_path):
    path = tmp_path / "eval_data.json"
    path.write_text(json.dumps({"MedQA_USLME_test": [ROW, ROW], "PubMedQA_test": [ROW]}))
    items = load_file(path)
    assert [i.source for i in items] == ["MedQA_USLME_test", "MedQA_USLME_test", "PubMedQA_test"]
    assert [i.id for i in items] == ["MedQA_USLME_test-0000", "MedQA_USLME_test-0001", "PubMedQA_test-0000"]
    assert items[0].answer == "B" and items[0].options["B"] == "Tenecteplase"


def test_json_list(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([ROW, {**ROW, "id": "q-7", "explanation": "fibrin"}]))
    items = load_file(path)
    assert [i.id for i in items] == ["mine-0000", "q-7"]
    assert items[1].metadata == {"explanation": "fibrin"}
    assert items[0].source == "mine"


def test_jsonl_with_list_options_and_answer_variants(tmp_path):
    rows = [
        {"question": "q1", "options": ["w", "x", "y"], "answer_idx": "C"},
        {"question": "q2", "options": {"A": "yes", "B": "no"}, "answer": "B"},  # letter
        {"question": "q3", "options": {"A": "yes", "B": "no"}, "answer": "No"},  # option text
        {"id": 42, "question": "q4", "options": ["w", "x"], "answer_idx": "a"},
    ]
    items = load_file(write_jsonl(tmp_path / "d.jsonl", rows))
    assert items[0].options == {"A": "w", "B": "x", "C": "y"}
    assert [i.answer for i in items] == ["C", "B", "B", "A"]
    assert items[3].id == "42"


def test_jsonl_named_json_and_gzip(tmp_path):
    text = "\n".join(json.dumps(r) for r in [ROW, ROW])
    (tmp_path / "lines.json").write_text(text)
    assert len(load_file(tmp_path / "lines.json")) == 2
    (tmp_path / "lines.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    items = load_file(tmp_path / "lines.jsonl.gz")
    assert len(items) == 2 and items[0].id == "lines-0000"


def test_file_sample(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROW, "id": str(i)} for i in range(20)])
    picked = [i.id for i in load_file(path, limit=5, seed=3)]
    assert picked == [i.id for i in load_file(path, limit=5, seed=3)]
    assert picked == sorted(picked, key=int) and len(picked) == 5


# ---- user files: every bad input is one M1Error naming file, place and field ----

def without(field):
    return {k: v for k, v in ROW.items() if k != field}


BAD_ROWS = [
    # (bad row, text that must appear in the message)
    (without("question"), 'field "question" is missing'),
    (without("options"), 'field "options" is missing'),
    ({k: v for k, v in ROW.items() if k not in ("answer", "answer_idx")}, 'field "answer_idx" is missing'),
    ({**ROW, "question": 5}, 'field "question" must be a string'),
    ({**ROW, "question": "  "}, 'field "question" is empty'),
    ({**ROW, "options": "A. x B. y"}, 'field "options" must be'),
    ({**ROW, "options": {"A": "only one"}, "answer_idx": "A"}, 'field "options" has 1 entries'),
    ({**ROW, "options": {"A": "x", "B": 3}}, 'field "options.B" must be a string'),
    ({**ROW, "options": {"A1": "x", "B": "y"}}, 'field "options" key "A1"'),
    ({**ROW, "answer_idx": "E"}, 'field "answer_idx" is "E", not one of the options A, B, C, D'),
    ({**ROW, "answer_idx": 1}, 'field "answer_idx" must be a letter'),
    ({**without("answer_idx"), "answer": "Alteplase"}, 'field "answer" ("Alteplase") is neither'),
    ({**without("answer_idx"), "answer": "F"}, 'field "answer" is "F", not one of the options'),
    ({**ROW, "id": [1]}, 'field "id" must be a string or number'),
    ("just a string", "expected a JSON object"),
]


@pytest.mark.parametrize("row, expected", BAD_ROWS)
def test_bad_jsonl_row(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "data.jsonl", [ROW, ROW, row])
    with pytest.raises(M1Error) as e:
        load_file(path)
    message = str(e.value)
    assert message.startswith(f"{path} line 3: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("row, expected", BAD_ROWS[:3])
def test_bad_json_list_item_names_index(tmp_path, row, expected):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([ROW, row], indent=2))
    with pytest.raises(M1Error) as e:
        load_file(path)
    assert str(e.value).startswith(f"{path} item 1: ") and expected in str(e.value)


def test_bad_row_in_source_keyed_object(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"MedQA": [ROW, ROW, without("options")]}))
    with pytest.raises(M1Error, match=r'eval\.json "MedQA" item 2: field "options" is missing'):
        load_file(path)


def test_source_key_not_a_list(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"MedQA": {"question": "x"}}))
    with pytest.raises(M1Error, match='key "MedQA" should map to a list'):
        load_file(path)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**ROW, "id": "x"}, {**ROW, "id": "y"}, {**ROW, "id": "x"}])
    with pytest.raises(M1Error, match='line 3: field "id" is "x", already used at line 1'):
        load_file(path)


@pytest.mark.parametrize("name, text, message", [
    ("broken.json", '[\n  {"question": "q",\n   "options": ["a" "b"]}\n]',
     r"broken\.json line 3 column \d+: invalid JSON"),
    ("broken.jsonl", json.dumps(ROW) + "\n\n" + '{"question": "q", \n', r"broken\.jsonl line 3: invalid JSON"),
])
def test_invalid_json_names_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(M1Error, match=message):
        load_file(path)


@pytest.mark.parametrize("content", ["", "  \n\n", "[]", "{}"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    with pytest.raises(M1Error, match=r"empty\.json (is empty|contains no questions)"):
        load_file(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(M1Error, match="nope.jsonl does not exist"):
        load_file(tmp_path / "nope.jsonl")
    with pytest.raises(M1Error, match="is a directory"):
        load_file(tmp_path)


def test_not_utf8_and_bad_gzip(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(M1Error, match=r"latin\.jsonl line 1: not valid UTF-8"):
        load_file(path)
    path = tmp_path / "fake.json.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(M1Error, match="not a valid gzip file"):
        load_file(path)


def test_top_level_scalar(tmp_path):
    path = tmp_path / "n.json"
    path.write_text("42")
    with pytest.raises(M1Error, match="top level is a number"):
        load_file(path)


def test_medmcqa_official_release_reads_cop_and_keeps_exp(tmp_path):
    from m1.knowledge.conditions import explanation

    row = {"id": "x1", "question": "Drug of choice for absence seizures?", "opa": "Phenytoin", "opb": "Carbamazepine",
           "opc": "Ethosuximide", "opd": "Phenobarbital", "cop": 3,
           "exp": "Ethosuximide blocks T-type calcium channels.", "subject_name": "Pharmacology"}
    path = tmp_path / "medmcqa_dev.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "x2", "cop": 0}) + "\n")
    with pytest.raises(M1Error, match=r'line 2: field "cop" is 0; .*answer_idx'):
        load_file(path)
    path.write_text(json.dumps(row) + "\n")
    (item,) = load_file(path)
    assert item.answer == "C" and item.options["C"] == "Ethosuximide"
    assert explanation(item) == row["exp"] and "cop" not in item.metadata
