"""Retrieval-time decontamination: drop retrieved passages that carry the test question itself.

A knowledge corpus built from training sets (MedQA train, PubMedQA's unlabeled abstracts, ...)
can hold a copy of a test question, or the abstract a PubMedQA question was written from.
Handing it to the model measures lookup, not reasoning. The screen reuses the curation
stage's own decontamination (m1.curation.dedup): an index over the one test item, and each
passage's text matched against it as if the passage were a candidate training question,
with the same rules and thresholds (exact stem, shared 13-grams, fuzzy ratio). A passage
longer than the question that contains it is caught by the n-gram rule, whose share is
taken over the shorter text. PubMedQA items also drop any passage naming the same PMID
(its "pmid" field, or a number in its id such as "pubmedqa-21645374").
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from m1.benchmarks.items import Item
from m1.curation.config import DedupConfig
from m1.curation.dedup import EvalIndex
from m1.knowledge.passages import Passage

Extra = Callable[[str], Mapping[str, Any]]  # passage id -> the corpus line's other fields (retriever.extra)


class Screen:
    """The screen for one run: an index over every test question of the run, built once, so a
    passage carrying any of them (the question being asked, or another one with its answer) is
    removed; PubMedQA items also lose passages of their own PMID."""

    def __init__(self, items: Sequence[Item], extra: Extra | None = None, cfg: DedupConfig | None = None):
        self.cfg = cfg or DedupConfig()
        self.items = list(items)
        self.index = EvalIndex.build(self.items, self.cfg.ngram)
        self.extra = extra

    def __call__(self, item: Item, passages: list[Passage]) -> tuple[list[Passage], list[dict[str, Any]]]:
        """(passages kept, in order; one row {"id", "source", "rule", "score", "matched_id"} per passage
        removed). Rules: "pmid", then the dedup's "exact" | "ngram" | "fuzzy" (score 0-100)."""
        pmid = item_pmid(item)
        kept: list[Passage] = []
        removed: list[dict[str, Any]] = []
        for p in passages:
            if pmid is not None and pmid in passage_pmids(p, self.extra):
                removed.append({"id": p.id, "source": p.source, "rule": "pmid", "score": 100.0, "matched_id": item.id})
                continue
            as_question = Item(id=p.id, question=p.text, options={}, answer="", source=p.source)
            m = self.index.match(as_question, self.cfg)
            if m is not None:
                removed.append({"id": p.id, "source": p.source, "rule": m.rule, "score": float(m.score),
                                "matched_id": self.items[m.other].id})
                continue
            kept.append(p)
        return kept, removed


def screen(item: Item, passages: list[Passage], extra: Extra | None = None,
           cfg: DedupConfig | None = None) -> tuple[list[Passage], list[dict[str, Any]]]:
    """Screen passages against the one test item (Screen over a run screens against all of them)."""
    return Screen([item], extra, cfg)(item, passages)


def item_pmid(item: Item) -> str | None:
    """A PubMedQA item's PMID: its metadata "pmid", else the number its id ends with."""
    if not item.source.startswith("pubmedqa"):
        return None
    pmid = str(item.metadata.get("pmid") or "").strip()
    if not pmid:
        found = re.search(r"(\d+)$", item.id)
        pmid = found.group(1) if found else ""
    return pmid.lstrip("0") or None


def passage_pmids(p: Passage, extra: Extra | None = None) -> set[str]:
    """Every PMID a passage could name: its corpus line's "pmid", and each number standing alone in its id."""
    found = {n.lstrip("0") for n in re.findall(r"(?<!\d)\d+(?!\d)", p.id)}
    pmid = (extra(p.id) if extra else {}).get("pmid")
    if pmid is not None:
        found.add(str(pmid).strip().lstrip("0"))
    return found - {""}
