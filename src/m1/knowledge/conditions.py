"""What each knowledge condition puts before the model for one item, built from the item's own explanation.

  gold             the explanation as the benchmark ships it
  gold-background  the explanation without its answer: every sentence that states it dropped, the
                   "Answer X:" paragraph labels dropped, any mention left masked
  counterfactual   the explanation rewritten to argue for a wrong option (its text and letter swapped
                   with the correct one's)
  placebo          another item's explanation from the same benchmark, of about the same length
  none, retrieve   nothing from here (retrieval lives in m1.knowledge.retrieval)

All are pure functions of the item (and, for the placebo, of the run's items), so a question gets the
same text whatever else runs and whichever budget it runs at.

A sentence "states the answer" when it names the correct option: its text (any case and spacing,
plural too), a close variant of a long option's text (explanations fix the option's typos and reword
it: "Premenstrual dysophoric disorder", "replete potassium and magnesium and then start a beta-blocker"),
or every word that sets the option apart from the others ("respond well to mirtazapine" for "Add
mirtazapine"); or when it gives the answer's letter ("the correct answer is C", "Ans. is 'c'").
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import re
from typing import Iterator, Sequence

from rapidfuzz import fuzz

from m1.benchmarks.items import Item
from m1.curation.collect import PUBMEDQA_BRIDGE
from m1.errors import M1Error
from m1.knowledge.passages import Passage

CONDITIONS = ("none", "gold", "gold-background", "counterfactual", "placebo", "retrieve")
EXPLAINED = ("gold", "gold-background", "counterfactual", "placebo")  # these need an explanation
MASK = "[masked]"

# Options prose cannot be searched for: a letter ("A", for image questions), "None of the above",
# "Both A and B", "1, 2 and 3", PubMedQA's yes/no/maybe, a bare digit. All their words are these, or one character.
GENERIC_WORDS = frozenset("and or both all none of the above these except only neither nor either true false yes no "
                          "maybe not options following statements".split())
# A close variant of a long option: rapidfuzz partial_ratio >= FUZZY_SCORE between the option and a
# sentence, both folded to lower-case words. On the 308 MedBullets op4 items, options of 20+ characters
# scored against 150k sentences of other items' explanations: 0.022% reach 90 (0.12% reach 70); against
# their own explanation's sentences that lack the exact text, 42 reach 90, nearly all restatements of the
# answer (option typos fixed, words inserted); below 88 sibling options ("in 10 years" for "in 5 years")
# come in. Shorter options match by chance too often to use this.
FUZZY_MIN_CHARS = 20
FUZZY_SCORE = 90
# Words that set the correct option apart: its words of 5+ letters whose 6-letter stem no other option
# has. A sentence with all of them names the answer; on the same data 0.07% of other items' sentences do.
STEM = 6
DISTINCT_MIN_LETTERS = 5
STOP_WORDS = frozenset("about after again before being between other their there these those which while "
                       "where with within without".split())

# "Answer C:", "Answers A-C & E:", "Answers 1 & 5:" opening a line: MedBullets labels its paragraphs on
# the wrong options so. In medbullets_op4 the letters are the 5-option file's, not the item's; and the
# letters listed give the answer away by elimination.
LABEL = re.compile(r"(?m)^[ \t]*Answers?[ \t]+([A-Z0-9](?:[ \t]*(?:,|&|and|or|-|–)[ \t]*[A-Z0-9])*)[ \t]*:[ \t]*")
SECTION = re.compile(r"(?i)^\s*(?:incorrect answers?|bullet summary|buller summary)\s*:?\s*$")
# Exam talk ("the best answer", "of the answer choices"); not "correct answers" in a study's results.
ANSWER_TALK = re.compile(r"(?i)\b(?:correct|best|right|better|wrong)\s+(?:answer|choice|option)\b"
                         r"|\banswer\s+choices?\b|\bthe\s+answer\s+is\b")
ANSWER_LINE = re.compile(r"(?m)^([ \t]*\(?)([A-Z])([.):]?[ \t]+)(.+?)[ \t]*$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
ALNUM_RUN, LETTER_RUN = re.compile(r"[^\W_]+"), re.compile(r"[^\W\d_]+")
QUOTES = "'\"‘’“”"
INF = float("inf")
MARK = 0xE000  # Unicode's private use area: marks that no explanation contains


def explanation(item: Item) -> str | None:
    """The item's own explanation: MedBullets' "explanation", MedMCQA's "exp", a PubMedQA abstract
    ("contexts" in a user's file; the shipped items carry it in the question, before the bridge)."""
    meta = item.metadata
    for key in ("explanation", "exp", "contexts", "CONTEXTS", "context"):
        value = meta.get(key)
        if isinstance(value, list):  # PubMedQA's CONTEXTS, one string per section
            value = " ".join(v for v in value if isinstance(v, str))
        if isinstance(value, str) and value.strip():
            return value.strip()
    if PUBMEDQA_BRIDGE in item.question:
        return item.question.split(PUBMEDQA_BRIDGE)[0].strip() or None
    return None


def passages_for(item: Item, condition: str, pool: Sequence[Item]) -> list[Passage]:
    """The passage `condition` gives `item`, or [] when there is none (no explanation, nothing to
    rewrite, no placebo donor); `pool` (the run's items) is where a placebo comes from."""
    if condition in ("none", "retrieve"):
        return []
    if condition == "placebo":
        donor = placebo_donor(item, pool)
        text = explanation(donor) if donor else None
        return [Passage(id=donor.id, source="placebo", title="", text=text)] if donor and text else []
    build = {"gold": gold, "gold-background": gold_background, "counterfactual": counterfactual}
    if condition not in build:
        raise M1Error(f"--knowledge must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    text = build[condition](item)
    return [Passage(id=item.id, source=condition, title="", text=text)] if text else []


def gold(item: Item) -> str | None:
    """The item's explanation with its letters made the item's own: MedBullets' 4-option file keeps
    the 5-option file's letters, so "Answer C:" there often opens on a wrong option of the 4."""
    text = explanation(item)
    return _answer_lines(item, _relabel(item, text)) if text else None


def check_condition(condition: str, items: Sequence[Item]) -> None:
    """Fail before any model work, in one line, on an unknown condition, or on a condition that needs
    explanations over items that have none."""
    if condition not in CONDITIONS:
        raise M1Error(f"--knowledge must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    if condition not in EXPLAINED:
        return
    where = f"the {len(items)} questions ({', '.join(sorted({it.source for it in items})) or 'none'})"
    if not any(explanation(it) for it in items):
        raise M1Error(f"--knowledge {condition} needs questions that carry an explanation, and none of {where} "
                      "does; use MedBullets (--data with its official CSV/JSON, or --benchmark medbullets_op4 or "
                      "medbullets_op5 with --data-dir), MedMCQA questions with their \"exp\" and an answer_idx "
                      "(--data), or --benchmark pubmedqa (its abstract); or --knowledge retrieve")
    if condition == "counterfactual" and not any(counterfactual(it) for it in items):
        raise M1Error(f"--knowledge counterfactual rewrites an explanation where it names the correct option, and "
                      f"none of {where} has one that does (PubMedQA's yes/no/maybe cannot be swapped); use "
                      "MedBullets or MedMCQA with explanations, or another condition")


# --- naming an option -------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)  # a run asks for the same options again and again
def option_pattern(text: str) -> re.Pattern[str] | None:
    """A regex for an option's text in prose: any case, blind to the spacing and punctuation between
    words ("5 mg" = "5mg", "anti-retroviral" = "antiretroviral"), an optional plural, whole words only
    ("5 mg" is not in "25 mg"). None for an option prose cannot be searched for (GENERIC_WORDS)."""
    tokens = re.findall(r"[^\W_]+|%", text.casefold())
    if not tokens or all(len(t) == 1 or t in GENERIC_WORDS for t in tokens):
        return None
    parts = [re.escape(tokens[0])]
    for before, token in zip(tokens, tokens[1:]):
        # Two numbers need something between them: "1.5 mg" must not match "15 mg".
        parts += [r"[\W_]+" if before.isdigit() and token.isdigit() else r"[\W_]*", re.escape(token)]
    plural = "(?:e?s)?" if tokens[-1][-1].isalpha() else ""
    # Whole words, and whole numbers: "5 mg" is in neither "25 mg" nor "0.5 mg", "40" not in "40.5".
    head = r"(?<![^\W_])(?<!\d[.,])" if tokens[0][0].isdigit() else r"(?<![^\W_])"
    tail = r"(?![^\W_])(?![.,]\d)" if tokens[-1][-1].isdigit() else r"(?![^\W_])"
    return re.compile(head + "".join(parts) + plural + tail, re.IGNORECASE)


def _fold(text: str) -> str:
    return " ".join(ALNUM_RUN.findall(text.casefold()))


def _words(text: str) -> list[str]:
    return LETTER_RUN.findall(text.casefold())


def _variant_span(item: Item, letter: str, sentence: str) -> tuple[int, int] | None:
    """Where `sentence` names option `letter` by a close variant of its long text (FUZZY_SCORE): the run
    of words most like it, unless that run overlaps another option's text ("Colonoscopy in 10 years" is
    no variant of "Colonoscopy in 5 years")."""
    needle, hay = _fold(item.options[letter]), _fold(sentence)
    if len(needle) < FUZZY_MIN_CHARS or len(hay) < len(needle):
        return None
    if not fuzz.partial_ratio(needle, hay, score_cutoff=FUZZY_SCORE):
        return None
    words = [m.span() for m in ALNUM_RUN.finditer(sentence)]
    n = len(needle.split())
    runs = [(i, i + size) for size in (n - 1, n, n + 1) if size > 0 for i in range(len(words) - size + 1)]
    if not runs:
        return None

    def likeness(run: tuple[int, int]) -> tuple[float, int]:  # the closest run, the shortest of equals
        return fuzz.ratio(needle, _fold(sentence[words[run[0]][0]:words[run[1] - 1][1]])), run[0] - run[1]

    i, j = max(runs, key=likeness)
    start, end = words[i][0], words[j - 1][1]
    for k, text in item.options.items():
        pattern = option_pattern(text) if k != letter else None
        if pattern and any(m.start() < end and start < m.end() for m in pattern.finditer(sentence)):
            return None
    return start, end


def _distinct_stems(item: Item, letter: str) -> set[str]:
    others = {w[:STEM] for k, v in item.options.items() if k != letter for w in _words(v)}
    return {w[:STEM] for w in _words(item.options[letter])
            if len(w) >= DISTINCT_MIN_LETTERS and w not in STOP_WORDS} - others


def _paraphrases(item: Item, sentence: str, letter: str | None = None) -> bool:
    """Does `sentence` name option `letter` (default: the correct one) other than by its exact text?
    Not when it names another option by its text: then it is about that one ("Colonoscopy in 10 years"
    beside "Colonoscopy in 5 years")."""
    letter = letter or item.answer
    if _variant_span(item, letter, sentence):
        return True
    others = [p for k, v in item.options.items() if k != letter and (p := option_pattern(v))]
    if any(p.search(sentence) for p in others):
        return False
    stems = _distinct_stems(item, letter)
    words = _words(sentence)
    return bool(stems) and all(any(w.startswith(s) for w in words) for s in stems)


def _lower(letters: str) -> str:
    """Bare lower-case letters as answer letters ("Ans-c Dopamine"); "a" only before ".", ")" or ":",
    or at the end, as elsewhere it is the article ("the answer is a dopamine excess")."""
    out = [rf"[{letters.replace('a', '')}](?![^\W_])"] if letters.replace("a", "") else []
    return "|".join(out + ([r"a(?=[.):]|\s*$)"] if "a" in letters else []))


@functools.lru_cache(maxsize=64)
def _letter_claims(letter: str) -> re.Pattern[str]:
    """Phrases that give `letter` as the answer: "the correct answer is C", "Ans. is 'c'", "Answer: C",
    "option C is correct", "C is correct", a line that is only "C" or "(C)". The words in any case."""
    up, low = letter.upper(), letter.lower()
    token = rf"(?:[(\[{QUOTES}]\s*[{up}{low}]\s*[)\]{QUOTES}]|{up}(?![^\W_])|{_lower(low)})"
    return re.compile(
        rf"(?i:\b(?:correct|right|best|true)[ \t]+(?:answer|option|choice|response)s?[ \t]*"
        rf"(?:is|was|:|-|–|=)?[ \t]*(?:option|choice)?[ \t]*){token}"
        rf"|(?i:(?<!incorrect )\bans(?:wer)?s?\b\.?[ \t]*(?:is|:|-|–|=|\.)?[ \t]*(?:option|choice)?[ \t]*){token}"
        rf"|(?i:\b(?:option|choice)[ \t]*){token}"
        rf"(?i:[ \t]*(?:is|was|would be)[ \t]+(?:the[ \t]+)?(?:correct|right|best|true|answer))"
        rf"|(?:^|[.:;!?][ \t]+|\n[ \t]*){token}(?i:[ \t]+(?:is|was)[ \t]+(?:the[ \t]+)?(?:correct|right|best)\b)"
        rf"|(?m:^[ \t]*{token}[.)]?[ \t]*$)")


def answer_leaks(item: Item, text: str) -> bool:
    """Does `text` state the item's answer: name its correct option (see the module's note), or give its
    letter in an answer-stating phrase? Paragraph labels ("Answer C:") do not count: MedBullets puts
    them on the wrong options."""
    pattern = option_pattern(item.options[item.answer])
    if pattern and pattern.search(text):
        return True
    if any(_paraphrases(item, s) for s in _sentences(text)):
        return True
    return bool(_letter_claims(item.answer).search(LABEL.sub("", text)))


def _sentences(text: str) -> list[str]:
    return [s for line in text.splitlines() for s in SENTENCE_END.split(line.strip()) if s]


# --- the rewritten explanations ---------------------------------------------------------------

def gold_background(item: Item) -> str | None:
    """The explanation less its answer: the sentences that state it, or talk of "the correct answer",
    dropped; the "Answer X:" labels dropped; a mention the sentence split missed masked ([masked])."""
    text = explanation(item)
    if text is None:
        return None
    pattern = option_pattern(item.options[item.answer])
    claims = _letter_claims(item.answer)
    lines: list[str | None] = []
    for line in LABEL.sub("", text).splitlines():
        if SECTION.match(line):
            lines.append(line.strip())
            continue
        lines.append(" ".join(s for s in SENTENCE_END.split(line.strip())
                              if not (pattern and pattern.search(s)) and not _paraphrases(item, s)
                              and not ANSWER_TALK.search(s) and not claims.search(s)) or (None if line.strip() else ""))
    out = _tidy(lines)
    return (pattern.sub(MASK, out) if pattern else out) or None


def _tidy(lines: list[str | None]) -> str:
    """Paragraphs as the explanation had them (a blank line parts them; None is a line that lost all its
    sentences), less the empty ones and a heading left with nothing under it."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line:
            blocks[-1].append(line)
        elif line is not None and blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b and not (len(b) == 1 and SECTION.match(b[0]))]
    return "\n\n".join("\n".join(b) for b in blocks)


def counterfactual_letter(item: Item) -> str:
    """The wrong option the counterfactual argues for, fixed by a hash of the item's id. Among options
    whose text is not part of the correct one's (a swap would keep naming the answer), preferring those
    prose can name."""
    correct = _fold(item.options[item.answer])
    others = [k for k in item.options if k != item.answer]
    distinct = [k for k in others if _fold(item.options[k]) not in correct]
    choices = [k for k in distinct if option_pattern(item.options[k])] or distinct or others
    return choices[int(hashlib.sha256(item.id.encode()).hexdigest(), 16) % len(choices)]


def counterfactual(item: Item) -> str | None:
    """The explanation arguing for counterfactual_letter(item): the correct and the wrong option's texts
    swapped wherever either is named (a close variant of the correct one's too), and their letters in
    labels and answer phrases; a sentence that names the correct option in other words is dropped.
    None when the explanation never names the correct option, or prose cannot name either one."""
    text = explanation(item)
    right, wrong = item.answer, counterfactual_letter(item)
    right_pattern, wrong_pattern = option_pattern(item.options[right]), option_pattern(item.options[wrong])
    if text is None or right_pattern is None or wrong_pattern is None:
        return None
    fills: list[str] = []  # the wrong text for each variant of the correct one, put in after the swap
    lines: list[str | None] = []
    swapped = False
    for line in _relabel(item, text).splitlines():
        kept = []
        for s in SENTENCE_END.split(line.strip()):
            if right_pattern.search(s):
                swapped = True
            elif span := _variant_span(item, right, s):
                while span:  # a mark (a private-use character, no word) holds its place through the swap
                    fills.append(_like(s[span[0]:span[1]], item.options[wrong]))
                    s, swapped = s[:span[0]] + chr(MARK + len(fills) - 1) + s[span[1]:], True
                    span = _variant_span(item, right, s)
            elif _paraphrases(item, s) or (not wrong_pattern.search(s) and _paraphrases(item, s, wrong)):
                continue  # names an option in other words, which no swap reaches: it would argue for the truth
            kept.append(s)
        lines.append(" ".join(kept) or (None if line.strip() else ""))
    if not swapped:
        return None
    # One pass over both texts, the longer first, so no replacement is replaced again.
    order = sorted((right, wrong), key=lambda k: -len(item.options[k]))
    both = re.compile("|".join(f"(?P<{k}>{_source(item.options[k])})" for k in order), re.IGNORECASE)
    text = both.sub(lambda m: _like(m[0], item.options[wrong if m.lastgroup == right else right]), _tidy(lines))
    text = re.sub(f"[{chr(MARK)}-{chr(MARK + len(fills))}]", lambda m: fills[ord(m[0]) - MARK], text)
    return _swap_letters(_answer_lines(item, text), right, wrong)


def _like(found: str, replacement: str) -> str:
    """`replacement` as the option reads, capitalised where `found` was (a sentence's start). Never
    lower-cased: the option may be a name ("Purkinje fibers", "Haemophilus ducreyi")."""
    return replacement[:1].upper() + replacement[1:] if found[:1].isupper() else replacement


def _source(option: str) -> str:
    pattern = option_pattern(option)
    assert pattern is not None  # counterfactual() checked both options
    return pattern.pattern


def _relabel(item: Item, text: str) -> str:
    """Each one-letter "Answer X:" label made the item's letter of the option its paragraph opens on
    (medbullets_op4 keeps the 5-option file's letters); a letter label on no option, or on several, is
    dropped; a numbered one ("Answers 1 & 5:", statements in the stem) kept."""
    patterns = {k: p for k, v in item.options.items() if (p := option_pattern(v))}

    def label(m: re.Match[str]) -> str:
        if m[1][0].isdigit():
            return m[0]
        if len(m[1]) > 1:
            return ""
        first = SENTENCE_END.split(text[m.end():].split("\n", 1)[0])[0]
        found = sorted((hit.start(), k) for k, p in patterns.items() if (hit := p.search(first)))
        return f"Answer {found[0][1]}: " if found else ""

    return LABEL.sub(label, text)


def _answer_lines(item: Item, text: str) -> str:
    """A line that is a letter and an option's text ("C Purkinje fibers", as some explanations end) given
    that option's letter, so it stays true to the text the swap put there."""
    patterns = {k: p for k, v in item.options.items() if (p := option_pattern(v))}

    def fix(m: re.Match[str]) -> str:
        found = [k for k, p in patterns.items() if p.fullmatch(m[4].rstrip("."))]
        return m[1] + found[0] + m[3] + m[4] if len(found) == 1 else m[0]

    return ANSWER_LINE.sub(fix, text)


def _swap_letters(text: str, a: str, b: str) -> str:
    """Letters a <-> b in labels ("Answer a:") and answer phrases ("the answer is (a)"); other capitals
    (vitamin C, hepatitis B, Figure A) stay."""
    swap = {a: b, b: a, a.lower(): b.lower(), b.lower(): a.lower()}
    up, low = f"{a}{b}", f"{a.lower()}{b.lower()}"
    letter = rf"[{up}](?![^\W_])|(?<=[(\[{QUOTES}])[{low}]|{_lower(low)}"
    context = re.compile(rf"(?P<head>(?m:^Answer\s+)|(?i:\b(?:answer|ans|option|choice)\b\.?\s*(?:is|:|-|=)?\s*)"
                         rf"[(\[{QUOTES}]?\s*)(?P<letter>{letter})")
    return context.sub(lambda m: m["head"] + swap[m["letter"]], text)


# --- the placebo ------------------------------------------------------------------------------

def placebo_donor(item: Item, pool: Sequence[Item]) -> Item | None:
    """The pool's item from the same benchmark whose explanation is closest in length to this one's
    (ties: by id) and does not state this item's answer; never the item itself or a copy of it."""
    own = explanation(item)
    if own is None:
        return None
    for other, text in _by_length(_explained(pool).get(item.source, []), len(own)):
        if other.id != item.id and text != own and other.question != item.question and not answer_leaks(item, text):
            return other
    return None


Explained = list[tuple[int, str, Item, str]]  # (length, id, item, explanation), by length then id


def _by_length(entries: Explained, length: int) -> Iterator[tuple[Item, str]]:
    """`entries` in order of |their length - length|, then id: outward from where `length` would sit,
    so a donor near in length is found without sorting the pool for every item."""
    right = bisect.bisect_left(entries, (length,))
    left = right - 1
    while left >= 0 or right < len(entries):
        below = length - entries[left][0] if left >= 0 else INF
        above = entries[right][0] - length if right < len(entries) else INF
        gap = min(below, above)
        group = []
        while left >= 0 and length - entries[left][0] == gap:
            group.append(entries[left])
            left -= 1
        while right < len(entries) and entries[right][0] - length == gap:
            group.append(entries[right])
            right += 1
        for _, _, other, text in sorted(group, key=lambda e: e[1]):
            yield other, text


_last_pool: tuple[Sequence[Item], int, dict[str, Explained]] | None = None


def _explained(pool: Sequence[Item]) -> dict[str, Explained]:
    """The pool's items with an explanation, by source, sorted by length. A run asks once per item with
    the same pool, so the last answer is kept (for the same list object of the same length)."""
    global _last_pool
    if _last_pool is not None and _last_pool[0] is pool and _last_pool[1] == len(pool):
        return _last_pool[2]
    by_source: dict[str, Explained] = {}
    for other in pool:
        if text := explanation(other):
            by_source.setdefault(other.source, []).append((len(text), other.id, other, text))
    for entries in by_source.values():
        entries.sort(key=lambda e: e[:2])
    _last_pool = (pool, len(pool), by_source)
    return by_source
