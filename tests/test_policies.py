"""Adaptive stopping policies on hand-made trajectories: where each stops, with which answer, and why."""
import math

import pytest

from m1.runs import Trace
from m1.thinking.policies import (
    BUDGET,
    CONFIDENT,
    NATURAL_END,
    STABLE,
    Confidence,
    Deer,
    Episode,
    Probe,
    Stable,
    added_text,
    confidence,
    missing_checkpoints,
    simulate,
)

OPTIONS = {"A": "a", "B": "b", "C": "c", "D": "d"}


def lp(top: str, p: float) -> dict[str, float]:
    """Option log-probabilities with `top` at probability p and the rest shared evenly."""
    rest = (1 - p) / 3
    return {k: math.log(p if k == top else rest) for k in "ABCD"}


def question(answers: str, gold: str = "A", step: int = 32, end: int | None = None, end_tokens: int | None = None,
             logprobs=None, texts=None) -> list[Trace]:
    """Traces of one question at budgets step, 2*step, ...: answers "A B - C" ("-": unparsed).
    end: index of the first budget whose thinking ended naturally, at end_tokens tokens (then every
    later budget holds the same trace, as in a cut sweep). logprobs[j] and texts[j]: the probe's
    option log-probabilities and the thinking text at budget j (default: 'w{j}' words)."""
    letters = [None if a == "-" else a for a in answers.split()]
    out, thinking = [], ""
    for j, letter in enumerate(letters):
        budget = step * (j + 1)
        k = j if end is None or j < end else end
        thinking = texts[k] if texts else " ".join(f"w{i}" for i in range(k + 1))
        natural = end is not None and j >= end
        tokens = (end_tokens or budget) if natural else budget
        letter = letters[k]
        out.append(Trace(id="q", source="s", budget=budget, gold=gold, options=OPTIONS, thinking=thinking,
                         thinking_tokens=tokens, thinking_ended="natural" if natural else "budget",
                         hit_budget=not natural, letter=letter, correct=letter == gold,
                         outcome="unparsed" if letter is None else "correct" if letter == gold else "wrong",
                         option_logprobs=logprobs[k] if logprobs else None))
    return out


# ---- Stable ----

def test_stable_stops_at_the_first_streak_of_m():
    out = simulate(Stable(2), question("A B B C C"))
    assert (out.letter, out.budget, out.tokens, out.reason, out.probes, out.correct) == ("B", 96, 96, STABLE, 3, False)
    out = simulate(Stable(3), question("A B B C C C A"))
    assert (out.letter, out.budget, out.reason) == ("C", 192, STABLE)


def test_stable_unparsed_breaks_a_streak_and_never_counts_as_one():
    out = simulate(Stable(3), question("A A - A A A B"))
    assert (out.letter, out.budget, out.reason) == ("A", 192, STABLE)
    out = simulate(Stable(2), question("- - - A B"))  # two unparsed in a row are no streak
    assert (out.letter, out.budget, out.reason, out.tokens) == ("B", 160, BUDGET, 160)


def test_stable_m1_stops_at_the_first_parsed_answer():
    assert simulate(Stable(1), question("- - C A")).budget == 96


def test_every_probes_only_at_its_multiples():
    # budgets 32..256; every=64: checkpoints 64, 128, 192, 256 see B, A, B, B
    ts = question("A B B A A B B B")
    out = simulate(Stable(2, every=64), ts)
    assert (out.budget, out.reason, out.probes, out.letter) == (256, STABLE, 4, "B")
    out = simulate(Stable(2, every=32), ts)  # every budget: B B at 64
    assert (out.budget, out.probes) == (96, 3)
    out = simulate(Stable(2, every=96), ts)  # checkpoints 96, 192: B, B
    assert (out.budget, out.probes) == (192, 2)


def test_natural_end_before_the_policy_fires():
    # thinking ends by itself at 50 tokens (between 32 and 64): stop there with that answer
    ts = question("C A x x", end=1, end_tokens=50)
    out = simulate(Stable(3), ts)
    assert (out.letter, out.correct, out.tokens, out.reason, out.budget, out.probes) == ("A", True, 50, NATURAL_END,
                                                                                          64, 1)


def test_never_fired_stops_at_the_largest_budget():
    out = simulate(Stable(2), question("A B A B"))
    assert (out.letter, out.tokens, out.reason, out.budget, out.probes) == ("B", 128, BUDGET, 128, 4)


def test_stable_decides_on_plain_tuples_too():
    history = [(32, "A", None, ""), (64, "A", None, "")]
    assert Stable(2).decide(history) and not Stable(3).decide(history)  # type: ignore[arg-type]


# ---- Confidence ----

def test_confidence_renormalises_over_the_options():
    assert confidence({"A": math.log(0.45), "B": math.log(0.05)}) == pytest.approx(0.9)
    # mass on a non-option token does not count when the options are given
    assert confidence({"A": math.log(0.3), "B": math.log(0.1), "E": math.log(0.6)}, ("A", "B")) == pytest.approx(0.75)
    assert confidence({"A": -math.inf, "B": math.log(0.2)}) == pytest.approx(1.0)
    assert confidence(None) is None and confidence({}) is None and confidence({"A": -math.inf}) is None


