"""Plots and `m1 report` outputs for a small synthetic run: valid PNGs, tables, clear errors."""
import argparse
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from m1.errors import M1Error
from m1.reporting import cli_report, plots
from m1.reporting.report import compute_metrics, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGETS = [32, 64, 128]


def records(seed, sources=("medqa",), n=12):
    rnd = random.Random(seed)
    out = []
    for source in sources:
        for i in range(n):
            for b in BUDGETS:
                tok = min(b, rnd.randint(1, 150))
                outcome = rnd.choice(["correct", "wrong", "unparsed"])
                out.append({"id": f"{source}-{i}", "source": source, "budget": b, "gold": "A", "options": {"A": "x"},
                            "prompt": "q", "thinking": "t", "thinking_tokens": tok, "thinking_ended": "natural",
                            "hit_budget": tok == b, "answer": "a", "answer_tokens": 3, "letter": "A",
                            "outcome": outcome, "correct": outcome == "correct"})
    return out


def make_run(folder: Path, recs, **cfg):
    folder.mkdir(parents=True)
    config = {"benchmark": "medqa", "engine": "llamacpp", "model": None, "format": "m1", "budgets": BUDGETS, **cfg}
    (folder / "config.json").write_text(json.dumps({"config": config, "environment": {}}))
    (folder / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def test_plots_are_valid_pngs_with_runs_overlaid(tmp_path):
    a, b = records(1, ("medqa", "pubmedqa")), records(2)
    runs = [("a", a, compute_metrics(a)), ("b", b, compute_metrics(b))]
    paths = plots.write_plots(runs, tmp_path, title="two runs")
    assert set(paths) == set(plots.FILES)
    for key, path in paths.items():
        assert path.name == plots.FILES[key] and is_png(path), key
    assert not list(tmp_path.glob("*.tmp.png"))
    assert plots.figures([("empty", [], [])]) == {}


def test_write_reports_still_writes_the_eval_plot(tmp_path):
    recs = records(3)
    cfg = SimpleNamespace(model=None, format="plain", engine="llamacpp")
    metrics = write_reports(tmp_path, recs, cfg)
    assert [r["budget"] for r in metrics["rows"]] == BUDGETS
    assert is_png(tmp_path / "accuracy_vs_budget.png")


def parse(argv):
    p = argparse.ArgumentParser()
    cli_report.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_report_command_writes_tables_plots_and_html(tmp_path, capsys):
    one = make_run(tmp_path / "x" / "run", records(4))
    two = make_run(tmp_path / "y" / "run", records(5), format="r1")
    # A trace line still being written (no newline yet) is skipped, and left in place.
    with open(one / "traces.jsonl", "a") as f:
        f.write('{"id": "half')
    out = tmp_path / "out"
    assert cli_report.main(parse(["report", str(one), str(two), "--out", str(out)])) == 0
    for name in plots.FILES.values():
        assert is_png(out / name)
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,source,budget,n,accuracy,ci_low,ci_high,unparsed_rate")
    assert len(csv_lines) == 1 + 2 * len(BUDGETS)
    md = (out / "table.md").read_text()
    assert "### x/run" in md and "### y/run" in md and "| medqa | 32 | 12 |" in md
    assert "report.html" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'type="application/json"' in html
    assert (one / "traces.jsonl").read_text().endswith('{"id": "half')

    # One run, no --out: everything lands in the run folder.
    assert cli_report.main(parse(["report", str(two)])) == 0
    assert (two / "report.html").exists() and is_png(two / "thinking_tokens_hist.png")
    assert (two / "table.csv").read_text().startswith("source,budget,n,")


def test_report_command_rejects_folders_that_are_not_runs(tmp_path):
    with pytest.raises(M1Error, match="not a run folder"):
        cli_report.main(parse(["report", str(tmp_path)]))
    run = make_run(tmp_path / "bad", records(6))
    (run / "traces.jsonl").write_text("not json\n" + json.dumps(records(6)[0]) + "\n")
    with pytest.raises(M1Error, match=r"traces.jsonl:1: not a JSON line"):
        cli_report.main(parse(["report", str(run)]))
    (run / "config.json").write_text("{}")
    with pytest.raises(M1Error, match="damaged"):
        cli_report.main(parse(["report", str(run)]))
