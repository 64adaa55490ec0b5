"""Grading: read the model's chosen letter from its answer text and score it.

Two graders share the signature grade(text, item) -> Grade:
  "strict"  ours (the default): reads a letter only where the model clearly chose one.
  "m1"      the official m1 / HuatuoGPT-o1 scorer's decisions, for comparison with the paper.
`score(text, item, grader)` grades with one by name and returns the typed Score a trace keeps
beside what was generated (runs.Trace.scores).
"""
from typing import Callable

from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.grading import m1_compat, strict
from m1.grading.score import Score, score
from m1.grading.strict import Grade, extract_letter, grade

Grader = Callable[[str, Item], Grade]

GRADERS: dict[str, Grader] = {"strict": strict.grade, "m1": m1_compat.grade}


def get_grader(name: str) -> Grader:
    try:
        return GRADERS[name]
    except KeyError:
        raise M1Error(f"unknown grader {name!r}; choose one of: {', '.join(GRADERS)}") from None


__all__ = ["GRADERS", "Grade", "Grader", "Score", "extract_letter", "get_grader", "grade", "score"]
