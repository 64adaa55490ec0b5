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
    # --- words, quotes, LaTeX and non-ASCII separators between the answer phrase and the letter ---
    ("So the answer is actually C.", STROKE, "C", "phrase"),
    ("The answer, therefore, is for sure D", STROKE, "D", "phrase"),
    ("The answer is \"B\".", STROKE, "B", "phrase"),
    ("The final answer is $\\textbf{C}$", STROKE, "C", "phrase"),
    ("Answer \u2014 A", STROKE, "A", "phrase"),
    ("Answer\uff1a\uff08B\uff09", STROKE, "B", "phrase"),
    ("\u3010Answer\u3011C", STROKE, "C", "phrase"),
    ("Final answer \u2192 D", STROKE, "D", "phrase"),
    ("The correct option is D)", STROKE, "D", "phrase"),
    ("The answer is C (Aspirin and clopidogrel).", STROKE, "C", "phrase"),
    ("Final Answer: __C__", STROKE, "C", "phrase"),
    ("The answer is not C.", STROKE, None, "none"),
    ("The answer is actually a matter of timing.", STROKE, None, "none"),
    ("The answer is \"C or D\".", STROKE, None, "none"),
    ("The final option, D, is a distractor.", STROKE, None, "none"),  # "final option": the last one listed
    # --- a final sentence that states the choice ---
    ("Bolus dosing is simpler.\nI choose B.", STROKE, "B", "statement"),
    ("My choice: (A)", STROKE, "A", "statement"),
    ("No bleed on CT, therefore I think it\u2019s A because it is licensed.", STROKE, "A", "statement"),
    ("I'd go with C. Aspirin and clopidogrel.", STROKE, "C", "statement"),
    ("Answer: B. Hmm, on reflection I choose C.", STROKE, "C", "statement"),  # the last word beats the phrase
    ("I choose between C and D.", STROKE, None, "none"),
    ("If the patient were older, I would choose A.", STROKE, None, "none"),
    ("I think it's B. But the guideline says otherwise.", STROKE, None, "none"),  # not the final sentence
    ("I think it's C, but actually D.", STROKE, None, "none"),
    ("I choose C. It is safest.", STROKE, None, "none"),
    ("I'd go with a cautious plan.", STROKE, None, "none"),
    # --- a decorated line or the last line is the choice ---
    ("- **B.** Tenecteplase\n\nSingle bolus.", STROKE, "B", "leading"),
    ("> **B)** Tenecteplase", STROKE, "B", "leading"),
    ("1. **B.** Tenecteplase", STROKE, "B", "leading"),
    ("1. B\n2. D", STROKE, None, "none"),  # a ranking, not a choice
    ("Single bolus, fibrin-specific.\n\nB", STROKE, "B", "last_line"),
    ("Single bolus, fibrin-specific.\n\n**(B) Tenecteplase**", STROKE, "B", "last_line"),
    ("Recap:\nA. Alteplase\nB. Tenecteplase", STROKE, None, "none"),
    ("Ruled out:\nA", STROKE, None, "none"),
    ("Single bolus.\n\nE", STROKE, None, "none"),
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
