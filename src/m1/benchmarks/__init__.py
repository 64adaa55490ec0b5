"""Benchmarks: the typed `Item`, the registry of named benchmarks and suites, and file loaders."""
from m1.benchmarks.items import Item
from m1.benchmarks.loaders import load_file
from m1.benchmarks.registry import BENCHMARKS, SUITES, Benchmark, list_benchmarks, load_benchmark, resolve_suite

__all__ = ["BENCHMARKS", "SUITES", "Benchmark", "Item", "list_benchmarks", "load_benchmark", "load_file",
           "resolve_suite"]
