"""Stage 3, difficulty: let one or more models answer each question; keep the hard ones.

Any m1 engine answers (llamacpp in process, openai against a server, hf, vllm): the
prompt is the user message in the model's own chat template, and temperature, top_p,
seed and max_tokens go into each GenRequest, so they are applied by the engine, not
just recorded. k samples per model use seeds seed, seed+1, ... Every answer is graded
with the project's grader and stored (table "answers": one row per question with all
models' answers; "data": the questions kept).

Rules: "all_wrong" (m1's: no model got it right in any sample), "pass_rate" (keep
when the share of right samples is <= max_pass_rate), "none" (keep all; answers are
still stored when models are given).
"""
from __future__ import annotations

from pathlib import Path

from m1.curation.config import DifficultyConfig, ModelConfig
from m1.curation.records import prompt_for, row_to_item
from m1.engines import GenRequest, make_engine
from m1.errors import M1Error
from m1.grading import get_grader

RULES = ("all_wrong", "pass_rate", "none")


def model_label(mc: ModelConfig) -> str:
    return mc.name or f"{mc.engine}:{Path(mc.model).name if mc.model else 'default'}"


def answer_all(rows: list[dict], mc: ModelConfig, prompt: str, grader: str) -> list[list[dict]]:
    """Per row, the k graded answers of one model."""
    if mc.k < 1 or mc.max_tokens < 1:
        raise M1Error(f"difficulty model {model_label(mc)}: k and max_tokens must be >= 1; fix them in the config")
    grade = get_grader(grader)
    items = [row_to_item(r) for r in rows]
    engine = make_engine(mc.engine, mc.model, **mc.options)
    try:
        prompts = [tuple(engine.encode_prompt(engine.render_chat([{"role": "user", "content": prompt_for(it, prompt)}])))
                   for it in items]
        requests = [GenRequest(p, mc.max_tokens, stop_token_ids=tuple(engine.eos_token_ids), temperature=mc.temperature,
                               top_p=mc.top_p, seed=mc.seed + j)
                    for p in prompts for j in range(mc.k)]
        results = engine.generate(requests)
        texts = [engine.detokenize(r.token_ids[: r.stop_index]) for r in results]  # the stop itself left out
    finally:
        engine.close()
    out = []
    for n, it in enumerate(items):
        answers = []
        for j in range(mc.k):
            r, text = results[n * mc.k + j], texts[n * mc.k + j]
            g = grade(text, it)
            answers.append({"model": model_label(mc), "sample": j, "text": text, "letter": g.letter or "",
                            "outcome": g.outcome, "rule": g.rule, "tokens": len(r.token_ids),
                            "finish_reason": r.finish_reason})
        out.append(answers)
    return out


def difficulty(rows: list[dict], cfg: DifficultyConfig) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, every row with its answers, counts)."""
    if cfg.rule not in RULES:
        raise M1Error(f'difficulty.rule is "{cfg.rule}"; choose one of {", ".join(RULES)}')
    if cfg.rule != "none" and not cfg.models:
        raise M1Error(f'difficulty.rule "{cfg.rule}" needs difficulty.models (which models answer); '
                      'or set rule: none to keep every question')
    per_row: list[list[dict]] = [[] for _ in rows]
    for mc in cfg.models if rows else ():  # nothing to answer: do not even start an engine
        for acc, answers in zip(per_row, answer_all(rows, mc, cfg.prompt, cfg.grader)):
            acc.extend(answers)
    everything, kept = [], []
    for row, answers in zip(rows, per_row):
        right = sum(a["outcome"] == "correct" for a in answers)
        rate = right / len(answers) if answers else None
        row = {**row, "model_answers": answers, "n_samples": len(answers), "n_correct": right,
               "pass_rate": rate}
        everything.append(row)
        if cfg.rule == "none" or (cfg.rule == "all_wrong" and right == 0) or \
                (cfg.rule == "pass_rate" and rate <= cfg.max_pass_rate):
            kept.append(row)
    return kept, everything, {"rule": cfg.rule, "models": [model_label(m) for m in cfg.models],
                              "kept": len(kept), "dropped": len(rows) - len(kept)}
