"""The typed record every benchmark loader produces."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One multiple-choice question.

    `options` maps letter -> text in display order ("A" first). `answer` is a letter
    that is a key of `options`.
    """

    id: str
    question: str
    options: dict[str, str]
    answer: str
    source: str
    metadata: dict = field(default_factory=dict)

    def prompt_text(self) -> str:
        """Question and lettered options, as m1 shows them to the model."""
        opts = "\n".join(f"{k}. {v}" for k, v in self.options.items())
        return f"{self.question}\n{opts}"
