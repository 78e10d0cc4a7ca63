"""The numbers of a comparison: eval curves, cost to reach a target loss, speedups, Welch's t-test.

Everything here is pure Python on lists of floats so it can be tested on synthetic curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

AXES = ("tokens", "flops", "train_time")  # the three costs: training tokens, training FLOPs, wall-clock seconds


@dataclass
class Curve:
    """Val loss at each evaluation of one run (or the seed mean of a recipe), with its cost counters."""

    step: list[int]
    loss: list[float]
    tokens: list[float]
    flops: list[float]
    train_time: list[float]

    def axis(self, name: str) -> list[float]:
        return getattr(self, name)

    @property
    def final(self) -> float:
        return self.loss[-1]

    def end(self, axis: str) -> float:
        return self.axis(axis)[-1]


def curve_from_rows(rows: list[dict], key: str = "val_loss") -> Curve:
    """The eval curve of `key` from metrics.jsonl rows (evals without the key, e.g. LAWA before its first snapshot, are skipped)."""
    evals = [r for r in rows if r.get("kind") == "eval" and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    by_step: dict[int, dict] = {}
    for row in evals:  # a resumed run may log the same step twice; the last one wins
        by_step[int(row["step"])] = row
    ordered = [by_step[s] for s in sorted(by_step)]
    return Curve(
        step=[int(r["step"]) for r in ordered],
        loss=[float(r[key]) for r in ordered],
        tokens=[float(r.get("tokens", 0)) for r in ordered],
        flops=[float(r.get("flops", 0.0)) for r in ordered],
        train_time=[float(r.get("train_time", 0.0)) for r in ordered],
    )


def mean_curve(curves: list[Curve]) -> Curve:
    """Seed mean at the eval steps every seed has (seeds of one recipe evaluate at the same steps)."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    common = sorted(set.intersection(*(set(c.step) for c in curves)))
    index = [{s: i for i, s in enumerate(c.step)} for c in curves]

    def avg(attr: str) -> list[float]:
        return [sum(getattr(c, attr)[ix[s]] for c, ix in zip(curves, index)) / len(curves) for s in common]

    return Curve(step=common, loss=avg("loss"), tokens=avg("tokens"), flops=avg("flops"), train_time=avg("train_time"))


def cost_to_target(curve: Curve, target: float, axis: str = "tokens") -> float | None:
    """First cost at which the loss reaches `target`, linear between evaluations; None if it never does.

    Between eval i-1 (loss above target) and eval i (at or below) the loss is taken as linear in the
    cost, so the crossing is x[i-1] + (x[i] - x[i-1]) * (l[i-1] - target) / (l[i-1] - l[i]).
    """
    xs, ls = curve.axis(axis), curve.loss
    for i, loss in enumerate(ls):
        if loss <= target:
            if i == 0:
                return xs[0]
            x0, x1, l0 = xs[i - 1], xs[i], ls[i - 1]
            return x0 + (x1 - x0) * (l0 - target) / (l0 - loss)
    return None


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


# --------------------------------------------------------------------------- Welch's t-test


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast on this side
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with `df` (real-valued) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


@dataclass
class WelchResult:
    t: float | None
    df: float | None
    p: float | None
    method: str = field(default="")  # scipy | builtin | n/a (why)


def welch_t_test(a: list[float], b: list[float], use_scipy: bool = True) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) != mean(b); needs at least 2 values per side.

    Uses scipy.stats.ttest_ind(equal_var=False) when importable, else the built-in t distribution
    (same numbers; see tests/test_compare.py). scipy is deliberately not a dependency.
    """
    if len(a) < 2 or len(b) < 2:
        return WelchResult(None, None, None, "n/a (needs >= 2 seeds per recipe)")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0.0:
        same = ma == mb
        return WelchResult(0.0 if same else math.copysign(math.inf, ma - mb), None, 1.0 if same else 0.0, "exact (zero variance)")
    if use_scipy:
        try:
            from scipy import stats
        except ImportError:
            pass
        else:
            res = stats.ttest_ind(a, b, equal_var=False)
            df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
            return WelchResult(float(res.statistic), df, float(res.pvalue), "scipy")
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return WelchResult(t, df, t_two_sided_p(t, df), "builtin")
