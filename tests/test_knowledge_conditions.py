"""What each knowledge condition shows the model, on real explanations: MedBullets' official release
(from the shared data folder, skipped where it is absent), the shipped PubMedQA and MedQA, the hand-written
tests/data/knowledge_items.jsonl, and small items made here for the edge cases."""
from __future__ import annotations

import dataclasses
import random
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from m1.benchmarks import load_benchmark, load_file
from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.knowledge import conditions as C

HERE = Path(__file__).resolve().parent


def shared_file(relative: str) -> Path:
    """A file of the shared data folder (CI: ../shared/data next to the repository)."""
    for folder in (HERE.parents[1] / "shared" / "data", Path("/work/shared/data")):
        if (folder / relative).is_file():
            return folder / relative
    pytest.skip(f"{relative} not in the shared data folder (../shared/data or /work/shared/data)")


@pytest.fixture(scope="module")
def medbullets() -> list[Item]:
    return load_file(shared_file("medbullets/medbullets_op4.csv"))


@pytest.fixture(scope="module")
def backgrounds(medbullets) -> dict[str, str]:
    return {it.id: must(C.gold_background(it)) for it in medbullets}


@pytest.fixture(scope="module")
def counterfactuals(medbullets) -> dict[str, str | None]:
    return {it.id: C.counterfactual(it) for it in medbullets}


def must(text: str | None) -> str:
    assert text is not None
    return text


def explained(it: Item) -> str:
    return must(C.explanation(it))


def folded(text: str) -> str:
    """Lower-case words joined by single spaces: the test's own idea of "the same text"."""
    return " " + " ".join(re.findall(r"[^\W_]+", text.casefold())) + " "


def item(options: dict[str, str], answer: str, explanation: str | None, id: str = "x-1", source: str = "x") -> Item:
    meta = {"explanation": explanation} if explanation is not None else {}
    return Item(id=id, question="Which one?", options=options, answer=answer, source=source, metadata=meta)


# --- where explanations come from ---------------------------------------------------------------

def test_medbullets_releases_give_the_same_explanations(medbullets):
    from_json = {it.question: C.explanation(it) for it in load_file(shared_file("medbullets/medbullets_op4.json"))}
    assert len(medbullets) == 308
    assert all(C.explanation(it) for it in medbullets)
    assert all(from_json[it.question] == C.explanation(it) for it in medbullets)
    assert explained(medbullets[0]).endswith("Purkinje fibers > atria > ventricles > AV node.")


def test_explanation_fields_of_user_files():
    def carrying(metadata: dict) -> str | None:
        return C.explanation(Item(id="1", question="Q?", options={"A": "yes", "B": "no"}, answer="A", source="u",
                                  metadata=metadata))

    assert carrying({"exp": "  Ans. is 'a'  "}) == "Ans. is 'a'"
    assert carrying({"CONTEXTS": ["Background text.", "Results text."]}) == "Background text. Results text."
    assert carrying({"context": "An abstract."}) == "An abstract."
    assert carrying({"explanation": " \n\t"}) is None
    assert carrying({"exp": None}) is None


def test_shipped_pubmedqa_explanation_is_its_abstract():
    from m1.curation.collect import PUBMEDQA_BRIDGE

    items = load_benchmark("pubmedqa", limit=20, seed=3)
    for it in items:
        abstract = C.explanation(it)
        assert abstract and it.question.startswith(abstract)
        assert PUBMEDQA_BRIDGE.strip() not in abstract
        assert it.question.split(PUBMEDQA_BRIDGE)[1] not in abstract  # the question itself stays out


def test_shipped_medqa_has_no_explanation():
    items = load_benchmark("medqa", limit=5, seed=0)
    assert [C.explanation(it) for it in items] == [None] * 5
    for condition in C.EXPLAINED:
        assert C.passages_for(items[0], condition, items) == []


# --- gold -----------------------------------------------------------------------------------------

def test_gold_is_the_explanation(medbullets):
    for it in medbullets:
        [passage] = C.passages_for(it, "gold", medbullets)
        assert (passage.id, passage.source, passage.title) == (it.id, "gold", "")
        assert passage.text == C.gold(it)
    # the explanation itself, but for "Answer X:" labels set to the item's own letters
    relabelled = 0
    for it in medbullets:
        gold = C.gold(it) or ""
        for m in re.finditer(r"Answer ([A-E]): ([^\n]{0,60})", gold):
            pattern = C.option_pattern(it.options.get(m[1], ""))
            relabelled += bool(pattern and pattern.search(m[2]))
    assert relabelled > 100  # labels now name the option their paragraph opens on
    assert C.passages_for(medbullets[0], "none", medbullets) == []
    assert C.passages_for(medbullets[0], "retrieve", medbullets) == []


