"""Rows: how an Item travels between stages as one Parquet row.

Columns every stage keeps: id, source, question, options (list of texts, lettered A, B,
... in order), answer (letter), answer_text, metadata (JSON text). Options are a list,
not a letter -> text mapping, so the Parquet schema is the same for 3- and 10-option
questions and `datasets` reads it as a plain Sequence(string). Stages add columns.
"""
from __future__ import annotations

import json
import string

from m1.benchmarks.items import Item


def item_to_row(item: Item) -> dict:
    letters = list(item.options)
    if letters != list(string.ascii_uppercase[: len(letters)]):  # "B, D" -> "A, B": rows letter in order
        item = reletter(item)
    return {"id": item.id, "source": item.source, "question": item.question,
            "options": list(item.options.values()), "answer": item.answer,
            "answer_text": item.options[item.answer],
            "metadata": json.dumps(item.metadata, ensure_ascii=False, sort_keys=True, default=str)}


def row_to_item(row: dict) -> Item:
    options = dict(zip(string.ascii_uppercase, row["options"]))
    meta = row.get("metadata")
    return Item(id=row["id"], question=row["question"], options=options, answer=row["answer"],
                source=row["source"], metadata=json.loads(meta) if meta else {})


def reletter(item: Item, order: list[str] | None = None) -> Item:
    """The same question with options in `order` (old letters), lettered A, B, ... again."""
    order = order or list(item.options)
    options = {string.ascii_uppercase[i]: item.options[old] for i, old in enumerate(order)}
    answer = string.ascii_uppercase[order.index(item.answer)]
    return Item(id=item.id, question=item.question, options=options, answer=answer, source=item.source,
                metadata=item.metadata)


def prompt_for(item: Item, template: str) -> str:
    """The user message: the template with "{question}" replaced by question + lettered options."""
    return template.replace("{question}", item.prompt_text())


def count_by_source(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.get("source", "?")] = out.get(r.get("source", "?"), 0) + 1
    return dict(sorted(out.items()))
