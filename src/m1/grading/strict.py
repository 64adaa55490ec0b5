"""Strict answer extraction: read the chosen letter from a model's answer text.

Rules, first that yields a letter wins (the `rule` names in Grade):
  "boxed"        the LAST \\boxed{...} (or \\fbox{...}): a letter, "X. text", "X) text", "(X)", \\text{X},
                 or exactly one option's text. If the last box holds none of these we do
                 not look at earlier boxes (the model's final word was not a choice) but
                 go on to the next rules.
  "phrase"       "answer is X", "answer is: X", "answer is (X)", "Answer: X",
                 "Final Answer: X" (any case for the words), or such a phrase followed
                 by exactly one option's text on the rest of its line ("Answer:
                 Tenecteplase"); the last accepted one wins. Failing those, a line that
                 opens with the letter and says so: "C is the answer", "(B) is the
                 correct answer", "Option D is the best answer" (never "Vitamin A is...").
  "leading"      the first line is a choice and nothing else: a letter alone ("C", "C.",
                 "(C)") or a letter with exactly its option's text ("C. Polyarteritis
                 nodosa"), also in bold - how models answer right after an answer delimiter.
                 A text (or an answer phrase) followed by the options listed again, "A. ..."
                 then "B. ..." on the next line, is a restatement, not choice A.
  "option_text"  the whole text, minus a trailing period, is exactly one option's text.
Nothing matched -> letter None, outcome "unparsed" (scored as wrong).

What counts as a letter after an answer phrase. Single letters double as words
("A 45-year-old man", "the answer is a reduction"), so an uppercase letter is
accepted only when it stands alone: it is wrapped as (B), [B] or **B**, or written
"option B" / "choice B", or followed by end of line, punctuation (. , ; : ) ! ?),
a dash, "because/since/as/which", or by that option's own text ("B Tenecteplase").
A lowercase letter ("answer: b") is accepted only when wrapped, after option/choice,
or followed by end of line or by "." / ")" / ":" and then end of line or that
option's text - so "the answer is a reduction in..." is never read as A.
A letter that is not one of the options is never accepted. No fuzzy matching.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

from m1.benchmarks.items import Item

Outcome = Literal["correct", "wrong", "unparsed"]


@dataclass(frozen=True)
class Grade:
    letter: str | None  # the extracted choice, None when nothing could be read
    outcome: Outcome
    rule: str  # "boxed", "phrase", "option_text" or "none"


def grade(text: str, item: Item) -> Grade:
    letter, rule = _extract(text or "", item.options)
    if letter is None:
        return Grade(None, "unparsed", rule)
    return Grade(letter, "correct" if letter == item.answer else "wrong", rule)


def extract_letter(text: str, options: dict[str, str]) -> str | None:
    return _extract(text or "", options)[0]


def _extract(text: str, options: dict[str, str]) -> tuple[str | None, str]:
    box = _last_boxed(text)
    if box is not None:
        letter = _letter_from_box(box, options)
        if letter:
            return letter, "boxed"
    letter = _letter_from_phrases(text, options) or _letter_is_the_answer(text, options)
    if letter:
        return letter, "phrase"
    letter = _leading_choice(text, options)
    if letter:
        return letter, "leading"
    letter = _option_with_text(text.strip().removesuffix("."), options)
    if letter:
        return letter, "option_text"
    return None, "none"


# ---- \boxed{...} ----

def _last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} or \\fbox{...}, braces matched (for \\boxed{\\text{C}})."""
    starts = [(m.start(), m.end()) for m in _BOX.finditer(text)]
    for _start, open_end in reversed(starts):  # an unclosed one (truncated output): try an earlier one
        depth, i = 1, open_end
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[open_end: i - 1]
    return None


_BOX = re.compile(r"\\(?:boxed|fbox)\{")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathit|textit|operatorname)\s*\{([^{}]*)\}")
_LETTER_FIRST = re.compile(r"^\(?([A-Za-z])\s*(?:[.):]|\)\.?)(?:\s+(.*))?$", re.S)


def _letter_from_box(content: str, options: dict[str, str]) -> str | None:
    while _LATEX_WRAPPER.search(content):
        content = _LATEX_WRAPPER.sub(r"\1", content)
    content = content.replace("$", "").replace("\\,", " ").replace("\\ ", " ").strip()
    # Option text first: an option may itself start like "C. difficile colitis".
    by_text = _option_with_text(content, options)
    if by_text:
        return by_text
    bare = _trim(content)
    if len(bare) == 1 and bare.upper() in options:
        return bare.upper()
    m = _LETTER_FIRST.match(content)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    return None


_OPTION_LINE = re.compile(r"^[ \t*_]*\(?([A-Z])\s*[.):]")


