"""Evaluate stage: score a run's model on held-out shards, report, compare runs.

TensorFlow and matplotlib are imported only when a run is actually evaluated.
"""
from evaluate.compare import compare_runs, markdown_table
from evaluate.metrics import Accumulator, MulticlassAccumulator
from evaluate.run import evaluate_run

__all__ = ["Accumulator", "MulticlassAccumulator", "compare_runs", "evaluate_run", "markdown_table"]
