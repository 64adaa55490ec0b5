"""Benchmarks: the typed `Item` and loaders for packaged and user-supplied question sets."""
from m1.benchmarks.items import Item
from m1.benchmarks.loaders import BENCHMARKS, Benchmark, load_benchmark, load_file

__all__ = ["BENCHMARKS", "Benchmark", "Item", "load_benchmark", "load_file"]
