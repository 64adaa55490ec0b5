"""The typed run model: traces of every schema load, round-trip, and re-grade without a model."""
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
