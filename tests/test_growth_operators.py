"""Growth operators: exact layer mappings, function preservation in float64, input validation."""

from __future__ import annotations

import pytest
import torch

from hasten.errors import ConfigError
from hasten.methods.growth import depth_plan, grow, new_unit_masks, width_plan
from hasten.model import GPT, Norm, model_config

# gpt2: biases, LayerNorm, tied head; llama: RMSNorm, SwiGLU, RoPE, GQA (4 heads / 2 kv), untied head;
# plus the other head tying of each family so both head rules are covered.
CONFIGS = {
    "gpt2-tied": ("tiny", {}),
    "gpt2-untied": ("tiny", {"tie_embeddings": False}),
    "llama-gqa-untied": ("tiny-llama", {}),
    "llama-tied": ("tiny-llama", {"tie_embeddings": True}),
}


def small_model(key: str, seed: int = 0, **overrides) -> GPT:
    preset, extra = CONFIGS[key]
    torch.manual_seed(seed)
    model = GPT(model_config(preset, **{**extra, **overrides})).double()
    with torch.no_grad():  # non-trivial norms and biases, so copying/halving them is really tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def tokens(model: GPT, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (2, 24), generator=g)


def max_logit_change(small: GPT, grown: GPT) -> float:
    idx = tokens(small)
    with torch.no_grad():
        return (grown(idx) - small(idx)).abs().max().item()


@pytest.mark.parametrize("key", list(CONFIGS))
@pytest.mark.parametrize("factor", [2, 3])
def test_zero_depth_is_function_preserving(key, factor):
    small = small_model(key)
    grown = grow(small, "zero", factor, dim="depth")
    assert grown.config.n_layers == factor * small.config.n_layers
    assert max_logit_change(small, grown) <= 1e-10


@pytest.mark.parametrize("key", list(CONFIGS))
def test_staged_width_is_function_preserving(key):
    small = small_model(key)
    grown = grow(small, "staged", 2, dim="width")
    cfg, big = small.config, grown.config
    assert (big.d_model, big.n_heads, big.n_kv_heads, big.d_ff) == (
        2 * cfg.d_model,
        2 * cfg.n_heads,
        2 * cfg.n_kv_heads,
        2 * cfg.d_ff,
    )
    assert big.head_dim == cfg.head_dim
    assert max_logit_change(small, grown) <= 1e-10


def test_staged_width_factor_three_is_function_preserving():
    small = small_model("llama-gqa-untied")
    assert max_logit_change(small, grow(small, "staged", 3, dim="width")) <= 1e-10


@pytest.mark.parametrize("key", ["gpt2-tied", "llama-gqa-untied"])
def test_direct_width_integer_factor_is_function_preserving(key):
    small = small_model(key)
    assert max_logit_change(small, grow(small, "direct", 2, dim="width")) <= 1e-10


def test_direct_width_fractional_factor_is_only_approximate():
    small = small_model("llama-gqa-untied")
    grown = grow(small, "direct", 1.5, dim="width")
    assert (grown.config.n_heads, grown.config.n_kv_heads) == (6, 3)
    change = max_logit_change(small, grown)
    assert 0 < change < 1.0


def test_staged_width_layout():
    small = small_model("gpt2-tied")
    grown = grow(small, "staged", 2, dim="width")
    s, g = dict(small.named_parameters()), dict(grown.named_parameters())
    for name in ("blocks.0.attn.q_proj.weight", "blocks.1.mlp.down_proj.weight", "blocks.0.attn.k_proj.weight"):
        assert torch.equal(g[name], torch.block_diag(s[name], s[name])), name
    for name in ("blocks.0.attn.q_proj.bias", "blocks.0.attn_norm.weight", "blocks.1.mlp_norm.bias"):
        assert torch.equal(g[name], torch.cat([s[name], s[name]])), name
    assert torch.equal(g["embed_tokens.weight"], torch.cat([s["embed_tokens.weight"]] * 2, dim=1))
    assert torch.equal(g["embed_positions.weight"], torch.cat([s["embed_positions.weight"]] * 2, dim=1))
    assert torch.equal(g["final_norm.weight"], torch.cat([s["final_norm.weight"]] * 2) / 2)
    assert torch.equal(g["final_norm.bias"], torch.cat([s["final_norm.bias"]] * 2) / 2)


