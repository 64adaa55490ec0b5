"""items → prompts → engine → traces → grades → reports, with resume."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from m1.benchmarks.items import Item
from m1.config import EvalConfig
from m1.engines import Engine, make_engine
from m1.errors import M1Error
from m1.runs import RunDir, package_versions
from m1.thinking.budget import BudgetController, ThinkingParams, sweep
from m1.thinking.formats import get_format


@dataclass
class EvalResult:
    run_dir: Path
    records: list[dict]
    metrics: dict
    missing: list[str]  # benchmarks of the suite that are not present here


def benchmark_names(cfg: EvalConfig) -> tuple[list[str], list[str]]:
    """(names to run, names of the suite that are missing)."""
    if cfg.suite:
        from m1.benchmarks.registry import resolve_suite

        return resolve_suite(cfg.suite, cfg.data_dir)
    return [n.strip() for n in cfg.benchmark.split(",") if n.strip()], []


def load_items(cfg: EvalConfig, names: list[str]) -> list[Item]:
    """Every question of the run (benchmarks `names`, or --data); --limit samples each benchmark separately."""
    from m1.benchmarks import load_benchmark, load_file

    if cfg.data:
        return load_file(cfg.data, limit=cfg.limit, seed=cfg.seed)
    items: list[Item] = []
    for name in names:
        items += load_benchmark(name, limit=cfg.limit, seed=cfg.seed, data_dir=cfg.data_dir)
    return items


def build_prompt(engine: Engine, item: Item, cfg: EvalConfig) -> str:
    user = item.prompt_text()
    if cfg.instruction:
        user = f"{user}\n{cfg.instruction}"
    messages = [{"role": "user", "content": user}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return engine.render_chat(messages)


def default_run_dir(cfg: EvalConfig) -> Path:
    source = Path(cfg.data).stem if cfg.data else (f"suite-{cfg.suite}" if cfg.suite else cfg.benchmark.replace(",", "+"))
    model = Path(cfg.model).stem if cfg.model else "smollm2-135m"
    return Path("runs") / f"{source}-{cfg.engine}-{model}-{cfg.format}-{cfg.fingerprint()}"


def versions() -> dict:
    return package_versions(("m1", "llama-cpp-python", "transformers", "torch", "vllm", "openai", "numpy"))


def evaluate(cfg: EvalConfig, out: str | Path | None = None, engine: Engine | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> EvalResult:
    """Run (or resume) an evaluation; returns every record and the metrics."""
    from m1.grading import grade
    from m1.reporting.report import write_reports

    names, missing = benchmark_names(cfg)
    items = load_items(cfg, names)
    if not items:
        raise M1Error("no questions to evaluate: the suite has no benchmark present (see `m1 benchmarks`)")
    fmt = get_format(cfg.format, **cfg.format_overrides)
    params = ThinkingParams(budget=max(cfg.budgets), forcing_rounds=cfg.forcing_rounds, ignore_str=cfg.ignore_str,
                            answer_max_tokens=cfg.answer_max_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed)
    run = RunDir(out or default_run_dir(cfg))
    own_engine = engine is None
    engine = engine or make_engine(cfg.engine, cfg.model, **cfg.engine_options)
    try:
        run.prepare(cfg.to_dict(), {"versions": versions(), "engine": engine.describe()})
        records = run.load()
        done = {(r["id"], r["budget"]) for r in records}
        todo = [it for it in items if any((it.id, b) not in done for b in cfg.budgets)]
        controller = BudgetController(engine, fmt, params)
        generated, start = 0, time.perf_counter()
        finished = len(items) - len(todo)
        if progress:
            progress(finished, len(items), 0.0)
        for k in range(0, len(todo), cfg.chunk_size):
            chunk = todo[k:k + cfg.chunk_size]
            prompts_text = [build_prompt(engine, it, cfg) for it in chunk]
            prompts = [engine.encode_prompt(t) for t in prompts_text]
            keys = [it.id for it in chunk]
            per_budget = sweep(controller, prompts, keys, cfg.budgets, cfg.method)
            new = []
            for b in sorted(per_budget):
                thinkings, answers = per_budget[b]
                for it, text, prompt, th, ans in zip(chunk, prompts_text, prompts, thinkings, answers):
                    if (it.id, b) in done:
                        continue
                    new.append(make_record(it, b, text, prompt, th, ans, engine, controller, grade))
            if cfg.method == "cut":
                generated += sum(per_budget[max(cfg.budgets)][0][i].generated for i in range(len(chunk)))
            else:
                generated += sum(t.generated for b in per_budget for t in per_budget[b][0])
            generated += sum(len(a.ids) for b in per_budget for a in per_budget[b][1])
            run.append(new)
            records += new
            finished += len(chunk)
            if progress:
                progress(finished, len(items), generated / max(time.perf_counter() - start, 1e-9))
    finally:
        if own_engine:
            engine.close()
    wanted = {it.id for it in items}
    records = [r for r in records if r["id"] in wanted and r["budget"] in cfg.budgets]
    metrics = write_reports(run.path, records, cfg)
    return EvalResult(run.path, records, metrics, missing)


def make_record(item, budget, prompt_text, prompt_ids, th, ans, engine, controller, grade) -> dict:
    thinking_text = engine.detokenize(th.ids)
    if controller.needs_answer_phase(th):
        # The forced prefix ends "Final Answer:"; the grader must see it with the answer.
        graded = ans.prefix.rsplit("\n", 1)[-1] + ans.text
    else:
        graded = thinking_text
    g = grade(graded, item)
    return {
        "id": item.id, "source": item.source, "budget": budget,
        "gold": item.answer, "options": item.options,
        "prompt": prompt_text, "prompt_tokens": len(prompt_ids),
        "thinking": thinking_text, "thinking_tokens": len(th.ids), "thinking_ended": th.ended,
        "thinking_stop": th.stop if th.ended == "natural" else None,
        "hit_budget": th.ended == "budget", "forcing_rounds": th.rounds, "forced_at": th.forced_at,
        "think_finish_reasons": th.finish_reasons,
        "answer_prefix": ans.prefix, "answer": ans.text, "answer_tokens": len(ans.ids),
        "answer_finish_reason": ans.finish_reason,
        "graded_text": graded, "letter": g.letter, "outcome": g.outcome, "rule": g.rule,
        "correct": g.outcome == "correct",
    }
