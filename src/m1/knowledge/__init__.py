"""Knowledge for the thinking: sources (retrievers over a corpus, an item's own explanation and
its controls) and the conditions `m1 eval --knowledge` runs under."""
from m1.knowledge.passages import Passage, Retriever

__all__ = ["Passage", "Retriever"]
