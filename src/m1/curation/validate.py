"""Stage 5, validate: keep the traces whose final answer the project's grader marks right.

The grader (m1.grading, "strict" by default) accepts only a clear choice: the letter, or
exactly one option's text. m1's own filter (src/distill_data/filtering_r1_wrong.ipynb)
takes the last \\boxed{...} (or the whole text) and calls it right when it equals the
gold text or when its FIRST CHARACTER equals the gold letter, so "\\boxed{Amoxicillin}"
counts as "A" and a box-less "A 45-year-old ..." too. `first_char_rule` re-implements
that check so the manifest can count how many traces it would have let through.
"""
from __future__ import annotations

from collections import Counter

from m1.benchmarks.items import Item
from m1.curation.config import ValidateConfig
from m1.curation.records import row_to_item
from m1.grading import get_grader


def validate(rows: list[dict], cfg: ValidateConfig) -> tuple[list[dict], list[dict], dict]:
    """(kept rows with the grade, rejected rows with the reason, counts by reason)."""
    grade = get_grader(cfg.grader)
    kept: list[dict] = []
    rejected: list[dict] = []
    why: Counter[str] = Counter()
    for row in rows:
        item = row_to_item(row)
        g = grade(row["response"], item)
        row = {**row, "teacher_letter": g.letter or "", "grade_rule": g.rule,
               "first_char_rule": first_char_rule(row["response"], item)}
        if cfg.drop_truncated and row.get("finish_reason") == "length":
            reason = "truncated"
        elif cfg.require_reasoning and not row["reasoning"].strip():
            reason = "no reasoning"
        elif g.outcome != "correct":
            reason = g.outcome  # wrong | unparsed
        else:
            kept.append(row)
            continue
        why[reason] += 1
        rejected.append({**row, "reason": reason})
    extra = {"rejected": dict(why), "first_char_rule_would_keep_more": sum(
        r["first_char_rule"] for r in rejected if r["reason"] in ("wrong", "unparsed"))}
    return kept, rejected, extra


def first_char_rule(text: str, item: Item) -> bool:
    """m1's correctness check, for comparison only (see the module docstring)."""
    extracted = _unbox(_last_box(text or "", "\\boxed") or text or "", "\\boxed")
    extracted = _unbox(_last_box(extracted, "\\text") or extracted, "\\text")
    gold_text = item.options[item.answer]
    if extracted.strip().lower() == gold_text.strip().lower():
        return True
    return bool(extracted) and extracted[0].strip().lower() == item.answer.lower()


def _last_box(text: str, left: str) -> str | None:
    start = text.rfind(left)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start:i + 1]
    return None


def _unbox(s: str, left: str) -> str:
    if s.startswith(left + "{") and s.endswith("}"):
        inner = s[len(left) + 1:-1]
        return inner.split("=")[-1].lstrip(" ") if "=" in inner else inner
    return s
