"""The failure taxonomy on traces built for the purpose, and the LLM judge: label parsing, agreement
on the shipped hand-labelled sample, and the plumbing against a real OpenAI-compatible server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from m1.errors import M1Error
from m1.reporting.analyses.failures import CATEGORIES, COLUMNS, JUDGE_COLUMNS, MICRO, category, failure_rows, failures
from m1.reporting.judge import (
    LABELS,
    UNPARSED,
    Agreement,
    Case,
    JudgeCache,
    Judgement,
    JudgeResult,
    agreement,
    case_from_trace,
    judge_failures,
    load_sample,
    measure_agreement,
    messages_for,
    parse_label,
    prompt_hash,
)
from m1.runs import Run, Trace

SAMPLE = Path(__file__).parent / "data" / "judge_sample.jsonl"
OPTIONS = {"A": "Alteplase", "B": "Tenecteplase", "C": "Aspirin", "D": "Heparin"}


def trace(qid="q", budget=64, outcome="wrong", hit=False, rounds=0, source="medqa", finish="stop",
          thinking="The patient has a stroke; thrombolysis is indicated.", letter=None) -> Trace:
    if letter is None:
        letter = {"correct": "A", "wrong": "C"}.get(outcome)
    return Trace(id=qid, source=source, budget=budget, gold="A", options=OPTIONS, letter=letter, outcome=outcome,
                 correct=outcome == "correct", hit_budget=hit, thinking_ended="budget" if hit else "natural",
                 rounds_forced=rounds, forced_at=[5] * rounds, answer_finish_reason=finish, thinking=thinking,
                 answer=f"Final Answer: {letter or 'unclear'}",
                 prompt="<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nA 70-year-old man has "
                        f"sudden aphasia ({qid}). Best treatment?\nA. Alteplase\nB. Tenecteplase\nC. Aspirin\n"
                        "D. Heparin<|im_end|>\n<|im_start|>assistant\n")


# ---- the taxonomy ----

@pytest.mark.parametrize("t, expected", [
    (trace(outcome="correct"), "correct"),
    (trace(outcome="correct", hit=True, rounds=2), "correct"),
    (trace(outcome="wrong"), "wrong_natural"),
    (trace(outcome="wrong", hit=True), "wrong_after_cut"),
    (trace(outcome="wrong", rounds=1), "wrong_after_forcing"),
    (trace(outcome="wrong", rounds=2, hit=True), "wrong_after_forcing"),  # forcing before the cut
    (trace(outcome="unparsed", hit=True), "cut_no_answer"),
    (trace(outcome="unparsed", hit=True, rounds=1), "cut_no_answer"),  # no answer before anything else
    (trace(outcome="unparsed"), "unparsed"),
    (trace(outcome="unparsed", finish="length"), "unparsed"),
])
def test_category(t, expected):
    assert category(t) == expected


def composed_run(name="r") -> Run:
    traces = (
        [trace(f"c{i}", outcome="correct") for i in range(5)]
        + [trace(f"w{i}") for i in range(3)]
        + [trace(f"x{i}", hit=True) for i in range(2)]
        + [trace("f0", rounds=1), trace("f1", rounds=3, hit=True)]
        + [trace(f"k{i}", outcome="unparsed", hit=True, finish="length") for i in range(4)]
        + [trace("u0", outcome="unparsed", finish="length"), trace("u1", outcome="unparsed")]
        + [trace(f"c{i}", budget=128, outcome="correct") for i in range(3)]
        + [trace("p0", budget=128, source="pubmedqa", outcome="unparsed")]
    )
    return Run(Path(f"/runs/{name}"), {"forcing_rounds": 3}, traces, name=name)


def test_counts_and_shares_per_run_source_budget():
    rows = {(r["run"], r["source"], r["budget"]): r for r in failure_rows([composed_run()])}
    assert set(rows) == {("r", "medqa", 64), ("r", "medqa", 128), ("r", "pubmedqa", 128), ("r", MICRO, 64),
                         ("r", MICRO, 128)}
    r64 = rows[("r", "medqa", 64)]
    assert r64["n"] == 18
    assert {c: r64[c] for c in CATEGORIES} == {"correct": 5, "wrong_natural": 3, "wrong_after_cut": 2,
                                               "wrong_after_forcing": 2, "cut_no_answer": 4, "unparsed": 2}
    assert r64["share_cut_no_answer"] == pytest.approx(4 / 18)
    assert sum(r64[f"share_{c}"] for c in CATEGORIES) == pytest.approx(1)
    assert r64["no_letter_answer_cut"] == 5  # 4 cut, 1 natural: answers that ran out of answer_max_tokens
    assert rows[("r", "medqa", 128)]["correct"] == 3 and rows[("r", "pubmedqa", 128)]["unparsed"] == 1
    all128 = rows[("r", MICRO, 128)]
    assert (all128["n"], all128["correct"], all128["unparsed"]) == (4, 3, 1)
    assert set(r64) == set(COLUMNS)


def test_section_and_figure():
    s = failures([composed_run("a"), composed_run("b")])
    assert s is not None and s.key == "failures"
    assert [t.name for t in s.tables] == ["failures"]
    assert set(s.figures) == {"failures_by_budget"}
    panels = [ax for ax in s.figures["failures_by_budget"].axes if ax.get_visible()]
    assert len(panels) == 4  # (run, source) panels: 2 runs x 2 sources
    assert "cut_no_answer" in s.markdown()
    assert failures([]) is None and failures([Run(Path("/runs/empty"), {}, [])]) is None


def test_many_panels_pool_sources_per_run():
    runs = [Run(Path(f"/runs/r{i}"), {}, [trace(source=f"s{j}") for j in range(5)]) for i in range(3)]
    s = failures(runs)
    assert s is not None
    assert len([ax for ax in s.figures["failures_by_budget"].axes if ax.get_visible()]) == 3


# ---- the judge, offline ----

@pytest.mark.parametrize("reply, label", [
    ("The model confused the drugs.\nLABEL: wrong_knowledge", "wrong_knowledge"),
    ("Reason: it contradicts itself.\nlabel: Reasoning slip", "reasoning_slip"),
    ("**LABEL:** misread_question", "misread_question"),
    ("LABEL: missing-knowledge.", "missing_knowledge"),
    ("It misread the question, a misread question error.", "misread_question"),  # the one label named
    ("Either missing knowledge or wrong knowledge.", None),  # two named, no label line
    ("LABEL: wrong_knowledge\nActually no.\nLABEL: reasoning_slip", "reasoning_slip"),  # the last label line
    ("LABEL: knowledge", None),
    ("", None),
    ("missing", None),
])
def test_parse_label(reply, label):
    assert parse_label(reply) == label


def test_the_judge_sees_the_question_stem():
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is X?\nA. a<|im_end|>\n" \
             "<|im_start|>assistant\n"
    old = Trace(id="q", source="s", budget=8, options={"A": "a"}, prompt=chatml)  # schema 1: no stored question
    assert case_from_trace(old).question == "What is X?"
    assert case_from_trace(Trace(id="q", source="s", budget=8, question="What is Y?")).question == "What is Y?"


def test_messages_and_hash():
    case = Case("Q?", {"B": "two", "A": "one"}, "A", "B", "r" * 10000, "Final Answer: B")
    system, user = messages_for(case, max_reasoning_chars=300)
    assert system["role"] == "system" and all(label in system["content"] for label in LABELS)
    assert "A. one\nB. two" in user["content"] and "Correct option: A" in user["content"]
    assert "[...]" in user["content"] and len(user["content"]) < 600
    msgs = [system, user]
    assert prompt_hash(msgs, 0.0, 100) == prompt_hash(msgs, 0.0, 100) != prompt_hash(msgs, 0.0, 101)


def test_shipped_sample_is_balanced_and_valid():
    cases = load_sample(SAMPLE)
    assert len(cases) == 24
    assert {label: sum(c.label == label for c in cases) for label in LABELS} == dict.fromkeys(LABELS, 6)
    for c in cases:
        assert c.case.gold in c.case.options and c.case.letter in c.case.options
        assert c.case.gold != c.case.letter and c.note and c.case.reasoning


def fake_labels(gold: list[str]) -> list[str | None]:
    """Per label, in sample order: the first 4 cases right, the 5th given the next label, the 6th unparsed."""
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for g in gold:
        k = seen[g] = seen.get(g, 0) + 1
        out.append(g if k <= 4 else LABELS[(LABELS.index(g) + 1) % 4] if k == 5 else None)
    return out


def test_agreement_on_the_shipped_sample_with_a_fixed_fake_labelling():
    gold = [c.label for c in load_sample(SAMPLE)]
    a = agreement(gold, fake_labels(gold))
    # By hand: 16 of 24 agree, p_o = 2/3. Hand labels: 6 of each label (1/4 each). Judge: each label
    # 4 right + 1 moved over from the previous label = 5 (5/24), unparsed 4 (no hand label is unparsed).
    # p_e = 4 * (6/24 * 5/24) = 5/24; kappa = (2/3 - 5/24) / (1 - 5/24) = (11/24) / (19/24) = 11/19.
    assert (a.n, a.n_agree, a.n_unparsed) == (24, 16, 4)
    assert a.accuracy == pytest.approx(2 / 3)
    assert a.kappa == pytest.approx(11 / 19)
    assert a.confusion[("reasoning_slip", "misread_question")] == 1
    assert a.confusion[("misread_question", "missing_knowledge")] == 1
    assert a.confusion[("wrong_knowledge", UNPARSED)] == 1
    assert agreement(gold, gold).kappa == pytest.approx(1)
    constant = agreement(gold, ["reasoning_slip"] * 24)  # always one label: right 1/4 of the time, by chance
    assert constant.accuracy == pytest.approx(0.25) and constant.kappa == pytest.approx(0)
    with pytest.raises(ValueError):
        agreement(gold, gold[:-1])


def test_cache_skips_a_cut_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JudgeCache(path)
    cache.put("m", "h1", "LABEL: reasoning_slip", "stop")
    with open(path, "a") as f:
        f.write('{"model": "m", "prompt_hash": "h2", "rep')
    again = JudgeCache(path)
    assert (again.get("m", "h1") or {})["reply"] == "LABEL: reasoning_slip"
    assert again.get("m", "h2") is None and again.get("other", "h1") is None


def test_failures_section_with_judge_labels():
    runs = [composed_run("a")]
    judged = JudgeResult("judge-x", [
        Judgement("a", "medqa", "w0", 64, "C", "A", "wrong_knowledge", "Aspirin is not thrombolysis.\n"
                  "LABEL: wrong_knowledge"),
        Judgement("a", "medqa", "w1", 64, "C", "A", None, "I am not sure."),
        Judgement("a", "medqa", "w2", 64, "C", "A", None, "", error="HTTP 500"),
        Judgement("elsewhere", "medqa", "w0", 64, "C", "A", "reasoning_slip", "LABEL: reasoning_slip"),
    ], agreement=Agreement(4, 3, 1, 0.75, 0.6, {("wrong_knowledge", "wrong_knowledge"): 3,
                                                 ("reasoning_slip", UNPARSED): 1}))
    s = failures(runs, judged=judged)
    assert s is not None
    tables = {t.name: t for t in s.tables}
    assert set(tables) == {"failures", "failure_judge", "failure_judge_questions", "judge_agreement",
                           "judge_confusion"}
    assert tables["failure_judge"].columns == JUDGE_COLUMNS
    row = next(r for r in tables["failure_judge"].rows if (r["source"], r["budget"]) == ("medqa", 64))
    assert (row["n_wrong"], row["n_judged"], row["wrong_knowledge"], row[UNPARSED], row["failed"]) == (7, 3, 1, 1, 1)
    questions = tables["failure_judge_questions"].rows
    assert [q["label"] for q in questions] == ["wrong_knowledge", UNPARSED, "failed: HTTP 500"]
    assert questions[0]["reason"] == "Aspirin is not thrombolysis."
    assert [link.id for link in s.links] == ["w0", "w1"]  # the run "elsewhere" is not in this report
    assert s.links[0].why == "judge judge-x: wrong knowledge (Aspirin is not thrombolysis.)"
    assert tables["judge_agreement"].rows[0]["kappa"] == 0.6
    assert "failure_judge_labels" in s.figures
    assert "kappa 0.60" in s.text


def test_unreachable_judge_is_one_error(tmp_path):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(M1Error, match="cannot reach"):
        judge_failures([composed_run()], url, "m", cache=tmp_path / "c.jsonl", max_retries=0)
    assert not (tmp_path / "c.jsonl").exists()  # failures are not cached


def test_password_in_url_refused():
    with pytest.raises(M1Error, match="environment variable"):
        judge_failures([], "http://user:secret@127.0.0.1:1/v1", "m")


# ---- the judge against a real server (llama-cpp-python's, with the embedded SmolLM2) ----

SECRET = "sk-m1-judge-test-DO-NOT-LEAK-7331"


def judged_run() -> Run:
    same = "Aspirin is the treatment for every stroke, so C."
    traces = [trace("q1", 64, thinking=same), trace("q1", 128, thinking=same),  # the same request twice
              trace("q2", 64, thinking="Thrombolysis is contraindicated after 1 hour, so aspirin. C."),
              trace("q3", 64, outcome="correct"), trace("q4", 64, outcome="unparsed", hit=True)]
    return Run(Path("/runs/judged"), {}, traces, name="judged")


def test_judge_plumbing_against_a_real_server(server, tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("M1_JUDGE_TEST_KEY", SECRET)
    cache = tmp_path / "judge_cache.jsonl"
    sample = load_sample(SAMPLE)[:1]
    opts = {"api_key_env": "M1_JUDGE_TEST_KEY", "cache": cache, "max_tokens": 24, "max_retries": 0}
    first = judge_failures([judged_run()], server, "smollm2", sample=sample, **opts)
    assert [(j.id, j.budget) for j in first.judgements] == [("q1", 64), ("q1", 128), ("q2", 64)]  # wrong only
    # q1 asked once for both budgets, q2 once, one sample case: 3 requests, none failed
    assert (first.requests, first.failed, first.cache_hits) == (3, 0, 1)
    assert [j.cached for j in first.judgements] == [False, True, False]
    for j in first.judgements:
        assert j.error is None and j.reply.strip()
        assert j.label == parse_label(j.reply) and (j.label is None or j.label in LABELS)
    assert first.agreement is not None and first.agreement.n == 1
    text = cache.read_text()
    assert len(text.splitlines()) == 3
    assert all(set(json.loads(line)) == {"model", "prompt_hash", "reply", "finish_reason"}
               for line in text.splitlines())
    assert SECRET not in text and SECRET not in repr(first)
    s = failures([judged_run()], judged=first)
    assert s is not None and SECRET not in s.markdown()

    # A rerun is answered from the cache: no request at all (the server address is even dead now).
    dead = f"http://127.0.0.1:{free_port()}/v1"
    again = judge_failures([judged_run()], dead, "smollm2", sample=sample, **opts)
    assert (again.requests, again.failed, again.cache_hits) == (0, 0, 4)
    assert [j.label for j in again.judgements] == [j.label for j in first.judgements]
    assert [j.reply for j in again.judgements] == [j.reply for j in first.judgements]
    assert again.agreement == first.agreement
    assert cache.read_text() == text  # nothing appended

    # Another judge model is another cache key; a one-token reply cannot name a label: unparsed.
    short, verdicts = measure_agreement(sample[:1], server, "smollm2-short", cache=cache, max_tokens=1,
                                        api_key_env="M1_JUDGE_TEST_KEY")
    assert verdicts[0].label is None and verdicts[0].error is None and not verdicts[0].cached
    assert (short.n, short.n_unparsed, short.accuracy) == (1, 1, 0.0)
    assert SECRET not in cache.read_text()
