"""Instability signals: Adam moment statistics and the loss-ratio spike tracker."""

from __future__ import annotations

import math

import pytest
import torch

from hasten.metrics.stability import LossSpikeTracker, optimizer_moment_stats


def trained_adamw(steps: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    unused = torch.nn.Parameter(torch.ones(4))  # never gets a grad, so AdamW keeps no state for it
    opt = torch.optim.AdamW([*model.parameters(), unused], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
    return model, unused, opt


def test_moment_stats_match_manual_float64():
    model, unused, opt = trained_adamw()
    stats = optimizer_moment_stats(opt)
    params = list(model.parameters())
    assert unused not in opt.state
    for name, get in [
        ("exp_avg_sq", lambda p: opt.state[p]["exp_avg_sq"]),
        ("exp_avg_sq_sqrt", lambda p: opt.state[p]["exp_avg_sq"].sqrt()),
        ("exp_avg", lambda p: opt.state[p]["exp_avg"]),
    ]:
        flat = torch.cat([get(p).double().flatten() for p in params])
        assert stats[f"{name}/l1"] == pytest.approx(flat.abs().sum().item(), rel=1e-12)
        assert stats[f"{name}/l2"] == pytest.approx(flat.norm().item(), rel=1e-12)
        assert stats[f"{name}/max"] == pytest.approx(flat.abs().max().item(), rel=1e-12)
        assert stats[f"{name}/l1"] > 0
    # weights include the stateless parameter (it is a weight, just without moments)
    w = torch.cat([p.detach().double().flatten() for p in [*params, unused]])
    assert stats["weights/l2"] == pytest.approx(w.norm().item(), rel=1e-12)
    assert set(optimizer_moment_stats(opt, include_weights=False)) == {k for k in stats if not k.startswith("weights/")}


def test_moment_stats_before_any_step_skips_missing_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    assert optimizer_moment_stats(opt, include_weights=False) == {}
    assert set(optimizer_moment_stats(opt)) == {"weights/l1", "weights/l2", "weights/max"}


def test_moment_stats_ignore_non_adam_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # state has momentum_buffer only
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert optimizer_moment_stats(opt, include_weights=False) == {}


def test_spike_tracker_counts_and_ratio():
    tr = LossSpikeTracker(threshold=1.5)
    ratios = [tr.update(x) for x in [4.0, 3.0, 2.0, 2.9, 3.2, 3.5, 2.0, float("nan"), 1.0, 1.6, float("inf")]]
    assert ratios[:4] == [1.0, 1.0, 1.0, pytest.approx(1.45)]
    assert ratios[4] == pytest.approx(1.6) and ratios[5] == pytest.approx(1.75)
    assert math.isnan(ratios[7]) and math.isnan(ratios[10])
    assert ratios[9] == pytest.approx(1.6)
    assert tr.min_loss == 1.0  # nan/inf never become the minimum
    assert tr.spike_steps == 3  # 3.2, 3.5 (vs min 2.0) and 1.6 (vs min 1.0)
    assert tr.spike_events == 2  # 3.2-3.5 is one spike, 1.6 another
    assert tr.nonfinite == 2 and tr.updates == 11
    m = tr.metrics()
    assert math.isnan(m["loss_ratio"]) and m["loss_spike_events"] == 2.0 and m["nonfinite_losses"] == 2.0


def test_spike_tracker_threshold_is_configurable_and_validated():
    tr = LossSpikeTracker(threshold=3.0)
    for x in [1.0, 2.9, 3.1]:
        tr.update(torch.tensor(x))
    assert tr.spike_steps == 1
    with pytest.raises(ValueError):
        LossSpikeTracker(threshold=1.0)
    with pytest.raises(ValueError):
        tr.update(0.0)


def test_spike_tracker_state_roundtrip_continues_identically():
    losses = [3.0, 2.0, 3.5, 3.6, 2.0, 1.5, float("nan"), 2.6, 2.7, 1.0]
    full = LossSpikeTracker()
    for x in losses:
        full.update(x)
    first = LossSpikeTracker()
    for x in losses[:3]:  # stop inside a spike: the "above" flag must survive the checkpoint
        first.update(x)
    resumed = LossSpikeTracker()
    resumed.load_state_dict(first.state_dict())
    for x in losses[3:]:
        resumed.update(x)
    assert resumed.state_dict() == full.state_dict()
    assert resumed.spike_events == full.spike_events == 2


def test_spike_tracker_on_tensors_matches_floats_and_skips_discarded_steps():
    """Fed device tensors (the trainer's case) it gives the same numbers, as tensors; a step marked `skip`
    (the guard discarded its update) changes nothing."""
    losses = [4.0, 3.0, 2.0, 3.2, 3.5, float("nan"), 2.0, 1.0, 1.6]
    floats, tensors, skipping = LossSpikeTracker(), LossSpikeTracker(), LossSpikeTracker()
    no, yes = torch.tensor(False), torch.tensor(True)
    for x in losses:
        floats.update(float(torch.tensor(x, dtype=torch.float32)))  # what float(loss) of an fp32 loss gives
        ratio = tensors.update(torch.tensor(x, dtype=torch.float32))
        assert torch.is_tensor(ratio)
        skipping.update(torch.tensor(x, dtype=torch.float32), skip=no)
        skipping.update(torch.tensor(100.0), skip=yes)  # a discarded spike between every two steps
    assert tensors.state_dict() == floats.state_dict() == skipping.state_dict()
    assert all(torch.is_tensor(v) for v in tensors.metrics().values())
    assert tensors.metrics()["loss_spike_events"].item() == floats.spike_events == 2
