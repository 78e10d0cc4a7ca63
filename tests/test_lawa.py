"""LAWA checks: exact mean, queue semantics, no feedback, no aliasing, resume, prefixes, eval parity."""

from __future__ import annotations

import io
import tempfile

import pytest
import torch
import torch.distributed as dist

from hasten.errors import ConfigError
from hasten.methods.averaging import (
    LAWA,
    LAWAConfig,
    WeightAverager,
    build_averager,
    clean_state_dict,
    interval_steps,
    strip_wrapper_prefixes,
    swapped_in,
    unwrap_model,
)
from hasten.model import GPT, model_config
from tests.helpers import float64_state, make_model, perturb, train_with_averager

VOCAB = 512


def batch(seq_len: int = 17) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq_len))


def test_average_is_exact_elementwise_mean_of_the_stored_snapshots():
    model, lawa = make_model(), LAWA(k=3, interval=1)
    history = []
    for step in range(1, 6):
        perturb(model)
        assert lawa.maybe_snapshot(step, model)
        history.append(float64_state(model))
    averaged = lawa.averaged_state_dict()
    assert averaged.keys() == model.state_dict().keys()
    for key, value in averaged.items():
        assert value.dtype == torch.float32
        expected = torch.stack([h[key] for h in history[-3:]]).mean(0)
        assert (value.double() - expected).abs().max() < 1e-6, key
    # the mean really differs from the newest snapshot (otherwise the check above proves little)
    assert not torch.allclose(averaged["embed_tokens.weight"], model.embed_tokens.weight)


def test_k1_is_the_latest_snapshot_and_identical_snapshots_average_to_themselves():
    model, latest_only = make_model(), LAWA(k=1, interval=2)
    for step in range(1, 7):
        perturb(model)
        latest_only.maybe_snapshot(step, model)
    assert latest_only.members == [6]
    for key, value in latest_only.averaged_state_dict().items():
        assert torch.equal(value, model.state_dict()[key])

    frozen, same = make_model(), LAWA(k=4, interval=1)
    for step in range(1, 5):
        same.maybe_snapshot(step, frozen)
    for key, value in same.averaged_state_dict().items():
        assert (value - frozen.state_dict()[key]).abs().max() < 1e-6


@pytest.mark.parametrize("k,nu", [(5, 3), (2, 1), (3, 4)])
def test_queue_members_are_the_last_k_multiples_of_nu_fifo(k, nu):
    model, lawa = make_model(), LAWA(k=k, interval=nu)
    assert not lawa.maybe_snapshot(0, model)  # step 0 (the initial weights) is never a member
    for t in range(1, 25):
        taken = lawa.maybe_snapshot(t, model)
        assert taken == (t % nu == 0)
        expected = [s for s in range(t - (t % nu), 0, -nu)][:k][::-1]  # t', t'-nu, ..., oldest first
        assert lawa.members == expected
        assert len(lawa) <= k and all(s % nu == 0 for s in lawa.members)
        assert not lawa.maybe_snapshot(t, model)  # calling twice for one step adds nothing


def test_training_is_bitwise_identical_with_lawa_on_and_off():
    torch.manual_seed(123)
    model_off, opt_off, losses_off = train_with_averager(10)
    rng_off = torch.get_rng_state()
    torch.manual_seed(123)
    lawa = LAWA(k=3, interval=2)
    model_on, opt_on, losses_on = train_with_averager(10, averager=lawa)
    rng_on = torch.get_rng_state()

    assert lawa.members == [6, 8, 10]
    assert all(torch.equal(a, b) for a, b in zip(losses_off, losses_on))
    assert torch.equal(rng_off, rng_on)
    for (name, p_off), p_on in zip(model_off.named_parameters(), model_on.parameters()):
        assert torch.equal(p_off, p_on), name
        s_off, s_on = opt_off.state[p_off], opt_on.state[p_on]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s_off[key], s_on[key]), (name, key)