def test_confidence_stops_at_the_first_confident_parsed_probe():
    logprobs = [lp("B", 0.5), lp("A", 0.85), lp("A", 0.95), lp("A", 0.99)]
    out = simulate(Confidence(0.9), question("B A A A", logprobs=logprobs))
    assert (out.letter, out.budget, out.reason, out.correct, out.probes) == ("A", 96, CONFIDENT, True, 3)
    out = simulate(Confidence(0.8), question("B A A A", logprobs=logprobs))
    assert out.budget == 64
    out = simulate(Confidence(0.999), question("B A A A", logprobs=logprobs))
    assert (out.budget, out.reason) == (128, BUDGET)


def test_confidence_needs_a_parsed_letter_and_logprobs():
    logprobs = [lp("A", 0.99), None, lp("C", 0.97), lp("C", 0.97)]
    out = simulate(Confidence(0.9), question("- A C C", logprobs=logprobs))  # unparsed, then no logprobs
    assert (out.letter, out.budget, out.reason) == ("C", 96, CONFIDENT)
    out = simulate(Confidence(0.5), question("A A A A"))  # an engine without logprobs: never confident
    assert (out.reason, out.budget, out.probes) == (BUDGET, 128, 4)


# ---- Deer ----

TEXTS = ["First, the kidney.", "First, the kidney. It is renal but",  # lower-case "but": no switch
         "First, the kidney. It is renal but Wait, the liver.", "First, the kidney. It is renal but Wait, the "
         "liver. Butter is not a switch.", "First, the kidney. It is renal but Wait, the liver. Butter is not a "
         "switch. Hmm, so A."]


def test_deer_probes_only_after_a_switch_word():
    sure = [lp("A", 0.95)] * 5
    out = simulate(Deer(0.9), question("A A A A A", logprobs=sure, texts=TEXTS))
    assert (out.budget, out.reason, out.probes) == (96, CONFIDENT, 1)  # "Wait" first appears in the 3rd chunk
    unsure = [lp("A", 0.95), lp("A", 0.95), lp("A", 0.6), lp("A", 0.95), lp("A", 0.95)]
    out = simulate(Deer(0.9), question("A A A A A", logprobs=unsure, texts=TEXTS))
    assert (out.budget, out.reason, out.probes) == (160, CONFIDENT, 2)  # "Butter" in the 4th: not probed
    out = simulate(Deer(0.99), question("A A A A A", logprobs=sure, texts=TEXTS))
    assert (out.budget, out.reason, out.probes) == (160, BUDGET, 2)


def test_deer_switch_words_are_whole_case_sensitive_words():
    d = Deer(0.9)
    assert d.switched("ok. Wait, no") and d.switched("Hmm") and d.switched("x\nAlternatively y")
    assert not d.switched("but wait") and not d.switched("Waiting") and not d.switched("Butter")
    assert Deer(0.9, switch_words=("so",)).switched("and so on")


def test_deer_text_is_since_the_previous_checkpoint_not_the_previous_probe():
    # every=64: checkpoints 64 and 128; the switch word lands at 96, between them: seen at 128
    texts = ["a", "a b", "a b Wait c", "a b Wait c d"]
    out = simulate(Deer(0.9, every=64), question("A A A A", logprobs=[lp("A", 0.95)] * 4, texts=texts))
    assert (out.budget, out.probes) == (128, 1)


# ---- the loop, as the online mode drives it ----

def test_episode_online_equals_simulate():
    ts = question("A B B C C C", logprobs=[lp("B", 0.7)] * 6)
    for policy in (Stable(2), Stable(3, every=64), Confidence(0.6), Deer(0.6)):
        ep, stopped = Episode(policy, tuple(OPTIONS)), None
        for t in ts:
            if ep.checkpoint(t.budget, t.thinking) and ep.probe(t.letter, t.option_logprobs):
                stopped = t.budget
                break
        out = simulate(policy, ts)
        assert (stopped or ts[-1].budget) == out.budget and len(ep.history) == out.probes
        assert all(isinstance(p, Probe) and p.options == tuple(OPTIONS) for p in ep.history)


def test_episode_new_text_and_misuse():
    ep = Episode(Stable(2, every=10))
    assert not ep.checkpoint(5, "abc")  # not a checkpoint: the text is not consumed
    assert ep.checkpoint(10, "abcdef") and not ep.probe("A", None)
    assert ep.checkpoint(20, "abcdefgh") and ep.probe("A", None)
    assert [p.new_text for p in ep.history] == ["abcdef", "gh"]
    with pytest.raises(RuntimeError):
        ep.probe("A", None)


def test_added_text_when_decoding_differs_at_the_seam():
    assert added_text("abc", "abcde") == "de"
    assert added_text("abc\ufffd", "abcé and more") == "é and more"
    assert added_text("", "x") == "x" and added_text("same", "same") == ""


def test_missing_checkpoints_and_parameters():
    assert missing_checkpoints(Stable(2, every=64), [32, 64, 128, 256]) == [192]
    assert missing_checkpoints(Stable(2), [32, 64, 128]) == []
    assert str(Stable(3, every=32)) == "Stable(m=3, every=32)" and Confidence(0.9).params == "tau=0.9, every=each"
    for bad in (lambda: Stable(0), lambda: Stable(2, every=0), lambda: Confidence(1.5), lambda: Deer(0.9, ()),
                lambda: Confidence(0.9, every=True)):
        with pytest.raises(ValueError):
            bad()
