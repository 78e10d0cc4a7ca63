"""The numbers of a comparison: eval curves, cost to reach a target loss, speedups and their statistics.

Curves and costs are plain Python on lists of floats so they can be tested on synthetic curves; the
statistics (paired t intervals, t-tests) come from scipy.

A speedup is only as fine as the evaluations around its crossing: `crossing_bracket` gives the two evaluations the
crossing lies between, and a report refuses a speedup whose bracket spans more than MAX_RESOLUTION of the run. The
share is taken of the row's own run on each axis: interpolation inside the bracket moves the crossing by at most that
share of the row's cost on any axis alike (cost grows evenly between two evaluations), so a row with slower steps is
as well resolved in seconds as in tokens; as a share of the baseline's seconds it would look coarser by its slowdown.

Seeds are *paired*: seed s gives every recipe the same data order (and the same initial weights
where the shapes agree), so a recipe is compared with the baseline seed by seed. For seed s the
target is the baseline's seed-s final val loss; the recipe's seed-s speedup on an axis is the
baseline's seed-s cost (its whole budget) over the cost at which the recipe's seed-s curve first
reaches that target. Speedups are summarised by their geometric mean with a t interval on the logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AXES = (
    "tokens",
    "model_flops",
    "flops",
    "train_time",
)  # the costs: training tokens, model FLOPs, total FLOPs, wall-clock seconds
CONFIDENCE = 0.95
MAX_RESOLUTION = 0.03  # a speedup rests on two evaluations at most this fraction of the row's run apart


@dataclass
class Curve:
    """Val loss at each evaluation of one run (or the seed mean of a recipe), with its cost counters.

    `flops` is the total compute: the model's forward and backward (`model_flops`, hasten.model.flops_per_token) plus
    the optimizer's steps (hasten.optim.flops). A run logged before optimizer FLOPs were recorded has only the model's
    (`optimizer_counted` False): its total is unknown, and no total-FLOPs speedup is computed from it.
    """

    step: list[int]
    loss: list[float]
    tokens: list[float]
    flops: list[float]
    train_time: list[float]
    model_flops: list[float] | None = None  # None: the same as flops (no optimizer FLOPs apart)
    optimizer_counted: bool = True

    def axis(self, name: str) -> list[float]:
        if name == "model_flops":
            return self.flops if self.model_flops is None else self.model_flops
        return getattr(self, name)

    @property
    def final(self) -> float:
        return self.loss[-1]

    def end(self, axis: str) -> float:
        return self.axis(axis)[-1]


def curve_from_rows(rows: list[dict], key: str = "val_loss") -> Curve:
    """The eval curve of `key` from metrics.jsonl rows (evals without the key, e.g. a weight average before its first
    snapshot, are skipped)."""
    evals = [
        r for r in rows if r.get("kind") == "eval" and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    by_step: dict[int, dict] = {}
    for row in evals:  # a resumed run may log the same step twice; the last one wins
        by_step[int(row["step"])] = row
    ordered = [by_step[s] for s in sorted(by_step)]
    model = [float(r.get("flops", 0.0)) for r in ordered]
    counted = all(isinstance(r.get("optimizer_flops"), (int, float)) for r in ordered)
    return Curve(
        step=[int(r["step"]) for r in ordered],
        loss=[float(r[key]) for r in ordered],
        tokens=[float(r.get("tokens", 0)) for r in ordered],
        flops=[m + float(r["optimizer_flops"]) for m, r in zip(model, ordered)] if counted else model,
        train_time=[float(r.get("train_time", 0.0)) for r in ordered],
        model_flops=model,
        optimizer_counted=counted,
    )


def mean_curve(curves: list[Curve]) -> Curve:
    """Seed mean at the eval steps every seed has (seeds of one recipe evaluate at the same steps)."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    common = sorted(set.intersection(*(set(c.step) for c in curves)))
    index = [{s: i for i, s in enumerate(c.step)} for c in curves]

    def avg(axis: str) -> list[float]:
        return [sum(c.axis(axis)[ix[s]] for c, ix in zip(curves, index)) / len(curves) for s in common]

    return Curve(
        step=common,
        loss=[sum(c.loss[ix[s]] for c, ix in zip(curves, index)) / len(curves) for s in common],
        tokens=avg("tokens"),
        flops=avg("flops"),
        train_time=avg("train_time"),
        model_flops=avg("model_flops"),
        optimizer_counted=all(c.optimizer_counted for c in curves),
    )


def _first_at_or_below(curve: Curve, target: float) -> int | None:
    return next((i for i, loss in enumerate(curve.loss) if loss <= target), None)