# --- gold-background ------------------------------------------------------------------------------

def test_gold_background_never_states_the_answer(medbullets, backgrounds):
    for it in medbullets:
        text = backgrounds[it.id]
        assert text, f"{it.id}: nothing left"
        correct = it.options[it.answer]
        if C.option_pattern(correct):  # not the one-letter options of image questions ("A")
            assert folded(correct) not in folded(text), it.id
        assert not C.answer_leaks(it, text), it.id
        assert not C.LABEL.search(text), it.id  # "Answer C:" labels tell the answer by elimination
    passages = C.passages_for(medbullets[1], "gold-background", medbullets)
    assert [(p.id, p.source) for p in passages] == [(medbullets[1].id, "gold-background")]


def test_gold_background_keeps_most_of_the_text(medbullets, backgrounds):
    shares = [len(backgrounds[it.id]) / len(explained(it)) for it in medbullets]
    assert statistics.median(shares) > 0.75  # 0.815 measured
    assert min(shares) > 0.3


def test_gold_background_on_a_real_explanation(medbullets, backgrounds):
    it = medbullets[1]  # repeated sepsis with the mother: intentional contamination
    text = backgrounds[it.id]
    assert "Factitious disorder by proxy (formerly Munchausen syndrome) occurs when 1 individual creates " \
           "symptoms in another for attention." in text
    assert "Meningitis would present with headache, altered mental status, and meningeal signs." in text
    assert "suggests a diagnosis of intentional contamination" not in text
    assert "Answer D:" not in text and "Incorrect Answers:" in text


def test_gold_background_drops_close_variants_of_a_long_option(medbullets, backgrounds):
    # The option misspells "dysphoric"; the explanation spells it right in every sentence.
    it = next(it for it in medbullets if it.options[it.answer] == "Premenstrual dysophoric disorder")
    assert "premenstrual dysphoric" not in backgrounds[it.id].casefold()
    # "Add mirtazapine": the explanation says it another way.
    it = next(it for it in medbullets if it.options[it.answer] == "Add mirtazapine")
    assert "mirtazapine" not in backgrounds[it.id].casefold()


def test_gold_background_of_the_hand_written_items():
    items = load_file(HERE / "data" / "knowledge_items.jsonl")
    k1 = items[0]
    text = must(C.gold_background(k1))
    assert "C Atrioventricular node" not in text and "atrioventricular node" not in text.casefold()
    assert "Verapamil is a non-dihydropyridine calcium channel blocker." in text
    assert not C.answer_leaks(k1, text)
    assert C.passages_for(items[5], "gold-background", items) == []  # k6 has no explanation


def test_gold_background_masks_a_mention_split_across_lines():
    it = item({"A": "Purkinje fibers", "B": "AV node"}, "B",
              "Conduction is slowest in the AV\nnode. Purkinje fibers are fastest.")
    assert C.gold_background(it) == "Conduction is slowest in the [masked]. Purkinje fibers are fastest."


def test_pubmedqa_gold_background_keeps_the_abstract():
    # yes/no/maybe cannot be looked for in prose: masking every "no" would wreck the abstract.
    items = load_benchmark("pubmedqa", limit=10, seed=0)
    for it in items:
        assert C.gold_background(it) == C.explanation(it)


# --- answer_leaks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, leaks", [
    ("The correct answer is C.", True), ("Ans. is 'c' i.e., ...", True), ("Answer: C", True),
    ("Option C is correct.", True), ("C is correct.", True), ("(C)", True), ("Ans. (c)", True), ("Ans-c", True),
    ("Vitamin C is the best antioxidant here.", False), ("Answer C: Fluids would worsen the edema.", False),
    ("Incorrect Answers:\nC bundle branch block widens the QRS.", False), ("Dopamine agonists are used.", True),
    ("dopamine", True), ("Serotonin is low.", False),
])
def test_answer_leaks(text, leaks):
    it = item({"A": "Serotonin excess", "B": "Acetylcholine", "C": "Dopamine", "D": "Histamine"}, "C", None)
    assert C.answer_leaks(it, text) is leaks


