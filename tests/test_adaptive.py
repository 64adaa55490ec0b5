"""Online adaptive budgets (`m1 eval --adaptive`) on the real embedded model: each question stops
where the offline replay of a dense one-pass sweep (thinking.policies.simulate) stops, with the
same answer, under greedy decoding."""
import pytest

from m1.config import EvalConfig, parse_budgets
from m1.evaluate import evaluate
from m1.thinking.policies import BUDGET, NATURAL_END, Confidence, Deer, Stable, policy_spec, simulate

EVERY, CAP = 16, 96
# plain format: SmolLM2 writes its reasoning and answer as one text, long enough for several probes.
BASE: dict = dict(limit=6, seed=3, format="plain", answer_max_tokens=12)


@pytest.fixture(scope="module")
def dense(engine, tmp_path_factory):
    return evaluate(EvalConfig(budgets=parse_budgets(f"{EVERY}:{CAP}:{EVERY}"), **BASE),
                    out=tmp_path_factory.mktemp("dense"), engine=engine)


@pytest.mark.parametrize("policy", [Stable(2, EVERY), Confidence(0.5, EVERY),
                                    Deer(0.3, ("The", "So", "Therefore", "However"), EVERY)],
                         ids=str)
def test_online_adaptive_stops_where_the_offline_replay_does(engine, dense, tmp_path, policy):
    online = evaluate(EvalConfig(budgets=(CAP,), adaptive=policy_spec(policy), **BASE),
                      out=tmp_path / "online", engine=engine)
    assert len(online.traces) == 6 and all(t.budget == CAP for t in online.traces)
    by_question: dict[str, list] = {}
    for t in dense.traces:
        by_question.setdefault(t.id, []).append(t)
    for t in online.traces:
        off = simulate(policy, by_question[t.id])
        assert t.probes is not None
        assert (t.stopped_by, t.letter, t.correct) == (off.reason, off.letter, off.correct), t.id
        assert t.thinking_tokens == off.tokens
        assert len(t.probes) == off.probes
        assert t.thinking_tokens <= CAP
        if t.stopped_by not in (NATURAL_END, BUDGET):
            assert t.thinking_tokens % EVERY == 0 and t.probes[-1]["letter"] == t.letter
    # Each policy stops somewhere before the cap on some question, or the test shows nothing.
    assert any(t.stopped_by == policy.reason for t in online.traces) or isinstance(policy, Deer)


def test_adaptive_needs_one_budget_and_a_checkpoint():
    from m1.errors import M1Error

    with pytest.raises(M1Error, match="one budget, the cap"):
        EvalConfig(budgets=(32, 64), adaptive="stable=2,every=16")
    with pytest.raises(M1Error, match="did you mean 'stable'"):
        EvalConfig(budgets=(64,), adaptive="stabel=2,every=16")
    with pytest.raises(M1Error, match="past the cap"):
        EvalConfig(budgets=(64,), adaptive="stable=2,every=128")
    with pytest.raises(M1Error, match="--independent"):
        EvalConfig(budgets=(64,), adaptive="stable=2,every=16", method="independent")
