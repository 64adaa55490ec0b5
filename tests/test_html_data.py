"""The report page's data block, without a browser: a budget sweep's thinking stored once, and
what the page shows (trace fields, metrics columns, sections) carried by the data."""
import base64
import dataclasses
import fnmatch
import hashlib
import json
from pathlib import Path

import pytest

from m1.reporting import html
from m1.reporting.html import build_data, script_json
from m1.reporting.metrics import COLUMNS
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]

BUDGETS = [64, 128, 256, 512]


def record(qid, budget, thinking):
    return {"id": qid, "source": "medqa", "budget": budget, "gold": "A", "options": {"A": "x", "B": "y"},
            "prompt": f"<user>{qid}</user>", "thinking": thinking, "thinking_tokens": budget, "answer": "A",
            "outcome": "correct", "correct": True}


def as_run(records):
    return Run(Path("run"), {}, [Trace.from_json(r) for r in records])


def sliced(full: str, units: int) -> str:
    """What JavaScript's String.slice(0, units) gives: units are UTF-16 code units."""
    return full.encode("utf-16-le")[: 2 * units].decode("utf-16-le")


def test_sweep_thinking_is_stored_once_and_sliced_back_exactly():
    words = "fever 🩺 renal naïve biopsy".split()
    records = []
    for q in range(10):
        sweep = [words[(q + i) % len(words)] for i in range(40)]
        records += [record(f"q{q}", b, " ".join(sweep[: 10 * (k + 1)])) for k, b in enumerate(BUDGETS)]
    records.append(record("q0", 1024, "a different path"))  # not a prefix of anything: kept whole
    data = build_data([as_run(records)], {})
    by_key = {(r["id"], r["budget"]): r["thinking"] for r in records}
    refs, referenced = 0, 0
    for t in data["traces"]:
        want = by_key[(data["questions"][t["q"]]["id"], t["budget"])]
        th = t["thinking"]
        if isinstance(th, dict):
            refs += 1
            referenced += len(script_json(want))
            anchor = data["traces"][th["prefix_of"]]
            assert isinstance(anchor["thinking"], str) and anchor["q"] == t["q"]
            assert sliced(anchor["thinking"], th["units"]) == want
        else:
            assert th == want
    assert refs == 10 * (len(BUDGETS) - 1)  # each question's longest sweep trace carries the text
    saved = len(script_json(build_data_without_sharing(records))) - len(script_json(data))
    assert saved > 0.8 * referenced  # the shorter texts are gone from the page, bar a small reference each


def build_data_without_sharing(records):
    """The same block with every thinking text kept whole (what the page held before)."""
    data = build_data([as_run(records)], {})
    by_key = {(r["id"], r["budget"]): r["thinking"] for r in records}
    for t in data["traces"]:
        t["thinking"] = by_key[(data["questions"][t["q"]]["id"], t["budget"])]
    return json.loads(json.dumps(data))


# ---------------------------------------------------------------- what the page shows comes with the data

def test_every_trace_field_is_shown_once():
    d = html.detail_fields()
    stats = [s["key"] for s in d["stats"]]
    blocks = [k for b in d["blocks"] for k in b["keys"]]
    placed = stats + blocks + d["elsewhere"]
    # every field, and the active score's views (flat in the page's record)
    assert sorted(placed) == sorted([*(f.name for f in dataclasses.fields(Trace)), *html.SCORE_VIEWS])
    assert stats[:3] == ["gold", "letter", "rule"]
    by_key = {s["key"]: s for s in d["stats"]}
    assert by_key["letter"]["label"] == "extracted" and by_key["hit_budget"]["kind"] == "flag"
    assert by_key["thinking_tokens"]["of"] == "budget"


