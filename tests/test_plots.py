"""Plots and `m1 report` outputs for a small synthetic run: Figures, valid PNGs, tables, clear errors."""
import argparse
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import m1
from m1.errors import M1Error
from m1.reporting import cli_report, plots
from m1.runs import Run, Trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGETS = [32, 64, 128]


def records(seed, sources=("medqa",), n=12, budgets=BUDGETS):
    rnd = random.Random(seed)
    out = []
    for source in sources:
        for i in range(n):
            for b in budgets:
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


def in_memory(name, recs, **cfg):
    return Run(Path(name), {"model": None, "format": "m1", "engine": "llamacpp", **cfg},
               [Trace.from_json(r) for r in recs], name=name)


def test_plots_are_figures_with_runs_overlaid_and_a_chance_line():
    a, b = in_memory("a", records(1, ("medqa", "pubmedqa"))), in_memory("b", records(2))
    figs = plots.figures([a, b])
    assert set(figs) == set(plots.FILES) and all(isinstance(f, Figure) for f in figs.values())
    medqa, pubmedqa = figs["accuracy"].axes[:2]
    labels = [str(line.get_label()) for line in medqa.get_lines()]
    assert labels[:2] == ["a", "b"] and labels[2].startswith("chance")
    # One option per question here: chance is 1.
    assert np.asarray(medqa.get_lines()[2].get_ydata())[0] == pytest.approx(1.0)
    assert [line.get_label() for line in pubmedqa.get_lines()][0] == "a"  # b has no pubmedqa
    assert is_png_bytes(plots.png_bytes(figs["accuracy"]))
    assert plots.figures([in_memory("empty", [])]) == {}


def test_chance_level_is_the_mean_of_one_over_the_options():
    traces = [Trace("1", "s", 8, options={"A": "", "B": "", "C": "", "D": ""}),
              Trace("2", "s", 8, options={"A": "", "B": ""})]
    assert plots.chance(traces) == pytest.approx((0.25 + 0.5) / 2)
    assert math.isnan(plots.chance([Trace("3", "s", 8)]))


def test_dense_sweeps_keep_plots_readable():
    rnd = random.Random(0)
    recs = [{"id": f"q{i}", "source": "medqa", "budget": b, "options": {"A": "", "B": ""}, "correct": rnd.random() < .5,
             "outcome": "wrong", "thinking_tokens": b} for i in range(5) for b in range(32, 2049, 32)]
    figs = plots.figures([in_memory("dense", recs)])
    assert len(figs["thinking_hist"].axes) == 9  # at most 9 of the 64 budgets get a panel
    ticks = figs["accuracy"].axes[0].get_xticks()
    assert list(ticks) == [32, 64, 128, 256, 512, 1024, 2048]


def is_png_bytes(data: bytes) -> bool:
    return data[:8] == PNG_MAGIC and len(data) > 1000


def test_notebook_api_loads_a_run_and_reports_it(tmp_path):
    folder = make_run(tmp_path / "run", records(3))
    run = m1.Run.load(folder)
    assert run.budgets == BUDGETS and isinstance(run.traces[0], m1.Trace)
    rep = m1.report([run], tmp_path / "out")
    assert is_png(tmp_path / "out" / "accuracy_vs_budget.png") and (tmp_path / "out" / "report.html").exists()
    assert [r["budget"] for r in rep.rows] == BUDGETS
    assert not (folder / "metrics.json").exists()  # a report elsewhere never writes into the run


def test_a_report_never_imports_pyplot(tmp_path):
    """Figures are plain matplotlib Figures: rendering a whole report (every section's figures)
    leaves no pyplot state behind, so nothing is there to close."""
    dense = [32, 64, 96, 128, 160]
    folder = make_run(tmp_path / "run", records(8, ("medqa", "pubmedqa"), budgets=dense), budgets=dense)
    script = ("import sys\nfrom m1.cli import main\n"
              f"code = main(['report', {str(folder)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
              "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot', code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "no pyplot 0"
    assert is_png(tmp_path / "out" / "trajectory_stability.png") and is_png(tmp_path / "out" / "accuracy_vs_budget.png")


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


def test_the_judge_needs_a_url_and_a_model(tmp_path):
    run = make_run(tmp_path / "run", records(7))
    with pytest.raises(M1Error, match="both --judge-url and --judge-model"):
        cli_report.main(parse(["report", str(run), "--judge-url", "http://127.0.0.1:9/v1"]))
    with pytest.raises(M1Error, match="--judge-limit must be at least 1"):
        cli_report.main(parse(["report", str(run), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
                               "--judge-limit", "0"]))
