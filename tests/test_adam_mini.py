"""Adam-mini (hasten.optim.adam_mini): reference equivalence, partition, state, checkpoints."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from hasten.errors import ConfigError
from hasten.model import GPT, model_config
from hasten.optim.adam_mini import AdamMini, state_bytes
from hasten.optim.blockwise import DEFAULT_RATIOS, blockwise_param_groups

REF_CFG = dict(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=128)


def hf_llama_name(name: str) -> str:
    """hasten llama name -> HF LlamaForCausalLM name, which adam-mini 1.1.1's substring rules recognize."""
    name = name.replace("blocks.", "model.layers.").replace(".attn.", ".self_attn.")
    name = name.replace("attn_norm", "input_layernorm").replace("mlp_norm", "post_attention_layernorm")
    if name.startswith("embed_tokens"):
        name = "model." + name
    return name.replace("final_norm", "model.norm")


def _batches(vocab: int, steps: int, seed: int = 1, shape=(4, 17)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, shape, generator=gen) for _ in range(steps)]


def _step(model: GPT, opt: torch.optim.Optimizer, rows: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model(rows[:, :-1], rows[:, 1:]).backward()
    opt.step()


def _make_adam_mini(model: GPT, lr=1e-3, wd=0.1, ratios=None, **kwargs) -> AdamMini:
    cfg = model.config
    return AdamMini(
        blockwise_param_groups(model, wd, ratios),
        lr=lr,
        betas=(0.9, 0.95),
        weight_decay=wd,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        **kwargs,
    )


@pytest.mark.parametrize("dtype, param_tol, v_tol", [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-12, 1e-12)])
def test_matches_adam_mini_package(dtype, param_tol, v_tol):
    """Against the adam-mini package: tiny LLaMA (dim 64, 4 heads, 2 kv heads, 2 layers), 20 steps at wd 0.1, side by
    side."""
    import adam_mini as package  # the reference package (a dev dependency)

    torch.manual_seed(0)
    ours_model = GPT(model_config("tiny-llama", **REF_CFG)).to(dtype)
    ref_model = copy.deepcopy(ours_model)
    ours = _make_adam_mini(ours_model)
    ref = package.Adam_mini(
        [(hf_llama_name(n), p) for n, p in ref_model.named_parameters()],
        lr=1e-3,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        dim=64,
        n_heads=4,
        n_kv_heads=2,
        verbose=False,
    )
    # the package decides by substring; check it files every HF name where our classifier does
    ref_groups = {g["name"]: g for g in ref.param_groups}
    assert all(hf_llama_name(n) in ref_groups for n, _ in ours_model.named_parameters())
    for rows in _batches(128, 20):
        _step(ours_model, ours, rows)
        _step(ref_model, ref, rows)

    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        rel = ((a - b).abs().max() / a.abs().max()).item()
        assert rel <= param_tol, (name, rel)
        v_ours = ours.state[a]["exp_avg_sq"]
        v_ref = ref.state[b]["vmean"]
        assert v_ours.numel() == v_ref.numel(), name  # same partition
        torch.testing.assert_close(v_ours, v_ref.reshape(-1), rtol=v_tol, atol=0, msg=name)
        wd_ref = ref_groups[hf_llama_name(name)]["weight_decay"]
        wd_ours = next(g["weight_decay"] for g in ours.param_groups if any(p is a for p in g["params"]))
        assert wd_ours == wd_ref, name


def test_state_shapes_follow_partition():
    """Spec §2.5.3 on a GQA llama (untied head) and on gpt2 (biases: full Adam per coordinate)."""
    model = GPT(model_config("tiny-llama"))
    cfg = model.config
    opt = _make_adam_mini(model)
    _step(model, opt, _batches(cfg.vocab_size, 1)[0])
    for name, p in model.named_parameters():
        v = opt.state[p]["exp_avg_sq"]
        assert opt.state[p]["exp_avg"].shape == p.shape
        if name.endswith("q_proj.weight"):
            expected = cfg.n_heads
        elif name.endswith("k_proj.weight"):
            expected = cfg.n_kv_heads
        elif name.endswith(
            ("v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")
        ):
            expected = p.shape[0]
        elif name in ("embed_tokens.weight", "lm_head.weight"):
            expected = cfg.vocab_size
        elif "norm" in name:
            expected = 1
        else:
            raise AssertionError(name)
        assert v.shape == (expected,), name
    assert cfg.n_kv_heads < cfg.n_heads
    L = cfg.n_layers  # the partition's counts: 2L per-head (Q, K); V, O, 3L MLP, embedding, head per row; norms whole
    assert opt.partition_summary() == {
        "adam": 0,
        "head": 2 * L,
        "row": 2 * L + 3 * L + 2,
        "tensor": 2 * L + 1,
        "v_entries": sum(opt.state[p]["exp_avg_sq"].numel() for p in model.parameters()),
    }

    gpt2 = GPT(model_config("tiny"))
    opt = _make_adam_mini(gpt2)
    _step(gpt2, opt, _batches(gpt2.config.vocab_size, 1)[0])
    for name, p in gpt2.named_parameters():
        v = opt.state[p]["exp_avg_sq"]
        if name.endswith("bias"):
            assert v.numel() == p.numel(), name
        elif name == "embed_positions.weight" or "norm" in name:
            assert v.numel() == 1, name


