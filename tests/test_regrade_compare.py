import argparse
import csv
import json

import pytest

from m1 import compare, regrade
from m1.benchmarks.items import Item
from m1.errors import M1Error
from m1.grading import strict
from m1.runs import Run

OPTS = {"A": "Hepatitis B infection", "B": "C. difficile colitis", "C": "Vitamin A deficiency",
        "D": "Ulcerative colitis"}


def record(qid: str, source: str, budget: int, text: str, gold: str = "C") -> dict:
    """A traces.jsonl line as `m1 eval` writes it, graded by the strict grader."""
    g = strict.grade(text, Item(qid, "q", OPTS, gold, source))
    return {"id": qid, "source": source, "budget": budget, "gold": gold, "options": OPTS,
            "prompt": "...", "prompt_tokens": 50, "thinking": "hmm", "thinking_tokens": budget // 2,
            "thinking_ended": "natural", "hit_budget": False, "forcing_rounds": 0, "forced_at": [],
            "think_finish_reasons": ["stop"], "answer_prefix": "Final Answer:", "answer": text,
            "answer_tokens": 5, "answer_finish_reason": "stop", "graded_text": text,
            "letter": g.letter, "outcome": g.outcome, "rule": g.rule, "correct": g.outcome == "correct"}


def write_run(path, records, **config):
    path.mkdir(parents=True)
    cfg = {"benchmark": "medqa", "budgets": sorted({r["budget"] for r in records}), "seed": 0,
           "temperature": 0.0, "format": "m1", "forcing_rounds": 0, **config}
    (path / "config.json").write_text(json.dumps({"config": cfg, "environment": {"python": "3"}}))
    (path / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_regrade_with_m1_grader(tmp_path):
    records = [
        record("q1", "medqa", 256, "Final Answer: C"),  # both graders: C, correct
        record("q2", "medqa", 256, "The answer is vitamin A, clearly."),  # strict: unparsed; m1: A (wrong)
        record("q3", "medqa", 256, "\\boxed{Vitamin A deficiency}"),  # both correct
        record("q4", "pubmedqa", 256, "Final Answer: Hepatitis B infection", gold="B"),  # strict A; m1 B (correct!)
    ]
    run = write_run(tmp_path / "run", records)
    new, changed = regrade.regrade(run, "m1")
    traces = sorted(new.traces, key=lambda t: t.id)
    assert [t.letter for t in traces] == ["C", "A", "C", "B"]
    assert [t.correct for t in traces] == [True, False, True, True]
    assert all(t.grader == "m1" for t in traces) and traces[1].outcome == "wrong"
    assert changed == {"grader": "m1", "n_records": 4, "letters_changed": 2, "correct_changed": 1}
    out = run / "regraded-m1"
    assert json.loads((out / "changes.json").read_text()) == changed
    rows = {r["source"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert float(rows["medqa"]["accuracy"]) == pytest.approx(2 / 3) and float(rows["pubmedqa"]["accuracy"]) == 1.0
    assert float(rows["medqa"]["unparsed_rate"]) == 0.0
    assert "| medqa | 256 | 3 |" in (out / "table.md").read_text() and (out / "report.html").exists()
    # The run's own files are untouched.
    assert json.loads((run / "traces.jsonl").read_text().splitlines()[1])["outcome"] == "unparsed"

    strict_again, _ = regrade.regrade(run, "strict")
    assert sorted((t.id, t.letter) for t in strict_again.traces) == [(r["id"], r["letter"]) for r in records]


def test_regrade_errors_and_partial_line(tmp_path):
    with pytest.raises(M1Error, match="not a folder"):
        regrade.regrade(tmp_path / "nope")
    run = write_run(tmp_path / "run", [record("q1", "medqa", 64, "Final Answer: C")])
    with pytest.raises(M1Error, match="unknown grader"):
        regrade.regrade(run, "lenient")
    with open(run / "traces.jsonl", "a") as f:
        f.write('{"id": "q2", "source": "med')  # a crash mid-write: skipped, not fatal
    assert len(Run.load(run).traces) == 1
    (run / "traces.jsonl").write_text('{"id": "q1"}\n')
    with pytest.raises(M1Error, match=r"traces.jsonl:1: record lacks"):
        Run.load(run)
    (run / "traces.jsonl").write_text('garbage\n')
    with pytest.raises(M1Error, match="not a JSON line"):
        Run.load(run)


def test_regrade_cli(tmp_path, capsys):
    run = write_run(tmp_path / "run", [record("q1", "medqa", 64, "The answer is vitamin A.")])
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    regrade.add_parser(sub)
    args = sub.choices["regrade"].parse_args([str(run), "--grader", "m1"])
    assert args.func is regrade.main
    assert regrade.main(args) == 0
    out = capsys.readouterr().out
    assert "0 of 1 records change correctness" in out and (run / "regraded-m1" / "table.md").exists()


def _two_budget_run(path):
    # medqa: 10 questions; at 1024, 1 goes right->wrong, 9 wrong->right. pubmedqa: 2, unchanged.
    recs = []
    for i in range(10):
        recs.append(record(f"m{i}", "medqa", 256, "Final Answer: C" if i == 0 else "Final Answer: D"))
        recs.append(record(f"m{i}", "medqa", 1024, "Final Answer: D" if i == 0 else "Final Answer: C"))
    for i, text in enumerate(["Final Answer: C", "Final Answer: A"]):
        recs += [record(f"p{i}", "pubmedqa", 256, text), record(f"p{i}", "pubmedqa", 1024, text)]
    return write_run(path, recs)


def test_compare_budgets_within_one_run(tmp_path):
    run = _two_budget_run(tmp_path / "run")
    result = compare.compare_runs(run, budgets=[256, 1024], n_boot=500)
    assert result["mode"] == "budgets"
    rows = {r["source"]: r for r in result["rows"]}
    med = rows["medqa"]
    assert (med["budget_a"], med["budget_b"], med["n"]) == (256, 1024, 10)
    assert (med["acc_a"], med["acc_b"]) == (0.1, 0.9)
    assert med["diff"] == pytest.approx(0.8)
    assert (med["right_to_wrong"], med["wrong_to_right"], med["both_right"], med["both_wrong"]) == (1, 9, 0, 0)
    assert med["p_value"] == pytest.approx(0.021484375)
    assert med["ci_low"] <= med["diff"] <= med["ci_high"]
    assert rows["pubmedqa"]["p_value"] == 1.0 and rows["pubmedqa"]["diff"] == 0.0
    assert rows["avg (macro)"]["diff"] == pytest.approx(0.4)  # (0.8 + 0) / 2
    assert rows["all (micro)"]["diff"] == pytest.approx(8 / 12)
    assert rows["all (micro)"]["n"] == 12
    text = compare.format_comparison(result)
    assert "| medqa | 256→1024 | 10 | 0.100 | 0.900 | +0.800" in text
    assert "0.0215" in text
    # Deterministic for a given bootstrap seed.
    assert compare.compare_runs(run, budgets=[256, 1024], n_boot=500) == result


def test_compare_two_runs(tmp_path):
    a = write_run(tmp_path / "a", [record(f"q{i}", "medqa", 256, "Final Answer: D") for i in range(6)]
                  + [record("q9", "medqa", 256, "Final Answer: C")])  # q9 only in A: unpaired
    b = write_run(tmp_path / "b", [record(f"q{i}", "medqa", 256, "Final Answer: C" if i < 4 else "Final Answer: D")
                                   for i in range(6)], seed=1)
    result = compare.compare_runs(a, b, n_boot=300)
    assert result["mode"] == "runs" and result["config_differs"] == ["seed: 0 vs 1"]
    med = next(r for r in result["rows"] if r["source"] == "medqa")
    assert med["n"] == 6 and (med["acc_a"], med["acc_b"]) == (0.0, pytest.approx(4 / 6))
    assert med["wrong_to_right"] == 4 and med["p_value"] == pytest.approx(0.125)
    assert "config differs in: seed: 0 vs 1" in compare.format_comparison(result)

    # Re-grading both sides first.
    regraded = compare.compare_runs(a, b, grader="m1", n_boot=300)
    assert regraded["grader"] == "m1" and "re-graded with the m1 grader" in compare.format_comparison(regraded)


def test_compare_errors(tmp_path):
    run = _two_budget_run(tmp_path / "run")
    with pytest.raises(M1Error, match="no records at budget 512"):
        compare.compare_runs(run, budgets=[256, 512])
    with pytest.raises(M1Error, match="needs two"):
        compare.compare_runs(run, budgets=[256])
    other = write_run(tmp_path / "other", [record("m0", "medqa", 256, "Final Answer: C", gold="A")])
    with pytest.raises(M1Error, match="differs between the two runs"):
        compare.compare_runs(run, other)
    disjoint = write_run(tmp_path / "disjoint", [record("zz", "medqa", 256, "Final Answer: C")])
    with pytest.raises(M1Error, match="no question was answered by both"):
        compare.compare_runs(run, disjoint)
    with pytest.raises(M1Error, match="not in both runs"):
        compare.compare_runs(run, disjoint, budgets=[1024])


def test_compare_cli(tmp_path, capsys):
    run = _two_budget_run(tmp_path / "run")
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    compare.add_parser(sub)
    args = sub.choices["compare"].parse_args([str(run), "--budgets", "256,1024", "--n-boot", "200"])
    assert args.run_b is None and args.budgets == [256, 1024] and args.func is compare.main
    assert compare.main(args) == 0
    assert "| **avg (macro)** | 256→1024 |" in capsys.readouterr().out
    args = sub.choices["compare"].parse_args([str(run), "--json", "--n-boot", "50"])
    assert compare.main(args) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "budgets"
