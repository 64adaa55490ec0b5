"""Cost of a budget sweep: one cut pass against independent reruns, on the embedded model.

    python bench/sweep_cost.py [--questions 20] [--budgets 16,32,...,1024] [--forcing 0,2]
    python bench/sweep_cost.py --smoke      # 2 questions, budgets 16,32, no forcing: does it run? (CI)

Prints, per forcing setting: engine tokens generated and wall time for each method,
their ratios, and whether every (question, budget) answer agrees. Then the budget
controller's own overhead: the share of the cut sweep's wall time during which the
engine had nothing to do (no request in flight), i.e. time spent in the controller.
"""
from __future__ import annotations

import argparse
import sys

from m1.benchmarks import load_benchmark
from m1.config import EvalConfig
from m1.engines.base import load_between
from m1.engines.llamacpp import LlamaCppEngine
from m1.evaluate import build_prompt
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep

# --smoke: one budget pair on two questions, short answers, for CI.
SMOKE = {"questions": 2, "budgets": "16,32", "forcing": "0", "answer_max_tokens": 8}


def run(engine, prompts, keys, budgets, forcing, method, answer_max, fmt):
    ctl = BudgetController(engine, get_format(fmt), ThinkingParams(budget=max(budgets), forcing_rounds=forcing,
                                                                     answer_max_tokens=answer_max))
    engine.clear_cache()  # each method from a cold cache
    start = engine.meter.reading()
    out = sweep(ctl, prompts, keys, budgets, method)
    load = load_between(start, engine.meter.reading(), engine.capacity)
    answers = {(k, b): a.ids for b, (_, ans) in out.items() for k, a in zip(keys, ans)}
    return load, answers


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--budgets", default="16,32,64,128,256,512,1024")
    ap.add_argument("--forcing", default="0,2")
    ap.add_argument("--answer-max-tokens", type=int, default=32)
    ap.add_argument("--format", default="plain", help="plain suits the embedded SmolLM2 (see README)")
    ap.add_argument("--batch-invariant", action="store_true", help="decode sequences one at a time")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (" + ", ".join(f"{k} {v}" for k, v in SMOKE.items())
                    + "): checks that the bench runs, measures nothing")
    a = ap.parse_args()
    if a.smoke:  # flags given explicitly still win
        ap.set_defaults(**SMOKE)
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
        ind, ans_ind = run(engine, prompts, keys, budgets, forcing, "independent", a.answer_max_tokens, a.format)
        cut, ans_cut = run(engine, prompts, keys, budgets, forcing, "cut", a.answer_max_tokens, a.format)
        agree = sum(ans_ind[k] == ans_cut[k] for k in ans_ind)
        t_ind, t_cut = ind["generated_tokens"], cut["generated_tokens"]
        print(f"| {forcing} | independent | {t_ind} | {ind['seconds']:.1f} | 1.00 | 1.00 | |")
        print(f"| {forcing} | cut | {t_cut} | {cut['seconds']:.1f} | {t_ind / max(t_cut, 1):.2f}× fewer "
              f"| {ind['seconds'] / cut['seconds']:.2f}× faster | {agree}/{len(ans_ind)} |")
        overhead_rows.append((forcing, cut))
    print("\n| forcing | controller wall s | engine busy s | engine idle share | occupancy |")
    print("|---:|---:|---:|---:|---:|")
    for forcing, cut in overhead_rows:
        busy = cut["seconds"] * (1 - cut["engine_idle"])
        print(f"| {forcing} | {cut['seconds']:.2f} | {busy:.2f} | {cut['engine_idle']:.2%} | {cut['occupancy']:.0%} |")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
