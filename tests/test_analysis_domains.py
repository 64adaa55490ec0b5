"""The domains analysis: question text out of prompts, offline labels, gain per domain, pooling."""
from __future__ import annotations

import importlib
import json

import pytest

from m1.curation.domains import qualifiers
from m1.reporting.analyses.domains import (
    ACCURACY_COLUMNS,
    GAIN_COLUMNS,
    OfflineLabeller,
    domains,
    holm,
    label_runs,
    question_text,
)
from m1.runs import Run, Trace

D = importlib.import_module("m1.reporting.analyses.domains")  # the package's `domains` is the analysis function

INSTRUCTION = "Return your final response within \\boxed{}."
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user: str, system: str | None = SYSTEM) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


# Question templates whose domain the offline labeller gives unambiguously (checked by a test below).
PLANTED = {
    "Genetics": ("A {age}-year-old boy has a mutation in the {word} gene inherited from his mother. "
                 "What is the inheritance pattern of this genetic disorder?",
                 {"A": "Autosomal dominant", "B": "Autosomal recessive", "C": "X-linked recessive",
                  "D": "Mitochondrial"}),
    "Surgery": ("A {age}-year-old man has a perforated appendix ({word}). "
                "Which surgical operation should be performed?",
                {"A": "Appendectomy", "B": "Observation", "C": "Colectomy", "D": "Surgical drainage"}),
    "Virology": ("A {age}-year-old woman has a viral infection after travel to {word}. "
                 "Which virus is most likely responsible?",
                 {"A": "Influenza virus", "B": "Dengue virus", "C": "Measles virus", "D": "Rotavirus"}),
    "Ethics": ("A {age}-year-old patient ({word}) refuses treatment. Which ethical principle requires informed "
               "consent here?", {"A": "Autonomy", "B": "Beneficence", "C": "Justice", "D": "Nonmaleficence"}),
}
WORDS = ["CFTR", "FBN1", "HBB", "DMD", "NF1", "BRCA1", "APC", "RB1", "TP53", "PKD1", "HTT", "FMR1", "VHL", "MEN1"]


def question(domain: str, i: int) -> tuple[str, dict[str, str]]:
    text, options = PLANTED[domain]
    return text.format(age=20 + i, word=WORDS[i % len(WORDS)]), options


def traces_for(domain: str, n: int, right: dict[int, list[bool]], source: str = "medqa") -> list[Trace]:
    """n questions of `domain`; right[budget][i] says whether question i is right at that budget."""
    out = []
    for i in range(n):
        q, options = question(domain, i)
        prompt = chatml(q + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items()) + "\n" + INSTRUCTION)
        for budget, correct in right.items():
            out.append(Trace(id=f"{domain}-{i}", source=source, budget=budget, gold="A", options=options,
                             prompt=prompt, correct=correct[i], outcome="correct" if correct[i] else "wrong"))
    return out


def make_run(tmp_path, name: str, traces: list[Trace]) -> Run:
    return Run(tmp_path / name, {"instruction": INSTRUCTION, "system_prompt": None}, traces)


def planted_run(tmp_path, name: str = "run") -> Run:
    """Genetics gains from thinking (2 of 14 right at 32, 13 at 1024); Surgery does not (9 of 14 at both);
    Virology (4) and Ethics (3) are too small and get pooled."""
    n = 14
    traces = traces_for("Genetics", n, {32: [i < 2 for i in range(n)], 256: [i < 8 for i in range(n)],
                                        1024: [i < 13 for i in range(n)]})
    traces += traces_for("Surgery", n, {32: [i % 3 != 0 for i in range(n)], 256: [i % 3 != 0 for i in range(n)],
                                        1024: [i % 3 != 0 for i in range(n)]})
    traces += traces_for("Virology", 4, {32: [False] * 4, 256: [True] * 4, 1024: [True] * 4})
    traces += traces_for("Ethics", 3, {32: [True] * 3, 256: [True] * 3, 1024: [False] * 3})
    return make_run(tmp_path, name, traces)