def test_update_is_constant_within_each_block():
    """Spec §2.5.4: with wd 0, Δθ / m̂ = -lr / (sqrt(v̂_b) + eps) is one number per block."""
    torch.manual_seed(0)
    model = GPT(model_config("tiny-llama")).double()
    opt = _make_adam_mini(model, lr=1e-3, wd=0.0)
    batches = _batches(model.config.vocab_size, 3)
    for rows in batches[:2]:
        _step(model, opt, rows)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, opt, batches[2])
    checked = 0
    for name, p in model.named_parameters():
        state = opt.state[p]
        n_blocks = state["exp_avg_sq"].numel()
        m_hat = state["exp_avg"] / (1 - 0.9 ** state["step"])
        ratio = ((p.detach() - before[name]) / m_hat).reshape(n_blocks, -1)
        mask = m_hat.reshape(n_blocks, -1).abs() > 1e-12  # skip rows that never saw a gradient (unseen tokens)
        for row, keep in zip(ratio, mask):
            if keep.sum() > 1:
                vals = row[keep]
                assert (vals.max() - vals.min()).abs() <= 1e-6 * vals.abs().max(), name
                checked += 1
    assert checked > 100


def test_all_full_adam_equals_torch_adamw():
    """Spec §2.5.2: every parameter routed to the per-coordinate branch (names ending in `bias`) is AdamW.

    Teacher-forced: before each of 20 training steps, Adam-mini gets AdamW's weights and state, so every
    step's update is compared on its own. (Free-running trajectories agree only to rounding amplified by
    training: k_proj.bias has a gradient of pure rounding noise, which no batched implementation reproduces
    bit for bit, as torch's own fused and foreach AdamW do not either.)
    """
    torch.manual_seed(0)
    model = GPT(model_config("tiny"))
    twin = copy.deepcopy(model)
    names = [f"p{i}.bias" for i, _ in enumerate(model.parameters())]
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    mini = AdamMini(
        [{"params": list(model.parameters()), "param_names": names}], **kwargs, n_heads=2, block_overrides={"*": "ffn"}
    )
    adamw = torch.optim.AdamW(twin.parameters(), foreach=False, **kwargs)
    for rows in _batches(model.config.vocab_size, 20):
        with torch.no_grad():
            for a, b in zip(model.parameters(), twin.parameters()):
                a.copy_(b)
                if b in adamw.state:
                    ref = adamw.state[b]
                    mini.state[a].update(
                        step=ref["step"].clone(),
                        exp_avg=ref["exp_avg"].clone(),
                        exp_avg_sq=ref["exp_avg_sq"].reshape(-1).clone(),
                    )
        before = [b.detach().clone() for b in twin.parameters()]
        _step(model, mini, rows)
        _step(twin, adamw, rows)
        for (name, a), b, b0 in zip(model.named_parameters(), twin.parameters(), before):
            update = (b - b0).abs().max().item()
            assert update > 0, name
            rounding = 2 * torch.finfo(b.dtype).eps * b0.abs().max().item()  # of p + update, for weights near 1 (norms)
            torch.testing.assert_close(a - b0, b - b0, rtol=0, atol=1e-5 * update + rounding, msg=name)
            torch.testing.assert_close(
                mini.state[a]["exp_avg_sq"], adamw.state[b]["exp_avg_sq"].reshape(-1), rtol=1e-6, atol=0, msg=name
            )
            assert mini.state[a]["step"] == adamw.state[b]["step"]


def test_found_inf_skips_the_step_on_the_device():
    """GradScaler's protocol (torch's fused AdamW has it too): found_inf=1 leaves weights and state bit-identical,
    found_inf=0 is bit-identical to a plain step; either way no host sync."""
    torch.manual_seed(0)
    model = GPT(model_config("tiny-llama", **REF_CFG))
    plain, flagged = copy.deepcopy(model), copy.deepcopy(model)
    opt_plain, opt_flagged = _make_adam_mini(plain), _make_adam_mini(flagged)
    batches = _batches(128, 4)
    for i, rows in enumerate(batches):
        _step(plain, opt_plain, rows)
        weights = {k: v.clone() for k, v in flagged.state_dict().items()}
        state = copy.deepcopy(opt_flagged.state_dict())
        opt_flagged.zero_grad(set_to_none=True)
        flagged(rows[:, :-1], rows[:, 1:]).backward()
        if i in (0, 2):  # a skipped first step (fresh state) and a skipped later one
            next(flagged.parameters()).grad.fill_(float("nan"))
            opt_flagged.found_inf = torch.tensor(1.0)
            opt_flagged.step()
            assert all(torch.equal(v, weights[k]) for k, v in flagged.state_dict().items())
            after = opt_flagged.state_dict()["state"]
            assert all(
                torch.equal(after[j][key], state["state"][j][key]) for j in state["state"] for key in state["state"][j]
            )
            assert all(float(s["step"]) == 0 for s in after.values()) if i == 0 else True
            opt_flagged.zero_grad(set_to_none=True)
            flagged(rows[:, :-1], rows[:, 1:]).backward()
        opt_flagged.found_inf = torch.tensor(0.0)
        opt_flagged.step()
        del opt_flagged.found_inf
        for (name, a), b in zip(flagged.named_parameters(), plain.parameters()):
            assert torch.equal(a, b), (i, name)


