"""Strict answer extraction: read the chosen letter from a model's answer text.

Rules, first that yields a letter wins (the `rule` names in Grade):
  "boxed"        the LAST \\boxed{...} (or \\fbox{...}): a letter, "X. text", "X) text", "(X)", \\text{X},
                 or exactly one option's text. If the last box holds none of these we do
                 not look at earlier boxes (the model's final word was not a choice) but
                 go on to the next rules.
  "statement"    the text's final sentence states the choice without the word answer:
                 "I choose C", "I'll go with option B", "My choice: (A)", "therefore I
                 think it's B". Only the final sentence counts (earlier ones are reasoning
                 the model may still revise) and only when it is not hypothetical or
                 negated ("If ..., I would choose C", "I don't think it's C") and nothing
                 follows the letter but punctuation, the option's text or a short reason
                 naming no other option ("I choose C because ...", not "I choose C, but D...").
  "phrase"       "answer is X", "answer is: X", "answer is (X)", "Answer: X",
                 "Final Answer: X" (any case for the words), also "The correct/right/best
                 option (or choice) is X" and "Final choice: X", a few fillers before the verb
                 ("the answer here is", "the answer, therefore, is"), or such a phrase
                 followed by exactly one option's text on the rest of its line ("Answer:
                 Tenecteplase"); the last accepted one wins.
                 Between the phrase and the letter may stand a certainty adverb ("the answer
                 is actually C", "... is for sure D", "... is most likely (B)") - a closed
                 list, so "the answer is not C" stays unread - and a separator: ":", "-",
                 an em/en dash, an arrow ("Answer -> C", "Answer → C"), full-width ones.
                 Failing those, a line that opens with the letter and says so: "C is the
                 answer", "(B) is the correct answer", "Option D is the best answer" (never
                 "Vitamin A is...").
  "leading"      the first line is a choice and nothing else: a letter alone ("C", "C.",
                 "(C)") or a letter with exactly its option's text ("C. Polyarteritis
                 nodosa"), also in bold or list/quote decoration ("- **B.** No", "> **B)** No",
                 "1. **B.** No") - how models answer right after an answer delimiter.
                 A text (or an answer phrase) followed by the options listed again, "A. ..."
                 then "B. ..." on the next line, is a restatement, not choice A.
  "last_line"    the same on the last line of a longer text ("...reasoning...\\n\\n**(B)
                 Tenecteplase**"), unless the line before it is itself an option (a list of
                 options being recapped) or ends with ":" (what it introduces is not an
                 answer phrase, else the phrase rule had read it: "Ruled out:\\nA").
  "option_text"  the whole text, minus a trailing period, is exactly one option's text.
Nothing matched -> letter None, outcome "unparsed" (scored as wrong).

Before the rules after "boxed", LaTeX text wrappers and math delimiters are dropped
("the answer is $\\textbf{C}$" reads like "the answer is C") and full-width punctuation
is read as its ASCII twin ("Answer：B", "（B）", "【B】" as ": ", "(B)", "[B]").

What counts as a letter after an answer phrase. Single letters double as words
("A 45-year-old man", "the answer is a reduction"), so an uppercase letter is
accepted only when it stands alone: it is wrapped as (B), [B], **B**, "B" or 'B', or written
"option B" / "choice B", or followed by end of line, punctuation (. , ; : ) ! ? "), a
dash, "because/since/as/which", or by that option's own text ("B Tenecteplase",
"B (Tenecteplase)").
A lowercase letter ("answer: b") is accepted only when wrapped, after option/choice,
or followed by end of line or by "." / ")" / ":" and then end of line or that
option's text - so "the answer is a reduction in..." is never read as A. (In a
"statement" a bare lowercase letter is never read: "I'd go with a" is English.)
A letter that is not one of the options is never accepted. No fuzzy matching.
"""
from __future__ import annotations

