"""Grading: read the model's chosen letter from its answer text and score it."""
from m1.grading.strict import Grade, extract_letter, grade

__all__ = ["Grade", "extract_letter", "grade"]
