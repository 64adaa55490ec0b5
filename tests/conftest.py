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
