"""The typed run model: traces of every schema load, round-trip, and re-grade without a model."""
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import m1
from m1.errors import M1Error
from m1.runs import TRACE_SCHEMA, Run, Trace

OLD_RUN = Path(__file__).parent / "data" / "run_schema1"  # written by m1 before the typed model (chunk_size era)


def test_a_run_written_before_the_typed_model_loads_and_reports(tmp_path):
    folder = shutil.copytree(OLD_RUN, tmp_path / "old")
    before = (folder / "traces.jsonl").read_bytes()
    run = Run.load(folder)
    assert run.budgets == [32, 64, 128, 256] and len(run.traces) == 12
    raw = [json.loads(line) for line in before.decode().splitlines()]
    assert "forcing_rounds" in raw[0] and "schema" not in raw[0]
    t = run.traces[0]
    assert t.schema == TRACE_SCHEMA and t.rounds_forced == raw[0]["forcing_rounds"] and t.grader == "strict"
    assert [x.correct for x in run.traces] == [r["correct"] for r in raw]
    rep = m1.report([run], folder)
    assert (folder / "report.html").exists() and [r["budget"] for r in rep.rows] == [32, 64, 128, 256]
    assert (folder / "traces.jsonl").read_bytes() == before  # reporting never rewrites traces


def test_trace_round_trip_and_unknown_keys():
    t = Trace("q1", "medqa", 64, options={"A": "x", "B": "y"}, correct=True, outcome="correct", letter="A",
              option_logprobs={"A": -0.1, "B": -2.4}, forced_at=[10])
    assert Trace.from_json(json.loads(json.dumps(t.to_json()))) == t
    # A field a later m1 adds is ignored by this one rather than refused.
    assert Trace.from_json({**t.to_json(), "from_the_future": 1}) == t


def test_regraded_changes_grades_only():
    t = Trace("q1", "medqa", 64, gold="C", options={"A": "Hepatitis B", "B": "Colitis", "C": "Vitamin A deficiency"},
              graded_text="The answer is vitamin A, clearly.", outcome="unparsed")
    run = Run(Path("r"), {"grader": "strict"}, [t])
    m1_run = run.regraded("m1")
    assert m1_run.traces[0].letter == "A" and m1_run.traces[0].outcome == "wrong"
    assert m1_run.grader == "m1" and m1_run.config["grader"] == "m1"
    assert run.traces[0].outcome == "unparsed"  # the original is untouched
    with pytest.raises(M1Error, match="unknown grader"):
        run.regraded("lenient")


def test_the_main_job_keeps_its_run_folder_across_versions():
    # runs/medqa-llamacpp-smollm2-135m-plain-96c0bae4 was written by m1 before the grader and adaptive
    # settings existed: the same command must find (and resume) that folder, not start a new one.
    from m1.config import EvalConfig
    from m1.evaluate import default_run_dir

    assert default_run_dir(EvalConfig().resolved()).name == "medqa-llamacpp-smollm2-135m-plain-96c0bae4"
    assert EvalConfig(grader="m1").resolved().fingerprint() == "96c0bae4"  # the grader is applied afterwards


def _Described(model) -> Any:
    """Only what reconcile reads of an engine: its description."""
    return SimpleNamespace(describe=lambda: {"engine": "llamacpp", "model": model})


def test_an_engine_from_a_notebook_is_reconciled_with_the_config(tmp_path):
    from m1.config import EvalConfig
    from m1.engines.llamacpp import embedded_model_path
    from m1.evaluate import default_run_dir, reconcile

    other = reconcile(EvalConfig(), _Described(str(tmp_path / "Qwen2.5-0.5B.Q4_K_M.gguf")))
    assert str(other.model).endswith("Qwen2.5-0.5B.Q4_K_M.gguf") and other.format == "m1"  # auto decided for that model
    assert default_run_dir(other).name.startswith("medqa-llamacpp-Qwen2.5-0.5B.Q4_K_M-m1-")
    embedded = reconcile(EvalConfig(), _Described(str(embedded_model_path())))
    assert embedded.model is None and embedded.format == "plain"
    assert reconcile(EvalConfig(format="s1"), _Described("/x/y.gguf")).format == "s1"  # what the user chose stays
    assert reconcile(EvalConfig(), None).format == "plain"


# ---------------------------------------------------------------- scores beside traces (schema 4)

OPTS = {"A": "Hepatitis B", "B": "Colitis", "C": "Vitamin A deficiency"}


def _schema3_line(qid: str, text: str, **over) -> dict:
    """A traces.jsonl line as m1 wrote it before scores: the grades flat in the record."""
    from m1.benchmarks.items import Item
    from m1.grading import score

    s = score(text, Item(qid, "q", OPTS, "C", "medqa"), over.get("grader", "strict"))
    return {"id": qid, "source": "medqa", "budget": 64, "gold": "C", "options": OPTS, "question": "q",
            "prompt": "p", "thinking": "t", "answer": text, "graded_text": text, "letter": s.letter,
            "outcome": s.outcome, "rule": s.rule, "correct": s.correct, "grader": "strict", "schema": 3, **over}


