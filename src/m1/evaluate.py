"""items → prompts → engine → traces → grades → reports, with resume."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Protocol

from m1.benchmarks.items import Item
from m1.config import EvalConfig
from m1.engines import Engine, make_engine
from m1.engines.base import bounded, common_prefix, load_between, open_questions, run_sync
from m1.errors import M1Error
from m1.grading import score
from m1.knowledge.supply import QuestionKnowledge, Supply, make_supply
from m1.models import EMBEDDED, embedded_model_path
from m1.runs import Run, RunDir, Trace, package_versions
from m1.thinking.budget import Answer, BudgetController, ContextLog, Thinking, ThinkingParams
from m1.thinking.formats import get_format
from m1.thinking.policies import confidence, parse_policy


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


def build_prompt(engine: ChatTemplate, item: Item, cfg: EvalConfig, knowledge: str | None = None) -> str:
    """The chat prompt of one question; `knowledge` goes before the question (as MedRAG puts it)."""
    user = item.prompt_text()
    if knowledge:
        user = f"{knowledge}\n\n{user}"
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
    model = Path(cfg.model).name.removesuffix(".gguf") if cfg.model else EMBEDDED  # names keep their dots
    return Path("runs") / f"{source}-{cfg.engine}-{model}-{cfg.format}-{cfg.fingerprint()}"


def versions() -> dict:
    return package_versions(("m1", "llama-cpp-python", "transformers", "torch", "vllm", "openai", "numpy"))


Progress = Callable[[int, int, dict], None]


def evaluate(cfg: EvalConfig, out: str | Path | None = None, engine: Engine | None = None,
             progress: Progress | None = None) -> Run:
    """Run (or resume) an evaluation and write its report into the run folder; returns the Run.

    `progress(done, total, load)` is called as questions finish; `load` holds the engine's
    occupancy and tokens/s so far. An `engine` you pass is used as is (and not closed); the
    config is reconciled with it: a format of "auto" resolves for that engine's model."""
    from m1.reporting.report import report

    cfg = reconcile(cfg, engine)
    names, _ = benchmark_names(cfg)
    items = load_items(cfg, names)
    if not items:
        raise M1Error("no questions to evaluate: the suite has no benchmark present (see `m1 benchmarks`)")
    supply = make_supply(cfg, items)  # knowledge: the retriever's index is loaded before any model work
    if supply is not None:
        items = supply.served()
    fmt = get_format(cfg.format, **cfg.format_overrides)
    params = ThinkingParams.from_config(cfg)
    run = RunDir(out or default_run_dir(cfg))
    run.check_target()
    own_engine = engine is None
    engine = engine or make_engine(cfg.engine, cfg.model, **cfg.engine_options)
    try:
        environment = {"versions": versions(), "engine": engine.describe()}
        if supply is not None:
            environment["knowledge"] = supply.describe()
        run.prepare(cfg.to_dict(), environment, EvalConfig.identity)
        records = run.load()
        done = {(r["id"], r["budget"]) for r in records}
        todo = [it for it in items if any((it.id, b) not in done for b in cfg.budgets)]
        controller = BudgetController(engine, fmt, params)
        load = _Pipelines(engine, controller, cfg, run, done, progress, supply=supply).run(todo, total=len(items))
        if load is not None and supply is not None:
            load["knowledge_seconds"] = round(supply.watch.seconds, 3)  # retrieval, screening, passages
    finally:
        if own_engine:
            engine.close()
    result = Run.load(run.path, cfg.grader)  # traces of a resume with another grader are graded anew, in memory
    wanted = {it.id for it in items}
    result.traces = [t for t in result.traces if t.id in wanted and t.budget in cfg.budgets]
    result.engine_load = load or result.engine_load
    report([result], run.path)
    return result


def reconcile(cfg: EvalConfig, engine: Engine | None) -> EvalConfig:
    """The config resolved for the engine that will run: with an engine passed in (from a
    notebook) and no model named, the config takes the engine's model, so the run folder,
    config.json and report say which model ran; format "auto" is then decided for it."""
    if engine is None:
        return cfg.resolved()
    described = engine.describe()
    model = described.get("model")
    try:
        embedded = cfg.engine == "llamacpp" and model is not None and Path(model) == embedded_model_path()
    except M1Error:
        embedded = False
    if cfg.model is None and model and not embedded:
        cfg = dataclasses.replace(cfg, model=str(model))
    return cfg.resolved(embedded=embedded or (cfg.model is None and not model))


