"""The full benchmark suite: shipped sets, user-supplied formats, the registry and suites."""
import collections
import fnmatch
import gzip
import json
import shutil
import string
from importlib import resources
from pathlib import Path

import pytest

from m1.benchmarks import BENCHMARKS, SUITES, list_benchmarks, load_benchmark, load_file, resolve_suite
from m1.benchmarks.registry import ENV_VAR
from m1.errors import M1Error

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {name: b.size for name, b in BENCHMARKS.items() if b.shipped}
BRIDGE = "Using the above document as a reference, please review the following question"


def shared_data() -> Path:
    """The upstream fixture files (CI: ../shared/data next to the repo)."""
    for folder in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")):
        if folder.is_dir():
            return folder
    pytest.skip("shared data folder not found (../shared/data or /work/shared/data)")


def shared_file(relative: str) -> Path:
    path = shared_data() / relative
    if not path.is_file():
        pytest.skip(f"{relative} not in the shared data folder")
    return path


@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


# ---- shipped benchmarks ----

def test_the_shipped_set():
    assert SHIPPED == {"medmcqa": 4183, "medqa": 1273, "medqa_5opt": 1273, "pubmedqa": 1000, "pubmedqa_test": 500,
                       "mmlu_pro": 1535, "mmlu_medical": 1089, "headqa": 2742}
    assert not BENCHMARKS["gpqa"].shipped and not BENCHMARKS["hle"].shipped


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_benchmark_loads_in_full(name):
    items = load_benchmark(name)
    assert len(items) == SHIPPED[name]
    assert len({i.id for i in items}) == len(items)
    assert all(i.id.startswith(f"{name}-") and i.source == name for i in items)
    for i in items:
        assert i.answer in i.options
        assert list(i.options) == list(string.ascii_uppercase[: len(i.options)])  # A, B, C, ... in order
        assert i.question.strip() and all(isinstance(t, str) for t in i.options.values())


def test_medmcqa_erratum_restored():
    items = load_benchmark("medmcqa")
    fixed = items[1]
    assert fixed.id == "medmcqa-0001"
    assert fixed.question.startswith("Which of the following is not true about glomerular")
    assert fixed.answer == "A" and fixed.options["A"].startswith("The oncotic pressure")
    assert "erratum" in fixed.metadata
    assert [i.id for i in items if "erratum" in i.metadata] == ["medmcqa-0001"]


def test_medmcqa_matches_upstream_but_for_the_erratum():
    upstream = json.loads(shared_file("huatuo_o1_eval/MedMCQA_validation.json").read_text())
    items = load_benchmark("medmcqa")
    differ = [n for n, (i, u) in enumerate(zip(items, upstream, strict=True))
              if (i.question, i.options, i.answer) != (u["question"], u["options"], u["answer_idx"])]
    assert differ == [1] and upstream[1]["answer_idx"] == "D"


def test_medqa_5opt_pairs_with_medqa():
    four, five = load_benchmark("medqa"), load_benchmark("medqa_5opt")
    assert all(list(i.options) == list("ABCDE") for i in five)
    assert [i.question for i in four] == [i.question for i in five]
    assert all(a.options[a.answer] == b.options[b.answer] for a, b in zip(four, five))
    assert collections.Counter(i.metadata["meta_info"] for i in five) == {"step1": 679, "step2&3": 594}


