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


# ---------------------------------------------------------------- scores beside traces

def _files(folder) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_regrade_adds_scores_beside_traces_and_never_rewrites_them(tmp_path, capsys):
    records = [record("q1", "medqa", 256, "Final Answer: C"), record("q2", "medqa", 256, "The answer is vitamin A."),
               record("q4", "pubmedqa", 256, "Final Answer: Hepatitis B infection", gold="B")]
    run = write_run(tmp_path / "run", records, grader="strict")
    before = _files(run)
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    regrade.add_parser(sub)
    assert regrade.main(sub.choices["regrade"].parse_args([str(run), "--grader", "m1"])) == 0
    assert f"added 3 m1 scores to {run / 'scores.jsonl'}" in capsys.readouterr().out
    after = _files(run)
    assert after.pop("scores.jsonl") and after == before  # traces.jsonl and config.json: same bytes, same mtime
    lines = [json.loads(x) for x in (run / "scores.jsonl").read_text().splitlines()]
    assert [(x["id"], x["grader"], x["score"]["letter"], x["score"]["correct"]) for x in lines] == \
        [("q1", "m1", "C", True), ("q2", "m1", "A", False), ("q4", "m1", "B", True)]
    assert {"source", "budget"} <= set(lines[0])

    loaded = Run.load(run)  # the run's own grader stays active; the m1 scores sit beside
    assert loaded.grader == "strict" and [t.outcome for t in loaded.traces] == ["correct", "unparsed", "wrong"]
    assert all(set(t.scores) == {"strict", "m1"} for t in loaded.traces)
    assert [t.correct for t in Run.load(run, "m1").traces] == [True, False, True]

    scores = (run / "scores.jsonl").read_bytes()
    assert regrade.main(sub.choices["regrade"].parse_args([str(run), "--grader", "m1"])) == 0  # idempotent
    assert "the run already holds its m1 scores; none added" in capsys.readouterr().out
    assert regrade.main(sub.choices["regrade"].parse_args([str(run), "--grader", "strict"])) == 0  # the run's own
    assert (run / "scores.jsonl").read_bytes() == scores and (run / "traces.jsonl").read_bytes() == before[
        "traces.jsonl"][0]


def test_a_report_on_a_regraded_run_reads_the_stored_scores(tmp_path):
    from m1.reporting.report import report

    run = write_run(tmp_path / "run", [record("q1", "medqa", 256, "Final Answer: C"),
                                       record("q2", "medqa", 256, "The answer is vitamin A.")])
    regrade.regrade(run, "m1")
    # A verdict on disk is what every reader gets, not a grading done again: mark q2 right under m1.
    lines = (run / "scores.jsonl").read_text().splitlines()
    (run / "scores.jsonl").write_text(lines[0] + "\n" + lines[1].replace('"correct": false', '"correct": true')
                                      .replace('"outcome": "wrong"', '"outcome": "correct"') + "\n")
    rep = report([Run.load(run)], tmp_path / "own")
    assert [r["accuracy"] for r in rep.rows] == [0.5] and [r["unparsed_rate"] for r in rep.rows] == [0.5]
    rep = report([Run.load(run)], tmp_path / "m1", grader="m1")
    assert [r["accuracy"] for r in rep.rows] == [1.0] and [r["unparsed_rate"] for r in rep.rows] == [0.0]
    assert "| medqa | 256 | 2 | 1.000" in (tmp_path / "m1" / "table.md").read_text()
    page = (tmp_path / "m1" / "report.html").read_text()
    data = json.loads(page.split('id="m1-data">', 1)[1].split("</script>", 1)[0])
    t = next(t for t in data["traces"] if t["letter"] == "A")  # the viewer shows the active grader's score
    assert (t["grader"], t["outcome"], t["correct"]) == ("m1", "correct", True)
    assert t["scores"] == {"m1": "A correct (letter)", "strict": "– unparsed (none)"}
    # A cut last line (a crash mid-append) is skipped on read and dropped before the next append.
    with open(run / "scores.jsonl", "a") as f:
        f.write('{"source": "medqa", "id": "q1", "bud')
    assert [t.correct for t in Run.load(run, "m1").traces] == [True, True]
    (run / "scores.jsonl").write_text(lines[0] + "\n" + '{"source": "medqa", "id": "q2", "bud')
    regrade.regrade(run, "m1")
    assert [json.loads(x)["id"] for x in (run / "scores.jsonl").read_text().splitlines()] == ["q1", "q2"]