def test_state_is_under_55_percent_of_adamw():
    model = GPT(model_config("cpu-small"))
    twin = copy.deepcopy(model)
    mini = _make_adam_mini(model)
    adamw = torch.optim.AdamW(blockwise_param_groups(twin, 0.1, None), lr=1e-3)
    rows = _batches(model.config.vocab_size, 1, shape=(1, 9))[0]
    _step(model, mini, rows)
    _step(twin, adamw, rows)
    ratio = state_bytes(mini) / state_bytes(adamw)
    assert 0.5 < ratio < 0.55, ratio


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(0)
    model = GPT(model_config("tiny"))
    opt = _make_adam_mini(model, ratios=DEFAULT_RATIOS)
    batches = _batches(model.config.vocab_size, 8)
    for rows in batches[:4]:
        _step(model, opt, rows)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    for rows in batches[4:]:
        _step(model, opt, rows)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = GPT(model_config("tiny"))
    resumed.load_state_dict(saved["model"])
    resumed_opt = _make_adam_mini(resumed, ratios=DEFAULT_RATIOS)
    resumed_opt.load_state_dict(saved["optim"])
    assert resumed_opt.param_groups[0]["block"] == opt.param_groups[0]["block"]
    for rows in batches[4:]:
        _step(resumed, resumed_opt, rows)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_missing_names_and_wrong_heads_are_config_errors():
    model = GPT(model_config("tiny-llama"))
    with pytest.raises(ConfigError, match="param_names"):
        AdamMini([{"params": list(model.parameters())}], n_heads=4)
    with pytest.raises(ConfigError, match="mystery"):
        AdamMini([{"params": [model.embed_tokens.weight], "param_names": ["mystery.weight"]}], n_heads=4)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        AdamMini(blockwise_param_groups(model, 0.0, None), n_heads=4)  # k_proj has 2 kv heads, told 4
    with pytest.raises(ConfigError, match="block_overrides"):
        AdamMini(blockwise_param_groups(model, 0.0, None, overrides={"lm_head.*": "emb"}), n_heads=4, n_kv_heads=2)


def test_new_params_get_fresh_state_and_resize_needs_rebuild():
    model = GPT(model_config("tiny-llama"))
    opt = _make_adam_mini(model)
    rows = _batches(model.config.vocab_size, 1)[0]
    _step(model, opt, rows)
    extra = torch.nn.Parameter(torch.randn(8, 32))
    opt.add_param_group({"params": [extra], "param_names": ["blocks.9.mlp.up_proj.weight"]})
    extra.grad = torch.ones_like(extra)
    opt.step()  # the model's grads are still there, so its parameters take a second step
    assert opt.state[extra]["step"] == 1 and opt.state[extra]["exp_avg_sq"].shape == (8,)
    assert opt.state[model.lm_head.weight]["step"] == 2

    with torch.no_grad():
        extra.data = torch.randn(16, 32)  # an in-place resize (e.g. width growth)
    extra.grad = torch.ones_like(extra)
    head_before = model.lm_head.weight.detach().clone()
    with pytest.raises(ConfigError, match="rebuild_partition"):
        opt.step()
    assert torch.equal(model.lm_head.weight, head_before)  # nothing was half-applied
    assert opt.rebuild_partition() == ["blocks.9.mlp.up_proj.weight"]
    opt.step()
    assert opt.state[extra]["step"] == 1 and opt.state[extra]["exp_avg_sq"].shape == (16,)
    assert opt.state[model.lm_head.weight]["step"] == 3  # other parameters keep their state


def test_accelerator_layout_gives_the_same_update(monkeypatch):
    """On accelerators the denominators are spread over the coordinates for torch's multi-tensor kernels; on CPU
    they are broadcast per row. Forcing the accelerator layout on CPU must give bit-identical weights and state."""
    import hasten.optim.adam_mini as adam_mini

    torch.manual_seed(0)
    model = GPT(model_config("tiny-llama", **REF_CFG))
    twin = copy.deepcopy(model)
    cpu_opt, spread_opt = _make_adam_mini(model, ratios=DEFAULT_RATIOS), _make_adam_mini(twin, ratios=DEFAULT_RATIOS)
    for i, rows in enumerate(_batches(128, 4)):
        _step(model, cpu_opt, rows)
        monkeypatch.setattr(adam_mini, "BROADCAST_DEVICES", ())
        spread_opt.found_inf = torch.tensor(0.0) if i % 2 else None
        _step(twin, spread_opt, rows)
        monkeypatch.setattr(adam_mini, "BROADCAST_DEVICES", ("cpu",))
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(cpu_opt.state[a]["exp_avg_sq"], spread_opt.state[b]["exp_avg_sq"]), name
