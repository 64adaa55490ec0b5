"""What one run's knowledge condition gives each question: text before the question, or an
injector that puts passages into the thinking (m1.thinking.budget.Injector).

The text a question gets never depends on what runs beside it or on the budget: static
conditions (the item's explanation and its controls) are fixed per item, and retrieval in the
thinking queries with the question and the thinking so far, which under greedy decoding is the
same at a point whatever the budget. So budgets stay exact and a cut sweep equals independent
runs under every condition (tests/test_knowledge_eval.py).
"""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

from m1.benchmarks.items import Item
from m1.config import EvalConfig
from m1.knowledge.passages import Passage, Retriever
from m1.knowledge.screen import Screen

PROMPT_HEAD = "Here is some medical knowledge that may help:"
THINKING_OPEN, THINKING_CLOSE = "\n\n[Knowledge]\n", "\n[End of knowledge]\n\n"
SCREEN_MARGIN = 2  # retrieve k * this many, so passages the screen removes leave k behind
MAX_SEARCHES = 5  # a question's model-written queries answered at most (Search-o1 allows a handful)


class Stopwatch:
    """Seconds spent getting knowledge (retrieval runs in worker threads, hence the lock): what
    bench/knowledge.py sets against the wall time."""

    def __init__(self):
        self.seconds = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def timing(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - start


def written_query(thinking: str, open_tag: str, close_tag: str) -> str:
    """The query the model just wrote: the text between the last `open_tag` and the `close_tag`
    that ends the thinking ("" when it wrote no opening tag)."""
    body = thinking[: thinking.rfind(close_tag)] if close_tag in thinking else thinking
    start = body.rfind(open_tag)
    return body[start + len(open_tag):].strip() if start >= 0 else ""


def render(passages: Sequence[Passage]) -> str:
    """Passages as the model reads them, numbered (MedRAG's layout: title, then content)."""
    return "\n\n".join(f"[{i}] {p.render()}" for i, p in enumerate(passages, 1))


def prompt_block(passages: Sequence[Passage]) -> str:
    return f"{PROMPT_HEAD}\n{render(passages)}"


def thinking_block(passages: Sequence[Passage]) -> str:
    return f"{THINKING_OPEN}{render(passages)}{THINKING_CLOSE}"


@dataclass
class QuestionKnowledge:
    """One question's knowledge: the prompt's block (where="prompt") or its thinking insertions
    (an Injector: `points`, `counted`, `text_at`). `screened` lists what decontamination removed."""

    item: Item
    condition: str
    where: str
    points: tuple[int, ...] = ()
    counted: bool = False
    static: list[Passage] = field(default_factory=list)  # the explained conditions' passage(s)
    retriever: Retriever | None = None
    k: int = 4
    supports: str | None = None  # the letter a counterfactual passage argues for
    screened: list[dict[str, Any]] = field(default_factory=list)
    prompt_passages: list[Passage] = field(default_factory=list)
    watch: Stopwatch = field(default_factory=Stopwatch)
    screen: Screen | None = None  # decontamination against every test question of the run
    # `--knowledge-at search`: (open, close) strings around the model's own queries; the controller
    # stops a round at `close` and asks text_at for the passages (thinking/budget.py, Injector)
    query_tags: tuple[str, str] | None = None

    def prompt_text(self) -> str | None:
        """The block before the question (None: nothing goes in the prompt)."""
        if self.where != "prompt":
            return None
        if not self.prompt_passages:
            from m1.knowledge.retrieval import query_for

            self.prompt_passages = self.static or self._retrieve(query_for(self.item))
        return prompt_block(self.prompt_passages) if self.prompt_passages else None

    async def text_at(self, index: int, thinking_text: str, before: Sequence[Any] = ()
                      ) -> tuple[str, str | None, list[dict]] | None:
        """The Injector's call: the block for the index-th point of the thinking; `before`, the
        insertions already in it (their passages are not brought again)."""
        if self.static:  # the same text at every point: it goes in once, at the first
            return (thinking_block(self.static), None, self._json(self.static)) if index == 0 else None
        if self.retriever is None:
            return None
        from m1.knowledge.retrieval import query_in_thinking

        if self.query_tags is not None:
            if index >= MAX_SEARCHES:
                return None
            query = written_query(thinking_text, *self.query_tags) or query_in_thinking(self.item, thinking_text)
        else:
            query = query_in_thinking(self.item, thinking_text)
        # bm25s and the embedder are CPU work: off the event loop, so the engine's other
        # questions keep being submitted while this one retrieves.
        given = {p["id"] for ins in before for p in ins.passages}
        found = await asyncio.to_thread(self._retrieve, query, given)
        if not found:
            return None
        return thinking_block(found), query, self._json(found)

    def _retrieve(self, query: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[Passage]:
        assert self.retriever is not None and self.screen is not None
        wanted = self.k + len(exclude)
        with self.watch.timing():
            # a zero score shares no word with the query: BM25 pads with those, they are not knowledge
            hits = [p for p in self.retriever.search(query, wanted * SCREEN_MARGIN)
                    if p.id not in exclude and p.score > 0]
            kept, removed = self.screen(self.item, hits)
        seen = {r["id"] for r in self.screened}
        self.screened += [r for r in removed if r["id"] not in seen]
        return kept[: self.k]

    def _json(self, passages: Sequence[Passage]) -> list[dict]:
        out = [p.to_json() for p in passages]
        if self.supports is not None:
            for d in out:
                d["supports"] = self.supports
        return out

    def prompt_insertion(self, tokens: int) -> dict[str, Any] | None:
        """The trace's record of the prompt block (`tokens`: ids it added to the prompt)."""
        text = self.prompt_text()
        if text is None:
            return None
        return {"where": "prompt", "at": None, "char_at": None, "tokens": tokens, "query": None, "text": text,
                "passages": self._json(self.prompt_passages)}


class Supply:
    """A run's knowledge condition over its items: which items it can serve (the explained
    conditions need an explanation; the others serve all) and each one's QuestionKnowledge."""

    def __init__(self, cfg: EvalConfig, items: Sequence[Item], retriever: Retriever | None = None):
        from m1.knowledge.conditions import EXPLAINED, check_condition

        check_condition(cfg.knowledge, list(items))
        self.cfg, self.items, self.retriever = cfg, list(items), retriever
        self.explained = cfg.knowledge in EXPLAINED
        self.watch = Stopwatch()
        self._static: dict[str, list[Passage]] = {}
        if self.explained:
            from m1.knowledge.conditions import passages_for

            with self.watch.timing():
                self._static = {it.id: passages_for(it, cfg.knowledge, self.items) for it in self.items}
        self.skipped = [it.id for it in self.items if self.explained and not self._static[it.id]]
        self.screen = None
        if retriever is not None:
            with self.watch.timing():
                self.screen = Screen(self.items, getattr(retriever, "extra", None))

    @property
    def active(self) -> bool:
        return self.cfg.knowledge != "none"

    def served(self) -> list[Item]:
        skipped = set(self.skipped)
        return [it for it in self.items if it.id not in skipped]

    def describe(self) -> dict[str, Any]:
        """What the run's environment records: the retriever (corpus hash) and skipped items."""
        out: dict[str, Any] = {"condition": self.cfg.knowledge, "skipped": self.skipped}
        if self.retriever is not None:
            out["retriever"] = self.retriever.describe()
        return out

    def for_item(self, item: Item) -> QuestionKnowledge:
        supports = None
        if self.cfg.knowledge == "counterfactual":
            from m1.knowledge.conditions import counterfactual_letter

            supports = counterfactual_letter(item)
        return QuestionKnowledge(
            item=item, condition=self.cfg.knowledge, where=self.cfg.knowledge_where, points=self.cfg.insertion_points(),
            counted=self.cfg.knowledge_counted, static=list(self._static.get(item.id, [])),
            retriever=self.retriever if self.cfg.knowledge == "retrieve" else None, k=self.cfg.knowledge_k,
            supports=supports, watch=self.watch, screen=self.screen,
            query_tags=tuple(self.cfg.knowledge_search_tags) if self.cfg.searches else None)  # type: ignore[arg-type]


def make_supply(cfg: EvalConfig, items: Sequence[Item]) -> Supply | None:
    """The run's Supply (None under "none"); the retriever is built, or its cached index loaded,
    here, before any model work, so a bad corpus fails at once."""
    if cfg.knowledge == "none":
        return None
    retriever = None
    if cfg.knowledge == "retrieve":
        from m1.knowledge.retrieval import make_retriever

        retriever = make_retriever(cfg.knowledge_retriever, cfg.knowledge_corpus)
    return Supply(cfg, items, retriever)
