"""The typed records of knowledge: a passage, and what a retriever is.

A `Passage` is what every knowledge source hands the evaluation: a retrieved corpus chunk,
or an item's own explanation (and its controls) under the gold conditions. A `Retriever`
maps a query to ranked passages; the evaluation needs nothing else of it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Passage:
    id: str  # unique within its source: a corpus chunk id, or "<item id>" for an explanation
    source: str  # the corpus name ("m1-knowledge", a user file's name) or the condition ("gold", "placebo")
    title: str
    text: str
    score: float = 0.0  # the retriever's score (higher is closer); 0 for conditions that rank nothing

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """How a passage reads to the model (MedRAG's layout: title, then content)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


class Retriever(Protocol):
    """query -> ranked passages, best first. `describe()` names the corpus (its content hash)
    and the method, so a run's identity changes when either does."""

    def search(self, query: str, k: int) -> list[Passage]: ...

    def search_many(self, queries: list[str], k: int) -> list[list[Passage]]: ...

    def describe(self) -> dict[str, Any]: ...