def test_a_schema_3_line_loads_with_its_score():
    from m1.grading import Score

    t = Trace.from_json(_schema3_line("q1", "The answer is vitamin A, clearly.", grader="m1", letter="A",
                                      outcome="wrong", rule="answer_is", correct=False))
    assert t.scores == {"m1": Score("m1", "A", "wrong", "answer_is", False)} and t.grader == "m1"
    assert (t.letter, t.outcome, t.rule, t.correct, t.schema) == ("A", "wrong", "answer_is", False, TRACE_SCHEMA)
    line = t.to_json()  # written again, the grades sit under scores only
    assert line["scores"] == {"m1": {"letter": "A", "outcome": "wrong", "rule": "answer_is", "correct": False}}
    assert not {"letter", "outcome", "rule", "correct", "grader"} & set(line)
    assert Trace.from_json(line) == t


def test_the_active_grader_switches_the_views_without_rewriting(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"grader": "strict", "budgets": [64]}}))
    (folder / "traces.jsonl").write_text("".join(json.dumps(_schema3_line(q, text)) + "\n" for q, text in [
        ("q1", "Final Answer: C"), ("q2", "The answer is vitamin A, clearly."),
        ("q3", "Final Answer: Vitamin A deficiency")]))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    run = Run.load(folder)
    assert run.grader == "strict" and [t.correct for t in run.traces] == [True, False, True]
    assert [t.outcome for t in run.traces] == ["correct", "unparsed", "correct"]
    m1_run = run.scored_by("m1")  # the m1 grader reads q2 as A, graded now, in memory
    assert m1_run.grader == "m1" and [t.outcome for t in m1_run.traces] == ["correct", "wrong", "correct"]
    assert [t.letter for t in m1_run.traces] == ["C", "A", "C"] and set(m1_run.traces[1].scores) == {"strict", "m1"}
    assert Run.load(folder, "m1").traces == m1_run.traces  # the same, asked for at load
    assert run.traces[1].outcome == "unparsed"  # the run it came from still shows strict
    assert m1_run.scored_by("strict").traces == [t.scored("strict") for t in m1_run.traces]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_the_old_constructor_keywords_set_the_active_score():
    from m1.grading import Score

    t = Trace("q", "s", 8, correct=True)  # as tests and notebooks built traces before scores
    assert t.scores == {"strict": Score("strict", correct=True)} and t.correct and t.outcome == "unparsed"
    assert dataclasses.replace(t, outcome="correct").score == Score("strict", None, "correct", None, True)  # type: ignore[call-arg]
    assert t.rescored(outcome="correct") == dataclasses.replace(t, outcome="correct")  # type: ignore[call-arg]
    bare = Trace("q", "s", 8)
    assert bare.scores == {} and (bare.correct, bare.outcome, bare.letter) == (False, "unparsed", None)
    assert Trace(**vars(t)) == t


def test_eval_writes_scores_and_a_resume_with_another_grader_rewrites_nothing(tmp_path, monkeypatch):
    from m1.config import EvalConfig
    from m1.engines.fake import FakeEngine
    from m1.evaluate import evaluate

    monkeypatch.setattr("m1.reporting.report.report", lambda *args, **kwargs: None)  # tested elsewhere
    out, base = tmp_path / "run", dict[str, Any](budgets=(16, 48), answer_max_tokens=6, format="m1")
    eng = FakeEngine(capacity=4)
    try:
        first = evaluate(EvalConfig(limit=3, **base), out=out, engine=eng)
        written = (out / "traces.jsonl").read_bytes()
        lines = [json.loads(x) for x in written.decode().splitlines()]
        assert len(lines) == 6 and all(set(x["scores"]) == {"strict"} and x["schema"] == TRACE_SCHEMA for x in lines)
        assert not {"letter", "outcome", "correct", "grader"} & set(lines[0])
        assert [t.score for t in first.traces] == [t.score for t in Run.load(out).traces]
        # Resumed (after a crash that left one question) with the m1 grader: the old lines stay as they
        # were; the new ones carry m1's score; the run reads every trace with m1's.
        written = b"".join(written.splitlines(keepends=True)[:2])
        (out / "traces.jsonl").write_bytes(written)
        again = evaluate(EvalConfig(limit=3, grader="m1", **base), out=out, engine=eng)
    finally:
        eng.close()
    now = (out / "traces.jsonl").read_bytes()
    assert now.startswith(written) and not (out / "scores.jsonl").exists()
    new = [json.loads(x) for x in now[len(written):].decode().splitlines()]
    assert len(new) == 4 and all(set(x["scores"]) == {"m1"} for x in new)
    assert len(again.traces) == 6 and {t.grader for t in again.traces} == {"m1"} and again.grader == "m1"
    # eval's scores are the one grading function's; the strict ones of the new traces are graded on read
    from m1.runs import grade_trace

    strict = Run.load(out, "strict").traces
    assert all(t.scores[g] == grade_trace(t, g) for t in strict for g in t.scores) and len(strict) == 6
    assert sum(set(t.scores) == {"strict", "m1"} for t in strict) == 4