# ---- the question text ----

QUESTION = "A 30-year-old man has chest pain. What is the most likely diagnosis?"
OPTIONS = {"A": "Angina", "B": "Pericarditis"}
USER = f"{QUESTION}\nA. Angina\nB. Pericarditis\n{INSTRUCTION}"


@pytest.mark.parametrize("prompt", [
    chatml(USER),  # SmolLM / Qwen: ChatML with a default system prompt
    chatml(USER, system=None),
    f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023"
    f"<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    f"<bos><start_of_turn>user\n{USER}<end_of_turn>\n<start_of_turn>model\n",  # Gemma
    f"<｜begin▁of▁sentence｜><｜User｜>{USER}<｜Assistant｜><think>\n",  # DeepSeek R1 distills
    f"<s>[INST] {USER} [/INST]",  # Mistral
    f"{USER}\n\nAnswer: ",  # a base model: no template
])
def test_question_text_strips_template_system_prompt_and_instruction(prompt):
    t = Trace(id="q", source="s", budget=1, options=OPTIONS, prompt=prompt)
    assert question_text(t, INSTRUCTION, None, options=False) == QUESTION
    assert question_text(t, INSTRUCTION, None, options=True) == f"{QUESTION} Angina Pericarditis"


def test_question_text_without_template_drops_a_configured_system_prompt():
    t = Trace(id="q", source="s", budget=1, options=OPTIONS, prompt=f"Be brief.\n\n{USER}\n\nAnswer: ")
    assert question_text(t, INSTRUCTION, "Be brief.", options=False) == QUESTION


def test_question_text_without_options_in_the_prompt_falls_back_to_the_user_turn():
    t = Trace(id="q", source="s", budget=1, prompt=chatml(f"{QUESTION}\n{INSTRUCTION}"))
    assert question_text(t, INSTRUCTION, None) == QUESTION
    assert question_text(Trace(id="q", source="s", budget=1), INSTRUCTION, None) == ""


# ---- labels ----

def test_offline_labeller_gives_the_planted_domains_deterministically(tmp_path):
    run = planted_run(tmp_path)
    first = label_runs([run])
    assert first == label_runs([run])  # deterministic
    assert {d for (_, qid), d in first.items() if qid.startswith("Genetics")} == {"Genetics"}
    for domain in PLANTED:
        assert {d for (_, qid), d in first.items() if qid.startswith(domain)} == {domain}
    assert OfflineLabeller()(["", "zzz qqq"]) == [None, None]  # nothing to go on: unlabelled


def test_untuned_labeller_is_the_curation_classifier():
    from m1.curation.domains import TfidfClassifier

    texts = ["A 44-year-old woman has a history of melanoma. Which of the following is most likely?",
             "What is the usual dosage and route of administration of this drug for children?"]
    assert OfflineLabeller(tuned=False)(texts) == TfidfClassifier(qualifiers()).classify(texts)


def test_tuned_labeller_reads_the_ask_of_a_vignette_not_its_boilerplate():
    vignette = ("A 44-year-old woman comes to the physician because of fatigue. She has a history of hypertension. "
                "Her temperature is 37°C, pulse is 90/min, and blood pressure is 150/90 mm Hg. Examination shows "
                "pallor. {ask}")
    asks = {"Which of the following is the most likely diagnosis?": "Diagnosis",
            "Which of the following is the most appropriate next step in management?": "Therapy",
            "What is the genetic inheritance pattern of her disease?": "Genetics"}
    got = OfflineLabeller()([vignette.format(ask=a) for a in asks])
    assert [q.title if q else None for q in got] == list(asks.values())
    raw = OfflineLabeller(tuned=False)([vignette.format(ask=a) for a in asks])
    assert {q.title for q in raw if q} <= {"History", "Blood", "Trends"}  # what the vignette's words pull to


