"""Growing the training state: Adam moments follow the parameters by name; staged width keeps Adam's step."""

from __future__ import annotations

import itertools

import pytest
import torch

from hasten.errors import ConfigError
from hasten.methods.growth import grow_training_state
from hasten.methods.growth.operators import DEPTH_OPS, WIDTH_OPS
from hasten.model import GPT, model_config
from hasten.optim import adam_mini, blockwise


def make_model(preset: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config(preset)).double()


def adamw(model: GPT, lr: float = 1e-2, eps: float = 1e-30) -> torch.optim.AdamW:
    """AdamW without weight decay, two named groups (as the trainer's builder makes them)."""
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if p.dim() >= 2], "param_names": [n for n, p in named if p.dim() >= 2]},
        {"params": [p for n, p in named if p.dim() < 2], "param_names": [n for n, p in named if p.dim() < 2]},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=eps, weight_decay=0.0)


def batch(model: GPT, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    return idx[:, :-1], idx[:, 1:]


def train_steps(model: GPT, optimizer, seeds) -> None:
    for seed in seeds:
        optimizer.zero_grad(set_to_none=True)
        model(*batch(model, seed)).backward()
        optimizer.step()


def trained(preset: str):
    model = make_model(preset)
    optimizer = adamw(model)
    train_steps(model, optimizer, [10, 11])
    return model, optimizer


def copy_blocks(tensor: torch.Tensor, small_shape: torch.Size, k: int):
    """The k diagonal blocks (copy c on every grown axis) of a staged-grown tensor."""
    for c in range(k):
        index = tuple(
            slice(c * n, (c + 1) * n) if big != n else slice(None) for n, big in zip(small_shape, tensor.shape)
        )
        yield tensor[index]


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_adam_step_after_staged_width_moves_every_copy_like_the_small_model(preset):
    small, opt = trained(preset)
    grown = grow_training_state(small, opt, "staged", 2, "width", build_optimizer=adamw)
    small_before = {n: p.detach().clone() for n, p in small.named_parameters()}
    grown_before = {n: p.detach().clone() for n, p in grown.model.named_parameters()}
    train_steps(small, opt, [12])
    train_steps(grown.model, grown.optimizer, [12])
    for name, p in grown.model.named_parameters():
        if name.endswith("k_proj.bias"):
            # softmax ignores a key bias (q.b is the same for every key), so its gradient is rounding noise
            # that Adam normalises into arbitrary lr-sized steps: nothing to compare
            continue
        small_update = dict(small.named_parameters())[name].detach() - small_before[name]
        assert small_update.abs().max() > 0, name
        for block in copy_blocks(p.detach() - grown_before[name], small_update.shape, 2):
            torch.testing.assert_close(block, small_update, rtol=0, atol=1e-12, msg=name)


def test_staged_width_moments_are_expanded_and_scaled():
    small, opt = trained("tiny")
    grown = grow_training_state(small, opt, "staged", 2, "width", build_optimizer=adamw)
    old = {n: opt.state[p] for n, p in small.named_parameters()}
    new = {n: grown.optimizer.state[p] for n, p in grown.model.named_parameters()}
    q = "blocks.0.attn.q_proj.weight"
    assert torch.equal(new[q]["exp_avg"], torch.block_diag(old[q]["exp_avg"], old[q]["exp_avg"]) / 2)
    assert torch.equal(new[q]["exp_avg_sq"], torch.block_diag(old[q]["exp_avg_sq"], old[q]["exp_avg_sq"]) / 4)
    e = "embed_tokens.weight"
    assert torch.equal(new[e]["exp_avg"], torch.cat([old[e]["exp_avg"]] * 2, dim=1) / 2)
    for f in ("final_norm.weight", "final_norm.bias"):  # the final norm's gradient is not halved: moments unscaled
        assert torch.equal(new[f]["exp_avg"], torch.cat([old[f]["exp_avg"]] * 2))
        assert torch.equal(new[f]["exp_avg_sq"], torch.cat([old[f]["exp_avg_sq"]] * 2))
    assert all(torch.equal(s["step"], old[q]["step"]) for s in new.values())


@pytest.mark.parametrize(("dim", "op"), [("depth", op) for op in DEPTH_OPS] + [("width", op) for op in WIDTH_OPS])
def test_optimizer_state_matches_parameter_shapes_after_every_operator(dim, op):
    small, opt = trained("tiny-llama")
    grown = grow_training_state(
        small, opt, op, 2, dim, build_optimizer=adamw, generator=torch.Generator().manual_seed(0)
    )
    with_state = 0
    for name, p in grown.model.named_parameters():
        state = grown.optimizer.state.get(p, {})
        recipe = grown.plan.recipes[name]
        if recipe.is_new:
            assert state == {}, name  # new zero/random tensors start at m = v = 0 (lazy init)
            continue
        with_state += 1
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape, name
        assert state["step"].item() == 2
    assert with_state > 0
    assert set(grown.optimizer.state) <= set(grown.model.parameters())
    train_steps(grown.model, grown.optimizer, [12])  # the mapped state is usable


def test_depth_copy_moments_are_copied_and_zeroed_blocks_start_empty():
    small, opt = trained("tiny")
    old = {n: opt.state[p] for n, p in small.named_parameters()}
    for op in ("stack", "zero"):
        grown = grow_training_state(small, opt, op, 2, "depth", build_optimizer=adamw)
        state = {n: grown.optimizer.state.get(p, {}) for n, p in grown.model.named_parameters()}
        for name, s in state.items():
            if not name.startswith("blocks."):
                assert torch.equal(s["exp_avg"], old[name]["exp_avg"])
                continue
            _, i, rest = name.split(".", 2)
            i = int(i)
            source = f"blocks.{i % 2 if op == 'stack' else i // 2}.{rest}"
            if op == "zero" and i % 2 and ("o_proj" in rest or "down_proj" in rest):
                assert s == {}, name
            else:
                assert torch.equal(s["exp_avg"], old[source]["exp_avg"]) and torch.equal(
                    s["exp_avg_sq"], old[source]["exp_avg_sq"]
                )


def test_reset_gives_a_fresh_optimizer():
    small, opt = trained("tiny-llama")
    grown = grow_training_state(small, opt, "stack", 4, "depth", build_optimizer=adamw, moments="reset")
    assert len(grown.optimizer.state) == 0
    assert grown.model.config.n_layers == 8
    assert [g["param_names"] for g in grown.optimizer.param_groups] == [
        g["param_names"] for g in adamw(grown.model).param_groups
    ]


def test_state_not_shaped_like_the_parameter_is_reset_on_width_and_copied_on_depth():
    small, opt = trained("tiny-llama")
    q = small.blocks[0].attn.q_proj.weight
    per_head_v = torch.arange(1.0, small.config.n_heads + 1, dtype=torch.float64)  # Adam-mini style per-head v
    opt.state[q]["exp_avg_sq"] = per_head_v
    wide = grow_training_state(small, opt, "staged", 2, "width", build_optimizer=adamw)
    reasons = [n for n in wide.notes if "not shaped like the parameter" in n]
    assert [r.split(":")[0] for r in reasons] == ["blocks.0.attn.q_proj.weight"]
    assert wide.optimizer.state.get(wide.model.blocks[0].attn.q_proj.weight, {}) == {}
    assert len(wide.optimizer.state[wide.model.blocks[1].attn.q_proj.weight]) == 3
    deep = grow_training_state(small, opt, "stack", 2, "depth", build_optimizer=adamw)
    assert not [n for n in deep.notes if "not shaped" in n]
    for layer in (0, 2):  # a depth copy keeps every tensor's shape, so any state carries over verbatim
        assert torch.equal(deep.optimizer.state[deep.model.blocks[layer].attn.q_proj.weight]["exp_avg_sq"], per_head_v)


def test_adam_mini_state_carries_over_depth_growth():

    def build(model: GPT):
        groups = blockwise.blockwise_param_groups(model, 0.0, None)
        cfg = model.config
        return adam_mini.AdamMini(groups, lr=1e-3, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads)

    small = make_model("tiny-llama")
    opt = build(small)
    train_steps(small, opt, [10])
    deep = grow_training_state(small, opt, "interpolate", 2, "depth", build_optimizer=build)
    q_small, q_big = small.blocks[1].attn.q_proj.weight, deep.model.blocks[3].attn.q_proj.weight
    assert torch.equal(deep.optimizer.state[q_big]["exp_avg_sq"], opt.state[q_small]["exp_avg_sq"])
    train_steps(deep.model, deep.optimizer, [11])
    wide = grow_training_state(small, opt, "staged", 2, "width", build_optimizer=build)
    assert any("not shaped like the parameter" in n for n in wide.notes)
    train_steps(wide.model, wide.optimizer, [11])  # reset tensors re-initialise lazily


def test_bad_moment_mode_and_incomplete_optimizer_raise():
    small, opt = trained("tiny")
    with pytest.raises(ConfigError, match="moments"):
        grow_training_state(small, opt, "stack", 2, build_optimizer=adamw, moments="keep")

    def partial(model: GPT):
        params = list(itertools.islice(model.parameters(), 3))
        return torch.optim.AdamW(params, lr=1e-3)

    with pytest.raises(ConfigError, match="left .* parameters out"):
        grow_training_state(small, opt, "stack", 2, build_optimizer=partial)
