"""Every question its own pipeline: the engine is refilled as sequences finish, each question's
records are on disk the moment it finishes, and the context evaluated stays near its minimum.
On the real embedded engine (SmolLM2-135M through llama.cpp)."""
import json

import pytest

from m1.config import EvalConfig
from m1.engines.llamacpp import LlamaCppEngine
from m1.evaluate import evaluate


class StepLog:
    """Wraps a stepped engine's `_advance` to see each decode step's batch."""

    def __init__(self, engine):
        self.engine, self.steps = engine, []
        self._advance = engine._advance
        engine._advance = self

    def __call__(self, new):
        out = self._advance(new)
        # sequences that took part in this step: still active + those that just finished
        self.steps.append(len(self.engine._active) + len(out))
        return out

    def undo(self):
        self.engine._advance = self._advance


@pytest.fixture(scope="module")
def four_slots():
    eng = LlamaCppEngine(n_slots=4, ctx_per_slot=1024)
    yield eng
    eng.close()


def test_slots_stay_full_while_questions_remain_and_records_land_as_questions_finish(tmp_path, four_slots):
    cfg = EvalConfig(limit=14, budgets=(16, 48), answer_max_tokens=12)
    log = StepLog(four_slots)
    seen = []

    def progress(done, total, load):
        on_disk = (tmp_path / "run" / "traces.jsonl")
        n = len(on_disk.read_text().splitlines()) if on_disk.exists() else 0
        seen.append((done, n, len(log.steps)))

    try:
        result = evaluate(cfg, out=tmp_path / "run", engine=four_slots, progress=progress)
    finally:
        log.undo()
    assert len(result.traces) == 28
    # Each progress report comes after that question's two records were appended.
    for done, n, _ in seen[1:]:
        assert n == 2 * done
    # While some question had not started yet, every decode step carried all four slots
    # (the chunked controller left them at a third full on this job).
    last_start_step = seen[-4][2]  # 4 questions in flight: the 4th last to finish started before this
    full = [n == 4 for n in log.steps[:last_start_step]]
    assert sum(full) >= 0.95 * len(full), log.steps[:last_start_step]
    load = json.loads((tmp_path / "run" / "metrics.json").read_text())["engine_load"]
    assert load["capacity"] == 4 and load["generated_tokens"] > 0
    assert load["while_questions_remain"]["occupancy"] > 0.85
    # Context evaluated: each prompt once, each answer only past its thinking cut.
    assert load["context_tokens"] <= 1.1 * load["context_minimum"], load


def test_pipelines_give_the_same_records_in_any_order(tmp_path, four_slots):
    """A question's tokens do not depend on its neighbours: one slot or four, same traces."""
    cfg = EvalConfig(limit=5, budgets=(8, 32), answer_max_tokens=10, forcing_rounds=1, format="m1")
    wide = evaluate(cfg, out=tmp_path / "wide", engine=four_slots)
    one = LlamaCppEngine(n_slots=1, ctx_per_slot=1024)
    try:
        narrow = evaluate(cfg, out=tmp_path / "narrow", engine=one)
    finally:
        one.close()
    key = lambda t: (t.id, t.budget)  # noqa: E731
    fields = ("thinking", "forced_at", "answer", "thinking_ended")
    assert [[getattr(t, f) for f in fields] for t in sorted(wide.traces, key=key)] == \
           [[getattr(t, f) for f in fields] for t in sorted(narrow.traces, key=key)]