def _lists_options(text: str, options: dict[str, str]) -> bool:
    """The text opens with a list of options ("A. ...", then "B. ..." on the next line):
    a model restating the choices, not choosing the first of them."""
    lines = [line for line in text.strip().split("\n") if line.strip()][:2]
    letters = [m.group(1) for m in map(_OPTION_LINE.match, lines) if m and m.group(1) in options]
    return len(letters) == 2 and letters[0] != letters[1]


def _leading_choice(text: str, options: dict[str, str]) -> str | None:
    if _lists_options(text, options):
        return None
    first = text.strip().split("\n", 1)[0].strip()
    if first[:2] in ("**", "__") and first.endswith(first[:2]):  # a bold first line: **C. Aspirin**
        first = first[2:-2].strip()
    bare = _trim(first)
    if len(bare) == 1 and bare in options:  # uppercase only: a lone "a" is a word
        return bare
    m = _LETTER_FIRST.match(first)
    if m and m.group(1) in options and m.group(2) and _norm(m.group(2)) == _norm(options[m.group(1)]):
        return m.group(1)
    return None


# ---- answer phrases ----

_PHRASE = re.compile(r"(?i:\banswer\b)[\s*_]*(?i:is\b)?[\s*_]*:?[\s*_]*")
_LETTER = re.compile(
    r"(?P<choice>(?i:option|choice)\s+)?"
    r"(?P<open>\(|\[|\*\*)?"
    r"(?P<letter>[A-Za-z])\b"
    r"(?P<close>\)|\]|\*\*)?"
)
_UPPER_STOP = re.compile(r"\s*(?:$|[.,;:!?)\]*]|\n)|\s+(?:[-\u2013\u2014]|(?i:because|since|as|which)\b)")
_LOWER_STOP = re.compile(r"[.):*]*[ \t]*(?:\n|$)")
_LOWER_PUNCT = re.compile(r"[.):]\s+")


def _letter_from_phrases(text: str, options: dict[str, str]) -> str | None:
    found = None
    for phrase in _PHRASE.finditer(text):
        rest = text[phrase.end():]
        if _lists_options(rest, options):  # "Final Answer:\nA. ...\nB. ...": the options again
            continue
        # The option's own text wins over a letter reading: "Answer: C. difficile colitis".
        letter = _option_with_text(rest.split("\n", 1)[0], options) or _standalone_letter(rest, options)
        if letter:
            found = letter
    return found


# "C is the answer", "(B) is the correct answer": the letter must open a line, so that
# "Vitamin A is the answer" never reads as choice A.
_IS_THE_ANSWER = re.compile(r"(?m)^[ \t*_]*(?:(?i:option|choice)\s+)?\(?([A-Z])\)?[*_]*\s+is\s+the\s+"
                            r"(?:(?i:correct|right|best|most\s+likely|final)\s+)?(?i:answer)\b")


def _letter_is_the_answer(text: str, options: dict[str, str]) -> str | None:
    found = [m.group(1) for m in _IS_THE_ANSWER.finditer(text) if m.group(1) in options]
    return found[-1] if found else None


def _standalone_letter(rest: str, options: dict[str, str]) -> str | None:
    m = _LETTER.match(rest)
    if not m or m.group("letter").upper() not in options:
        return None
    letter = m.group("letter")
    option_text = options[letter.upper()]
    after = rest[m.end("letter"):]
    wrapped = m.group("choice") or (m.group("open") and _pair(m.group("open"), m.group("close")))
    if wrapped:
        ok = True
    elif letter.isupper():
        ok = bool(_UPPER_STOP.match(after)) or _starts_with_option(after.lstrip(" \t.):-"), option_text)
    else:
        punct = _LOWER_PUNCT.match(after)
        ok = bool(_LOWER_STOP.match(after)) or (punct is not None
                                                and _starts_with_option(after[punct.end():], option_text))
    return letter.upper() if ok else None


def _pair(open_: str, close: str | None) -> bool:
    return {"(": ")", "[": "]", "**": "**"}[open_] == close


def _starts_with_option(text: str, option_text: str) -> bool:
    """The text begins with the option's full text, ending at a word boundary."""
    want = _norm(option_text)
    got = _norm(text)
    return bool(want) and got.startswith(want) and (len(got) == len(want) or not got[len(want)].isalnum())


# ---- option text ----

def _option_with_text(text: str, options: dict[str, str]) -> str | None:
    """The one option whose text equals `text` (case, spacing and edge punctuation ignored)."""
    want = _norm(text)
    if not want:
        return None
    hits = [k for k, v in options.items() if _norm(v) == want]
    return hits[0] if len(hits) == 1 else None


_EDGE = string.whitespace + ".,;:!?*_\"'`"


def _trim(text: str) -> str:
    return text.strip(_EDGE + "()[]")


def _norm(text: str) -> str:
    return " ".join(text.strip(_EDGE).split()).casefold()