def test_pubmedqa_keeps_context_and_marks_the_official_test():
    items = load_benchmark("pubmedqa")
    assert all(i.options == {"A": "yes", "B": "no", "C": "maybe"} for i in items)
    assert all(BRIDGE in i.question and len(i.question.split(BRIDGE)[0]) > 200 for i in items)
    assert collections.Counter(i.answer for i in items) == {"A": 552, "B": 338, "C": 110}
    first = items[0]
    assert first.id == "pubmedqa-21645374" and first.metadata["pmid"] == "21645374"
    assert first.question.startswith("Programmed cell death (PCD) is the regulated death of cells")
    assert first.question.endswith(
        "\nDo mitochondria play a role in remodelling lace plant leaves during programmed cell death?")
    official = [i for i in items if i.metadata["official_test"] is True]
    assert len(official) == 500 and sum(i.metadata["official_test"] is False for i in items) == 500
    test = load_benchmark("pubmedqa_test")
    assert [i.metadata["pmid"] for i in test] == [i.metadata["pmid"] for i in official]
    assert all(i.id == f"pubmedqa_test-{i.metadata['pmid']}" for i in test)
    assert collections.Counter(i.answer for i in test) == {"A": 276, "B": 169, "C": 55}


def test_pubmedqa_equals_the_huatuogpt_prompt_shape():
    upstream = json.loads(shared_file("huatuo_o1_eval/PubMedQA_test.json").read_text())
    ours = {(i.question, i.answer) for i in load_benchmark("pubmedqa")}
    assert ours == {(u["question"], u["answer_idx"]) for u in upstream}
    truth = json.loads(shared_file("pubmedqa/test_ground_truth.json").read_text())
    assert {i.metadata["pmid"] for i in load_benchmark("pubmedqa_test")} == set(truth)


def test_mmlu_pro_has_ten_option_items():
    items = load_benchmark("mmlu_pro")
    sizes = collections.Counter(len(i.options) for i in items)
    assert sizes[10] > 1000 and max(sizes) == 10 and min(sizes) == 3
    assert any(i.answer == "J" for i in items)
    assert collections.Counter(i.metadata["category"] for i in items) == {"health": 818, "biology": 717}
    by_id = {i.id: i for i in items}
    assert by_id["mmlu_pro-2817"].answer == "E" and by_id["mmlu_pro-6392"].answer == "B"  # later MMLU-Pro fixes


def test_mmlu_medical_subjects():
    items = load_benchmark("mmlu_medical")
    assert collections.Counter(i.metadata["subject"] for i in items) == {
        "anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
        "medical_genetics": 100, "professional_medicine": 272}
    assert all(len(i.options) == 4 for i in items)
    assert items[0].id == "mmlu_medical-anatomy-000"


def test_mmlu_medical_equals_the_csvs():
    csv_items = load_file(shared_file("mmlu_medical/final_via_MLILAB-FedLLM/test/anatomy_test.csv"))
    ours = [i for i in load_benchmark("mmlu_medical") if i.metadata["subject"] == "anatomy"]
    assert [(i.question, i.options, i.answer) for i in csv_items] == [(i.question, i.options, i.answer) for i in ours]


def test_headqa():
    items = load_benchmark("headqa")
    assert len(items) == 2742 and all(len(i.options) == 4 for i in items)
    assert len({i.metadata["category"] for i in items}) == 6
    assert sum("image" in i.metadata for i in items) == 67
    first = items[0]
    assert first.id == "headqa-Cuaderno_2016_1_B-1" and first.options["B"] == "Collagen" and first.answer == "B"


def test_aliases_and_view_share_a_file():
    assert [i.id for i in load_benchmark("MMLU-Pro", limit=3)] == [i.id for i in load_benchmark("mmlu_pro", limit=3)]
    assert BENCHMARKS["pubmedqa_test"].filename == BENCHMARKS["pubmedqa"].filename


# ---- user-supplied formats ----

@pytest.mark.parametrize("n", [4, 5])
def test_medbullets_csv_jsonl_and_column_json_agree(n):
    csv_items = load_file(shared_file(f"medbullets/medbullets_op{n}.csv"))
    col_items = load_file(shared_file(f"medbullets/medbullets_op{n}.json"))
    jsonl_items = load_file(shared_file(f"medreason_eval/medbullets_op{n}.jsonl"))
    assert len(csv_items) == len(col_items) == len(jsonl_items) == 308
    assert all(len(i.options) == n for i in csv_items)
    assert csv_items[0].id == f"medbullets_op{n}-0000" and set(csv_items[0].metadata) == {"link", "explanation"}
    assert [(i.question, i.options, i.answer) for i in csv_items] == \
        [(i.question, i.options, i.answer) for i in col_items]
    assert [(i.question.strip(), i.options, i.answer) for i in csv_items] == \
           [(i.question.strip(), i.options, i.answer) for i in jsonl_items]


