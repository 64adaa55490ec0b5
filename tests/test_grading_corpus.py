"""Both graders on a corpus of model answers (tests/data/grading_corpus.jsonl).

Each line: text, options, gold, the letter the strict grader should read ("strict", null =
unparsed), the letter the official m1 scorer picks ("m1", written from its rules: see
m1.grading.m1_compat) and why. A line with "strict_issue" is a known strict-grader gap: the
strict test is an xfail(strict=True), so it turns red once strict.py learns the case.
"""
import json
from pathlib import Path

import pytest

from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.grading import GRADERS, get_grader, m1_compat, strict

CORPUS = [json.loads(line)
          for line in (Path(__file__).parent / "data" / "grading_corpus.jsonl").read_text().splitlines()
          if line.strip()]


def _item(case: dict) -> Item:
    return Item(id="c", question="q", options=case["options"], answer=case["gold"], source="corpus")


def _param(case: dict, mode: str):
    marks = []
    if mode == "strict" and case.get("strict_issue"):
        marks = [pytest.mark.xfail(reason=case["strict_issue"], strict=True)]
    return pytest.param(case, marks=marks, id=case["text"][:40])


def test_corpus_size_and_shape():
    assert len(CORPUS) >= 170
    for case in CORPUS:
        assert {"text", "options", "gold", "strict", "m1", "why"} <= set(case)
        assert case["gold"] in case["options"]


@pytest.mark.parametrize("case", [_param(c, "strict") for c in CORPUS])
def test_strict(case):
    g = strict.grade(case["text"], _item(case))
    assert g.letter == case["strict"], case["why"]
    assert strict.extract_letter(case["text"], case["options"]) == case["strict"]
    expected = "unparsed" if case["strict"] is None else "correct" if case["strict"] == case["gold"] else "wrong"
    assert g.outcome == expected


@pytest.mark.parametrize("case", [_param(c, "m1") for c in CORPUS])
def test_m1(case):
    g = m1_compat.grade(case["text"], _item(case))
    assert g.letter == case["m1"], f"{case['why']} (rule {g.rule})"
    # The official scorer always picks something; correct exactly when it is the gold letter.
    assert g.outcome == ("correct" if case["m1"] == case["gold"] else "wrong")


def test_registry():
    assert GRADERS["strict"] is strict.grade and GRADERS["m1"] is m1_compat.grade
    assert get_grader("m1") is m1_compat.grade
    with pytest.raises(M1Error, match="unknown grader"):
        get_grader("lenient")


@pytest.mark.parametrize("text, extracted", [
    ("so \\boxed{B}.", "B"),
    ("\\boxed{\\text{C}}", "C"),
    ("\\boxed{x = C}", "C"),  # the part after the last "="
    ("\\boxed{ C }", " C "),  # not stripped
    ("\\boxed{A} then \\boxed{D}", "D"),
    ("cut off \\boxed{B", "cut off \\boxed{B"),  # unclosed: the whole text
    ("no box at all", "no box at all"),
    ("see \\fbox{B} here", "\\fbox{B}"),  # found, but only \boxed{ is unwrapped
])
def test_m1_extract_answer(text, extracted):
    assert m1_compat.extract_answer(text) == extracted


def test_m1_extract_letter_has_no_gold_shortcuts():
    traps = CORPUS[0]["options"] | {"A": "Hepatitis B infection"}
    # grade() with gold A accepts the exact gold text; without the gold the letter rule reads B.
    assert m1_compat.grade("Hepatitis B infection", Item("i", "q", traps, "A", "s")).letter == "A"
    assert m1_compat.extract_letter("Hepatitis B infection", traps) == "B"


def test_m1_option_without_text_is_dropped_like_the_official_parser():
    # "C. " strips to "C." and has no ". " to split at, so three options remain and the letter
    # rule looks for A-C only (by count, not by key): D comes from the fuzzy fallback.
    opts = {"A": "yes", "B": "no", "C": "", "D": "unclear"}
    item = Item("i", "q", opts, "A", "s")
    assert m1_compat.grade("Final Answer: C", item) == m1_compat.Grade("C", "wrong", "letter")
    assert m1_compat.grade("Final Answer: D", item) == m1_compat.Grade("D", "wrong", "fuzzy")


def test_m1_no_options_is_unparsed():
    g = m1_compat.grade("b", Item("i", "q", {}, "B", "s"))
    assert g.letter == "B" and g.outcome == "correct"  # one character: the gold shortcut still applies
    g = m1_compat.grade("I am not sure", Item("i", "q", {}, "B", "s"))
    assert (g.letter, g.outcome) == (None, "unparsed")
