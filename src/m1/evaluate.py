"""items → prompts → engine → traces → grades → reports, with resume."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from m1.benchmarks.items import Item
from m1.config import EvalConfig
from m1.engines import Engine, make_engine
from m1.engines.base import bounded, common_prefix, load_between, run_sync
from m1.errors import M1Error
from m1.runs import RunDir, package_versions
from m1.thinking.budget import BudgetController, ContextLog, ThinkingParams
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


class ChatTemplate(Protocol):
    def render_chat(self, messages: list[dict]) -> str: ...


def build_prompt(engine: ChatTemplate, item: Item, cfg: EvalConfig) -> str:
    user = item.prompt_text()
    if cfg.instruction:
        user = f"{user}\n{cfg.instruction}"
    messages = [{"role": "user", "content": user}]
    if cfg.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return engine.render_chat(messages)


def default_run_dir(cfg: EvalConfig) -> Path:
    if cfg.data:
        source = Path(cfg.data).stem
    else:
        source = f"suite-{cfg.suite}" if cfg.suite else cfg.benchmark.replace(",", "+")
    model = Path(cfg.model).stem if cfg.model else "smollm2-135m"
    return Path("runs") / f"{source}-{cfg.engine}-{model}-{cfg.format}-{cfg.fingerprint()}"


def versions() -> dict:
    return package_versions(("m1", "llama-cpp-python", "transformers", "torch", "vllm", "openai", "numpy"))


Progress = Callable[[int, int, dict], None]


def evaluate(cfg: EvalConfig, out: str | Path | None = None, engine: Engine | None = None,
             progress: Progress | None = None) -> EvalResult:
    """Run (or resume) an evaluation; returns every record and the metrics.

    `progress(done, total, load)` is called as questions finish; `load` holds the engine's
    occupancy and tokens/s so far."""
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
    run.check_target()
    own_engine = engine is None
    engine = engine or make_engine(cfg.engine, cfg.model, **cfg.engine_options)
    try:
        run.prepare(cfg.to_dict(), {"versions": versions(), "engine": engine.describe()}, EvalConfig.identity)
        records = run.load()
        done = {(r["id"], r["budget"]) for r in records}
        todo = [it for it in items if any((it.id, b) not in done for b in cfg.budgets)]
        controller = BudgetController(engine, fmt, params)
        load = _Pipelines(engine, controller, cfg, run, done, grade, progress).run(todo, total=len(items))
    finally:
        if own_engine:
            engine.close()
    wanted = {it.id for it in items}
    records = run.load()
    records = [r for r in records if r["id"] in wanted and r["budget"] in cfg.budgets]
    metrics = write_reports(run.path, records, cfg, load=load)
    return EvalResult(run.path, records, metrics, missing)


class _Pipelines:
    """Every question its own pipeline; `engine.capacity` questions in flight, the next one
    started the moment one finishes; each question's records appended (fsync) as it finishes."""

    def __init__(self, engine, controller, cfg, run, done, grade, progress):
        self.engine, self.controller, self.cfg, self.run_dir = engine, controller, cfg, run
        self.done, self.grade, self.progress = done, grade, progress
        self.minimum = 0  # context tokens the engine had to evaluate at the least

    def run(self, todo: list[Item], total: int) -> dict | None:
        if self.progress:
            self.progress(total - len(todo), total, {})
        if not todo:
            return None
        return run_sync(self._all(todo, total))

    async def _all(self, todo: list[Item], total: int) -> dict:
        meter = self.engine.meter
        start = meter.reading()
        marks: dict = {}
        finished = total - len(todo)
        # Prompts are built as questions start (a server may tokenize them); the first few
        # are built here already, to find the prefix every prompt shares.
        first = {it.id: self._prompt(it) for it in todo[:8]}
        shared = _shared_prefix([ids for _, ids in first.values()])
        self.minimum = shared

        async def one(item: Item) -> None:
            nonlocal finished
            text, ids = first.pop(item.id) if item.id in first else self._prompt(item)
            log = ContextLog()
            per_budget = await self.controller.question(ids, item.id, self.cfg.budgets, self.cfg.method, log)
            self.minimum += log.minimum - min(shared, len(ids))
            new = [make_record(item, b, text, ids, th, ans, self.engine, self.controller, self.grade)
                   for b, (th, ans) in sorted(per_budget.items()) if (item.id, b) not in self.done]
            self.run_dir.append(new)
            finished += 1
            if self.progress:
                self.progress(finished, total, load_between(start, meter.reading(), meter.capacity))

        def last_start() -> None:  # from here on no question is left to start
            marks["last_start"] = meter.reading()

        await bounded([functools.partial(one, it) for it in todo], self.engine.capacity, last_start)
        end = meter.reading()
        load = load_between(start, end, meter.capacity)
        load["while_questions_remain"] = load_between(start, marks.get("last_start", end), meter.capacity)
        load["context_minimum"] = self.minimum
        if load["context_tokens"]:
            load["context_vs_minimum"] = round(load["context_tokens"] / max(self.minimum, 1), 4)
        return load

    def _prompt(self, item: Item) -> tuple[str, list[int]]:
        text = build_prompt(self.engine, item, self.cfg)
        return text, self.engine.encode_prompt(text)


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with (the chat template's header, a system prompt)."""
    if not prompts:
        return 0
    return min(common_prefix(prompts[0], p) for p in prompts)


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
