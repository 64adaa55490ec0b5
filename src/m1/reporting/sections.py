"""What an analysis hands the report: a titled section of tables, figures and linked questions.

An analysis is a function `list[Run] -> Section | None` (None: these runs cannot answer its
question, e.g. forcing needs runs that differ only in forcing rounds). The report writes each
table as CSV and Markdown, each figure as PNG, and the section into report.html; a notebook
uses the same Section directly (`section.figures["scaling_accuracy"]` is a matplotlib Figure).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from m1.runs import Run


@dataclass
class Table:
    name: str  # file stem: <name>.csv
    columns: list[str]
    rows: list[dict[str, Any]]
    caption: str = ""

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(_cell(r.get(c)) for c in self.columns) + " |" for r in self.rows]
        caption = f"{self.caption}\n\n" if self.caption else ""
        return caption + "\n".join([head, rule, *body]) + "\n"


@dataclass(frozen=True)
class TraceLink:
    """A question the reader should look at, shown as a link that opens it in the viewer."""

    run: str  # the run's name in the report
    source: str
    id: str
    budget: int
    why: str


@dataclass
class Section:
    key: str  # short and file-safe: "scaling"
    title: str
    text: str  # plain text: what the section shows and how to read it (paragraphs split on blank lines)
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    links: list[TraceLink] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", self.text]
        parts += [t.markdown() for t in self.tables]
        if self.links:
            parts.append("\n".join(f"- {link.run} · {link.source}/{link.id} at {link.budget}: {link.why}"
                                   for link in self.links))
        return "\n\n".join(p.strip() for p in parts if p.strip()) + "\n"


Analysis = Callable[[list[Run]], "Section | None"]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|").replace("\n", " ")