def test_each_distinct_question_is_labelled_once_across_runs(tmp_path):
    a, b = planted_run(tmp_path, "a"), planted_run(tmp_path, "b")
    calls: list[list[str]] = []

    def labeller(texts):
        calls.append(texts)
        return ["Cardiology" if "gene" in t else None for t in texts]

    labels = label_runs([a, b], labeller)
    assert len(calls) == 1 and len(calls[0]) == len({(t.source, t.id) for t in a.traces}) == len(labels)
    assert set(labels.values()) == {"Cardiology", D.UNLABELLED}
    with pytest.raises(ValueError, match="returned 0 labels"):
        label_runs([a], lambda texts: [])


# ---- the analysis ----

def test_gain_table_ranks_the_planted_domains_and_pools_small_ones(tmp_path):
    run = planted_run(tmp_path)
    section = domains([run], n_boot=500)
    assert section is not None and section.key == "domains"
    gain, accuracy = section.tables
    assert gain.name == "domains_gain" and gain.columns == GAIN_COLUMNS
    assert accuracy.name == "domains_accuracy" and accuracy.columns == ACCURACY_COLUMNS
    pooled = "other (pooled: 2 domains with < 10 questions each)"
    assert [r["domain"] for r in gain.rows] == ["Genetics", pooled, "Surgery"]
    genetics, other, surgery = gain.rows
    assert (genetics["smallest_budget"], genetics["best_budget"]) == (32, 1024)  # best over all questions
    assert genetics["n"] == 14 and genetics["acc_smallest"] == pytest.approx(2 / 14)
    assert genetics["gain"] == pytest.approx(11 / 14) and genetics["wrong_to_right"] == 11
    assert genetics["gain_ci_low"] > 0.4 and genetics["p_mcnemar"] < 0.001 and genetics["p_holm"] < 0.01
    assert surgery["gain"] == 0 and surgery["p_mcnemar"] == 1 and surgery["gain_ci_low"] == surgery["gain_ci_high"] == 0
    assert other["n"] == 7 and other["gain"] == pytest.approx(1 / 7)  # 4 virology gain, 3 ethics lose
    assert "2 domains with fewer than 10 questions each (7 questions) pooled" in section.text
    assert "most gain in Genetics" in section.text and "Holm's correction: Genetics" in section.text

    cells = {(r["domain"], r["budget"]): r for r in accuracy.rows}
    assert len(accuracy.rows) == 3 * 3
    g = cells[("Genetics", 256)]
    assert (g["n"], g["n_correct"], g["accuracy"]) == (14, 8, pytest.approx(8 / 14))
    assert g["ci_low"] < 8 / 14 < g["ci_high"]
    assert [r["domain"] for r in accuracy.rows][-3:] == [pooled] * 3  # pooled rows last

    assert "domains_gain" in section.figures
    assert section.links and all(link.why.startswith("Genetics: wrong at budget 32") for link in section.links)
    assert len(section.links) == 5  # max_links
    again = domains([run], n_boot=500)
    assert again is not None and again.tables[0].rows == gain.rows  # seeded: the same intervals again


def test_min_questions_decides_pooling(tmp_path):
    section = domains([planted_run(tmp_path)], min_questions=3, n_boot=200)
    assert section is not None
    assert {r["domain"] for r in section.tables[0].rows} == {"Genetics", "Surgery", "Virology", "Ethics"}
    assert "questions each (" not in section.text  # no run pooled anything
    single = domains([planted_run(tmp_path)], min_questions=4, n_boot=200)
    assert single is not None
    assert "other (pooled: 1 domain with < 4 questions each)" in {r["domain"] for r in single.tables[0].rows}


def test_several_runs_get_rows_and_a_panel_each(tmp_path):
    a = planted_run(tmp_path, "a")
    flat = make_run(tmp_path, "b", [t.rescored(correct=True) for t in a.traces])
    section = domains([a, flat], n_boot=200)
    assert section is not None
    gain = section.tables[0].rows
    assert {r["run"] for r in gain} == {"a", "b"}
    assert all(r["gain"] == 0 for r in gain if r["run"] == "b")
    # b: every budget ties with the smallest, so the largest is used and the text says so
    assert {r["best_budget"] for r in gain if r["run"] == "b"} == {1024}
    assert "b: no budget beat the smallest (32: 1.000)" in section.text
    assert len([ax for ax in section.figures["domains_gain"].axes if ax.get_visible()]) == 2


