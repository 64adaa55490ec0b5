"""m1: test-time scaling of medical reasoning.

    from m1 import EvalConfig, evaluate
    result = evaluate(EvalConfig(limit=20, budgets=(64, 128)))
    print(result.metrics["rows"])
"""
from m1.config import EvalConfig
from m1.errors import M1Error
from m1.evaluate import EvalResult, evaluate

__all__ = ["EvalConfig", "EvalResult", "M1Error", "evaluate"]
__version__ = "0.1.0"