def test_a_lower_case_a_is_an_article_unless_marked():
    it = item({"A": "Serotonin excess", "B": "Acetylcholine", "C": "Dopamine", "D": "Histamine"}, "A", None)
    assert not C.answer_leaks(it, "The answer is a histamine release.")
    assert C.answer_leaks(it, "Ans. is 'a' i.e., ...") and C.answer_leaks(it, "Answer: a.")


def test_numeric_options_match_whole_numbers():
    it = item({"A": "0.5 mg", "B": "5 mg", "C": "25 mg"}, "B", None)
    assert C.answer_leaks(it, "Start at 5mg daily.") and C.answer_leaks(it, "A 5 mg dose")
    assert not C.answer_leaks(it, "Start at 25 mg.") and not C.answer_leaks(it, "Start at 0.5 mg.")
    assert not C.answer_leaks(it, "Give 5 mcg.")


# --- counterfactual -------------------------------------------------------------------------------

def must_pattern(option: str) -> re.Pattern[str]:
    pattern = C.option_pattern(option)
    assert pattern is not None
    return pattern


def mentions(it: Item, wrong: str, text: str) -> Counter:
    """How often the correct and the wrong option are named, each match counted once (longer first)."""
    order = sorted((it.answer, wrong), key=lambda k: -len(it.options[k]))
    both = "|".join(f"(?P<{k}>{must_pattern(it.options[k]).pattern})" for k in order)
    return Counter(m.lastgroup for m in re.finditer(both, text, re.IGNORECASE))


def test_counterfactual_swaps_the_options(medbullets, counterfactuals):
    built = 0
    for it in medbullets:
        text, wrong = counterfactuals[it.id], C.counterfactual_letter(it)
        if text is None:
            continue
        built += 1
        gold, rewritten = mentions(it, wrong, explained(it)), mentions(it, wrong, text)
        assert rewritten[it.answer] == gold[wrong], it.id  # the correct text only where the wrong one was
        assert rewritten[wrong] >= gold[it.answer] >= 0 and rewritten[wrong] > 0, it.id
        [passage] = C.passages_for(it, "counterfactual", medbullets)
        assert (passage.id, passage.source, passage.text) == (it.id, "counterfactual", text)
    assert built >= 230  # 240 measured; the others never name the correct option in a way a swap reaches


def test_counterfactual_on_a_real_explanation(medbullets, counterfactuals):
    it = medbullets[1]
    assert C.counterfactual_letter(it) == "C" and it.options["C"] == "Meningitis"
    text = counterfactuals[it.id]
    assert "suggests a diagnosis of Meningitis." in text
    # The paragraph that argued meningitis away now argues intentional contamination away, under its letter.
    assert "Answer B: Intentional contamination would present with headache" in text
    assert "Answer C:" not in text  # C is the one it argues for, so no longer among the incorrect


def test_counterfactual_of_the_hand_written_items():
    k1 = load_file(HERE / "data" / "knowledge_items.jsonl")[0]
    assert (k1.answer, C.counterfactual_letter(k1)) == ("C", "A")
    assert C.counterfactual(k1) == (
        "Verapamil is a non-dihydropyridine calcium channel blocker. Conduction in the Purkinje fibers depends on "
        "L-type calcium currents, so calcium channel blockers slow it. Atrioventricular node conduct fastest and rely "
        "on fast sodium channels.\n\nIncorrect Answers:\nAnswer C: Atrioventricular node depend on sodium channels."
        "\n\nBullet Summary:\nCalcium channel blockers slow conduction through the Purkinje fibers.\nA Purkinje fibers")


def test_counterfactual_letter(medbullets):
    letters = [C.counterfactual_letter(it) for it in medbullets]
    assert all(letter != it.answer for letter, it in zip(letters, medbullets))
    assert len(set(letters)) == 4  # a hash of the id spreads the choice
    assert letters == [C.counterfactual_letter(it) for it in medbullets]


def test_counterfactual_with_options_inside_each_other():
    options = {"A": "Heparin", "B": "Low molecular weight heparin", "C": "None of the above"}
    text = "Heparin is preferred in renal failure. Low molecular weight heparin accumulates. The correct answer is A."
    it = item(options, "A", text)
    assert C.counterfactual_letter(it) == "B"  # "None of the above" cannot be named in prose
    assert C.counterfactual(it) == ("Low molecular weight heparin is preferred in renal failure. Heparin "
                                    "accumulates. The correct answer is B.")
    # The correct option is part of the other's text: that one is never the counterfactual.
    inside = item({"A": "Heparin", "B": "Low molecular weight heparin", "C": "Warfarin"}, "B", text)
    assert {C.counterfactual_letter(dataclasses.replace(inside, id=f"x-{n}")) for n in range(30)} == {"C"}


