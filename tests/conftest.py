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


@pytest.fixture(scope="session")
def server():
    """A real OpenAI-compatible server on 127.0.0.1: llama-cpp-python's, with the embedded model."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    from m1.engines.llamacpp import embedded_model_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    # flash attention off, as the in-process engine pins it
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--flash_attn", "false"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail("llama-cpp-python server did not start:\n" + log.read().decode()[-2000:])
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