import itertools
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
    rule: str  # "boxed", "statement", "phrase", "leading", "last_line", "option_text" or "none"


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
    plain = _plain(text)
    # The final sentence is the model's last word, so a choice stated there goes before
    # an answer phrase earlier in the text.
    letter = _final_statement(plain, options)
    if letter:
        return letter, "statement"
    letter = _letter_from_phrases(plain, options) or _letter_is_the_answer(plain, options)
    if letter:
        return letter, "phrase"
    letter = _leading_choice(plain, options)
    if letter:
        return letter, "leading"
    letter = _last_line_choice(plain, options)
    if letter:
        return letter, "last_line"
    letter = _option_with_text(plain.strip().removesuffix("."), options)
    if letter:
        return letter, "option_text"
    return None, "none"


# ---- layout that is not content ----

_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathit|textit|operatorname)\s*\{([^{}]*)\}")
_MATH_DELIMITER = re.compile(r"\$|\\[()\[\]]")  # $...$, \(...\), \[...\]
# Full-width punctuation as models write it in CJK-styled answers, and typographic quotes
# (so "it’s" and "“C”" read like "it's" and "\"C\""). A space follows the full-width
# separators because they are written without one ("B：Tenecteplase").
_WIDE = str.maketrans({
    "：": ": ", "，": ", ", "；": "; ", "。": ". ", "！": "! ", "？": "? ",
    "（": "(", "）": ") ", "【": "[", "】": "] ", "「": '"', "」": '" ',
    "“": '"', "”": '"', "‘": "'", "’": "'",
})


def _plain(text: str) -> str:
    while _LATEX_WRAPPER.search(text):
        text = _LATEX_WRAPPER.sub(r"\1", text)
    return _MATH_DELIMITER.sub("", text).translate(_WIDE)


# Markdown and list decoration around a line: "- ", "* ", "> ", "1. ", "## " and bold/italic
# markers. Only digits make a numbered marker, so "B. No" keeps its letter.
_LINE_MARKER = re.compile(r"(?:[-*+•]\s|>|#{1,6}\s|\d{1,2}[.)]\s)\s*")


def _undecorate(line: str) -> str:
    line = line.strip()
    while m := _LINE_MARKER.match(line):
        line = line[m.end():]
    return line.replace("*", "").replace("__", "").strip()


_LINE = re.compile(r"[^\n]*\S[^\n]*")


def _lines(text: str, limit: int | None = None) -> list[str]:
    """The non-blank lines, or the first `limit` of them (without splitting a long text whole)."""
    return [m.group() for m in itertools.islice(_LINE.finditer(text), limit)]


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
_BOX_LETTER_FIRST = re.compile(r"^\(?([A-Za-z])\s*(?:[.):]|\)\.?)(?:\s+(.*))?$", re.S)
# A letter that opens a line: "B. text", "B) text", "(B) text", "[B] text", "B: text",
# "B - text" (any dash); the text, when there is one, follows after whitespace.
_LETTER_FIRST = re.compile(r"^[(\[]?([A-Za-z])\s*(?:[.):\]]|[)\]][.:]|\s[-\u2013\u2014]|\u2014)(?:\s+(.*))?$", re.S)


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
    m = _BOX_LETTER_FIRST.match(content)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    return None


# ---- a line that is the choice ----

_OPTION_LINE = re.compile(r"^[ \t*_]*[(\[]?([A-Z])\s*[.):\]]")


def _listed_option(line: str, options: dict[str, str]) -> str | None:
    """The letter of a line shaped like a listed option: "A. text", "(B) text", "C", "- **D.** text"."""
    plain = _undecorate(line)
    m = _OPTION_LINE.match(plain)
    if m and m.group(1) in options:
        return m.group(1)
    bare = _trim(plain)
    return bare if bare in options else None


def _lists_options(text: str, options: dict[str, str]) -> bool:
    """The text opens with a list of options ("A. ...", then "B. ..." on the next line):
    a model restating the choices (or ranking them: "1. B", "2. D"), not choosing the first."""
    letters = [_listed_option(line, options) for line in _lines(text, 2)]
    return len(letters) == 2 and None not in letters and letters[0] != letters[1]


def _line_choice(line: str, options: dict[str, str]) -> str | None:
    """The line is a choice and nothing else: a letter alone ("C", "(C)", "**C.**") or with
    exactly its option's text ("- **B.** No"). Uppercase only: a lone "a" is a word."""
    line = _undecorate(line)
    bare = _trim(line)
    if len(bare) == 1 and bare in options:
        return bare
    m = _LETTER_FIRST.match(line)
    if m and m.group(1) in options and m.group(2) and _norm(m.group(2)) == _norm(options[m.group(1)]):
        return m.group(1)
    return None