def test_snapshots_do_not_alias_live_weights():
    lawa = LAWA(k=2, interval=1)
    model = make_model()
    lawa.maybe_snapshot(1, model)
    kept = {k: v.clone() for k, v in lawa.state_dict()["snapshots"][0].items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        x = batch()
        model(x[:, :-1], x[:, 1:]).backward()
        optimizer.step()
    assert not torch.equal(model.embed_tokens.weight, kept["embed_tokens.weight"])  # training did move the weights
    for key, value in lawa.state_dict()["snapshots"][0].items():
        assert torch.equal(value, kept[key]), key
        assert value.data_ptr() != model.state_dict()[key].data_ptr()


def test_state_dict_round_trip_gives_identical_subsequent_averages():
    model, lawa = make_model(), LAWA(k=3, interval=2)
    for step in range(1, 8):
        perturb(model)
        lawa.maybe_snapshot(step, model)
    buffer = io.BytesIO()
    torch.save(lawa.state_dict(), buffer)
    buffer.seek(0)
    restored = LAWA(k=3, interval=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.members == lawa.members == [2, 4, 6]
    for step in range(8, 13):
        perturb(model)
        assert lawa.maybe_snapshot(step, model) == restored.maybe_snapshot(step, model)
    assert restored.members == lawa.members == [8, 10, 12]
    a, b = lawa.averaged_state_dict(), restored.averaged_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wrapper_prefixes_are_stripped():
    assert strip_wrapper_prefixes("module._orig_mod.blocks.0.attn.q_proj.weight") == "blocks.0.attn.q_proj.weight"
    assert strip_wrapper_prefixes("_orig_mod.module.final_norm.weight") == "final_norm.weight"
    assert strip_wrapper_prefixes("blocks.1.mlp.up_proj.bias") == "blocks.1.mlp.up_proj.bias"
    with pytest.raises(ValueError):
        clean_state_dict({"module.a": torch.zeros(1), "a": torch.zeros(1)})

    raw = make_model()
    compiled = torch.compile(raw)  # never called, so nothing is compiled; only the wrapper matters
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert unwrap_model(compiled) is raw
    lawa = LAWA(k=2, interval=1)
    lawa.maybe_snapshot(1, compiled)
    assert lawa.averaged_state_dict().keys() == raw.state_dict().keys()
    assert isinstance(lawa.averaged_model(compiled), GPT)


def test_ddp_prefix_is_stripped():
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store.name}")
        try:
            raw = make_model()
            ddp = torch.compile(torch.nn.parallel.DistributedDataParallel(raw))
            lawa = LAWA(k=2, interval=1)
            lawa.maybe_snapshot(1, ddp)
            assert unwrap_model(ddp) is raw
            assert lawa.averaged_state_dict().keys() == raw.state_dict().keys()
        finally:
            dist.destroy_process_group()


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_evaluation_parity_copy_fresh_model_and_swap(preset):
    lawa = LAWA(k=3, interval=2)
    model, _, _ = train_with_averager(8, averager=lawa, preset=preset)
    live_before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch()
    with torch.no_grad():
        copy_loss = lawa.averaged_model(model)(x[:, :-1], x[:, 1:])
        fresh = GPT(model_config(preset))
        fresh.load_state_dict(lawa.averaged_state_dict())
        fresh_loss = fresh(x[:, :-1], x[:, 1:])
        with swapped_in(lawa, model) as swapped:
            swap_loss = swapped(x[:, :-1], x[:, 1:])
        live_loss = model(x[:, :-1], x[:, 1:])
    assert torch.equal(copy_loss, fresh_loss) and torch.equal(swap_loss, fresh_loss)
    assert not torch.equal(live_loss, fresh_loss)  # the average is a different model
    assert all(torch.equal(v, live_before[k]) for k, v in model.state_dict().items())


def test_load_averaged_into_a_separate_model():
    model, lawa = make_model(), LAWA(k=2, interval=1)
    for step in (1, 2):
        perturb(model)
        lawa.maybe_snapshot(step, model)
    target = make_model(seed=5)
    lawa.load_averaged_into(target)
    averaged = lawa.averaged_state_dict()
    assert all(torch.equal(v, averaged[k]) for k, v in target.state_dict().items())


def test_transform_maps_every_snapshot_and_growth_without_it_fails_loudly():
    model, lawa = make_model(), LAWA(k=3, interval=1)
    for step in (1, 2, 3):
        perturb(model)
        lawa.maybe_snapshot(step, model)
    before = lawa.averaged_state_dict()
    lawa.transform(lambda state: {k: v * 2 if v.is_floating_point() else v for k, v in state.items()})
    after = lawa.averaged_state_dict()
    assert all((after[k] - 2 * before[k]).abs().max() < 1e-6 for k in before)
    assert lawa.members == [1, 2, 3]

    deeper = GPT(model_config("tiny", n_layers=3))
    with pytest.raises(RuntimeError, match="transform"):
        lawa.maybe_snapshot(4, deeper)
    lawa.reset("model grew")
    assert not lawa.ready and lawa.last_reset_reason == "model grew"
    assert lawa.maybe_snapshot(4, deeper) and lawa.members == [4]


def test_token_interval_triggers_on_token_boundaries():
    model, lawa = make_model(), LAWA(k=5, interval=1000, unit="tokens")
    tokens, snapped = 0, []
    for step, tokens_this_step in enumerate([300, 300, 300, 300, 600, 600, 900, 50, 2500], start=1):
        tokens += tokens_this_step  # sequence-length warmup makes tokens/step grow
        if lawa.maybe_snapshot(step, model, tokens=tokens):
            snapped.append(step)
    # cumulative: 300 600 900 1200 1800 2400 3300 3350 5850 -> crosses 1000 at 4, 2000 at 6, 3000 at 7, 4000/5000 at 9
    assert snapped == [4, 6, 7, 9]
    with pytest.raises(ValueError):
        lawa.maybe_snapshot(20, model)
    assert interval_steps(50_000, 1_000) == 50 and interval_steps(10, 1_000) == 1 and interval_steps(1500, 1000) == 2


def test_config_validation_and_protocol():
    assert isinstance(LAWA(), WeightAverager)
    built = build_averager("lawa", {"k": 4, "interval": 50})
    assert isinstance(built, LAWA) and (built.k, built.interval, built.unit) == (4, 50, "steps")
    assert build_averager("lawa", {"interval_tokens": 10_000}).unit == "tokens"
    assert LAWAConfig().build().interval == 200
    for bad in ({"k": 0}, {"interval": -1}, {"interval": 5, "interval_tokens": 5}, {"kk": 5}, {"device": "nowhere"}):
        with pytest.raises(ConfigError):
            build_averager("lawa", bad)
    with pytest.raises(ConfigError):
        build_averager("polyak")
