"""Cost of a budget sweep: one cut pass against independent reruns, on the embedded model.

    python bench/sweep_cost.py [--questions 20] [--budgets 16,32,...,1024] [--forcing 0,2]

Prints, per forcing setting: engine tokens generated and wall time for each method,
their ratios, and whether every (question, budget) answer agrees. Then the budget
controller's own overhead: its wall time against a bare loop that sends the engine
the very same request batches.
"""
from __future__ import annotations

import argparse
import time

from m1.benchmarks import load_benchmark
from m1.config import EvalConfig
from m1.engines.llamacpp import LlamaCppEngine
from m1.evaluate import build_prompt
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep


class Recording:
    """Engine proxy that keeps every batch it was sent and the time spent generating."""

    def __init__(self, engine):
        self.engine, self.batches, self.engine_s, self.tokens = engine, [], 0.0, 0

    def generate(self, requests):
        t = time.perf_counter()
        out = self.engine.generate(requests)
        self.engine_s += time.perf_counter() - t
        self.batches.append(list(requests))
        self.tokens += sum(len(r.token_ids) for r in out)
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)


def run(engine, prompts, keys, budgets, forcing, method, answer_max, fmt):
    rec = Recording(engine)
    ctl = BudgetController(rec, get_format(fmt), ThinkingParams(budget=max(budgets), forcing_rounds=forcing,
                                                                  answer_max_tokens=answer_max))
    t = time.perf_counter()
    out = sweep(ctl, prompts, keys, budgets, method)
    wall = time.perf_counter() - t
    answers = {(k, b): a.ids for b, (_, ans) in out.items() for k, a in zip(keys, ans)}
    return wall, rec, answers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--budgets", default="16,32,64,128,256,512,1024")
    ap.add_argument("--forcing", default="0,2")
    ap.add_argument("--answer-max-tokens", type=int, default=32)
    ap.add_argument("--format", default="plain", help="plain suits the embedded SmolLM2 (see README)")
    ap.add_argument("--batch-invariant", action="store_true", help="decode sequences one at a time")
    a = ap.parse_args()
    budgets = [int(x) for x in a.budgets.split(",")]
    engine = LlamaCppEngine(n_slots=8, ctx_per_slot=2048, batch_invariant=a.batch_invariant)
    items = load_benchmark("medqa", limit=a.questions, seed=0)
    cfg = EvalConfig()
    prompts = [engine.encode_prompt(build_prompt(engine, it, cfg)) for it in items]
    keys = [it.id for it in items]
    print(f"{a.questions} MedQA questions, budgets {budgets}, SmolLM2-135M llama.cpp, "
          f"format {a.format}, {'one sequence per step' if a.batch_invariant else 'batched'} decoding, "
          f"llamafile kernels {'on' if engine.llamafile else 'off'}\n")
    print("| forcing | method | engine tokens | wall s | tokens ratio | time ratio | answers agree |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    overhead_rows = []
    for forcing in [int(x) for x in a.forcing.split(",")]:
        w_ind, r_ind, ans_ind = run(engine, prompts, keys, budgets, forcing, "independent", a.answer_max_tokens, a.format)
        w_cut, r_cut, ans_cut = run(engine, prompts, keys, budgets, forcing, "cut", a.answer_max_tokens, a.format)
        agree = sum(ans_ind[k] == ans_cut[k] for k in ans_ind)
        print(f"| {forcing} | independent | {r_ind.tokens} | {w_ind:.1f} | 1.00 | 1.00 | |")
        print(f"| {forcing} | cut | {r_cut.tokens} | {w_cut:.1f} | {r_ind.tokens / r_cut.tokens:.2f}× fewer "
              f"| {w_ind / w_cut:.2f}× faster | {agree}/{len(ans_ind)} |")
        # Bare loop: the same batches straight to the engine, no controller around them.
        t = time.perf_counter()
        for batch in r_cut.batches:
            engine.generate(batch)
        bare = time.perf_counter() - t
        overhead_rows.append((forcing, w_cut, bare, r_cut.engine_s))
    print("\n| forcing | controller wall s | bare engine loop s | overhead vs bare | time outside engine |")
    print("|---:|---:|---:|---:|---:|")
    for forcing, wall, bare, inside in overhead_rows:
        print(f"| {forcing} | {wall:.2f} | {bare:.2f} | {(wall - bare) / bare:+.1%} | {(wall - inside) / wall:.2%} |")
    engine.close()


if __name__ == "__main__":
    main()
