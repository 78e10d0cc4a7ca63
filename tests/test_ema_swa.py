"""EMA and SWA baselines: recurrences, exact resume, no feedback, fp32 averaging, eval parity."""

from __future__ import annotations

import io

import pytest
import torch

from hasten.errors import ConfigError
from hasten.methods.averaging import (
    EMA,
    LAWA,
    SWA,
    SWAConfig,
    WeightAverager,
    build_averager,
    ema_decay_from_half_life,
    swapped_in,
)
from hasten.model import GPT, model_config
from tests.helpers import float64_state, make_model, perturb, train_with_averager

VOCAB = 512


def max_diff(averaged: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert averaged.keys() == expected.keys()
    return max(float((averaged[k].double() - expected[k]).abs().max()) for k in expected)


def test_ema_matches_the_manual_recurrence_first_update_is_a_copy():
    decay = 0.8
    model, ema = make_model(), EMA(decay=decay)
    manual: dict[str, torch.Tensor] = {}
    for step in range(1, 11):
        perturb(model)
        assert ema.maybe_update(step, model)
        current = float64_state(model)
        if step == 1:
            manual = current
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in ema.averaged_state_dict().items())
        else:
            manual = {k: decay * manual[k] + (1 - decay) * current[k] for k in current}
    assert ema.n_averaged == 10
    assert max_diff(ema.averaged_state_dict(), manual) < 1e-6
    assert max_diff(ema.averaged_state_dict(), float64_state(model)) > 1e-3  # it is not just the latest weights


