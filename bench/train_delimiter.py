"""Does SFT on the m1 format teach the embedded model to close its thinking?

    python bench/train_delimiter.py [--demo ../shared/data/huatuo_o1_demo/demo_data.json]
                                    [--epochs 3] [--lr 1e-4] [--limit 24] [--budget 256] [--out /tmp/m1-delimiter]
    python bench/train_delimiter.py --smoke   # does it run? (CI; a fresh temporary --out)

`--smoke` trains a tiny random Llama (the embedded tokenizer) for one step on the 16 traces
shipped in tests/data/train_m1_tiny.jsonl and evaluates 2 questions at budget 16 before and
after: the same three commands and the same table, no figure worth reading.

Three commands a user would type, run through the CLI:
  1. `m1 eval --engine hf --model <embedded GGUF> --format m1` on a seeded MedQA sample (before),
  2. `m1 train configs/train/example_cpu.yaml dataset=<traces> ...` on HuatuoGPT-o1 demo traces
     in the m1 format (reasoning = first and last paragraph of Complex_CoT, as the test fixture),
  3. the same `m1 eval` on the trained output folder (after).
Prints the loss curve and, before and after, how thinking ended: the share of questions where
the model emitted the think delimiter `<|im_start|>` itself (the m1 format's `<|im_start|>answer`),
ended its turn instead, or ran into the budget; mean thinking tokens; accuracy.
About 20 minutes on 2 cores. Each step resumes: a finished eval run or trained folder is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# --smoke: the shipped traces, a tiny model, one step, two questions, for CI.
SMOKE = {"traces": ROOT / "tests" / "data" / "train_m1_tiny.jsonl", "model": "tiny", "max_steps": 1, "limit": 2,
         "budget": 16, "threads": 1}


def build_traces(demo: Path, dest: Path, tokenizer: Any, max_length: int) -> int:
    from m1.training import data as D
    from m1.training.config import TrainConfig

    instruction = TrainConfig().instruction
    n = 0
    with dest.open("w") as f:
        for i, d in enumerate(json.loads(demo.read_text())):
            paras = [p for p in d["Complex_CoT"].split("\n\n") if p.strip()]
            rec = {"id": f"huatuo-demo-{i}", "question": d["question"], "options": d["options"],
                   "reasoning": "\n\n".join([paras[0], paras[-1]] if len(paras) > 1 else paras),
                   "answer": f"{d['answer_idx']}. {d['answer']}"}
            _, full = D.render(rec, tokenizer, instruction)
            if len(tokenizer(full, add_special_tokens=False)["input_ids"]) <= max_length:  # whole traces only
                f.write(json.dumps(rec) + "\n")
                n += 1
    return n


def m1(*args: str) -> None:
    cmd = [sys.executable, "-m", "m1.cli", *args]
    print("$ m1 " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def endings(run: Path) -> dict[str, float]:
    from m1.runs import Run

    recs = Run.load(run).traces  # graded by the run's own grader (the scores sit beside the traces)
    n = len(recs)
    stop = [r.thinking_stop for r in recs]
    return {"n": n,
            "delimiter": sum(s == "<|im_start|>" for s in stop) / n,
            "turn end": sum(s is not None and s != "<|im_start|>" for s in stop) / n,
            "budget": sum(r.hit_budget for r in recs) / n,
            "thinking tok": sum(r.thinking_tokens for r in recs) / n,
            "accuracy": sum(r.correct for r in recs) / n,
            "unparsed": sum(r.outcome == "unparsed" for r in recs) / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--demo", type=Path, default=ROOT.parent / "shared/data/huatuo_o1_demo/demo_data.json")
    ap.add_argument("--traces", type=Path, help="m1-format records to train on as they are, instead of --demo")
    ap.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M), tiny (random 2-layer Llama) "
                    "or a model folder")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--max-steps", type=int, default=-1, help="> 0: train this many steps instead of --epochs")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="training CPU threads")
    ap.add_argument("--out", type=Path, default=Path("/tmp/m1-delimiter"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (" + ", ".join(
        f"{k} {v.name if isinstance(v, Path) else v}" for k, v in SMOKE.items()) + "): checks that the bench runs, "
        "measures nothing")
    a = ap.parse_args()
    tmp = None
    if a.smoke:  # flags given explicitly still win; never resumes (or clobbers) a real run's --out
        ap.set_defaults(**SMOKE, out=None)
        a = ap.parse_args()
        if a.out is None:
            tmp = a.out = Path(tempfile.mkdtemp(prefix="m1-delimiter-smoke-"))
    try:
        return run(a)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(a: argparse.Namespace) -> int:
    if a.traces is None and not a.demo.is_file():
        sys.exit(f"{a.demo}: not found; pass --demo with HuatuoGPT-o1's demo_data.json")
    from m1.engines.llamacpp import embedded_model_path
    from m1.training.config import TrainConfig
    from m1.training.model import load_tokenizer

    a.out.mkdir(parents=True, exist_ok=True)
    if a.traces is not None:
        traces = a.traces
        n = sum(1 for line in traces.read_text().splitlines() if line.strip())
        print(f"{n} training traces from {traces}")
    else:
        traces = a.out / "train.jsonl"
        n = build_traces(a.demo, traces, load_tokenizer(TrainConfig(model="embedded")), a.max_length)
        print(f"{n} training traces of at most {a.max_length} tokens -> {traces}")
    model_dir = a.out / "model"
    if a.model == "embedded":
        before = str(embedded_model_path())
    elif a.model == "tiny":
        from m1.training.tiny import make_tiny_model

        before = str(a.out / "tiny")
        if not (a.out / "tiny" / "config.json").is_file():
            make_tiny_model(before)
    else:
        before = a.model
    common = ["--engine", "hf", "--format", "m1", "--benchmark", "medqa", "--limit", str(a.limit),
              "--budgets", str(a.budget), "--quiet"]
    m1("eval", *common, "--model", before, "--out", str(a.out / "eval-before"))
    if not (model_dir / "config.json").is_file():
        train_model = "embedded" if a.model == "embedded" else before  # embedded: as the config file says
        m1("train", "configs/train/example_cpu.yaml", f"model={train_model}", f"dataset={traces}",
           f"output_dir={model_dir}", f"max_steps={a.max_steps}", f"num_train_epochs={a.epochs}",
           f"learning_rate={a.lr}", f"max_length={a.max_length}", "global_batch_size=8", "per_device_batch_size=4",
           "warmup_ratio=0.05", "save_steps=0", f"cpu_threads={a.threads}")
    m1("eval", *common, "--model", str(model_dir), "--out", str(a.out / "eval-after"))

    state = model_dir / "trainer_state.json"
    if state.is_file():
        losses = [round(h["loss"], 3) for h in json.loads(state.read_text())["log_history"] if "loss" in h]
        print(f"\nloss over {len(losses)} logged steps: {losses}")
    rows = {"before": endings(a.out / "eval-before"), "after": endings(a.out / "eval-after")}
    keys = list(rows["before"])
    print("\n| model | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
