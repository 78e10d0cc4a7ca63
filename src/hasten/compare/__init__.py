"""`hasten compare`: every recipe x every seed at one token budget, measured against a (tuned) AdamW baseline."""

from hasten.compare.metrics import (
    Curve,
    cost_to_target,
    curve_from_rows,
    mean_curve,
    paired_difference,
    ratio_estimate,
    speedup,
)
from hasten.compare.runner import CompareOptions, run_compare

__all__ = [
    "CompareOptions",
    "Curve",
    "cost_to_target",
    "curve_from_rows",
    "mean_curve",
    "paired_difference",
    "ratio_estimate",
    "run_compare",
    "speedup",
]
