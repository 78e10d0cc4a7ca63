"""LR schedules: warmup, cosine / WSD / linear / constant, per-group ratios with a shared floor,
token-based decay, restarts with re-warmup (growth.md §2.4 and check 5 of §2.8), state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from hasten.config import ScheduleConfig
from hasten.optim.schedules import LRSchedule

PEAK, FLOOR_RATIO = 1.0, 0.1
FLOOR = PEAK * FLOOR_RATIO


def _schedule(name: str = "cosine", warmup: int = 10, total: int = 111, **kwargs) -> LRSchedule:
    """Default: 111 optimizer steps 0..110 (decay over steps 10..110; the last step runs at the floor)."""
    total_tokens = kwargs.pop("total_tokens", 0)
    step_tokens = kwargs.pop("step_tokens", None)
    cfg = ScheduleConfig(name=name, warmup_steps=warmup, **kwargs)
    cfg.validate()
    return LRSchedule(cfg, PEAK, FLOOR_RATIO, total, total_tokens, step_tokens=step_tokens)


def _optimizer(ratios: tuple[float, ...] = (1.0,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_ratio": r} for r in ratios]
    return torch.optim.SGD(groups, lr=PEAK)


@pytest.mark.parametrize("name", ["cosine", "wsd", "linear", "constant"])
def test_linear_warmup_from_zero_to_peak(name):
    sched = _schedule(name)
    for s in range(10):
        assert sched.lr(s, 0) == pytest.approx(PEAK * s / 10)
        assert sched.lr(s, 0, ratio=3.0) == pytest.approx(3.0 * PEAK * s / 10)
    assert sched.lr(10, 0) == pytest.approx(PEAK)
    assert _schedule(name, warmup=0).lr(0, 0) == pytest.approx(PEAK)  # no warmup: the peak at once


def test_cosine_decays_to_the_floor():
    sched = _schedule("cosine")  # decay over steps 10..110
    assert sched.lr(60, 0) == pytest.approx(FLOOR + 0.5 * (PEAK - FLOOR))
    assert sched.lr(35, 0) == pytest.approx(FLOOR + 0.5 * (1 + math.cos(math.pi / 4)) * (PEAK - FLOOR))
    assert sched.lr(110, 0) == pytest.approx(FLOOR)
    assert sched.lr(500, 0) == pytest.approx(FLOOR)  # held at the floor past the end
    values = [sched.lr(s, 0) for s in range(10, 111)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_wsd_plateau_then_linear_decay():
    sched = _schedule("wsd", wsd_decay_fraction=0.2)  # 100 decay-phase steps: 80 stable, 20 decaying
    assert all(sched.lr(s, 0) == pytest.approx(PEAK) for s in range(10, 91))
    assert sched.lr(95, 0) == pytest.approx(FLOOR + 0.75 * (PEAK - FLOOR))
    assert sched.lr(100, 0) == pytest.approx(FLOOR + 0.5 * (PEAK - FLOOR))
    assert sched.lr(110, 0) == pytest.approx(FLOOR)


def test_linear_and_constant():
    linear = _schedule("linear")
    assert linear.lr(35, 0) == pytest.approx(FLOOR + 0.75 * (PEAK - FLOOR))
    assert linear.lr(110, 0) == pytest.approx(FLOOR)
    constant = _schedule("constant")
    assert all(constant.lr(s, 0) == pytest.approx(PEAK) for s in (10, 60, 110, 1000))


@pytest.mark.parametrize("name", ["cosine", "wsd", "linear"])
def test_ratios_scale_the_peak_and_share_the_floor(name):
    sched = _schedule(name)
    opt = _optimizer((1.0, 4.0, 0.5))
    assert sched.apply(opt, 10, 0) == pytest.approx(PEAK)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([PEAK, 4 * PEAK, 0.5 * PEAK])
    sched.apply(opt, 5, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * PEAK, 2 * PEAK, 0.25 * PEAK])
    sched.apply(opt, 110, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([FLOOR] * 3)  # one floor for every block
    # in between, each group sits at the same fraction of the way from the floor to its own peak
    for s in (30, 70, 100):
        c = (sched.lr(s, 0) - FLOOR) / (PEAK - FLOOR)
        assert sched.lr(s, 0, ratio=4.0) == pytest.approx(FLOOR + c * (4 * PEAK - FLOOR))


def _simulate(sched: LRSchedule, per_step: list[int]) -> list[tuple[int, int, float]]:
    """(step, tokens, lr) for each optimizer step, as the trainer calls apply() before each step."""
    opt = _optimizer()
    out, tokens = [], 0
    for step, n in enumerate(per_step):
        out.append((step, tokens, sched.apply(opt, step, tokens)))
        tokens += n
    out.append((len(per_step), tokens, sched.apply(opt, len(per_step), tokens)))
    return out


def test_token_based_decay_reaches_the_floor_at_max_tokens():
    # sequence length warmup: short, cheap steps first, then full-length steps
    per_step = [8, 16, 24, 32, 40, 48, 56] + [64] * 30
    max_tokens = sum(per_step)
    sched = _schedule(
        "cosine", warmup=4, total=len(per_step), decay_unit="tokens", total_tokens=max_tokens, step_tokens=64
    )
    trace = _simulate(sched, per_step)
    # warmup is counted in steps whatever the tokens per step
    for step, _, lr in trace[:4]:
        assert lr == pytest.approx(PEAK * step / 4)
    warmup_end = trace[4][1]
    assert sched.state.warmup_end_tokens == warmup_end == 8 + 16 + 24 + 32
    # decay follows tokens from the end of warmup to the start of the last full-length step
    last = max_tokens - 64
    for _, tokens, lr in trace[4:-1]:
        p = min(1.0, (tokens - warmup_end) / (last - warmup_end))
        assert lr == pytest.approx(FLOOR + 0.5 * (1 + math.cos(math.pi * p)) * (PEAK - FLOOR))
    assert trace[-2][1] == last and trace[-2][2] == pytest.approx(FLOOR)  # the last optimizer step runs at the floor
    assert all(lr > FLOOR + 1e-9 for *_, lr in trace[4:-2])  # not before


def test_token_decay_equals_step_decay_at_constant_tokens_per_step():
    k, steps = 64, 40
    by_tokens = _simulate(
        _schedule("linear", warmup=5, total=steps, decay_unit="tokens", total_tokens=k * steps), [k] * steps
    )
    by_steps = _simulate(_schedule("linear", warmup=5, total=steps), [k] * steps)
    assert [lr for *_, lr in by_tokens] == pytest.approx([lr for *_, lr in by_steps])


def test_restart_rewarms_to_the_base_schedule():
    """Staged training: at global step g0 jump to the large model's step R and re-warm up over w steps."""
    g0, R, w, total = 37, 80, 20, 200
    base = _schedule("cosine", warmup=10, total=total)
    sched = _schedule("cosine", warmup=10, total=total)
    sched.restart(at_step=g0, at_tokens=12345, total_steps=total, start_step=R, rewarmup_steps=w)
    target = base.lr(R + w, 0)
    ramp = [sched.lr(g0 + i, 0) for i in range(w + 1)]
    assert ramp[0] == 0.0
    assert ramp == pytest.approx([target * i / w for i in range(w + 1)])  # linear from 0 to base(R + w)
    for i in range(w, total - R + 10):  # then the base schedule at schedule step R + i
        assert sched.lr(g0 + i, 0) == pytest.approx(base.lr(R + i, 0))
    assert sched.lr(g0 + total - R, 0) == pytest.approx(FLOOR)

    # G_stack: a fresh schedule (warmup included) from the growth step
    fresh = _schedule("cosine", warmup=10, total=total)
    fresh.restart(at_step=g0, at_tokens=0, total_steps=150)
    reference = _schedule("cosine", warmup=10, total=150)
    assert [fresh.lr(g0 + i, 0) for i in range(160)] == pytest.approx([reference.lr(i, 0) for i in range(160)])