def test_medxpertqa_label_is_the_answer():
    items = load_file(shared_file("medreason_eval/MedXpertQA_test.jsonl"))
    assert len(items) == 1449 and all(list(i.options) == list("ABCDEFGHIJ") for i in items)
    assert items[0].id == "Text-1001" and items[0].answer == "B"
    assert "label" not in items[0].metadata and items[0].metadata["question_type"] == "Understanding"


def test_hle_biomed_file():
    items = load_file(shared_file("medreason_eval/HLE_biomed.jsonl"))
    assert len(items) == 103 and all(i.answer in i.options for i in items)


def test_hle_answer_with_letter_prefix(tmp_path):
    options = [f"choice {k}" for k in range(12)]
    rows = [{"idx": 7, "question": "q1", "options": options, "answer": "C. choice 2\n"},
            {"idx": 8, "question": "q2", "options": options, "answer": "K. choice 10\n", "answer_idx": "K"},
            {"idx": 9, "question": "q3", "options": dict(zip("ABCDE", options)), "answer": "(E) choice 4"}]
    path = tmp_path / "hle.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_file(path)
    assert [i.answer for i in items] == ["C", "K", "E"]
    assert len(items[0].options) == 12 and items[0].metadata == {"idx": 7}


def test_answer_prefix_naming_no_option(tmp_path):
    path = tmp_path / "hle.jsonl"
    path.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": "F. foo"}) + "\n")
    with pytest.raises(M1Error, match=r'hle\.jsonl line 1: field "answer" \("F\. foo"\) is neither'):
        load_file(path)


def eval_format(n_options: int) -> dict:
    row = {"question": "Which?", "options": {k: f"opt {k}" for k in string.ascii_uppercase[:n_options]},
           "answer_idx": "B", "answer": "opt B"}
    return {"GPQA_Medical_test": [row, {**row, "answer_idx": "A", "answer": "opt A"}]}


def test_user_benchmarks_from_data_dir(tmp_path, monkeypatch):
    (tmp_path / "gpqa.json").write_text(json.dumps(eval_format(4)))
    (tmp_path / "nejm.json").write_text(json.dumps(eval_format(2)["GPQA_Medical_test"]))
    (tmp_path / "lancet.jsonl").write_text(json.dumps(eval_format(12)["GPQA_Medical_test"][0]) + "\n")
    gpqa = load_benchmark("gpqa", data_dir=tmp_path)
    assert [i.id for i in gpqa] == ["gpqa-0000", "gpqa-0001"] and [i.answer for i in gpqa] == ["B", "A"]
    assert all(i.source == "gpqa" for i in gpqa)
    assert len(load_benchmark("nejm", data_dir=str(tmp_path))) == 2
    assert len(load_benchmark("lancet", data_dir=tmp_path)[0].options) == 12
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert len(load_benchmark("gpqa_medical")) == 2  # alias, found through the environment


def test_upstream_file_names_and_gzip(tmp_path):
    shutil.copy(shared_file("medreason_eval/MedXpertQA_test.jsonl"), tmp_path / "MedXpertQA_test.jsonl")
    shutil.copy(shared_file("medbullets/medbullets_op4.csv"), tmp_path / "medbullets_op4.csv")
    (tmp_path / "medbullets_op5.jsonl.gz").write_bytes(
        gzip.compress(shared_file("medreason_eval/medbullets_op5.jsonl").read_bytes()))
    items = load_benchmark("medxpertqa", data_dir=tmp_path)
    assert len(items) == 1449 and items[0].id == "medxpertqa-Text-1001" and items[0].source == "medxpertqa"
    assert len(load_benchmark("medbullets_op4", data_dir=tmp_path, limit=10, seed=1)) == 10
    assert len(load_benchmark("medbullets_op5", data_dir=tmp_path)) == 308


