"""Knowledge or reasoning? Accuracy against thinking budget with and without the missing knowledge.

    pip install -e ".[qwen]"
    python bench/knowledge.py --data ../shared/data/medbullets/medbullets_op4.csv --limit 16
    python bench/knowledge.py --smoke          # the embedded SmolLM2, the tests' 6 questions (CI)

One model, one set of questions, one budget sweep (0 = answer at once), evaluated under each
knowledge condition: none, gold (the item's explanation), gold-background (it, with the answer
masked), counterfactual (it, rewritten for a wrong option), placebo (another question's
explanation), and BM25 retrieval over m1's shipped corpus in the prompt and in the thinking.
Every condition's runs share one engine and one thinking pass per question across budgets. Then
m1's report over all of them, whose knowledge section this prints: accuracy per condition and
budget, the knowledge-gap shares, the budget x knowledge interaction, the controls. And the cost:
wall time per condition, the prompt tokens the knowledge added, and the seconds m1 spent getting
the knowledge (retrieval, screening, building passages) as a share of the wall time.

Format: plain (Qwen2.5-Coder was never trained on m1's delimiters: its whole reply is the
thinking, cut at the budget, then m1's forced "Final Answer:"). --min-thinking keeps the thinking
going where a passage in the prompt would make the model answer at once (the issue's pilot).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import m1
from m1.engines import make_engine
from m1.errors import M1Error

REPO = Path(__file__).resolve().parents[1]
MEDBULLETS = REPO.parent / "shared" / "data" / "medbullets" / "medbullets_op4.csv"
CONDITIONS: dict[str, dict[str, Any]] = {  # label -> EvalConfig knowledge settings
    "none": {},
    "gold": {"knowledge": "gold"},
    "gold-background": {"knowledge": "gold-background"},
    "counterfactual": {"knowledge": "counterfactual"},
    "placebo": {"knowledge": "placebo"},
    "bm25 prompt": {"knowledge": "retrieve"},
    "bm25 thinking": {"knowledge": "retrieve", "knowledge_where": "thinking", "knowledge_at": "1/16,1/4"},
}
# In the plain format the model's "end of thinking" is the end of its answer ("B. Vitamin C"); a bare
# "Wait" glued to it reads as a new user turn to an instruct model (a first run of this bench saw
# "B. Vitamin CWait, I'm sorry, but I can't assist with that." loops), so the forced text starts a
# paragraph and says what to do.
IGNORE = "\n\nWait, let me reason step by step."
SMOKE = dict(model=None, data=str(REPO / "tests" / "data" / "knowledge_items.jsonl"), limit=0, budgets="0,8,16",
             answer_max_tokens=8, min_thinking=16, k=2, ignore_str=IGNORE)


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a model name (m1 models) or GGUF file")
    ap.add_argument("--data", default=str(MEDBULLETS), help="questions with explanations (MedBullets' release)")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--budgets", default="0,64,128,256,512")
    ap.add_argument("--answer-max-tokens", type=int, default=16)
    ap.add_argument("--min-thinking", type=int, default=64)
    ap.add_argument("--ignore-str", default=IGNORE,
                    help="what replaces an end of thinking before --min-thinking (after the model's own words)")
    ap.add_argument("--k", type=int, default=3, help="passages per retrieval")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="labels, comma-separated")
    ap.add_argument("--slots", type=int, default=8, help="sequences the engine decodes together")
    ap.add_argument("--out", default="runs/knowledge")
    ap.add_argument("--smoke", action="store_true", help="embedded model, 6 hand-written questions, budgets 0,8,16")
    a = ap.parse_args()
    s = dict(model=a.model, data=a.data, limit=a.limit, budgets=a.budgets, answer_max_tokens=a.answer_max_tokens,
             min_thinking=a.min_thinking, k=a.k, ignore_str=a.ignore_str)
    if a.smoke:
        s = dict(SMOKE)
    labels = [c.strip() for c in a.conditions.split(",") if c.strip()]
    unknown = [c for c in labels if c not in CONDITIONS]
    if unknown:
        print(f"knowledge: unknown condition(s) {unknown}; known: {', '.join(CONDITIONS)}", file=sys.stderr)
        return 2
    out = Path(a.out + ("-smoke" if a.smoke else ""))
    if a.smoke:  # throwaway figures: a smoke run starts afresh rather than resume an older smoke's runs
        shutil.rmtree(out, ignore_errors=True)
    try:
        engine = make_engine("llamacpp", s["model"], n_slots=a.slots, ctx_per_slot=4096)
    except M1Error as err:
        print(f"knowledge: {err}", file=sys.stderr)
        return 2
    runs, cost = [], []
    try:
        for label in labels:
            cfg = m1.EvalConfig(data=s["data"], limit=s["limit"] or None, budgets=s["budgets"], format="plain",
                                answer_max_tokens=s["answer_max_tokens"], min_thinking=s["min_thinking"],
                                ignore_str=s["ignore_str"], knowledge_k=s["k"], seed=0, **CONDITIONS[label])
            start = time.perf_counter()
            run = m1.evaluate(cfg, out=out / label.replace(" ", "-"), engine=engine)
            wall = time.perf_counter() - start
            runs.append(run)
            cost.append(_cost(label, run, wall))
    except M1Error as err:
        print(f"knowledge: {err}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    report = m1.report(runs, out / "report")
    section = next((sec for sec in report.sections if sec.key == "knowledge"), None)
    n = len({t.id for t in runs[0].traces})
    print(f"Real runs (m1 eval wrote each; m1 report over all of them in {out / 'report'}): model "
          f"{s['model'] or 'SmolLM2-135M (embedded)'}, {n} questions of {Path(s['data']).name}, "
          f"budgets {s['budgets']}, "
          f"min thinking {s['min_thinking']} (ignore string {s['ignore_str']!r}), k {s['k']}, format plain, greedy\n")
    print("Cost per condition (one engine, every budget from one thinking pass per question)\n")
    print(table(cost, ["condition", "run s", "questions", "mean prompt tokens", "mean knowledge tokens",
                       "knowledge code s", "knowledge share of wall", "context / minimum",
                       "budget overruns"]) + "\n")
    if section is None:
        print("knowledge: the report has no knowledge section for these runs", file=sys.stderr)
        return 1
    for t in section.tables:
        print(f"{t.name}: {t.caption}\n")
        print(table(t.rows, t.columns) + "\n")
    overruns = sum(r["budget overruns"] for r in cost)
    if overruns:
        print(f"knowledge: {overruns} traces spent more than their budget", file=sys.stderr)
        return 1
    return 0


def _cost(label: str, run: m1.Run, wall: float) -> dict:
    traces = run.traces
    per_q = {t.id: t for t in traces}.values()  # prompt tokens are per question
    load = run.engine_load or {}
    overruns = sum(t.thinking_tokens + (t.knowledge_tokens if run.config.get("knowledge_counted") else 0) > t.budget
                   for t in traces)
    code_s = float(load.get("knowledge_seconds") or 0.0)
    # the run's own time on the engine, as metrics.json records it: right for a resumed run too, where
    # the wall time of this process is only what was left
    wall = float(load.get("seconds") or wall)
    return {"condition": label, "run s": round(wall, 1), "questions": len(per_q),
            "mean prompt tokens": statistics.mean(t.prompt_tokens for t in per_q) if per_q else 0.0,
            "mean knowledge tokens": statistics.mean(t.knowledge_tokens for t in per_q) if per_q else 0.0,
            "knowledge code s": round(code_s, 2), "knowledge share of wall": code_s / wall if wall else 0.0,
            "context / minimum": load.get("context_vs_minimum"), "budget overruns": overruns}


if __name__ == "__main__":
    sys.exit(main())
