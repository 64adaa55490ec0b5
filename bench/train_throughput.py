"""Training throughput on the CPU, with and without packing, on the m1 train fixture.

    python bench/train_throughput.py [--model tiny|embedded|FOLDER] [--batch 4] [--max-length 512]
                                     [--epochs 2] [--steps 0] [--threads 1] [--data tests/data/train_m1_tiny.jsonl]
    python bench/train_throughput.py --smoke   # tiny model, one timed step per setting: does it run? (CI)

Each setting runs in its own process (so peak RSS is its own): the m1 data path (render,
mask, pack, Collator) feeding a plain fwd + bwd + AdamW loop, `--epochs` passes over the
set in a seeded shuffle. Settings: packing off; packing into rows (what sdpa/eager
training uses: rows padded to the longest, each with its own block-diagonal mask);
packing flattened (what flash-attention training uses: a micro-batch as one padding-free
sequence; on sdpa it pays a dense mask over the whole micro-batch). Prints one row per
setting: real (non-pad) tokens/s, all computed tokens/s, the share of pad tokens in the
batches, and peak RSS. The first step is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --smoke: the tiny model, a warm-up and one timed step per setting, for CI.
SMOKE = {"model": "tiny", "epochs": 1, "steps": 1, "batch": 2, "max_length": 256}


def child(a: argparse.Namespace) -> dict:
    import torch

    from m1.training import data as D
    from m1.training.config import TrainConfig
    from m1.training.model import load_model, load_tokenizer
    from m1.training.tiny import make_tiny_model

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:  # the tiny model's folder: gone once loaded
        model_path = str(make_tiny_model(Path(tmp) / "tiny")) if a.model == "tiny" else a.model
        cfg = TrainConfig(model=model_path, dtype="float32", attn_implementation="sdpa")
        tok = load_tokenizer(cfg)
        model = load_model(cfg).train()
    examples = D.build_examples(D.load_records(a.data), tok, a.max_length, cfg.instruction)  # as m1 train renders
    rows = D.pack(examples, a.max_length) if a.packing else D.unpacked(examples)
    collate = D.Collator(tok.pad_token_id, packed=a.packing, flatten=a.flatten)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-4)
    rng = random.Random(0)
    batches = []
    for _ in range(a.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        batches += [[vars(rows[i]) for i in order[s:s + a.batch]] for s in range(0, len(order), a.batch)]
    if a.steps:
        batches = batches[:a.steps + 1]  # the warm-up, then a.steps timed
    if len(batches) < 2:
        raise SystemExit(f"{len(batches)} step(s): nothing to time after the warm-up; raise --epochs or lower --batch")
    real = computed = 0
    timed = 0.0
    for n, rows_ in enumerate(batches):
        batch = collate(rows_)
        t = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if n == 0:
            continue  # warm-up
        timed += time.perf_counter() - t
        real += sum(len(r["input_ids"]) for r in rows_)
        computed += batch["input_ids"].numel()
    mode = "flat" if a.packing and a.flatten else "rows" if a.packing else "off"
    return {"packing": mode, "steps": len(batches) - 1, "real_tok_s": real / timed,
            "computed_tok_s": computed / timed, "padding": 1 - real / computed, "rows": len(rows),
            "examples": len(examples), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (random 2-layer Llama), embedded (SmolLM2-135M) or a folder")
    p.add_argument("--data", default=str(ROOT / "tests" / "data" / "train_m1_tiny.jsonl"))
    p.add_argument("--batch", type=int, default=4, help="rows per step")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="timed steps at most, after the warm-up (0: every batch)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flatten", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (" + ", ".join(f"{k} {v}" for k, v in SMOKE.items())
                   + "): checks that the bench runs, measures nothing")
    a = p.parse_args()
    if a.smoke:  # flags given explicitly still win
        p.set_defaults(**SMOKE)
        a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return 0
    results = []
    for flags in ([], ["--packing"], ["--packing", "--flatten"]):
        cmd = [sys.executable, __file__, "--child", "--model", a.model, "--data", a.data, "--batch", str(a.batch),
               "--max-length", str(a.max_length), "--epochs", str(a.epochs), "--steps", str(a.steps),
               "--threads", str(a.threads)]
        done = subprocess.run(cmd + flags, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"model {a.model}, {results[0]['examples']} examples, batch {a.batch} rows, max_length {a.max_length}, "
          f"{a.threads} thread(s)\n")
    print("| packing | rows | timed steps | real tok/s | computed tok/s | padding | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['packing']} | {r['rows']} | {r['steps']} | {r['real_tok_s']:.0f} | "
              f"{r['computed_tok_s']:.0f} | {r['padding']:.1%} | {r['peak_rss_gb']:.2f} GB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
