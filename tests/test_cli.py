"""The `m1` command as a user runs it: main job, resume after a kill, bad input."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

M1 = [sys.executable, "-m", "m1.cli"]


def run_m1(*args, cwd=None, timeout=600):
    return subprocess.run(M1 + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def lines(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_writes_table_plot_and_records(tmp_path):
    out = tmp_path / "run"
    r = run_m1("eval", "--limit", "4", "--budgets", "16,48", "--answer-max-tokens", "16", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "| medqa | 16 | 4 |" in r.stdout and "| medqa | 48 | 4 |" in r.stdout
    recs = lines(out / "traces.jsonl")
    assert len(recs) == 8
    for rec in recs:
        assert rec["thinking_tokens"] <= rec["budget"]
        assert rec["scores"]["strict"]["outcome"] in ("correct", "wrong", "unparsed")  # the eval grader's score
    png = (out / "accuracy_vs_budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["budgets"] == [16, 48]
    assert len(cfg["environment"]["engine"]["model_sha256"]) == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert {row["budget"] for row in metrics["rows"]} == {16, 48}


def test_resume_after_kill_never_recomputes_or_duplicates(tmp_path):
    out = tmp_path / "run"
    # Eight questions in flight at once (the engine's slots): the kill lands with many of them half done.
    args = ["eval", "--limit", "12", "--budgets", "16,64", "--answer-max-tokens", "16", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(M1 + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    traces = out / "traces.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not traces.exists() or len(traces.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = lines(traces)
    assert 4 <= len(before) < 24, "the kill should land mid-run"
    # A question's records are written together, when all its budgets are answered.
    per_question: dict[str, set[int]] = {}
    for rec in before:
        per_question.setdefault(rec["id"], set()).add(rec["budget"])
    assert all(b == {16, 64} for b in per_question.values())
    # Mark a finished record: a recomputation would overwrite or duplicate it.
    before[0]["answer"] = "MARKER"
    traces.write_text("".join(json.dumps(r) + "\n" for r in before) + '{"id": "half-writ')
    # Resumed with fewer requests in flight: scheduling is not part of the run's identity.
    r = run_m1(*args, "--engine-opt", "n_slots=3")
    assert r.returncode == 0, r.stderr
    after = lines(traces)
    assert len(after) == 24
    assert len({(x["id"], x["budget"]) for x in after}) == 24
    assert after[: len(before)] == before  # untouched, in place


def test_ctrl_c_saves_finished_questions(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--limit", "16", "--budgets", "32", "--answer-max-tokens", "8", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(M1 + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    traces = out / "traces.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not traces.exists() or not traces.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt landed")
    assert proc.returncode == 130
    assert "Traceback" not in err and "rerun the same command to resume" in err
    saved = lines(traces)
    assert len(saved) >= 1
    r = run_m1(*args)  # the rerun finishes the rest, nothing twice
    assert r.returncode == 0, r.stderr
    after = lines(traces)
    assert after[: len(saved)] == saved and len({x["id"] for x in after}) == len(after) == 16


def _bad(tmp_path, *args):
    r = run_m1(*args, "--out", str(tmp_path / "bad"), "--quiet", timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_benchmark(tmp_path):
    assert "unknown benchmark" in _bad(tmp_path, "eval", "--benchmark", "nosuch")


def test_unknown_engine(tmp_path):
    msg = _bad(tmp_path, "eval", "--engine", "nosuch")
    assert "--engine must be one of llamacpp, hf, openai, vllm" in msg and "'nosuch'" in msg


def test_missing_model_file(tmp_path):
    err = _bad(tmp_path, "eval", "--model", str(tmp_path / "missing.gguf"))
    assert "missing.gguf" in err


def test_negative_budget(tmp_path):
    assert "0 or more" in _bad(tmp_path, "eval", "--budgets", "64,-8")


def test_malformed_data_row_names_file_line_and_field(tmp_path):
    data = tmp_path / "qs.jsonl"
    good = {"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"question": "Q2?", "answer_idx": "A"}) + "\n")
    err = _bad(tmp_path, "eval", "--data", str(data))
    assert "qs.jsonl" in err and "line 2" in err and "options" in err


def test_answer_letter_outside_options(tmp_path):
    data = tmp_path / "qs.jsonl"
    data.write_text(json.dumps({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}) + "\n")
    err = _bad(tmp_path, "eval", "--data", str(data))
    assert "line 1" in err and "E" in err


def test_unreachable_server(tmp_path):
    err = _bad(tmp_path, "eval", "--engine", "openai", "--model", "x", "--base-url", "http://127.0.0.1:9/v1",
               "--engine-opt", "tokenizer=none")
    assert "127.0.0.1:9" in err


@pytest.mark.parametrize("args,expected", [
    (["--temperature", "-0.5"], "command line: --temperature is -0.5; it must be >= 0"),
    (["--top-p", "0"], "command line: --top-p is 0.0; it must be > 0"),
    (["--top-p", "1.5"], "command line: --top-p is 1.5; it must be <= 1"),
    (["--engine-opt", "n_slot=4"], "engine_options (llamacpp): unknown setting 'n_slot'; did you mean 'n_slots'?"),
    (["--engine-opt", "n_slots=0"], "engine_options (llamacpp): n_slots is 0; it must be > 0"),
    (["--engine", "openai", "--engine-opt", "concurency=16"], "did you mean 'concurrency'?"),
    (["--engine", "openai", "--engine-opt", "api_key=sk-1"], "api_key must not be written in a config"),
    (["--engine", "vllm", "--engine-opt", "gpu_memory_utilization=2"], "gpu_memory_utilization is 2; it must be <= 1"),
])
def test_bad_option_values(tmp_path, args, expected):
    assert expected in _bad(tmp_path, "eval", *args)


def test_out_naming_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_m1("eval", "--out", str(f / "run"), "--quiet", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "is a file, not a folder" in r.stderr and str(f) in r.stderr


def _config(*argv):
    from m1.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["eval", *argv]))


def test_base_url_repeated_keeps_every_replica():
    a, b, c = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"
    assert _config("--engine", "openai", "--base-url", a).engine_options["base_url"] == a
    both = _config("--engine", "openai", "--base-url", a, "--base-url", b)
    assert both.engine_options["base_url"] == f"{a},{b}"  # what OpenAIEngine splits into replicas
    mixed = _config("--engine", "openai", "--base-url", f"{a},{b}", "--base-url", c)
    assert mixed.engine_options["base_url"] == f"{a},{b},{c}"
    # replicas only schedule the work: the run is the same whichever servers serve it
    assert both.fingerprint() == _config("--engine", "openai", "--base-url", c).fingerprint()


def test_model_alias_is_the_registered_model():
    from m1.evaluate import default_run_dir

    alias, name = _config("--model", "smollm2").resolved(), _config("--model", "smollm2-135m").resolved()
    assert alias.model == name.model == "smollm2-135m"
    assert alias.format == name.format == "plain"  # the embedded model, under any of its names
    assert alias == name and alias.fingerprint() == name.fingerprint()
    assert default_run_dir(alias) == default_run_dir(name)
    assert _config("--model", "SmolLM2-135M-Instruct").resolved() == name
    qwen = _config("--model", "qwen").resolved()
    assert qwen.model == "qwen2.5-coder-0.5b" and qwen.format == "m1"
    # another engine's model names are the server's or the hub's: left as given
    served = _config("--engine", "openai", "--model", "smollm2").resolved()
    assert served.model == "smollm2" and served.format == "m1"
