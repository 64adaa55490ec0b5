"""Thinking under an exact token budget, with optional budget forcing."""
from m1.thinking.budget import BudgetController, Thinking, ThinkingParams, sweep
from m1.thinking.formats import FORMATS, ReasoningFormat, get_format

__all__ = ["BudgetController", "Thinking", "ThinkingParams", "sweep", "FORMATS", "ReasoningFormat", "get_format"]
