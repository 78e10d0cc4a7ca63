"""Block classification (hasten.optim.blocks) and Blockwise-LR param groups (hasten.optim.blockwise)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from hasten.errors import ConfigError
from hasten.model import GPT, model_config
from hasten.optim.blocks import BLOCK_TYPES, classify_model, classify_param
from hasten.optim.blockwise import DEFAULT_RATIOS, blockwise_param_groups, set_group_lrs


def _expected_block(name: str) -> str:
    """An independent statement of the mapping for hasten names, by module path rather than regex."""
    module = name.rsplit(".", 1)[0]
    leaf = module.split(".")[-1]
    if module == "embed_tokens":
        return "emb"
    if module == "embed_positions":
        return "pos_emb"
    if module == "lm_head":
        return "head"
    if leaf in ("attn_norm", "mlp_norm", "final_norm"):
        return "norm"
    if leaf in ("q_proj", "k_proj"):
        return "qk"
    if leaf in ("v_proj", "o_proj"):
        return "vo"
    if leaf in ("gate_proj", "up_proj", "down_proj"):
        return "ffn"
    raise AssertionError(f"test does not know {name}")


@pytest.mark.parametrize(
    "preset, overrides",
    [("tiny", {}), ("tiny-llama", {}), ("tiny-llama", {"n_layers": 3, "n_kv_heads": 1, "tie_embeddings": False})],
)
def test_every_parameter_lands_in_its_block(preset, overrides):
    model = GPT(model_config(preset, **overrides))
    blocks = classify_model(model)
    names = [n for n, _ in model.named_parameters()]
    assert list(blocks) == names  # every parameter, each once (a tied head is one tensor)
    for name in names:
        assert blocks[name] == _expected_block(name), name


def test_llama_counts_match_spec():
    # for an L-layer LLaMA, embed 1, head 1, norm 2L+1, qk 2L, vo 2L, mlp 3L
    L = 3
    model = GPT(model_config("tiny-llama", n_layers=L, n_kv_heads=1))
    assert model.config.n_kv_heads != model.config.n_heads and not model.config.tie_embeddings
    counts = Counter(classify_model(model).values())
    assert counts == {"emb": 1, "head": 1, "norm": 2 * L + 1, "qk": 2 * L, "vo": 2 * L, "ffn": 3 * L}


def test_gpt2_counts_with_biases_and_tied_head():
    L = 2
    counts = Counter(classify_model(GPT(model_config("tiny", n_layers=L))).values())
    # weights and biases: norms 2L+1 LayerNorms x (w, b); q,k / v,o / up,down each x (w, b); no separate head (tied)
    assert counts == {"emb": 1, "pos_emb": 1, "norm": 2 * (2 * L + 1), "qk": 4 * L, "vo": 4 * L, "ffn": 4 * L}


def test_tied_llama_has_no_head_block():
    counts = Counter(classify_model(GPT(model_config("tiny-llama", tie_embeddings=True))).values())
    assert "head" not in counts and counts["emb"] == 1


HF_GPT2 = {
    "transformer.wte.weight": "emb",
    "transformer.wpe.weight": "pos_emb",
    "transformer.h.0.ln_1.weight": "norm",
    "transformer.h.0.ln_1.bias": "norm",
    "transformer.h.11.ln_2.weight": "norm",
    "transformer.ln_f.bias": "norm",
    "transformer.h.0.attn.c_proj.weight": "vo",
    "transformer.h.0.attn.c_proj.bias": "vo",
    "transformer.h.0.mlp.c_proj.weight": "ffn",
    "transformer.h.0.mlp.c_fc.bias": "ffn",
    "transformer.h.3.attn.q_attn.weight": "qk",
    "transformer.h.3.attn.k_attn.weight": "qk",
    "transformer.h.3.attn.v_attn.weight": "vo",
    "lm_head.weight": "head",
    "h.0.attn.c_proj.weight": "vo",  # bare GPT2Model
}
HF_LLAMA = {
    "model.embed_tokens.weight": "emb",
    "lm_head.weight": "head",
    "model.norm.weight": "norm",
    "model.layers.0.input_layernorm.weight": "norm",
    "model.layers.21.post_attention_layernorm.weight": "norm",
    "model.layers.0.self_attn.q_proj.weight": "qk",
    "model.layers.0.self_attn.k_proj.weight": "qk",
    "model.layers.0.self_attn.q_proj.bias": "qk",  # Qwen-style bias follows its matrix
    "model.layers.0.self_attn.v_proj.weight": "vo",
    "model.layers.0.self_attn.v_proj.bias": "vo",
    "model.layers.0.self_attn.o_proj.weight": "vo",
    "model.layers.0.mlp.gate_proj.weight": "ffn",
    "model.layers.0.mlp.up_proj.weight": "ffn",
    "model.layers.0.mlp.down_proj.weight": "ffn",
    "layers.1.self_attn.k_proj.weight": "qk",  # bare LlamaModel
}


@pytest.mark.parametrize("name, block", sorted({**HF_GPT2, **HF_LLAMA}.items()))
def test_hf_names(name, block):
    assert classify_param(name) == block
    assert classify_param("_orig_mod.module." + name) == block  # torch.compile / DDP wrappers


def test_fused_c_attn_is_an_error_unless_overridden():
    with pytest.raises(ConfigError, match="fused"):
        classify_param("transformer.h.0.attn.c_attn.weight")
    assert classify_param("transformer.h.0.attn.c_attn.weight", {"*.attn.c_attn.*": "qk"}) == "qk"


def test_unknown_parameter_raises_naming_it_and_the_fix():
    model = GPT(model_config("tiny"))
    model.adapter_scale = nn.Parameter(torch.ones(3))
    with pytest.raises(ConfigError, match="adapter_scale") as err:
        classify_model(model)
    assert "overrides" in str(err.value)
    blocks = classify_model(model, overrides={"adapter_*": "norm"})
    assert blocks["adapter_scale"] == "norm"
    with pytest.raises(ConfigError, match="adapter_scale"):
        blockwise_param_groups(model, 0.1, DEFAULT_RATIOS)


def test_overrides_win_and_bad_block_is_rejected():
    assert classify_param("blocks.0.attn.v_proj.weight", {"blocks.*.attn.v_proj.*": "qk"}) == "qk"
    with pytest.raises(ConfigError, match="not a block type"):
        classify_param("blocks.0.attn.v_proj.weight", {"*": "attention"})


def test_wrapper_prefixes_are_stripped():
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module, attr: str):
            super().__init__()
            setattr(self, attr, inner)

    model = GPT(model_config("tiny"))
    wrapped = Wrapper(Wrapper(model, "_orig_mod"), "module")  # names: module._orig_mod.embed_tokens.weight, ...
    assert classify_model(wrapped) == classify_model(model)


# -- Blockwise param groups ----------------------------------------------------------------------


def test_groups_cover_every_parameter_once_with_ratios_and_decay():
    model = GPT(model_config("tiny"))
    groups = blockwise_param_groups(model, 0.1, DEFAULT_RATIOS)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    named = dict(model.named_parameters())
    for g in groups:
        assert set(g) >= {"params", "param_names", "block", "lr_ratio", "weight_decay"}
        assert [named[n] for n in g["param_names"]] == g["params"]
        assert g["lr_ratio"] == DEFAULT_RATIOS[g["block"]]
        assert all(p.dim() >= 2 for p in g["params"]) == (g["weight_decay"] == 0.1)  # "matrices" policy
    assert {g["block"] for g in groups} == {"emb", "pos_emb", "qk", "vo", "ffn", "norm"}


def test_decay_all_policy_and_none_ratios():
    model = GPT(model_config("tiny-llama"))
    groups = blockwise_param_groups(model, 0.1, None, decay_policy="all")
    assert all(g["weight_decay"] == 0.1 and g["lr_ratio"] == 1.0 for g in groups)
    assert len(groups) == len({g["block"] for g in groups})  # one group per block when everything decays
    with pytest.raises(ConfigError, match="decay_policy"):
        blockwise_param_groups(model, 0.1, None, decay_policy="some")


def test_unknown_ratio_key_lists_allowed_blocks():
    model = GPT(model_config("tiny"))
    with pytest.raises(ConfigError, match="embedding") as err:
        blockwise_param_groups(model, 0.1, {"embedding": 10})
    for block in BLOCK_TYPES:
        assert block in str(err.value)
    with pytest.raises(ConfigError, match="positive"):
        blockwise_param_groups(model, 0.1, {"emb": -1})


def test_group_lrs_follow_ratios():
    # at the end of warmup: lr_b / lr_norm is the ratio
    model = GPT(model_config("tiny-llama"))
    opt = torch.optim.AdamW(blockwise_param_groups(model, 0.1, DEFAULT_RATIOS, base_lr=1e-3), lr=123.0)
    assert {g["block"]: g["lr"] for g in opt.param_groups} == {
        b: DEFAULT_RATIOS[b] * 1e-3 for b in ("emb", "head", "qk", "vo", "ffn", "norm")
    }
    set_group_lrs(opt, 2e-3)
    norm_lr = next(g["lr"] for g in opt.param_groups if g["block"] == "norm")
    for g in opt.param_groups:
        assert g["lr"] / norm_lr == pytest.approx(DEFAULT_RATIOS[g["block"]], rel=1e-12)


def _train(model: GPT, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, model.config.vocab_size, (2, 17), generator=gen)
        opt.zero_grad(set_to_none=True)
        model(rows[:, :-1], rows[:, 1:]).backward()
        opt.step()


@pytest.mark.parametrize("ratios", [None, dict.fromkeys(BLOCK_TYPES, 1)])
def test_unit_ratios_are_bitwise_plain_two_group_adamw(ratios):
    torch.manual_seed(0)
    reference = GPT(model_config("tiny"))
    model = copy.deepcopy(reference)
    initial = copy.deepcopy(reference)
    decay = [p for p in reference.parameters() if p.dim() >= 2]
    no_decay = [p for p in reference.parameters() if p.dim() < 2]
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    plain = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], **kwargs
    )
    blockwise = torch.optim.AdamW(blockwise_param_groups(model, 0.1, ratios, base_lr=3e-3), **kwargs)
    assert len(blockwise.param_groups) > 2
    _train(reference, plain, 50)
    _train(model, blockwise, 50)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(reference.embed_tokens.weight, initial.embed_tokens.weight)  # it trained