class _Pipelines:
    """Every question its own pipeline; `open_questions(engine)` of them started at once (the
    engine's capacity, more on a server with a prefix cache), the next one started the moment
    one finishes; each question's records appended (fsync) as it finishes."""

    def __init__(self, engine: Engine, controller: BudgetController, cfg: EvalConfig, run: RunDir,
                 done: set[tuple[str, int]], progress: Progress | None, supply: Supply | None = None):
        self.engine, self.controller, self.cfg, self.run_dir = engine, controller, cfg, run
        self.done, self.progress, self.supply = done, progress, supply
        self.policy = parse_policy(cfg.adaptive) if cfg.adaptive else None
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
        shared = _shared_prefix([p.ids for p in first.values()])
        self.minimum = shared

        async def one(item: Item) -> None:
            nonlocal finished
            prompt = first.pop(item.id) if item.id in first else self._prompt(item)
            ids = prompt.ids
            log = ContextLog()
            letters = tuple(item.options)
            if self.policy is None:
                injector = prompt.knowledge if prompt.knowledge and prompt.knowledge.where == "thinking" else None
                per_budget = await self.controller.question(ids, item.id, self.cfg.budgets, self.cfg.method, log,
                                                            letters, injector=injector)
                new = [self._record(item, b, prompt, th, ans)
                       for b, (th, ans) in sorted(per_budget.items()) if (item.id, b) not in self.done]
            else:
                def letter_of(th, ans):
                    return score(graded_text(th, ans, self.engine, self.controller), item, self.cfg.grader).letter

                cap = self.cfg.budgets[0]
                th, ans, episode, why = await self.controller.adaptive(ids, item.id, cap, self.policy, letter_of, log,
                                                                       letters)
                t = self._record(item, cap, prompt, th, ans)
                new = [dataclasses.replace(t, stopped_by=why, probes=[
                    {"tokens": pr.budget, "letter": pr.letter, "confidence": confidence(pr.option_logprobs, letters)}
                    for pr in episode.history])]
            self.minimum += log.minimum - min(shared, len(ids))
            self.run_dir.append([t.to_json() for t in new])
            finished += 1
            if self.progress:
                self.progress(finished, total, load_between(start, meter.reading(), meter.capacity))

        def last_start() -> None:  # from here on no question is left to start
            marks["last_start"] = meter.reading()

        await bounded([functools.partial(one, it) for it in todo], open_questions(self.engine), last_start)
        end = meter.reading()
        load = load_between(start, end, meter.capacity)
        load["while_questions_remain"] = load_between(start, marks.get("last_start", end), meter.capacity)
        load["context_minimum"] = self.minimum
        if load["context_tokens"]:
            load["context_vs_minimum"] = round(load["context_tokens"] / max(self.minimum, 1), 4)
        return load

    def _record(self, item: Item, budget: int, prompt: Prompt, th: Thinking, ans: Answer) -> Trace:
        return make_record(item, budget, prompt, th, ans, self.engine, self.controller, self.cfg.grader)

    def _prompt(self, item: Item) -> Prompt:
        qk = self.supply.for_item(item) if self.supply is not None else None
        block = qk.prompt_text() if qk is not None else None
        text = build_prompt(self.engine, item, self.cfg, block)
        ids = self.engine.encode_prompt(text)
        added = len(ids) - len(self.engine.encode_prompt(build_prompt(self.engine, item, self.cfg))) if block else 0
        return Prompt(text, ids, qk, added)


@dataclasses.dataclass
class Prompt:
    """One question's prompt, with its knowledge (None under "none") and the ids that added."""

    text: str
    ids: list[int]
    knowledge: QuestionKnowledge | None = None
    knowledge_ids: int = 0

    def fields(self, th: Thinking, engine) -> dict:
        """The trace's knowledge fields for one budget's thinking: every insertion as it was made."""
        qk = self.knowledge
        if qk is None:
            return {}
        inserted = [r for r in [qk.prompt_insertion(self.knowledge_ids)] if r is not None]
        for ins in th.insertions:
            if ins.text:
                inserted.append({"where": "thinking", "at": ins.at, "char_at": len(engine.detokenize(th.ids[:ins.at])),
                                 "tokens": len(ins.in_context), "query": ins.query, "text": ins.text,
                                 "passages": list(ins.passages)})
        return {"knowledge": qk.condition, "knowledge_where": qk.where, "insertions": inserted,
                "knowledge_tokens": sum(r["tokens"] for r in inserted), "screened": list(qk.screened)}


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with (the chat template's header, a system prompt)."""
    if not prompts:
        return 0
    return min(common_prefix(prompts[0], p) for p in prompts)


def graded_text(th: Thinking, ans: Answer, engine: Engine, controller: BudgetController,
                thinking_text: str | None = None) -> str:
    """What the grader reads: the answer with the last line of its forced prefix ("Final Answer:"),
    or, where the model answered inside its thinking (plain format, natural end), the thinking."""
    if controller.needs_answer_phase(th):
        return ans.prefix.rsplit("\n", 1)[-1] + ans.text
    return engine.detokenize(th.ids) if thinking_text is None else thinking_text


def make_record(item: Item, budget: int, prompt: Prompt, th: Thinking, ans: Answer, engine: Engine,
                controller: BudgetController, grader: str) -> Trace:
    """The trace of one question at one budget with `grader`'s score, and the knowledge fields
    of the prompt's condition (Prompt.fields), if the run has one."""
    thinking_text = engine.detokenize(th.ids)
    graded = graded_text(th, ans, engine, controller, thinking_text)
    return Trace(**{
        "id": item.id, "source": item.source, "budget": budget,
        "gold": item.answer, "options": item.options, "question": item.question,
        "prompt": prompt.text, "prompt_tokens": len(prompt.ids),
        "thinking": thinking_text, "thinking_tokens": len(th.ids), "thinking_ended": th.ended,
        "thinking_stop": th.stop if th.ended == "natural" else None,
        "hit_budget": th.ended == "budget", "rounds_forced": th.rounds, "forced_at": th.forced_at,
        "think_finish_reasons": th.finish_reasons,
        "answer_prefix": ans.prefix, "answer": ans.text, "answer_tokens": len(ans.ids),
        "answer_finish_reason": ans.finish_reason,
        "graded_text": graded, "scores": {grader: score(graded, item, grader)}, "grader": grader,
        "option_logprobs": ans.option_logprobs, "min_thinking_forced": len(th.short_at),
        **prompt.fields(th, engine),
    })