def test_one_budget_and_no_traces(tmp_path):
    one = make_run(tmp_path, "one", [t for t in planted_run(tmp_path).traces if t.budget == 32])
    section = domains([one], n_boot=200)
    assert section is not None and [t.name for t in section.tables] == ["domains_accuracy"]
    assert "one budget only (32)" in section.text and not section.figures
    assert domains([make_run(tmp_path, "empty", [])]) is None


def test_questions_missing_at_a_budget_are_left_out_of_the_pairing(tmp_path):
    run = planted_run(tmp_path)
    partial = make_run(tmp_path, "partial", [t for t in run.traces
                                             if not (t.id == "Genetics-0" and t.budget == 1024)])
    section = domains([partial], n_boot=200)
    assert section is not None
    genetics = next(r for r in section.tables[0].rows if r["domain"] == "Genetics")
    assert genetics["n"] == 13


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_llm_labeller_uses_the_curation_classifier_with_a_cache_and_falls_back(tmp_path, monkeypatch):
    from m1.curation import domains as curation
    from m1.curation.config import TeacherConfig

    seen: dict = {}
    quals = {q.title: q for q in qualifiers()}

    def fake_llm_classify(texts, quals_, cfg, teacher, cache_path):
        seen.update(texts=texts, rubric=cfg.rubric, max_tokens=teacher.params["max_tokens"], cache=cache_path)
        return [quals["Surgery"] if "surgical" in t else None for t in texts], ["" for _ in texts], {}

    monkeypatch.setattr(curation, "llm_classify", fake_llm_classify)
    labeller = D.llm_labeller(TeacherConfig(model="m"), cache=tmp_path / "labels.sqlite", rubric="titles")
    run = planted_run(tmp_path)
    labels = label_runs([run], labeller)
    assert seen["cache"] == tmp_path / "labels.sqlite" and seen["rubric"] == "titles" and seen["max_tokens"] == 2048
    assert {d for (_, qid), d in labels.items() if qid.startswith("Surgery")} == {"Surgery"}
    assert {d for (_, qid), d in labels.items() if qid.startswith("Genetics")} == {"Genetics"}  # offline fallback
    no_fallback = D.llm_labeller(TeacherConfig(model="m"), cache=tmp_path / "labels.sqlite", fallback=False)
    assert D.UNLABELLED in label_runs([run], no_fallback).values()
    section = domains([run], labeller=labeller, n_boot=100)
    assert section is not None and "the LLM m at" in section.text and "approximate" not in section.text


def test_default_cache_is_outside_run_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("M1_CACHE", str(tmp_path / "c"))
    assert D.default_cache() == tmp_path / "c" / "domain_labels.sqlite"
    monkeypatch.delenv("M1_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert D.default_cache() == tmp_path / "x" / "m1" / "domain_labels.sqlite"


def test_registered_and_written_by_the_report_without_touching_the_run(tmp_path):
    from m1.reporting.analyses import ANALYSES
    from m1.reporting.report import report

    assert domains in ANALYSES
    run = planted_run(tmp_path)
    run.path.mkdir()
    (run.path / "config.json").write_text(json.dumps({"config": run.config}))
    (run.path / "traces.jsonl").write_text("".join(json.dumps(t.to_json()) + "\n" for t in run.traces))
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    out = tmp_path / "report"
    rep = report([Run.load(run.path)], out, analyses=[domains])
    assert [s.key for s in rep.sections] == ["domains"]
    for name in ("domains_gain.csv", "domains_gain.md", "domains_accuracy.csv", "domains_gain.png"):
        assert (out / name).exists(), name
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before
