"""Stage 3, difficulty: let one or more models answer each question; keep the hard ones.

Any m1 engine answers (llamacpp in process, openai against a server, hf, vllm): the
prompt is the user message in the model's own chat template, and temperature, top_p,
seed and max_tokens go into each GenRequest, so they are applied by the engine, not
just recorded. k samples per model use seeds seed, seed+1, ... Every answer is graded
with the project's grader and stored (table "answers": one row per question with all
models' answers; "data": the questions kept).

Answers are journaled as they arrive (`chunk_size` questions per engine call), so a
killed or interrupted stage answers only what is missing when it runs again. The
journal keys an answer by the model's settings, the sample's seed and the prompt text,
and holds the raw text: a changed setting or question is answered again, a changed
grader or rule is not.

Rules: "all_wrong" (m1's: no model got it right in any sample), "pass_rate" (keep
when the share of right samples is <= max_pass_rate), "none" (keep all; answers are
still stored when models are given).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from m1.curation.config import DifficultyConfig, ModelConfig
from m1.curation.records import prompt_for, row_to_item
from m1.curation.store import json_hash
from m1.engines import GenRequest, make_engine
from m1.errors import M1Error
from m1.grading import get_grader

RULES = ("all_wrong", "pass_rate", "none")


def model_label(mc: ModelConfig) -> str:
    return mc.name or f"{mc.engine}:{Path(mc.model).name if mc.model else 'default'}"


class Journal:
    """Raw answers by key, one JSON line each, appended and fsynced per chunk.
    Without a path it only remembers in memory. A torn last line (a kill mid-write) is ignored."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    self.entries[e["key"]] = e
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, entries: list[dict]) -> None:
        for e in entries:
            self.entries[e["key"]] = e
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())


def sample_key(mc: ModelConfig, user_text: str, sample: int) -> str:
    return json_hash({"engine": mc.engine, "model": mc.model, "options": mc.options, "temperature": mc.temperature,
                      "top_p": mc.top_p, "max_tokens": mc.max_tokens, "seed": mc.seed + sample, "prompt": user_text})


def answer_all(rows: list[dict], mc: ModelConfig, prompt: str, grader: str, journal: Journal | None = None,
               chunk_size: int = 32, progress=None) -> list[list[dict]]:
    """Per row, the k graded answers of one model; only what `journal` lacks is generated."""
    if mc.k < 1 or mc.max_tokens < 1:
        raise M1Error(f"difficulty model {model_label(mc)}: k and max_tokens must be >= 1; fix them in the config")
    journal = journal if journal is not None else Journal(None)
    grade = get_grader(grader)
    items = [row_to_item(r) for r in rows]
    users = [prompt_for(it, prompt) for it in items]
    keys = [[sample_key(mc, u, j) for j in range(mc.k)] for u in users]
    todo = [n for n in range(len(items)) if any(k not in journal.entries for k in keys[n])]
    if progress:
        progress(len(items) - len(todo))
    if todo:
        engine = make_engine(mc.engine, mc.model, **mc.options)
        try:
            for start in range(0, len(todo), max(1, chunk_size)):
                chunk = todo[start:start + max(1, chunk_size)]
                requests = []
                for n in chunk:
                    p = tuple(engine.encode_prompt(engine.render_chat([{"role": "user", "content": users[n]}])))
                    requests += [GenRequest(p, mc.max_tokens, stop_token_ids=tuple(engine.eos_token_ids),
                                            temperature=mc.temperature, top_p=mc.top_p, seed=mc.seed + j)
                                 for j in range(mc.k)]
                results = iter(engine.generate(requests))
                entries = []
                for n in chunk:
                    for j in range(mc.k):
                        r = next(results)
                        entries.append({"key": keys[n][j], "id": items[n].id, "sample": j,
                                        "text": engine.detokenize(r.token_ids[: r.stop_index]),  # the stop left out
                                        "tokens": len(r.token_ids), "finish_reason": r.finish_reason})
                journal.add(entries)
                if progress:
                    progress(len(chunk))
        finally:
            engine.close()
    out = []
    for n, it in enumerate(items):
        answers = []
        for j in range(mc.k):
            e = journal.entries[keys[n][j]]
            g = grade(e["text"], it)
            answers.append({"model": model_label(mc), "sample": j, "text": e["text"], "letter": g.letter or "",
                            "outcome": g.outcome, "rule": g.rule, "tokens": e["tokens"],
                            "finish_reason": e["finish_reason"]})
        out.append(answers)
    return out


def difficulty(rows: list[dict], cfg: DifficultyConfig, journal_path: Path | None = None,
               progress: bool = False) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, every row with its answers, counts)."""
    if cfg.rule not in RULES:
        raise M1Error(f'difficulty.rule is "{cfg.rule}"; choose one of {", ".join(RULES)}')
    if cfg.rule != "none" and not cfg.models:
        raise M1Error(f'difficulty.rule "{cfg.rule}" needs difficulty.models (which models answer); '
                      'or set rule: none to keep every question')
    if cfg.chunk_size < 1:
        raise M1Error(f"difficulty.chunk_size is {cfg.chunk_size}; give the questions per engine call (>= 1)")
    journal = Journal(journal_path)
    before = len(journal.entries)
    per_row: list[list[dict]] = [[] for _ in rows]
    for mc in cfg.models if rows else ():  # nothing to answer: do not even start an engine
        bar = _bar(len(rows), f"difficulty {model_label(mc)}") if progress else None
        try:
            answers = answer_all(rows, mc, cfg.prompt, cfg.grader, journal, cfg.chunk_size,
                                 bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        for acc, a in zip(per_row, answers):
            acc.extend(a)
    everything, kept = [], []
    for row, row_answers in zip(rows, per_row):
        right = sum(a["outcome"] == "correct" for a in row_answers)
        rate = right / len(row_answers) if row_answers else None
        row = {**row, "model_answers": row_answers, "n_samples": len(row_answers), "n_correct": right,
               "pass_rate": rate}
        everything.append(row)
        if cfg.rule == "none" or (cfg.rule == "all_wrong" and right == 0) or \
                (cfg.rule == "pass_rate" and rate is not None and rate <= cfg.max_pass_rate):
            kept.append(row)
    return kept, everything, {"rule": cfg.rule, "models": [model_label(m) for m in cfg.models],
                              "kept": len(kept), "dropped": len(rows) - len(kept),
                              "generated": len(journal.entries) - before}


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q", mininterval=1.0)
