"""MSG masks (growth/masks.py and growth/unit_masks.py): exact function preservation at mask 0 in
float64 for both families, the plain model at mask 1, the ramp's order and its end, and no trace of
the masks in checkpoints or in a model that does not use them (the hooks come off with the masks)."""

from __future__ import annotations

import pytest
import torch

from hasten.errors import ConfigError
from hasten.methods.growth import (
    MaskRamp,
    apply_plan,
    grow,
    growth_plan,
    has_unit_masks,
    new_unit_masks,
    remove_unit_masks,
    set_unit_masks,
    unit_masks,
)
from hasten.model import GPT, model_config


def _small(preset: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(model_config(preset)).double()
    with torch.no_grad():  # non-trivial norms, so a wrong norm statistic shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _masked_growth(preset: str, op: str = "random", factor: float = 2):
    small = _small(preset)
    plan = growth_plan(small.config, op, factor, "width")
    return small, apply_plan(plan, small), {k: v.double() for k, v in new_unit_masks(plan).items()}


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("factor", [2, 1.5])
def test_random_width_growth_is_function_preserving_at_mask_zero(preset, factor):
    small, big, masks = _masked_growth(preset, factor=factor)
    idx = torch.randint(0, small.config.vocab_size, (2, 24))
    expected = small(idx)
    assert (big(idx) - expected).abs().max() > 1e-3  # without masks the fresh units change the output
    set_unit_masks(big, **masks)
    assert (big(idx) - expected).abs().max() <= 1e-10


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_masks_at_one_equal_the_plain_model(preset):
    _, big, masks = _masked_growth(preset)
    idx = torch.randint(0, big.config.vocab_size, (2, 24))
    plain = big(idx)
    set_unit_masks(big, **{k: torch.ones_like(v) for k, v in masks.items()})
    assert (big(idx) - plain).abs().max() <= 1e-10


def test_new_unit_masks_per_axis():
    small = _small("tiny-llama")
    masks = new_unit_masks(growth_plan(small.config, "random", 2, "width"))
    cfg = small.config
    assert masks["hidden"].tolist() == [1.0] * cfg.d_model + [0.0] * cfg.d_model
    assert masks["heads"].tolist() == [1.0] * cfg.n_heads + [0.0] * cfg.n_heads
    assert masks["ffn"].tolist() == [1.0] * cfg.d_ff + [0.0] * cfg.d_ff
    assert new_unit_masks(growth_plan(cfg, "stack", 2, "depth")) == {}


def test_ramp_goes_axis_by_axis_and_ends_without_masks():
    _, big, masks = _masked_growth("tiny")
    ramp = MaskRamp(masks, start=10, steps=4)
    assert ramp.values(10) == {"ffn": 0.0, "hidden": 0.0, "heads": 0.0}
    assert ramp.values(12) == {"ffn": 0.5, "hidden": 0.0, "heads": 0.0}
    assert ramp.values(17) == {"ffn": 1.0, "hidden": 0.75, "heads": 0.0}
    assert ramp.values(19) == {"ffn": 1.0, "hidden": 1.0, "heads": 0.25}
    assert ramp.end == 22
    assert ramp.apply(big, 17) and has_unit_masks(big)
    hidden = unit_masks(big)["hidden"]
    assert hidden[: big.config.d_model // 2].eq(1).all() and hidden[big.config.d_model // 2 :].eq(0.75).all()
    masked = unit_masks(big)
    assert masked["ffn"].min() == 1 and masked["heads"].max() == 1 and masked["heads"].min() == 0
    assert not ramp.apply(big, 22) and not has_unit_masks(big)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_masks_cost_nothing_when_unused_and_never_reach_checkpoints():
    small = _small("tiny")
    assert not has_unit_masks(small) and not any("mask" in n for n, _ in small.named_buffers()) and _hooks(small) == 0
    _, big, masks = _masked_growth("tiny")
    keys = list(big.state_dict())
    set_unit_masks(big, **masks)
    assert list(big.state_dict()) == keys  # derived from the step, never saved
    assert _hooks(big) > 0
    remove_unit_masks(big)
    assert not has_unit_masks(big) and _hooks(big) == 0 and not any("mask" in n for n, _ in big.named_buffers())


def test_a_copy_of_a_masked_model_computes_like_it_and_takes_new_masks_without_doubling_them():
    import copy

    _, big, masks = _masked_growth("tiny")
    idx = torch.randint(0, big.config.vocab_size, (2, 16))
    set_unit_masks(big, **masks)
    twin = copy.deepcopy(big)  # a weight average's copy of the live model
    assert torch.equal(twin(idx), big(idx))
    half = {k: v + (1 - v) * 0.5 for k, v in masks.items()}
    set_unit_masks(twin, **half)
    set_unit_masks(big, **half)
    assert torch.equal(twin(idx), big(idx)) and _hooks(twin) == _hooks(big)
    remove_unit_masks(twin)  # the copy's hooks stay as no-ops; the original keeps its masks
    plain = copy.deepcopy(big)
    remove_unit_masks(big)
    assert torch.equal(twin(idx), big(idx)) and not torch.equal(plain(idx), big(idx))


def test_masks_get_gradient_flow_once_ramped_and_none_at_zero():
    _, big, masks = _masked_growth("tiny")
    d = big.config.d_model // 2
    idx = torch.randint(0, big.config.vocab_size, (2, 16))
    set_unit_masks(big, **masks)
    big(idx, idx).backward()
    up = big.blocks[0].mlp.up_proj.weight.grad
    assert up[big.config.d_ff // 2 :].abs().max() == 0  # new FFN units are cut off at mask 0
    big.zero_grad()
    set_unit_masks(big, **{k: v + (1 - v) * 0.5 for k, v in masks.items()})
    big(idx, idx).backward()
    assert big.blocks[0].mlp.up_proj.weight.grad[big.config.d_ff // 2 :].abs().max() > 0
    assert big.embed_tokens.weight.grad[:, d:].abs().max() > 0


def test_bad_masks_and_growing_a_masked_model_are_one_line_errors():
    _, big, masks = _masked_growth("tiny")
    with pytest.raises(ConfigError, match="needs \\(64,\\)"):
        set_unit_masks(big, hidden=torch.ones(3))
    set_unit_masks(big, **masks)
    with pytest.raises(ConfigError, match="finish the ramp"):
        grow(big, "stack", 2)
