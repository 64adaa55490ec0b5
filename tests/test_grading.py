import pytest

from m1.benchmarks.items import Item
from m1.grading import Grade, extract_letter, grade

STROKE = {
    "A": "Alteplase",
    "B": "Tenecteplase",
    "C": "Aspirin and clopidogrel",
    "D": "Vitamin A supplementation",
}
# Option texts that look like letters or contain letters.
TRAPS = {
    "A": "Hepatitis B infection",
    "B": "C. difficile colitis",
    "C": "Vitamin A deficiency",
    "D": "Ulcerative colitis",
}

CASES = [
    # (answer text, options, expected letter, rule)
    # --- \boxed{} ---
    ("The answer is \\boxed{B}", STROKE, "B", "boxed"),
    ("Final Answer: $\\boxed{C}$", STROKE, "C", "boxed"),
    ("\\boxed{\\text{C}}", STROKE, "C", "boxed"),
    ("\\boxed{\\textbf{(D)}}", STROKE, "D", "boxed"),
    ("\\boxed{B. Tenecteplase}", STROKE, "B", "boxed"),
    ("\\boxed{B) Tenecteplase}", STROKE, "B", "boxed"),
    ("\\boxed{(A)}", STROKE, "A", "boxed"),
    ("\\boxed{tenecteplase}", STROKE, "B", "boxed"),
    ("\\boxed{ Aspirin and Clopidogrel. }", STROKE, "C", "boxed"),
    ("First I thought \\boxed{A}, but on reflection \\boxed{D}.", STROKE, "D", "boxed"),
    ("\\boxed{b}", STROKE, "B", "boxed"),
    ("Answer: A. But formally: \\boxed{C}", STROKE, "C", "boxed"),  # box beats phrase
    ("\\boxed{C. difficile colitis}", TRAPS, "B", "boxed"),  # option text, not letter C
    ("\\boxed{E}", STROKE, None, "none"),  # not an option
    ("\\boxed{Thrombectomy}\nAnswer: B", STROKE, "B", "phrase"),  # unreadable box falls through
    ("\\boxed{A or B}", STROKE, None, "none"),
    ("The answer is \\boxed{B", STROKE, None, "none"),  # truncated box is not an answer
    # --- answer phrases ---
    ("Final Answer: B", STROKE, "B", "phrase"),
    ("Final Answer: B. Tenecteplase", STROKE, "B", "phrase"),
    ("The answer is B.", STROKE, "B", "phrase"),
    ("The answer is: C", STROKE, "C", "phrase"),
    ("The correct answer is (D) Vitamin A supplementation.", STROKE, "D", "phrase"),
    ("Answer: (B)", STROKE, "B", "phrase"),
    ("**Answer:** B", STROKE, "B", "phrase"),
    ("The answer is **C. Aspirin and clopidogrel**", STROKE, "C", "phrase"),
    ("Answer: B Tenecteplase", STROKE, "B", "phrase"),
    ("The answer is B because it is fibrin-specific.", STROKE, "B", "phrase"),
    ("The answer is option A for this patient.", STROKE, "A", "phrase"),
    ("Answer: A\nExplanation: tPA within 4.5 hours.", STROKE, "A", "phrase"),
    ("Answer: B. Wait, no. Final Answer: C", STROKE, "C", "phrase"),  # last wins
    ("answer: b", STROKE, "B", "phrase"),
    ("the answer is (c)", STROKE, "C", "phrase"),
    ("answer: d. vitamin a supplementation", STROKE, "D", "phrase"),
    ("Answer: Tenecteplase", STROKE, "B", "phrase"),
    ("Answer: C. difficile colitis", TRAPS, "B", "phrase"),
    ("Final Answer: Hepatitis B infection", TRAPS, "A", "phrase"),
    # --- traps that must not be read as a letter ---
    ("Answer: A 45-year-old man needs thrombolysis.", STROKE, None, "none"),
    ("the answer is a reduction in infarct size", STROKE, None, "none"),
    ("The answer is vitamin A, given the night blindness.", TRAPS, None, "none"),
    ("The answer is hepatitis B, since HBsAg is positive.", TRAPS, None, "none"),
    ("Answer: I think it is thrombolysis", STROKE, None, "none"),
    ("Answer: E", STROKE, None, "none"),
    ("The answer is B-cell lymphoma", STROKE, None, "none"),
    ("Both A and B are reasonable.", STROKE, None, "none"),
    ("", STROKE, None, "none"),
    ("   \n ", STROKE, None, "none"),
    # --- the first line is a choice and nothing else (right after an answer delimiter) ---
    ("B", STROKE, "B", "leading"),
    ("(C)\n", STROKE, "C", "leading"),
    ("D.", STROKE, "D", "leading"),
    ("B. Tenecteplase\n\nIt is fibrin-specific and given as a bolus.", STROKE, "B", "leading"),
    ("A. Tenecteplase", STROKE, None, "none"),  # letter and text disagree
    ("B. Tenecteplase is reasonable", STROKE, None, "none"),
    ("a", STROKE, None, "none"),  # a lone lowercase "a" is a word
    ("E.", STROKE, None, "none"),
    ("C. difficile colitis", TRAPS, "B", "option_text"),  # option text, not letter C
    # --- whole text is an option's text ---
    ("Tenecteplase", STROKE, "B", "option_text"),
    ("vitamin a supplementation.", STROKE, "D", "option_text"),
    ("Vitamin A deficiency", TRAPS, "C", "option_text"),
    ("Tenecteplase is best here.", STROKE, None, "none"),  # no fuzzy matching
]


@pytest.mark.parametrize("text, options, letter, rule", CASES)
def test_extraction_rules(text, options, letter, rule):
    item = Item(id="t-0", question="q", options=options, answer="B", source="test")
    result = grade(text, item)
    assert (result.letter, result.rule) == (letter, rule)
    assert extract_letter(text, options) == letter


def test_outcomes():
    item = Item(id="t-0", question="q", options=STROKE, answer="B", source="test")
    assert grade("Final Answer: B", item) == Grade("B", "correct", "phrase")
    assert grade("Final Answer: A", item) == Grade("A", "wrong", "phrase")
    assert grade("I am not sure.", item) == Grade(None, "unparsed", "none")


def test_letter_outside_options_with_more_options():
    ten = {letter: f"option {letter}" for letter in "ABCDEFGHIJ"}
    assert extract_letter("Answer: J", ten) == "J"
    assert extract_letter("Answer: K", ten) is None