def test_a_new_trace_field_shows_without_touching_the_script():
    @dataclasses.dataclass(frozen=True)
    class Judged(Trace):
        judge_label: str = ""
        judge_agrees: bool = False

    stats = html.detail_fields(Judged)["stats"]
    assert stats[-2:] == [{"key": "judge_label", "label": "judge label"},
                          {"key": "judge_agrees", "label": "judge agrees", "kind": "flag"}]


def test_metric_columns_cover_the_metrics():
    cols = html.metric_columns(several_runs=True)
    assert cols[0]["keys"] == ["run"]
    assert sorted(k for c in cols[1:] for k in c["keys"]) == sorted(COLUMNS)
    assert {"label": "95% CI", "keys": ["ci_low", "ci_high"], "kind": "range3"} in cols
    new = html.metric_columns(False, [*COLUMNS, "mean_rounds_forced"])
    assert new[-1] == {"label": "mean rounds forced", "keys": ["mean_rounds_forced"], "kind": "num"}


def test_sections_in_the_data_block():
    records = [record(f"q{q}", b, "x" * b) for q in range(3) for b in BUDGETS]
    runs = [as_run(records), Run(Path("other"), {}, [Trace.from_json(r) for r in records[:4]])]
    runs[0].name, runs[1].name = "a/run", "b/run"
    table = Table("t", ["budget", "accuracy", "note", "p"],
                  [{"budget": 64, "accuracy": 1.0, "note": "<b>", "p": None}, {"budget": 128, "accuracy": 0.5}])
    links = [TraceLink("b/run", "medqa", "q0", 128, "why"), TraceLink("a/run", "medqa", "q2", 512, ""),
             TraceLink("c/run", "medqa", "q0", 64, "no such run"), TraceLink("a/run", "medqa", "q9", 64, "none")]
    section = Section("probe", "Probe", "one\n\ntwo", [table], {"fig": object(), "unrendered": object()}, links)
    data = build_data(runs, {}, [section], {"fig": b"\x89PNG"})
    (s,) = data["sections"]
    assert s["tables"] == [{"name": "t", "caption": "", "columns": ["budget", "accuracy", "note", "p"],
                            "kinds": ["int", "num", "text", "text"],
                            "rows": [[64, 1.0, "<b>", None], [128, 0.5, None, None]]}]
    assert [im["key"] for im in s["images"]] == ["fig"]
    found = [link["trace"] for link in s["links"]]
    assert found[2:] == [None, None]
    for link, j in zip(s["links"][:2], found[:2]):
        t = data["traces"][j]
        q = data["questions"][t["q"]]
        assert (data["runs"][q["run"]]["name"], q["source"], q["id"], t["budget"]) == \
            (link["run"], link["source"], link["id"], link["budget"])


def test_page_embeds_the_viewer_files_with_the_scripts_hash(tmp_path):
    page = html.write_html(tmp_path / "report.html", [as_run([record("q0", 64, "t")])], {}).read_text()
    script, style = html.viewer_file("report.js"), html.viewer_file("report.css")
    assert page.endswith("<script>" + script + "</script>\n</body>\n</html>\n")
    assert "<style>" + style + "</style>" in page
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in page


def test_viewer_files_ship_as_package_data():
    """A non-editable install carries what the page reads: pyproject's package-data names them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text()) if tomllib else None
    if pyproject is None:
        pytest.skip("tomllib needs Python 3.11")
    globs = pyproject["tool"]["setuptools"]["package-data"]["m1.reporting"]
    for name in ("report.js", "report.css"):
        assert any(fnmatch.fnmatch(f"viewer/{name}", g) for g in globs), name
        assert (ROOT / "src/m1/reporting/viewer" / name).is_file()


def test_a_closing_tag_in_a_viewer_file_is_refused(monkeypatch):
    class Fake:
        def __truediv__(self, other):
            return self

        def read_text(self, encoding):
            return "const x = '</SCRIPT>';"

    monkeypatch.setattr(html.resources, "files", lambda package: Fake())
    with pytest.raises(ValueError, match="would end its tag"):
        html.viewer_file("report.js")