def _leading_choice(text: str, options: dict[str, str]) -> str | None:
    if _lists_options(text, options):
        return None
    lines = _lines(text, 1)
    return _line_choice(lines[0], options) if lines else None


def _last_line_choice(text: str, options: dict[str, str]) -> str | None:
    lines = _lines(text)
    if len(lines) < 2:  # a single line is the leading rule's
        return None
    before = lines[-2].rstrip()
    # "A. ...\nB. ...\nC" ends a recap of the options; "Options ruled out:\nA" is a list too.
    if _listed_option(before, options) or _undecorate(before).endswith(":"):
        return None
    return _line_choice(lines[-1], options)


# ---- answer phrases ----

# What may stand between the words and the letter are closed lists, never free words, so
# that "the answer is not C" or "the answer is a reduction" stay unread.
# "final option" is left out: it also means the last option listed ("The final option, D, ...").
_ANSWER_WORDS = r"\banswer\b|\b(?:correct|right|best)\s+(?:option|choice)\b|\bfinal\s+choice\b"
_FILLER = r"here|then|therefore|thus|now|to\s+this\s+question|in\s+this\s+case|I\s+(?:think|believe)"
_VERB = r"is|must\s+be|should\s+be|will\s+be|has\s+to\s+be"  # not "would/could be": hypothetical
_ADVERB = (r"actually|clearly|definitely|certainly|surely|for\s+sure|indeed|in\s+fact|of\s+course|obviously"
           r"|evidently|undoubtedly|unquestionably|without\s+(?:a\s+)?doubt|absolutely|most\s+(?:likely|probably)"
           r"|likely|probably|therefore|thus|hence|then|still|now|really|truly|ultimately|finally|simply")
_SEPARATOR = r"-->|->|=>|[:=\-\u2013\u2014\u2192\u27f6\u21d2\u27f9\u2794\u279c]"  # dashes, arrows
_PHRASE = re.compile(
    rf"(?i:{_ANSWER_WORDS})[\s*_\]]*"                      # "**Answer**", "[Answer]" (from 【Answer】)
    rf"(?i:,?\s*(?:{_FILLER})\b,?\s*)?"                   # "the answer here is", "the answer, I think, is"
    rf"(?i:(?:{_VERB})\b(?:\s*,?\s*(?:{_ADVERB})\b,?)*)?"  # "is", "is actually", "is, for sure,"
    rf"[\s*_]*(?:{_SEPARATOR})?[\s*_]*"
)
_UPPER_STOP = re.compile(r"\s*(?:$|[.,;:!?)\]*_\"]|\n)|\s+[-\u2013\u2014]|\u2014|\s+(?i:because|since|as|which)\b")
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


# A letter, perhaps written "option B" / "choice B", perhaps wrapped: (B), [B], **B**, __B__, "B", 'B', `B`.
# "_" counts as a closer, not a word character ("__C__").
_LETTER = re.compile(r"(?P<choice>(?i:option|choice)\s+)?(?P<open>[(\[*_\"'`]*)(?P<letter>[A-Za-z])(?![^\W_])")
_CLOSER = {"(": ")", "[": "]", "*": "*", "_": "_", '"': '"', "'": "'", "`": "`"}


def _read_letter(rest: str, options: dict[str, str], bare_lower: bool = True) -> tuple[str, str] | None:
    """The option letter `rest` opens with, if it stands alone (module docstring), and what follows it."""
    m = _LETTER.match(rest)
    if not m or m.group("letter").upper() not in options:
        return None
    letter = m.group("letter")
    option_text = options[letter.upper()]
    after = rest[m.end("letter"):]
    closer = "".join(_CLOSER[c] for c in reversed(m.group("open")))
    if m.group("open") and after.startswith(closer):
        return letter.upper(), after[len(closer):]
    if m.group("choice"):
        return letter.upper(), after
    if letter.isupper():
        ok = bool(_UPPER_STOP.match(after)) or _starts_with_option(after.lstrip(" \t.):-("), option_text)
    elif not bare_lower:
        ok = False
    else:
        punct = _LOWER_PUNCT.match(after)
        ok = bool(_LOWER_STOP.match(after)) or (punct is not None
                                                and _starts_with_option(after[punct.end():], option_text))
    return (letter.upper(), after) if ok else None