def test_counterfactual_of_generic_options_is_skipped():
    it = item({"A": "Aspirin", "B": "Clopidogrel", "C": "None of the above"}, "C",
              "Ans. is 'c' i.e., None of the above. Neither drug is indicated.")
    assert C.counterfactual(it) is None and C.passages_for(it, "counterfactual", [it]) == []
    assert C.gold_background(it) == "Neither drug is indicated."
    assert not C.answer_leaks(it, "Neither drug is indicated.")


# --- placebo --------------------------------------------------------------------------------------

def test_placebo_is_the_nearest_length_explanation_that_does_not_leak(medbullets):
    by_id = {it.id: it for it in medbullets}
    for it in medbullets:
        [passage] = C.passages_for(it, "placebo", medbullets)
        donor = by_id[passage.id]
        own = explained(it)
        assert passage.source == "placebo" and passage.text == C.explanation(donor)
        assert donor.id != it.id and donor.source == it.source and passage.text != own
        assert not C.answer_leaks(it, passage.text)
        assert abs(len(passage.text) - len(own)) < 0.25 * len(own)
        key = (abs(len(passage.text) - len(own)), donor.id)
        nearer = [o for o in medbullets if (abs(len(explained(o)) - len(own)), o.id) < key]
        # Every nearer one is this item, a copy of it, or names its answer.
        assert all(o.id == it.id or C.explanation(o) == own or o.question == it.question
                   or C.answer_leaks(it, explained(o)) for o in nearer), it.id


def test_placebo_comes_from_the_same_source():
    pubmedqa = load_benchmark("pubmedqa", limit=30, seed=0)
    medqa = load_benchmark("medqa", limit=30, seed=0)
    pool = pubmedqa + medqa
    for it in pubmedqa:
        [passage] = C.passages_for(it, "placebo", pool)
        assert passage.id.startswith("pubmedqa-") and passage.id != it.id


def test_placebo_does_not_depend_on_the_pool_order(medbullets):
    shuffled = list(medbullets)
    random.Random(0).shuffle(shuffled)
    for it in medbullets[:40]:
        assert C.placebo_donor(it, medbullets) == C.placebo_donor(it, shuffled) == C.placebo_donor(it, shuffled[:])


def test_placebo_without_a_donor():
    alone = item({"A": "Heparin", "B": "Warfarin"}, "A", "Heparin acts at once.")
    twin = item({"A": "Heparin", "B": "Warfarin"}, "A", "Heparin is fast.", id="x-2")
    assert C.passages_for(alone, "placebo", [alone]) == []
    assert C.passages_for(alone, "placebo", [alone, twin]) == []  # the only other one names the answer


# --- determinism and checks -----------------------------------------------------------------------

def test_the_same_call_gives_the_same_passages(medbullets):
    for condition in C.CONDITIONS:
        for it in medbullets[:25]:
            assert C.passages_for(it, condition, medbullets) == C.passages_for(it, condition, list(medbullets))


def test_check_condition_messages(medbullets):
    with pytest.raises(M1Error) as e:
        C.check_condition("oracle", medbullets)
    assert "none, gold, gold-background, counterfactual, placebo, retrieve" in str(e.value)
    assert "\n" not in str(e.value)
    medqa = load_benchmark("medqa", limit=10, seed=0)
    with pytest.raises(M1Error) as e:
        C.check_condition("gold-background", medqa)
    message = str(e.value)
    assert "\n" not in message and "10 questions (medqa)" in message
    assert all(hint in message for hint in ("medbullets_op4", "--data-dir", '"exp"', "pubmedqa", "--data"))
    with pytest.raises(M1Error, match="yes/no/maybe"):
        C.check_condition("counterfactual", load_benchmark("pubmedqa", limit=10, seed=0))
    for condition in C.CONDITIONS:
        C.check_condition(condition, medbullets)
    C.check_condition("none", medqa)
    C.check_condition("retrieve", medqa)
    C.check_condition("gold", medqa + medbullets[:1])  # one item with an explanation is enough