def test_missing_user_benchmark_says_what_to_do(tmp_path):
    with pytest.raises(M1Error) as e:
        load_benchmark("gpqa", data_dir=tmp_path)
    message = str(e.value)
    assert "gpqa.json" in message and str(tmp_path) in message and ENV_VAR in message and "\n" not in message
    with pytest.raises(M1Error, match=f"{ENV_VAR} is not set"):
        load_benchmark("medxpertqa")


# ---- CSV problems are one-line errors too ----

@pytest.mark.parametrize("text, message", [
    ("stem,opa,opb,answer_idx\nx,a,b,A\n", r'q\.csv line 1: no "question" column'),
    ('question,opa,opb,answer_idx\n"multi\nline",a,b,A\nq2,a,b,C\n',
     r'q\.csv line 4: field "answer_idx" is "C", not one of the options A, B'),
    ("question,opa,opb,answer_idx\nq,a,b,A,extra\n", r"q\.csv line 2: 5 cells but the header names 4 columns"),
])
def test_csv_problems_name_their_line(tmp_path, text, message):
    path = tmp_path / "q.csv"
    path.write_text(text)
    with pytest.raises(M1Error, match=message):
        load_file(path)


def test_csv_letter_and_choice_columns(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,A,B,C,answer\nq1,x,y,,B\n")
    item = load_file(path)[0]
    assert item.options == {"A": "x", "B": "y"} and item.answer == "B"  # an empty cell is no option
    path.write_text("question,choice0,choice1,choice2,answer\nq1,x,y,z,2\n")
    assert load_file(path)[0].answer == "C"  # MMLU CSVs count from 0


# ---- registry and suites ----

def test_m1_suite_is_the_papers_ten():
    assert SUITES["m1"] == ["medmcqa", "medqa", "pubmedqa", "mmlu_pro", "gpqa", "lancet", "medbullets_op4",
                            "medbullets_op5", "medxpertqa", "nejm"]
    assert all(name in BENCHMARKS for name in SUITES["m1"])
    groups = {name: BENCHMARKS[name].group for name in SUITES["m1"]}
    assert [n for n, g in groups.items() if g == "in-distribution"] == ["medmcqa", "medqa", "pubmedqa"]


def test_resolve_suite_names_the_missing(tmp_path):
    assert resolve_suite("m1") == (["medmcqa", "medqa", "pubmedqa", "mmlu_pro"],
                                   ["gpqa", "lancet", "medbullets_op4", "medbullets_op5", "medxpertqa", "nejm"])
    (tmp_path / "medbullets_op4.csv").write_text("question,opa,opb,answer_idx\nq,a,b,A\n")
    (tmp_path / "nejm.json.gz").write_bytes(b"")  # presence is by name; loading checks the content
    present, missing = resolve_suite("M1", tmp_path)
    assert present == ["medmcqa", "medqa", "pubmedqa", "mmlu_pro", "medbullets_op4", "nejm"]
    assert missing == ["gpqa", "lancet", "medbullets_op5", "medxpertqa"]
    with pytest.raises(M1Error, match='unknown suite "paper"; known suites: m1'):
        resolve_suite("paper")


def test_suite_ids_are_unique_across_benchmarks():
    ids = [i.id for name in resolve_suite("m1")[0] for i in load_benchmark(name)]
    assert len(ids) == len(set(ids))


def test_list_benchmarks(tmp_path):
    (tmp_path / "gpqa.json").write_text("[]")
    rows = {r["name"]: r for r in list_benchmarks(tmp_path)}
    assert set(rows) == set(BENCHMARKS)
    assert rows["medqa"]["present"] is True and rows["gpqa"]["present"] is True and rows["nejm"]["present"] is False
    test = rows["pubmedqa_test"]
    assert (test["group"], test["split"], test["size"], test["shipped"]) == ("in-distribution", "test", 500, True)
    assert rows["hle"]["file"] == "hle.jsonl"
    assert all({"name", "group", "split", "size", "present"} <= set(r) for r in rows.values())


def test_registry_entries_print_readably():
    assert "1273 questions" in str(BENCHMARKS["medqa"]) and "shipped" in str(BENCHMARKS["medqa"])
    assert "gpqa.json" in str(BENCHMARKS["gpqa"]) and ENV_VAR in str(BENCHMARKS["gpqa"])
    assert all("\n" not in str(b) for b in BENCHMARKS.values())


# ---- packaging ----

def test_a_wheel_finds_the_data():
    """Every shipped file sits where importlib.resources looks and matches pyproject's package-data."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["m1.benchmarks"]
    data = resources.files("m1.benchmarks") / "data"
    needed = {b.filename for b in BENCHMARKS.values() if b.filename is not None} | {"PROVENANCE.md"}
    needed |= {p.name for p in Path(str(data)).glob("LICENSE-*.txt")}
    for name in needed:
        assert (data / name).is_file(), name
        assert any(fnmatch.fnmatch(f"data/{name}", pattern) for pattern in patterns), name
    provenance = (data / "PROVENANCE.md").read_text()
    assert all(name in provenance for name in needed - {"PROVENANCE.md"})


def test_no_gpqa_or_hle_shipped():
    names = [p.name.lower() for p in Path(str(resources.files("m1.benchmarks") / "data")).iterdir()]
    assert not [n for n in names if "gpqa" in n or "hle" in n or "last_exam" in n]


def test_build_is_reproducible(tmp_path, monkeypatch):
    from m1.benchmarks import build_data

    src = shared_data()
    monkeypatch.setattr(build_data, "OUT", tmp_path)
    build_data.main(src)
    data = Path(str(resources.files("m1.benchmarks") / "data"))
    for name in build_data.BUILDS:
        built, shipped = (tmp_path / name).read_bytes(), (data / name).read_bytes()
        # Same content; the gzip bytes may differ only with another zlib, so compare inside.
        assert gzip.decompress(built) == gzip.decompress(shipped), name
        assert shipped[4:8] == b"\0\0\0\0" and not shipped[3] & 0x08, name  # mtime 0, no file name


def test_user_benchmark_file_with_several_sources(tmp_path):
    doc = {**eval_format(4), "PubMedQA_test": eval_format(3)["GPQA_Medical_test"]}
    (tmp_path / "gpqa.json").write_text(json.dumps(doc))
    with pytest.raises(M1Error, match=r'holds several sources \(GPQA_Medical_test, PubMedQA_test\); '
                                      r'a file for benchmark "gpqa"'):
        load_benchmark("gpqa", data_dir=tmp_path)


def test_label_is_the_answer_only_without_answer_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"question": "q", "options": ["x", "y"], "label": "b"},
            {"question": "q", "options": ["x", "y"], "answer": "x", "label": "easy"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_file(path)
    assert [i.answer for i in items] == ["B", "A"]
    assert items[0].metadata == {} and items[1].metadata == {"label": "easy"}


@pytest.mark.parametrize("make", ["missing", "file"])
def test_benchmarks_with_a_data_dir_that_is_no_folder_is_one_line_and_exit_2(tmp_path, capsys, make):
    from m1.cli import main

    target = tmp_path / "data"
    if make == "file":
        target.write_text("not a folder")
    code = main(["benchmarks", "--data-dir", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(target) in err and len(err.splitlines()) == 1, err
    assert ("does not exist" if make == "missing" else "is a file") in err