def test_staged_width_untied_head_is_repeated_not_halved():
    small = small_model("llama-gqa-untied")
    grown = grow(small, "staged", 2, dim="width")
    assert torch.equal(grown.lm_head.weight, torch.cat([small.lm_head.weight] * 2, dim=1))
    assert torch.equal(grown.final_norm.weight, torch.cat([small.final_norm.weight] * 2) / 2)
    assert torch.equal(grown.rope_cos, small.rope_cos)  # head_dim unchanged -> same rotation tables


@pytest.mark.parametrize("key", ["gpt2-tied", "llama-gqa-untied"])
def test_stack_maps_every_tensor_exactly_and_is_not_function_preserving(key):
    small = small_model(key)
    grown = grow(small, "stack", 3)
    layers = small.config.n_layers
    s = dict(small.named_parameters())
    assert grown.config.n_layers == 3 * layers
    for name, p in grown.named_parameters():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            assert torch.equal(p, s[f"blocks.{int(i) % layers}.{rest}"]), name
        else:
            assert torch.equal(p, s[name]), name  # embedding, positions, final norm, head
    assert max_logit_change(small, grown) > 1e-3  # G_stack is not function preserving


def test_interpolate_maps_layer_i_to_small_layer_i_div_g():
    small = small_model("llama-gqa-untied")
    grown = grow(small, "interpolate", 4)
    s = dict(small.named_parameters())
    for name, p in grown.named_parameters():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            assert torch.equal(p, s[f"blocks.{int(i) // 4}.{rest}"]), name
    assert max_logit_change(small, grown) > 1e-3


def test_zero_depth_zeroes_only_duplicate_output_projections():
    small = small_model("gpt2-tied")
    grown = grow(small, "zero", 2)
    s = dict(small.named_parameters())
    zeroed = ("attn.o_proj.weight", "attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")
    for name, p in grown.named_parameters():
        if not name.startswith("blocks."):
            continue
        _, i, rest = name.split(".", 2)
        i = int(i)
        if i % 2 and rest in zeroed:
            assert not p.any(), name
        else:
            assert torch.equal(p, s[f"blocks.{i // 2}.{rest}"]), name


def test_random_depth_keeps_originals_and_is_reproducible():
    small = small_model("llama-gqa-untied")
    a = grow(small, "random", 2, generator=torch.Generator().manual_seed(5))
    b = grow(small, "random", 2, generator=torch.Generator().manual_seed(5))
    s = dict(small.named_parameters())
    for name, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name])
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            same = torch.equal(p, s[f"blocks.{int(i) // 2}.{rest}"])
            assert same == (int(i) % 2 == 0), name  # fresh layers differ everywhere (the small norms were perturbed)
    fresh_o = a.blocks[1].attn.o_proj.weight
    expected_std = small.config.init_std / (2 * a.config.n_layers) ** 0.5  # the model's own init, for the grown depth
    assert abs(fresh_o.std().item() - expected_std) < 0.3 * expected_std


def test_operators_without_fresh_tensors_leave_the_global_rng_alone():
    small = small_model("gpt2-tied")
    before = torch.get_rng_state()
    grow(small, "stack", 2)
    grow(small, "staged", 2, dim="width")
    assert torch.equal(before, torch.get_rng_state())


def without_norm_eps(model: GPT) -> GPT:
    """Set eps = 0 in every norm (the config insists on eps > 0; the identity below is exact only at 0)."""
    for module in model.modules():
        if isinstance(module, Norm):
            module.eps = 0.0
    return model


def test_zero_width_new_outputs_zero_and_llama_fp_without_norm_eps():
    small = without_norm_eps(small_model("llama-gqa-untied"))
    grown = without_norm_eps(grow(small, "zero", 2, dim="width", generator=torch.Generator().manual_seed(0)))
    assert max_logit_change(small, grown) <= 1e-10
    d, h = small.config.d_model, small.config.n_heads * small.config.head_dim
    q = grown.blocks[0].attn.q_proj.weight
    assert not q[h:].any()  # new heads' rows are zero: they output 0
    assert q[:h, d:].abs().sum() > 0  # new input columns are fresh, so gradients reach the new units
    assert not grown.embed_tokens.weight[:, d:].any()
    assert torch.equal(grown.blocks[0].attn_norm.weight[d:], torch.ones(d, dtype=torch.float64))


def test_zero_width_with_default_eps_is_close_and_gpt2_is_not_exact():
    llama = small_model("llama-gqa-untied")
    assert max_logit_change(llama, grow(llama, "zero", 2, dim="width")) < 0.1
    gpt2 = small_model("gpt2-tied")
    assert max_logit_change(gpt2, grow(gpt2, "zero", 2, dim="width")) > 1e-6  # LayerNorm mean/var change


