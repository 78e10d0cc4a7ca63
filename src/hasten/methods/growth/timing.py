"""When to grow: the G_stack token guideline and the staged-training slope trigger, and the LR after staged growth.

* gstack_growth_tokens: Du et al. 2024 (arXiv 2405.15319) README fit for the growth timing d (tokens
  spent on the small model) given the target's parameters N and token budget D.
* SlopeTrigger: Shen et al. 2022 (arXiv 2203.06211) grow when the small model's loss curve flattens:
  the log-log slope d ln L / d ln C rises above a (negative) threshold (cheatsheet constants below).
* restart_warmup_multiplier: the staged-training LR schedule after growth (restart at step R with a
  short linear re-warmup onto the large model's schedule).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from hasten.errors import ConfigError

# log-log slope thresholds of the staged-training cheatsheet (Shen et al. 2022, arXiv 2203.06211)
SLOPE_THRESHOLDS: dict[str, float] = {"depth": -0.0575, "width": -0.0475, "depth+width": -0.03, "optimality": -0.052}
# compute ratio constants `constant_op` of the same cheatsheet (meaning unconfirmed; exported for reference)
OPERATOR_CONSTANTS: dict[str, float] = {"width": 1.776, "depth": 1.412, "depth+width": 2.455}


def gstack_growth_tokens(n_params: float, tokens: float) -> float:
    """Tokens to train the small model before stacking: log10 d = 0.88 log10 N + 163.27 / log10 C - 5.74.

    N = target parameters, C = 6 N D FLOPs with D the target's total token budget. For Llama2-7B
    (N = 7e9, D = 2e12) this gives 1.111e10 tokens.
    """
    if n_params <= 0 or tokens <= 0:
        raise ConfigError(f"growth: n_params={n_params} and tokens={tokens} must be positive")
    compute = 6.0 * n_params * tokens
    log_d = 0.88 * math.log10(n_params) + 163.27 / math.log10(compute) - 5.74
    return 10.0**log_d


@dataclass
class SlopeTrigger:
    """Fire when the smoothed log-log slope of loss vs compute rises above `threshold` (the curve flattens).

    The slope is a least-squares fit of ln(loss) on ln(compute) over the last `window` points, which
    both smooths noise and estimates the slope near the window's middle. should_grow() is true once
    `patience` consecutive fitted slopes (each over a full window) are >= threshold; then it stays true
    until reset() (call it after growing, so the next stage starts a new window).
    """

    threshold: float = SLOPE_THRESHOLDS["depth"]
    window: int = 20
    patience: int = 1
    points: deque = field(default_factory=deque, repr=False)
    hits: int = 0
    fired: bool = False
    last_slope: float | None = None

    def __post_init__(self) -> None:
        if self.window < 3:
            raise ConfigError(f"growth: slope window={self.window} is too short to fit a slope; use window >= 3")
        if self.patience < 1:
            raise ConfigError(f"growth: slope patience={self.patience} must be >= 1")
        if self.threshold >= 0:
            raise ConfigError(
                f"growth: slope threshold={self.threshold} must be negative (loss falls with compute), e.g. -0.0575"
            )
        self.points = deque(self.points, maxlen=self.window)

    @classmethod
    def for_growth(cls, kind: str, **kwargs) -> SlopeTrigger:
        """A trigger with the cheatsheet threshold for 'depth', 'width', 'depth+width' or 'optimality'."""
        if kind not in SLOPE_THRESHOLDS:
            raise ConfigError(f"growth: slope kind {kind!r} is unknown; use one of {', '.join(SLOPE_THRESHOLDS)}")
        return cls(threshold=SLOPE_THRESHOLDS[kind], **kwargs)

    def update(self, compute: float, loss: float) -> float | None:
        """Add one (compute, loss) point; returns the fitted slope once the window is full."""
        if compute <= 0 or loss <= 0 or not math.isfinite(loss):
            return self.last_slope  # log-log needs positive finite values; skip the point
        log_compute = math.log(compute)
        if self.points and log_compute <= self.points[-1][0]:
            return self.last_slope  # compute must increase (e.g. a repeated eval at the same step)
        self.points.append((log_compute, math.log(loss)))
        if len(self.points) < self.window:
            return None
        self.last_slope = _least_squares_slope(self.points)
        self.hits = self.hits + 1 if self.last_slope >= self.threshold else 0
        self.fired = self.fired or self.hits >= self.patience
        return self.last_slope

    def should_grow(self) -> bool:
        return self.fired

    def reset(self) -> None:
        self.points.clear()
        self.hits, self.fired, self.last_slope = 0, False, None

    def state_dict(self) -> dict:
        state = asdict(self)
        state["points"] = [list(p) for p in self.points]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.window, self.patience = (
            float(state["threshold"]),
            int(state["window"]),
            int(state["patience"]),
        )
        self.points = deque((tuple(p) for p in state["points"]), maxlen=self.window)
        self.hits, self.fired, self.last_slope = int(state["hits"]), bool(state["fired"]), state["last_slope"]


def _least_squares_slope(points) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx if sxx > 0 else 0.0


def restart_warmup_multiplier(step: int, restart_step: int, warmup_steps: int, base: Callable[[int], float]) -> float:
    """Staged-training LR multiplier after growth: base(R + w) * (t - R) / w on [R, R + w), base(t) after.

    `restart_step` R is the *large* model's step at the same loss (not the small model's step); the
    grown run's step counter continues from R + 1.
    """
    if warmup_steps > 0 and restart_step <= step < restart_step + warmup_steps:
        return base(restart_step + warmup_steps) * (step - restart_step) / warmup_steps
    return base(step)