def _standalone_letter(rest: str, options: dict[str, str]) -> str | None:
    read = _read_letter(rest, options)
    return read[0] if read else None


# ---- a final sentence that states the choice ----

_STATEMENT = re.compile(
    r"(?i:\bI(?:'d|'ll|\s+would|\s+will|\s+shall)?\s+(?:choose|pick|select|go\s+with|opt\s+for)"
    r"|\bI(?:'m|\s+am)\s+(?:choosing|picking|selecting|going\s+with|opting\s+for"
    r"|going\s+to\s+(?:choose|pick|select|go\s+with))"
    r"|\bmy\s+(?:final\s+)?(?:choice|pick|selection)(?:\s+(?:is|would\s+be|will\s+be))?"
    r"|\bI\s+(?:think|believe|(?:'m|am)\s+(?:fairly\s+|quite\s+)?(?:confident|sure|certain))\s+(?:that\s+)?"
    r"(?:it's|it\s+is|it\s+must\s+be)"
    r"|\bI(?:'d|\s+would)\s+say(?:\s+(?:it's|it\s+is))?)"
    rf"(?i:\s*,?\s*(?:{_ADVERB})\b,?)*[\s*_]*(?:{_SEPARATOR})?[\s*_]*"
)
# A statement inside a condition, a question or a denial is no choice.
_HYPOTHETICAL = re.compile(r"(?i:\b(?:if|unless|whether|not|never|otherwise|instead\s+of|rather\s+than)\b|n't\b)")
_SENTENCE_END = re.compile(r"[.!?]\s+")
_REASON = re.compile(r"[\s,;:\-\u2013\u2014]*(?i:because|since|as|given|due\s+to|which|for)\b")
_TURN = re.compile(r"(?i:\b(?:but|however|although|though|unless|except|wait|actually|instead|rather|or|if)\b)")


def _final_statement(text: str, options: dict[str, str]) -> str | None:
    line = _undecorate(text.rstrip().rsplit("\n", 1)[-1])
    # A statement ends the text only if no other sentence follows it, so only the last few
    # can; looking at those alone keeps a degenerate text ("I choose " x 5000) linear.
    for m in list(_STATEMENT.finditer(line))[-3:][::-1]:
        sentence_start = max((e.end() for e in _SENTENCE_END.finditer(line, 0, m.start())), default=0)
        if _HYPOTHETICAL.search(line, sentence_start, m.start()):
            continue
        read = _read_letter(line[m.end():], options, bare_lower=False)
        if read and _ends_the_text(read[1], read[0], options):
            return read[0]
    return None


def _ends_the_text(after: str, letter: str, options: dict[str, str]) -> bool:
    """What follows a stated letter closes the final sentence: punctuation only, the option's
    own text, or a short reason that turns nowhere else and names no other option."""
    tail = after.strip()
    if "?" in tail:  # "Would I choose C?"
        return False
    if not tail.strip(".!)]\"'*_ "):
        return True
    if _norm(tail.lstrip(" .:)(-\u2013\u2014").rstrip(" .!)")) == _norm(options[letter]):
        return True
    others = "".join(k for k in options if k != letter and len(k) == 1)
    return bool(_REASON.match(tail)) and not _SENTENCE_END.search(tail.rstrip()) and not _TURN.search(tail) \
        and not (others and re.search(rf"(?<![\w'])[{others}](?![\w'])", tail))


# ---- option text ----

def _starts_with_option(text: str, option_text: str) -> bool:
    """The text begins with the option's full text, ending at a word boundary."""
    want = _norm(option_text)
    got = _norm(text)
    return bool(want) and got.startswith(want) and (len(got) == len(want) or not got[len(want)].isalnum())


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
    # Same punctuation mapping as the answer text, so "Crohn’s disease" still equals its option.
    return " ".join(text.translate(_WIDE).strip(_EDGE).split()).casefold()