def test_random_width_keeps_the_original_block():
    small = small_model("gpt2-tied")
    grown = grow(small, "random", 2, dim="width", generator=torch.Generator().manual_seed(0))
    w, sw = grown.blocks[0].mlp.up_proj.weight, small.blocks[0].mlp.up_proj.weight
    assert torch.equal(w[: sw.shape[0], : sw.shape[1]], sw)
    assert w[sw.shape[0] :].abs().sum() > 0 and w[:, sw.shape[1] :].abs().sum() > 0
    masks = new_unit_masks(width_plan(small.config, "random", 2))
    assert masks["hidden"].tolist() == [1.0] * 32 + [0.0] * 32
    assert masks["heads"].sum().item() == small.config.n_heads


def test_growth_does_not_modify_the_small_model_and_grown_model_trains():
    small = small_model("llama-gqa-untied")
    snapshot = {n: p.clone() for n, p in small.named_parameters()}
    grown = grow(small, "staged", 2, dim="width")
    for name, p in small.named_parameters():
        assert torch.equal(p, snapshot[name])
    idx = tokens(small)
    grown(idx[:, :-1], idx[:, 1:]).backward()
    assert all(p.grad is not None for p in grown.parameters())
    assert all(p.grad is None for p in small.parameters())


def test_plans_are_config_only():
    cfg = model_config("llama-1.1b")  # plans for a 1.1B model build nothing real
    plan = depth_plan(cfg, "stack", 4)
    assert (
        plan.config.n_layers == 88
        and plan.recipes["blocks.87.attn.q_proj.weight"].source == "blocks.21.attn.q_proj.weight"
    )
    wide = width_plan(cfg, "staged", 2)
    assert wide.config.d_model == 4096 and wide.config.n_kv_heads == 8
    assert wide.recipes["final_norm.weight"].moment_scale == 1.0 and wide.recipes["lm_head.weight"].moment_scale == 0.5


@pytest.mark.parametrize(
    ("dim", "op", "factor", "match"),
    [
        ("depth", "stack", 2.5, "integer >= 2"),
        ("depth", "stack", 1, "integer >= 2"),
        ("depth", "zero", True, "integer >= 2"),
        ("width", "staged", 1.5, "integer >= 2"),
        ("width", "direct", 1.25, "not a whole number"),  # tiny has 2 heads: 2.5 heads
        ("width", "zero", 0.5, "> 1"),
        ("depth", "G_stack", 4, "unknown"),
        ("height", "stack", 4, "unknown"),
    ],
)
def test_invalid_growth_requests_raise_config_error(dim, op, factor, match):
    with pytest.raises(ConfigError, match=match):
        grow(small_model("gpt2-tied"), op, factor, dim=dim)


@pytest.mark.parametrize("dropout, symmetric", [(0.0, True), (0.1, False)])
def test_staged_width_copies_stay_identical_without_dropout(dropout, symmetric):
    """Shen et al.'s width operator duplicates units; only something like dropout makes the copies differ."""
    torch.manual_seed(0)
    big = grow(
        GPT(model_config("tiny", d_model=16, n_heads=2, n_layers=1, vocab_size=64, dropout=dropout)),
        "staged",
        2,
        dim="width",
    )
    opt = torch.optim.AdamW(big.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        rows = torch.randint(0, 64, (4, 17), generator=gen)
        opt.zero_grad()
        big.train()(rows[:, :-1], rows[:, 1:]).backward()
        opt.step()
    w = big.blocks[0].mlp.up_proj.weight  # (2 * ffn, 2 * d): [[A, B], [B, A]] while symmetric
    o, i = w.shape
    gap = max(
        float((w[: o // 2, : i // 2] - w[o // 2 :, i // 2 :]).abs().max()),
        float((w[: o // 2, i // 2 :] - w[o // 2 :, : i // 2]).abs().max()),
    )
    assert (gap < 1e-5) == symmetric, gap


def test_staged_width_without_dropout_warns_when_the_recipe_loads(caplog, tiny_overrides):
    from hasten.recipes import load_config

    stage = "methods.growth.stages=[{dim: width, op: staged, factor: 2, at_steps: 2}]"
    with caplog.at_level("WARNING"):
        load_config(None, [*tiny_overrides, "train.max_steps=4", stage])
    assert "copies stay identical" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_config(None, [*tiny_overrides, "train.max_steps=4", "model.dropout=0.1", stage])
    assert "copies stay identical" not in caplog.text