def test_state_round_trip():
    per_step = [16] * 6 + [64] * 10
    sched = _schedule("wsd", warmup=3, total=50, decay_unit="tokens", total_tokens=2000)
    trace = _simulate(sched, per_step)
    sched.restart(
        at_step=len(per_step), at_tokens=trace[-1][1], total_steps=40, total_tokens=1500, start_step=5, rewarmup_steps=4
    )
    sched.note_progress(len(per_step) + 6, trace[-1][1] + 300)
    state = sched.state_dict()

    restored = _schedule("wsd", warmup=3, total=999, decay_unit="tokens", total_tokens=1)  # state replaces the lengths
    restored.load_state_dict(dict(state))
    assert restored.state_dict() == state
    probes = [
        (step, tokens) for step in range(len(per_step), len(per_step) + 40, 3) for tokens in (trace[-1][1] + 300, 3000)
    ]
    assert [restored.lr(s, t, 2.0) for s, t in probes] == [sched.lr(s, t, 2.0) for s, t in probes]


@pytest.mark.parametrize("name", ["cosine", "wsd", "linear"])
def test_every_group_reaches_the_floor_on_the_last_optimizer_step(name):
    # the reference scripts' get_lr(it) reaches min_lr at it = max_iters, the last step they take; hasten once stopped
    # one step short (24 steps, warmup 5: the x10 embedding group ran its last step at 2.36x the floor)
    sched = _schedule(name, warmup=5, total=24)
    opt = _optimizer((1.0, 10.0, 4.0))
    sched.apply(opt, 23, 0)  # step 23 = the 24th and last optimizer step
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([FLOOR] * 3)
    sched.apply(opt, 22, 0)
    assert all(g["lr"] > FLOOR + 1e-9 for g in opt.param_groups)