def cost_to_target(curve: Curve, target: float, axis: str = "tokens") -> float | None:
    """First cost at which the loss reaches `target`, linear between evaluations; None if it never does.

    Between eval i-1 (loss above target) and eval i (at or below) the loss is taken as linear in the
    cost, so the crossing is x[i-1] + (x[i] - x[i-1]) * (l[i-1] - target) / (l[i-1] - l[i]).
    """
    i = _first_at_or_below(curve, target)
    if i is None:
        return None
    xs, ls = curve.axis(axis), curve.loss
    if i == 0:
        return xs[0]
    x0, x1, l0 = xs[i - 1], xs[i], ls[i - 1]
    return x0 + (x1 - x0) * (l0 - target) / (l0 - ls[i])


def crossing_bracket(curve: Curve, target: float, axis: str = "tokens") -> tuple[float, float] | None:
    """The costs of the two evaluations between which the loss first reaches `target` (the last one above and the first
    at or below; from 0 when the first evaluation already is); None if it never does. Its width is how finely the
    crossing is known: interpolation decides everything inside it."""
    i = _first_at_or_below(curve, target)
    if i is None:
        return None
    xs = curve.axis(axis)
    return (0.0, xs[0]) if i == 0 else (xs[i - 1], xs[i])


def speedup(baseline_cost: float, cost: float | None) -> float | None:
    """How many times less of the cost the method needed (None when it did not reach the target)."""
    if cost is None or cost <= 0:
        return None
    return baseline_cost / cost


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# --------------------------------------------------------------------------- statistics (scipy)


@dataclass
class Estimate:
    """A point estimate with a two-sided confidence interval (None where n < 2) and a t-test p-value."""

    value: float
    low: float | None = None
    high: float | None = None
    p: float | None = None  # H0: difference 0 (or ratio 1)
    n: int = 1

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "p": self.p, "n": self.n}

    def excludes(self, null: float) -> bool:
        """The interval lies entirely on one side of `null` (a significant difference at this confidence)."""
        return self.low is not None and (self.low > null or self.high < null)


def paired_difference(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean of a_i - b_i with its t interval and the paired t-test's p (scipy.stats.ttest_rel)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return Estimate(mean, n=1)
    if max(diffs) == min(diffs):  # no spread: scipy's t is undefined; the difference is exact
        return Estimate(mean, mean, mean, 1.0 if mean == 0 else 0.0, len(diffs))
    from scipy import stats

    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence)
    return Estimate(mean, float(ci.low), float(ci.high), float(res.pvalue), len(diffs))


def ratio_estimate(ratios: list[float], confidence: float = CONFIDENCE) -> Estimate:
    """Geometric mean of positive ratios (e.g. per-seed speedups) with a t interval on their logs (scipy)."""
    if not ratios or any(not r > 0 for r in ratios):
        raise ValueError(f"ratio_estimate needs positive ratios, got {ratios}")
    logs = [math.log(r) for r in ratios]
    center = math.exp(sum(logs) / len(logs))
    if len(logs) < 2:
        return Estimate(center, n=1)
    if max(logs) == min(logs):
        return Estimate(center, center, center, 1.0 if logs[0] == 0 else 0.0, len(logs))
    from scipy import stats

    res = stats.ttest_1samp(logs, 0.0)
    ci = res.confidence_interval(confidence)
    return Estimate(center, math.exp(ci.low), math.exp(ci.high), float(res.pvalue), len(logs))


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's unequal-variance t-test (scipy), for rows whose seeds are not paired with the
    baseline's."""
    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):  # no spread on either side: the t statistic is undefined
        return 1.0 if a[0] == b[0] else 0.0
    from scipy import stats

    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else (1.0 if sum(a) / len(a) == sum(b) / len(b) else 0.0)


def paired_speedups(curves: list[Curve], base_curves: list[Curve], axis: str) -> list[float | None]:
    """Seed-by-seed speedups on `axis`: baseline seed s's budget over the cost for curve s to reach baseline s's final
    loss."""
    return [
        speedup(base.end(axis), cost_to_target(curve, base.final, axis)) for curve, base in zip(curves, base_curves)
    ]


def paired_resolutions(curves: list[Curve], base_curves: list[Curve], axis: str) -> list[float | None]:
    """Seed by seed, the width of the crossing's bracket (crossing_bracket) as a fraction of the row's own seed-s run on
    `axis` (its whole cost there; for tokens, the budget); None where the target of baseline seed s is not reached."""
    out: list[float | None] = []
    for curve, base in zip(curves, base_curves):
        bracket = crossing_bracket(curve, base.final, axis)
        out.append(None if bracket is None or curve.end(axis) <= 0 else (bracket[1] - bracket[0]) / curve.end(axis))
    return out
