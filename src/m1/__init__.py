"""m1: test-time scaling of medical reasoning.

    import m1
    run = m1.evaluate(m1.EvalConfig(limit=20, budgets=(64, 128)))  # writes and returns a Run
    run = m1.Run.load(run.path)                                      # or any run folder
    rep = m1.report([run], "out/")                                   # tables, plots, report.html
"""
from m1.config import EvalConfig
from m1.errors import M1Error
from m1.evaluate import evaluate
from m1.reporting.report import Report, report
from m1.runs import Run, Trace

__all__ = ["EvalConfig", "M1Error", "Report", "Run", "Trace", "evaluate", "report"]
__version__ = "0.1.0"
