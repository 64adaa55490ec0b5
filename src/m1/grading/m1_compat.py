"""The official m1 scorer's decisions, re-implemented, so our numbers can be set next to the paper's.

m1 (UCSC-VLAA/m1, src/eval/extract_format.py + src/eval/score.py) grades an answer in two steps:

1. extract: take the LAST "\\boxed" (else the last "\\fbox") up to its brace-matched "}".
   A "\\boxed{...}" is unwrapped; if the inside holds "=", what follows the last "=" is
   kept (left-stripped); if the result is exactly "\\text{...}", that is unwrapped too.
   An "\\fbox{...}" is kept as it is, wrapper and all. No box or an unclosed one (a
   truncated answer) -> the WHOLE text is kept. Nothing is stripped.
2. score against the gold option, first that holds:
     "gold_text"         extracted == gold option's text          (case-insensitive)
     "gold_letter_text"  extracted == "X. gold text"              (case-insensitive)
     "gold_letter"       extracted is one character == gold letter (case-insensitive)
   otherwise HuatuoGPT-o1's match_choice on the extracted text, which ALWAYS picks something:
     (keep only what follows the last "## Final Response\\n\\n", for HuatuoGPT outputs)
     "answer_is"   the last "answer is" (lowercase, case-sensitive) followed by optional
                   whitespace and an uppercase A-N - any of A..N, even beyond the options, so
                   "The answer is Hepatitis B" reads as H.
     "letter"      the last uppercase option letter (first len(options) of A..N) standing
                   between non-word characters (or string edges, or CJK characters), except
                   "A " (A followed by a space, as in "a patient"). Matches do not overlap:
                   the characters around a letter are consumed.
     "option_text" the option whose (lowercased) text occurs LAST in the lowercased text
                   (position of its last occurrence; ties -> the earlier option).
     "fuzzy"       the option most similar to the whole text by difflib's ratio (ties ->
                   the later option). Even an empty answer gets a letter (the last option).
For the three gold rules the letter is the gold letter; the outcome is "correct" when the
letter equals the gold letter. The official code never reports "unparsed"; we do only when
there are no options to choose from.

Options reach match_choice as the prompt's option string ("A. text" lines) split again at the
first ". ", so an option line without ". " (an empty text) is dropped, as it is there.

Where it differs from our strict grader (on purpose here): any capital option letter between
separators counts, wherever it stands ("vitamin A." -> A, "hepatitis B," -> B, "the answer
is clearly C" -> C), except "A" followed by a space; a text naming several letters or
options is scored by the last one mentioned, even in an explanation after the answer;
lowercase letters are never read by the letter rule (only by the one-character gold check).
"""
from __future__ import annotations

import difflib
import re

from m1.benchmarks.items import Item
from m1.grading.strict import Grade

_LETTERS = "ABCDEFGHIJKLMN"  # the official scorer never looks past N
_ANSWER_IS = re.compile(r"answer is\s*?([A-N])", re.S)
_CJK = "\u4e00-\u9fff"
_FINAL_RESPONSE = "## Final Response\n\n"


def grade(text: str, item: Item) -> Grade:
    letter, rule = _decide(text or "", item.options, item.answer)
    if letter is None:
        return Grade(None, "unparsed", rule)
    return Grade(letter, "correct" if letter.lower() == item.answer.lower() else "wrong", rule)


def extract_letter(text: str, options: dict[str, str]) -> str | None:
    """The letter match_choice would pick, without the gold shortcuts (they need the gold)."""
    extracted = extract_answer(text or "")
    return match_choice(extracted, _parse_option_str(_option_str(options)))[0]


def _decide(text: str, options: dict[str, str], gold: str) -> tuple[str | None, str]:
    extracted = extract_answer(text)
    gold_text = options.get(gold)
    if gold_text is not None:
        if extracted.lower() == gold_text.lower():
            return gold, "gold_text"
        if extracted.lower() == f"{gold}. {gold_text}".lower():
            return gold, "gold_letter_text"
    if len(extracted) == 1 and extracted.lower() == gold.lower():
        return gold, "gold_letter"
    return match_choice(extracted, _parse_option_str(_option_str(options)))


# ---- step 1: the last \boxed{} ----

def extract_answer(text: str) -> str:
    inner = _unwrap(_last_box(text), "\\boxed{", split_eq=True)
    # The official second pass looks for a box again (none is left inside), then unwraps \text{}.
    return _unwrap(inner, "\\text{", split_eq=True)


def _last_box(text: str) -> str:
    """From the last "\\boxed" (else "\\fbox") to its matching "}"; the whole text when there
    is none or the braces never close (a truncated answer)."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text


def _unwrap(s: str, head: str, split_eq: bool) -> str:
    if not (s.startswith(head) and s.endswith("}")):
        return s
    inner = s[len(head):-1]
    if split_eq and "=" in inner:  # a math habit the official code keeps: "x = C" -> "C"
        inner = inner.split("=")[-1].lstrip(" ")
    return inner


# ---- step 2: HuatuoGPT-o1's match_choice ----

def _option_str(options: dict[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def _parse_option_str(option_str: str) -> dict[str, str]:
    parsed = {}
    for line in option_str.split("\n"):
        head, sep, tail = line.strip().partition(". ")
        if sep:
            parsed[head] = tail
    return parsed


def match_choice(text: str, options: dict[str, str]) -> tuple[str | None, str]:
    if not options:
        return None, "none"
    if _FINAL_RESPONSE in text:
        text = text.split(_FINAL_RESPONSE)[-1]
    hits = _ANSWER_IS.findall(text)
    if hits:
        return hits[-1], "answer_is"
    hits = _letter_pattern(len(options)).findall(text)
    if hits:
        return hits[-1], "letter"
    low = text.lower()
    found = [(low.rindex(v.lower()), i, k) for i, (k, v) in enumerate(options.items()) if v.lower() in low]
    if found:
        # Latest occurrence wins; among equal positions the earlier option (a stable sort).
        return max(found, key=lambda t: (t[0], -t[1]))[2], "option_text"
    best, best_ratio = None, -1.0
    for k, v in options.items():
        ratio = difflib.SequenceMatcher(None, v.lower(), low).ratio()
        if ratio >= best_ratio:  # ">=": ties go to the later option, as in the official loop
            best, best_ratio = k, ratio
    return best, "fuzzy"


_PATTERNS: dict[int, re.Pattern] = {}


def _letter_pattern(n: int) -> re.Pattern:
    """An option letter between separators; the separators are consumed, so matches never share one."""
    if n not in _PATTERNS:
        letters = _LETTERS[:n]
        _PATTERNS[n] = re.compile(
            rf"(?:[{_CJK}]|is |\W|^)(?!A )([{letters}])(?:\W|[{_CJK}]|$)", re.S)
    return _PATTERNS[n]
