"""The decoder model: shapes, causality, RoPE, naming scheme, init, parameter/FLOP accounting, validation."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hasten.cli import main
from hasten.errors import ConfigError
from hasten.model import GPT, PRESETS, ModelConfig, apply_rope, count_params, flops_per_token, model_config, rope_tables


def _model(name: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config(name, **overrides)).eval()


def _tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=g)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_output_shapes_and_loss(name):
    model = _model(name)
    cfg = model.config
    idx = _tokens(cfg, 3, 17)
    logits = model(idx)
    assert logits.shape == (3, 17, cfg.vocab_size)
    assert logits.dtype == torch.float32
    targets = _tokens(cfg, 3, 17, seed=2)
    loss = model(idx, targets)
    assert loss.ndim == 0
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    # an untrained model with small init predicts close to uniform: loss near ln(V)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5


def test_tiny_llama_uses_grouped_query_attention():
    model = _model("tiny-llama")
    cfg = model.config
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (4, 2, 8)
    attn = model.blocks[0].attn
    assert attn.q_proj.weight.shape == (cfg.d_model, cfg.d_model)
    assert attn.k_proj.weight.shape == (cfg.n_kv_heads * cfg.head_dim, cfg.d_model)
    assert attn.v_proj.weight.shape == (cfg.n_kv_heads * cfg.head_dim, cfg.d_model)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_causality(name):
    model = _model(name)
    cfg = model.config
    idx = _tokens(cfg, 2, 24)
    base = model(idx)
    for t in (0, 7, 22):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + torch.arange(23 - t)) % cfg.vocab_size
        out = model(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])  # later positions do see the change


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_every_prefix_length_matches_full_sequence(name):
    """RoPE tables / learned positions are sliced correctly at every length up to max_seq_len."""
    model = _model(name)
    cfg = model.config
    idx = _tokens(cfg, 1, cfg.max_seq_len)
    full = model(idx)
    for length in range(1, cfg.max_seq_len + 1):
        torch.testing.assert_close(model(idx[:, :length]), full[:, :length], rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(_tokens(cfg, 1, cfg.max_seq_len + 1))


def test_rope_scores_depend_only_on_relative_position():
    head_dim, length = 8, 40
    cos, sin = rope_tables(head_dim, length, 10000.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(head_dim, generator=g, dtype=torch.float64)
    qs = apply_rope(q.expand(1, 1, length, head_dim), cos, sin)[0, 0]
    ks = apply_rope(k.expand(1, 1, length, head_dim), cos, sin)[0, 0]
    # position 0 is the identity rotation, and rotations preserve norms
    torch.testing.assert_close(qs[0], q)
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(length))
    for offset in (0, 3, 17):
        scores = torch.stack([qs[m] @ ks[m - offset] for m in range(offset, length)])
        torch.testing.assert_close(scores, scores[0].expand_as(scores), rtol=0, atol=1e-10)
    assert not torch.isclose(qs[5] @ ks[0], qs[5] @ ks[3])


def test_tied_and_untied_heads():
    tied = _model("tiny")
    assert tied.config.tie_embeddings
    assert tied.output_weight() is tied.embed_tokens.weight
    assert not any(name.startswith("lm_head") for name, _ in tied.named_parameters())
    idx = _tokens(tied.config, 2, 8)
    tied(idx, idx).backward()
    assert tied.embed_tokens.weight.grad is not None

    untied = _model("tiny", tie_embeddings=False)
    assert untied.output_weight() is untied.lm_head.weight
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    cfg = untied.config
    assert count_params(untied)["total"] == count_params(tied)["total"] + cfg.vocab_size * cfg.d_model

    llama_tied = _model("tiny-llama", tie_embeddings=True)
    assert not hasattr(llama_tied, "lm_head")
    assert _model("tiny-llama").output_weight() is not _model("tiny-llama").embed_tokens.weight


def _expected_names(cfg: ModelConfig) -> set[str]:
    """The documented naming scheme (module docstring of hasten.model), written out independently."""
    suffixes = ("weight", "bias") if cfg.bias else ("weight",)
    norm_suffixes = ("weight", "bias") if cfg.family == "gpt2" and cfg.bias else ("weight",)
    names = {"embed_tokens.weight"}
    if cfg.family == "gpt2":
        names.add("embed_positions.weight")
    mlp = ("gate", "up", "down") if cfg.family == "llama" else ("up", "down")
    for i in range(cfg.n_layers):
        for norm in ("attn_norm", "mlp_norm"):
            names |= {f"blocks.{i}.{norm}.{s}" for s in norm_suffixes}
        names |= {f"blocks.{i}.attn.{p}_proj.{s}" for p in "qkvo" for s in suffixes}
        names |= {f"blocks.{i}.mlp.{p}_proj.{s}" for p in mlp for s in suffixes}
    names |= {f"final_norm.{s}" for s in norm_suffixes}
    if not cfg.tie_embeddings:
        names.add("lm_head.weight")
    return names


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_parameter_names_follow_documented_scheme(name):
    model = _model(name)
    names = {n for n, _ in model.named_parameters()}
    assert names == _expected_names(model.config)
    pattern = re.compile(
        r"^(embed_tokens\.weight|embed_positions\.weight|lm_head\.weight|final_norm\.(weight|bias)|"
        r"blocks\.\d+\.(attn_norm|mlp_norm)\.(weight|bias)|blocks\.\d+\.attn\.[qkvo]_proj\.(weight|bias)|"
        r"blocks\.\d+\.mlp\.(gate|up|down)_proj\.(weight|bias))$"
    )
    assert all(pattern.match(n) for n in names)
    # RoPE tables are derived from the config, so they never enter checkpoints
    assert set(model.state_dict()) == names


def test_init_std_scales_residual_projections():
    cfg = model_config("cpu-small")  # large enough for tight std estimates
    model = GPT(cfg)
    model.reset_parameters(torch.Generator().manual_seed(0))
    std = cfg.init_std
    residual = std / math.sqrt(2 * cfg.n_layers)
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.all(p == 1), name
        else:
            target = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            assert abs(p.std().item() / target - 1) < 0.05, (name, p.std().item(), target)
            assert abs(p.mean().item()) < 0.1 * target, name
    # the generator makes init reproducible
    other = GPT(cfg)
    other.reset_parameters(torch.Generator().manual_seed(0))
    for name, p in other.named_parameters():
        assert torch.equal(p, params[name]), name


def test_count_params_by_hand():
    # tiny: gpt2, V=512, L=2, d=32, ff=128, context 64, biases, tied head
    V, L, d, ff, ctx = 512, 2, 32, 128, 64
    block = 2 * (2 * d) + 4 * (d * d + d) + (d * ff + ff) + (ff * d + d)
    total = V * d + ctx * d + L * block + 2 * d
    assert count_params(_model("tiny")) == {"total": total, "non_embedding": total - V * d - ctx * d}
    assert total == 43_904

    # tiny-llama: V=512, L=2, d=32, 4 heads / 2 kv heads of 8, SwiGLU ff=ceil(85/32)*32=96, no biases, untied
    V, L, d, kv, ff = 512, 2, 32, 2 * 8, 96
    assert model_config("tiny-llama").d_ff == ff
    block = 2 * d + (d * d + 2 * d * kv + d * d) + 3 * d * ff
    total = V * d + L * block + d + V * d
    assert count_params(_model("tiny-llama")) == {"total": total, "non_embedding": total - V * d}
    assert total == 57_504


def test_flops_per_token_by_hand():
    # 6 x (matmul weights incl. the head) + 12 * L * d * T (attention scores and values), PaLM appendix B
    V, L, d, ff = 512, 2, 32, 128
    matmul = L * (4 * d * d + 2 * d * ff) + d * V
    assert flops_per_token(model_config("tiny"), 64) == 6 * matmul + 12 * L * d * 64
    assert flops_per_token(model_config("tiny"), 16) == 6 * matmul + 12 * L * d * 16

    kv, ff = 16, 96
    matmul = L * (2 * d * d + 2 * d * kv + 3 * d * ff) + d * V
    assert flops_per_token(model_config("tiny-llama"), 64) == 6 * matmul + 12 * L * d * 64
    # a tied head still costs its matmul: FLOPs exceed 6 x non-embedding params by the head
    small = model_config("cpu-small")
    n = count_params(GPT(small))["non_embedding"]
    assert flops_per_token(small, 1) > 6 * n


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"family": "bert"}, "family"),
        ({"n_heads": 3}, "n_heads=3 does not divide d_model=32"),
        ({"n_kv_heads": 3}, "n_kv_heads=3 does not divide n_heads"),
        ({"n_layers": 0}, "n_layers=0 must be a whole number"),
        (
            {"d_ff": 2**56},
            "d_ff=72057594037927936 must be a whole number in [1, 16,777,216]",
        ),  # found by the config fuzz
        ({"d_model": 64.5}, "d_model=64.5 must be a whole number"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"family": "llama", "d_model": 36, "n_heads": 4, "n_kv_heads": 4}, "must be even for RoPE"),
        ({"norm_eps": 0.0}, "norm_eps=0.0 must be a positive number"),
    ],
)
def test_validate_errors_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        model_config("tiny", **overrides)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith("model: ")


def test_unknown_preset_and_dict_configs():
    with pytest.raises(ConfigError, match="unknown"):
        model_config("tiny-gpt")
    cfg = model_config({"preset": "tiny", "n_layers": 3})
    assert (cfg.n_layers, cfg.d_model, cfg.vocab_size) == (3, 32, 512)
    assert model_config({"family": "llama", "d_model": 64, "n_heads": 4}).n_kv_heads == 4
    for name in PRESETS:  # every preset is valid and family defaults are applied
        preset = model_config(name)
        assert preset.bias == (preset.family == "gpt2")
        assert preset.n_kv_heads is not None and preset.d_ff is not None


def test_info_command_prints_counts(capsys):
    assert main(["info", "tiny-llama", "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    counts = count_params(_model("tiny-llama"))
    assert f"{counts['total']:,}" in out
    assert f"{counts['non_embedding']:,}" in out
    assert f"{flops_per_token(model_config('tiny-llama'), 32):,.0f}" in out
    assert "llama, 2 layers, d_model 32, 4 heads (2 kv)" in out


@pytest.mark.parametrize("family", ["tiny", "tiny-llama"])
def test_dropout_acts_only_while_training_and_draws_nothing_at_zero(family):
    torch.manual_seed(0)
    plain = GPT(model_config(family))
    dropped = GPT(model_config(family, dropout=0.1))
    dropped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    plain.train()(idx)
    assert torch.equal(torch.get_rng_state(), state)  # dropout 0: no random numbers drawn (exact resume, golden traces)
    dropped.train()
    a, b = dropped(idx), dropped(idx)
    assert not torch.equal(a, b) and not torch.equal(torch.get_rng_state(), state)
    assert torch.equal(dropped.eval()(idx), plain.eval()(idx))  # eval: the same function


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_dropout_out_of_range_is_one_line(bad):
    with pytest.raises(ConfigError, match="dropout"):
        GPT(model_config("tiny", dropout=bad))
