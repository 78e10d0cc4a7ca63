"""Growth timing: the G_stack token guideline, the staged-training slope trigger and schedule helpers."""

from __future__ import annotations

import json
import math

import pytest

from hasten.errors import ConfigError
from hasten.methods.growth.timing import (
    SLOPE_THRESHOLDS,
    SlopeTrigger,
    gstack_growth_tokens,
    restart_warmup_multiplier,
)


@pytest.mark.parametrize(
    ("n_params", "tokens", "expected", "tol"),
    [
        (7e9, 2e12, 1.111e10, 1e8),  # Llama2-7B, the G_stack README's example
        (8e9, 15e12, 6.58e9, 1e7),  # Llama3-8B
        (13e9, 2e12, 15.84e9, 1e7),  # Llama2-13B
        (70e9, 2e12, 42.48e9, 1e7),  # Llama2-70B
        (7e9, 300e9, 20.5e9, 5e7),  # the paper's 7B run (the experiments used ~10B)
    ],
)
def test_gstack_growth_tokens_matches_the_readme_rows(n_params, tokens, expected, tol):
    assert abs(gstack_growth_tokens(n_params, tokens) - expected) <= tol


def test_gstack_growth_tokens_rejects_nonpositive_inputs():
    with pytest.raises(ConfigError):
        gstack_growth_tokens(0, 1e12)


def power_law_with_floor(compute: float, floor: float = 2.0, scale: float = 40.0, alpha: float = 0.3) -> float:
    return floor + scale * compute**-alpha


def crossing_compute(threshold: float, floor: float = 2.0, scale: float = 40.0, alpha: float = 0.3) -> float:
    """Where d ln L / d ln C = -alpha (L - floor) / L equals the threshold."""
    loss = floor / (1 - abs(threshold) / alpha)
    return (scale / (loss - floor)) ** (1 / alpha)


def feed_until_fire(trigger: SlopeTrigger, start: float, ratio: float, limit: int = 2000) -> float:
    compute = start
    for _ in range(limit):
        trigger.update(compute, power_law_with_floor(compute))
        if trigger.should_grow():
            return compute
        compute *= ratio
    raise AssertionError("trigger never fired")


@pytest.mark.parametrize("window", [10, 20])
def test_slope_trigger_fires_where_the_curve_flattens_to_the_threshold(window):
    threshold = SLOPE_THRESHOLDS["depth"]
    c_star = crossing_compute(threshold)
    ratio = 10**0.05  # 20 evaluations per decade of compute
    fired_at = feed_until_fire(SlopeTrigger(threshold=threshold, window=window), c_star / 1e3, ratio)
    # a least-squares slope over the window estimates the slope near the window's middle, so the trigger
    # fires when the middle passes C*: about (window - 1) / 2 points after C*
    lag_points = math.log(fired_at / c_star) / math.log(ratio)
    assert (window - 1) / 2 - 1 <= lag_points <= (window - 1) / 2 + 2


def test_slope_trigger_patience_and_threshold_order():
    ratio = 10**0.05
    start = crossing_compute(-0.03) / 1e3
    one = feed_until_fire(SlopeTrigger(threshold=-0.0575, window=10), start, ratio)
    three = feed_until_fire(SlopeTrigger(threshold=-0.0575, window=10, patience=3), start, ratio)
    assert math.isclose(three / one, ratio**2, rel_tol=1e-9)  # the slope rises monotonically: 2 more points
    flatter = feed_until_fire(SlopeTrigger.for_growth("depth+width", window=10), start, ratio)
    assert flatter > one  # -0.03 needs a flatter curve than -0.0575


def test_slope_trigger_ignores_bad_points_and_does_not_fire_early():
    trigger = SlopeTrigger(threshold=-0.05, window=5)
    for c in (1.0, 2.0, 2.0, 3.0):  # repeated compute is skipped
        trigger.update(c, 5.0 / c)
    trigger.update(4.0, float("nan"))
    assert len(trigger.points) == 3 and not trigger.should_grow()


def test_slope_trigger_state_round_trips_through_json():
    ratio = 10**0.05
    start = crossing_compute(-0.0575) / 1e3
    a = SlopeTrigger(threshold=-0.0575, window=12, patience=2)
    compute = start
    for _ in range(40):
        a.update(compute, power_law_with_floor(compute))
        compute *= ratio
    b = SlopeTrigger()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    fired = []
    for trigger in (a, b):
        fired.append(feed_until_fire(trigger, compute, ratio))
    assert fired[0] == fired[1] and a.last_slope == b.last_slope
    a.reset()
    assert not a.should_grow() and len(a.points) == 0


def test_slope_trigger_validates_its_settings():
    with pytest.raises(ConfigError, match="negative"):
        SlopeTrigger(threshold=0.05)
    with pytest.raises(ConfigError, match="window"):
        SlopeTrigger(window=2)
    with pytest.raises(ConfigError, match="unknown"):
        SlopeTrigger.for_growth("height")


def test_restart_warmup_ramps_onto_the_large_models_schedule():
    def base(t: int) -> float:
        return 1.0 - t / 1000

    values = [restart_warmup_multiplier(t, 100, 10, base) for t in range(100, 121)]
    assert values[0] == 0.0
    assert values[5] == pytest.approx(base(110) * 0.5)
    assert values[10:] == [base(t) for t in range(110, 121)]
    assert all(b > a for a, b in zip(values[:10], values[1:11]))
