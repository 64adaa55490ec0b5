"""A grader's verdict on one trace, and the one function that grades.

As in Inspect AI, what a model generated and what a scorer made of it are kept apart: a trace
holds `scores: {grader: Score}`, one per grader that has read its graded text; grading again
with another grader adds a Score and changes nothing else (see m1.runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from m1.benchmarks.items import Item
from m1.grading.strict import Outcome


@dataclass(frozen=True)
class Score:
    """What `grader` read from a trace's graded text: the letter, whether it is the gold one,
    and the rule that read it. A Score(grader) with nothing else is the ungraded placeholder."""

    grader: str
    letter: str | None = None  # the extracted choice; None when nothing could be read
    outcome: Outcome = "unparsed"  # "correct" | "wrong" | "unparsed" (scored as wrong)
    rule: str | None = None  # the grader's rule that read the letter ("none" when none did)
    correct: bool = False

    @property
    def value(self) -> float:
        """The score as a number (1.0 right, 0.0 wrong or unparsed), as metrics average it."""
        return float(self.correct)

    def to_json(self) -> dict[str, Any]:
        """The verdict as stored under its grader's name (the name is the key, not repeated)."""
        return {"letter": self.letter, "outcome": self.outcome, "rule": self.rule, "correct": self.correct}

    @classmethod
    def from_json(cls, grader: str, d: dict[str, Any]) -> Score:
        outcome = d.get("outcome", "unparsed")
        return cls(grader, d.get("letter"), outcome if outcome in ("correct", "wrong") else "unparsed",
                   d.get("rule"), bool(d.get("correct", outcome == "correct")))


def score(text: str, item: Item, grader: str) -> Score:
    """Grade `text` (a trace's graded text) against `item`'s options and gold with the named
    grader: the only place m1 grades (eval, regrade, reports and notebooks all come here)."""
    from m1.grading import get_grader

    g = get_grader(grader)(text or "", item)
    return Score(grader, g.letter, g.outcome, g.rule, g.outcome == "correct")