@pytest.mark.parametrize("make, avg_fn", [(lambda: EMA(decay=0.8), "ema"), (lambda: SWA(start_step=0), "swa")])
def test_updates_are_torch_averaged_models_bit_for_bit(make, avg_fn):
    """The update skips AveragedModel.update_parameters' host reads of its counter; the weights it gives are torch's."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn

    model, ours = make_model(), make()
    reference = AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(0.8) if avg_fn == "ema" else get_swa_multi_avg_fn()
    )
    for step in range(1, 8):
        perturb(model)
        ours.maybe_update(step, model)
        reference.update_parameters(model)
    expected = {k.removeprefix("module."): v for k, v in reference.state_dict().items() if k.startswith("module.")}
    got = ours.averaged_state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert ours.n_averaged == int(reference.n_averaged) == 7 and int(ours.state_dict()["averaged"]["n_averaged"]) == 7


def test_ema_every_and_start_step_choose_the_update_steps():
    model, ema = make_model(), EMA(decay=0.5, every=3, start_step=5)
    updated = [step for step in range(1, 16) if ema.maybe_update(step, model)]
    assert updated == [6, 9, 12, 15] and ema.n_averaged == 4 and ema.last_step == 15
    assert not ema.maybe_update(15, model)


def test_swa_equals_the_plain_mean_of_the_updated_steps():
    model, swa = make_model(), SWA(start_step=4, every=2)
    seen = []
    for step in range(1, 13):
        perturb(model)
        if swa.maybe_update(step, model):
            seen.append(float64_state(model))
    assert swa.n_averaged == len(seen) == 5  # steps 4, 6, 8, 10, 12
    plain_mean = {k: torch.stack([s[k] for s in seen]).mean(0) for k in seen[0]}
    assert max_diff(swa.averaged_state_dict(), plain_mean) < 1e-6


@pytest.mark.parametrize("make", [lambda: EMA(decay=0.7, every=2), lambda: SWA(start_step=2, every=1)])
def test_state_dict_round_trip_restores_n_averaged_and_subsequent_averages(make):
    model, original = make_model(), make()
    for step in range(1, 7):
        perturb(model)
        original.maybe_update(step, model)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.n_averaged == original.n_averaged > 1 and restored.last_step == original.last_step
    # readable straight after restore, before any model is seen
    assert all(torch.equal(v, original.averaged_state_dict()[k]) for k, v in restored.averaged_state_dict().items())
    for step in range(7, 12):
        perturb(model)
        assert original.maybe_update(step, model) == restored.maybe_update(step, model)
    assert restored.n_averaged == original.n_averaged
    a, b = original.averaged_state_dict(), restored.averaged_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make", [lambda: EMA(decay=0.9), lambda: SWA(start_step=3, every=2)])
def test_training_is_bitwise_identical_with_the_average_on_and_off(make):
    torch.manual_seed(7)
    model_off, opt_off, losses_off = train_with_averager(10, evaluate_every=4)
    rng_off = torch.get_rng_state()
    torch.manual_seed(7)
    model_on, opt_on, losses_on = train_with_averager(10, averager=make(), evaluate_every=4)
    assert all(torch.equal(a, b) for a, b in zip(losses_off, losses_on))
    assert torch.equal(rng_off, torch.get_rng_state())
    for p_off, p_on in zip(model_off.parameters(), model_on.parameters()):
        assert torch.equal(p_off, p_on)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_off.state[p_off][key], opt_on.state[p_on][key])


def test_ema_of_a_bf16_model_is_kept_in_fp32():
    decay = 0.99
    model = make_model().to(torch.bfloat16)
    ema = EMA(decay=decay)
    manual: dict[str, torch.Tensor] = {}
    for step in range(1, 6):
        perturb(model)
        ema.maybe_update(step, model)
        current = float64_state(model)
        manual = current if step == 1 else {k: decay * manual[k] + (1 - decay) * current[k] for k in current}
    averaged = ema.averaged_state_dict()
    assert all(v.dtype == torch.float32 for v in averaged.values())
    assert max_diff(averaged, manual) < 1e-6  # a bf16 accumulator would be off by ~1e-3 here
    assert next(ema.averaged_model(model).parameters()).dtype == torch.bfloat16  # the copy matches the live model


def test_evaluation_parity_for_ema():
    ema = EMA(decay=0.5)
    model, _, _ = train_with_averager(6, averager=ema, evaluate_every=4)
    x = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        fresh = GPT(model_config("tiny"))
        fresh.load_state_dict(ema.averaged_state_dict())
        expected = fresh(x[:, :-1], x[:, 1:])
        assert torch.equal(ema.averaged_model(model)(x[:, :-1], x[:, 1:]), expected)
        with swapped_in(ema, model) as swapped:
            assert torch.equal(swapped(x[:, :-1], x[:, 1:]), expected)
        assert not torch.equal(model(x[:, :-1], x[:, 1:]), expected)


def test_compiled_model_and_transform_keep_raw_keys_and_count():
    raw = make_model()
    ema = EMA(decay=0.5)
    ema.maybe_update(1, torch.compile(raw))  # AveragedModel copies the unwrapped module
    perturb(raw)
    ema.maybe_update(2, raw)
    assert ema.averaged_state_dict().keys() == raw.state_dict().keys()
    before = ema.averaged_state_dict()
    ema.transform(lambda s: {k: v + 1 for k, v in s.items()}, model=raw)
    assert ema.n_averaged == 2
    assert all(torch.equal(v, before[k] + 1) for k, v in ema.averaged_state_dict().items())
    with pytest.raises(ValueError):
        ema.transform(lambda s: s)
    ema.reset("growth")
    assert not ema.ready and ema.last_reset_reason == "growth"


def test_config_helpers_and_protocol():
    assert all(isinstance(a, WeightAverager) for a in (EMA(), SWA(start_step=1), LAWA()))
    assert ema_decay_from_half_life(10) == pytest.approx(2 ** (-1 / 10))
    assert build_averager("ema", {"half_life": 10, "every": 2}).decay == pytest.approx(2 ** (-2 / 10))
    assert build_averager("ema", {"decay": 0.99}).decay == 0.99
    assert SWA.from_fraction(0.75, 70_000, every=10).start_step == 52_500  # the LAWA repo's SWA baseline
    swa = build_averager("swa", {"start_fraction": 0.5, "every": 10}, total_steps=100)
    assert (swa.start_step, swa.every) == (50, 10)
    assert SWAConfig(start_step=30).build().start_step == 30
    for name, bad in (
        ("ema", {"decay": 1.0}),
        ("ema", {"decay": 0.9, "half_life": 3}),
        ("swa", {"every": 0}),
        ("swa", {"x": 1}),
    ):
        with pytest.raises(ConfigError):
            build_averager(name, bad, total_steps=100)
    with pytest.raises(ConfigError):
        build_averager("swa", {"start_fraction": 0.75})  # no total_steps to turn a fraction into a step
