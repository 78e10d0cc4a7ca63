"""Sequence-length warmup schedule: DeepSpeed parity, step convention, validation, tokens."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasten.errors import ConfigError
from hasten.methods.seqlen_warmup import (
    SeqLenSchedule,
    SeqLenWarmupConfig,
    steps_for_tokens,
    tokens_for_steps,
    warmup_iters_for_tokens,
)


def linear(min_len=8, max_len=1024, total_steps=15000, **kw) -> SeqLenSchedule:
    return SeqLenSchedule(
        SeqLenWarmupConfig(kind="fixed_linear", min_len=min_len, max_len=max_len, total_steps=total_steps, **kw)
    )


class DeepSpeedReference:
    """Independent stateful re-statement of DeepSpeed's CurriculumScheduler (state starts at min, recomputed
    only while below max), driven like the engine: update(global_steps + 1) before each forward."""

    def __init__(self, kind, min_len, max_len, total_steps=None, step=8, root=1, difficulties=None, max_steps=None):
        self.kind, self.min, self.max, self.T, self.s, self.r = kind, min_len, max_len, total_steps, step, root
        self.d, self.m = difficulties, max_steps
        self.current = min_len

    def update(self, t):
        if self.current < self.max:
            if self.kind == "fixed_discrete":
                nxt = self.d[-1]
                for d, m in zip(self.d, self.m):
                    if t <= m:
                        nxt = d
                        break
                self.current = nxt
            else:
                v = math.floor((t / self.T) ** (1 / self.r) * (self.max - self.min) + self.min)
                self.current = min(v - v % self.s, self.max)
        return self.current


def test_fixed_linear_matches_spec_values():
    sched = linear()
    expected = {0: 8, 1: 8, 150: 16, 3000: 208, 3750: 256, 7500: 512, 14999: 1016, 15000: 1024, 20000: 1024}
    assert {t: sched(t) for t in expected} == expected


def test_fixed_root_matches_spec_values():
    sched = SeqLenSchedule(
        SeqLenWarmupConfig(kind="fixed_root", root_degree=2, min_len=8, max_len=1024, total_steps=15000)
    )
    expected = {1: 16, 150: 104, 3000: 456, 3750: 512, 7500: 720}
    assert {t: sched(t) for t in expected} == expected


def test_gpt2_15b_config_matches_spec_values():
    sched = linear(min_len=64, max_len=1024, total_steps=45000)
    expected = {1: 64, 11250: 304, 22500: 544, 45000: 1024}
    assert {t: sched(t) for t in expected} == expected


def test_length_for_step_is_deepspeed_t_plus_one():
    sched = linear()
    # the trainer's first step (0 completed) trains at DeepSpeed's L(1); the step after 14999 completed is at L(15000)
    for completed in (0, 149, 150, 2999, 14998, 14999, 15000):
        assert sched.length_for_step(completed) == sched(completed + 1)
    assert sched.length_for_step(14998) == 1016 and sched.length_for_step(14999) == 1024
    assert sched.full_length_from == 14999


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="fixed_linear", min_len=8, max_len=1024, total_steps=15000),
        dict(kind="fixed_root", min_len=8, max_len=1024, total_steps=15000, root_degree=2),
        dict(kind="fixed_root", min_len=64, max_len=1000, total_steps=700, root_degree=3),
        dict(kind="fixed_linear", min_len=12, max_len=100, total_steps=50),  # min not a multiple of step
        dict(kind="fixed_discrete", min_len=8, max_len=64, difficulties=[8, 16, 64], max_steps=[10, 25]),
    ],
)
def test_engine_driven_equals_stateful_deepspeed(kw):
    ref_kw = dict(kw)
    ref_kw["root"] = ref_kw.pop("root_degree", 1)
    ref = DeepSpeedReference(**ref_kw)  # fresh state, stepped once per trainer step like the engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = SeqLenSchedule(SeqLenWarmupConfig(**kw))
    horizon = 2 * (kw.get("total_steps") or 30)
    for completed in range(horizon):
        assert sched.length_for_step(completed) == ref.update(completed + 1), completed


def test_fixed_discrete_boundaries():
    sched = SeqLenSchedule(
        SeqLenWarmupConfig(kind="fixed_discrete", min_len=8, max_len=64, difficulties=[8, 32, 64], max_steps=[5, 9])
    )
    assert [sched(t) for t in (0, 5, 6, 9, 10, 1000)] == [8, 8, 32, 32, 64, 64]


def test_max_len_not_multiple_of_step_reaches_max_after_T_and_warns():
    with pytest.warns(UserWarning, match="max_len=1020"):
        sched = linear(max_len=1020, total_steps=1000)
    assert sched(1000) == 1016  # floor(1020) rounded down to a multiple of 8
    assert sched.full_length_from > 1000 and sched.length_for_step(sched.full_length_from) == 1020


def test_min_len_not_multiple_of_step_warns_not_silent():
    with pytest.warns(UserWarning, match="min_len=12"):
        sched = linear(min_len=12, max_len=128, total_steps=100)
    assert sched(1) == 8  # DeepSpeed's value, below min_len: that is what the warning is about


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(min_len=2048, max_len=1024, total_steps=10), "larger than max_len"),
        (dict(min_len=8, max_len=1024, total_steps=0), "total_steps"),
        (dict(min_len=8, max_len=1024, total_steps=None), "total_steps"),
        (dict(min_len=4, max_len=1024, total_steps=10), "length 0"),
        (dict(min_len=8, max_len=1024, total_steps=10, step=0), "step"),
        (dict(min_len=8, max_len=1024, total_steps=10, mode="crop"), "mode"),
        (dict(kind="fixed_cubic", min_len=8, max_len=1024, total_steps=10), "kind"),
        (dict(min_len=8, max_len=1024, total_steps=10, root_degree=2), "fixed_root"),
        (dict(kind="fixed_root", min_len=8, max_len=1024, total_steps=10), "root_degree"),
        (dict(kind="fixed_root", min_len=8, max_len=1024, total_steps=10, root_degree=-1), "root_degree"),
        (dict(min_len=8, max_len=64, total_steps=10, difficulties=[8, 64], max_steps=[3]), "fixed_discrete"),
        (dict(kind="fixed_discrete", max_len=64, difficulties=[8, 64], max_steps=[3, 4]), "len"),
        (dict(kind="fixed_discrete", max_len=64, difficulties=[8, 32, 16, 64], max_steps=[1, 2, 3]), "non-decreasing"),
        (dict(kind="fixed_discrete", max_len=64, difficulties=[8, 16, 64], max_steps=[5, 5]), "strictly increasing"),
        (dict(kind="fixed_discrete", max_len=64, difficulties=[8, 16, 32], max_steps=[5, 6]), "must end at max_len"),
        (dict(kind="fixed_discrete", max_len=64, difficulties=[8, 128], max_steps=[5]), "within"),
        (dict(kind="fixed_discrete", max_len=64, total_steps=9, difficulties=[8, 64], max_steps=[5]), "total_steps"),
    ],
)
def test_validate_rejects_contradictions(kw, match):
    with pytest.raises(ConfigError, match=match):
        SeqLenWarmupConfig(**kw).validate()


def test_max_len_may_be_unset_until_the_schedule_is_built():
    cfg = SeqLenWarmupConfig(min_len=8, total_steps=10)
    cfg.validate()  # recipe validation runs before the model context is known
    with pytest.raises(ConfigError, match="max_len is unset"):
        SeqLenSchedule(cfg)
    with pytest.raises(ConfigError, match="larger than max_len"):
        SeqLenSchedule(SeqLenWarmupConfig(min_len=512, total_steps=10).with_max_len(256))


def test_registry_style_build_with_enabled_key():
    from hasten.config import build_dataclass

    section = {"kind": "fixed_discrete", "min_len": 8, "difficulties": [8, 64], "max_steps": [5], "enabled": False}
    cfg = build_dataclass(SeqLenWarmupConfig, section, "methods.seqlen_warmup.")
    cfg.validate()
    assert cfg.enabled is False and cfg.difficulties == [8, 64]
    assert SeqLenSchedule(cfg.with_max_len(64))(6) == 64


def test_from_dict_and_with_max_len():
    cfg = SeqLenWarmupConfig.from_dict({"kind": "fixed_linear", "min_len": 8, "total_steps": 100, "mode": "reshape"})
    assert cfg.max_len is None
    resolved = cfg.with_max_len(256)
    assert resolved.max_len == 256 and cfg.max_len is None
    assert SeqLenSchedule(resolved)(100) == 256
    with pytest.raises(ConfigError, match="unknown key"):
        SeqLenWarmupConfig.from_dict({"min_length": 8})
    with pytest.raises(ConfigError, match="exceeds the model context"):
        SeqLenWarmupConfig(max_len=512, total_steps=10).with_max_len(256)


def test_negative_step_rejected():
    with pytest.raises(ValueError):
        linear()(-1)


@pytest.mark.parametrize("mode", ["truncate", "reshape"])
@pytest.mark.parametrize("kind", ["fixed_linear", "fixed_root"])
def test_token_accounting_equals_bruteforce(kind, mode):
    sched = SeqLenSchedule(
        SeqLenWarmupConfig(
            kind=kind,
            min_len=16,
            max_len=200,
            total_steps=300,
            root_degree=2 if kind == "fixed_root" else None,
            mode=mode,
        )
    )
    B = 3

    def per_step(c):
        L = sched.length_for_step(c)
        return B * (L if mode == "truncate" else (200 // L) * L)

    running = 0
    for steps in range(0, 500):
        assert tokens_for_steps(sched, B, steps) == running, steps
        running += per_step(steps)
    # steps_for_tokens is the smallest step count whose cumulative tokens reach the target
    for target in (0, 1, 47, 1000, 12345, running - 1, running):
        n = steps_for_tokens(sched, B, target)
        assert tokens_for_steps(sched, B, n) >= target
        assert n == 0 or tokens_for_steps(sched, B, n - 1) < target


def test_truncation_token_budget_is_about_half_during_linear_warmup():
    sched = linear()
    warm = tokens_for_steps(sched, 1, sched.full_length_from)
    # the paper (arXiv 2108.06084): warmup consumes ~ B*T*(L_min+L_max)/2 tokens
    assert abs(warm - 15000 * (8 + 1024) / 2) / warm < 0.01


def test_warmup_iters_for_tokens():
    assert warmup_iters_for_tokens(375_000_000, 64, 4096) == math.ceil(375_000_000 / (64 * 4096))
    assert warmup_iters_for_tokens(64 * 4096 * 10, 64, 4096) == 10


def test_segments_are_distinct_lengths_in_order():
    sched = linear(min_len=64, max_len=1024, total_steps=45000)
    runs = sched.segments()
    assert len(runs) == (1024 - 64) // 8 + 1
    for (c0, l0), (c1, l1) in zip(runs, runs[1:]):
        assert c1 > c0 and l1 > l0
        assert sched.length_for_step(c1 - 1) == l0 and sched.length_for_step(c1) == l1


@settings(max_examples=60, deadline=None)
@given(
    step=st.sampled_from([1, 2, 8, 16]),
    min_mult=st.integers(1, 8),
    extra=st.integers(0, 300),
    total=st.integers(1, 400),
    root=st.sampled_from([None, 1.5, 2, 3]),
    probes=st.lists(st.integers(0, 1200), min_size=1, max_size=40),
)
def test_schedule_properties(step, min_mult, extra, total, root, probes):
    min_len = step * min_mult
    max_len = min_len + extra
    kind = "fixed_linear" if root is None else "fixed_root"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_len may not be a multiple of step
        sched = SeqLenSchedule(
            SeqLenWarmupConfig(
                kind=kind, min_len=min_len, max_len=max_len, total_steps=total, step=step, root_degree=root
            )
        )
    ts = sorted(set(probes) | {0, 1, total, total + 1})
    lengths = [sched(t) for t in ts]
    assert all(a <= b for a, b in zip(lengths, lengths[1:])), "non-decreasing"
    assert all(min_len <= L <= max_len for L in lengths), "bounded"
    assert all(L % step == 0 for L in lengths if L != max_len), "quantised below max"
    if max_len % step == 0:
        assert sched(total) == max_len, "reaches max at T when max_len is a multiple of step"
    c = sched.full_length_from
    assert sched.length_for_step(c) == max_len and (c == 0 or sched.length_for_step(c - 1) < max_len)
    assert all(sched(t) == max_len for t in ts if t >= c + 1), "sticky at max"
