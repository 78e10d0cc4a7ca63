"""Per-block sharpness probe (hasten.methods.blockwise_lr.sharpness)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from hasten.errors import ConfigError
from hasten.methods.blockwise_lr import block_sharpness, plot_sharpness, ratios_from_sharpness, tensor_sharpness
from hasten.model import GPT, model_config
from hasten.optim.blocks import classify_model


def _rows(vocab: int, shape=(2, 9), seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_probe_returns_every_block_type_and_leaves_model_alone(preset):
    torch.manual_seed(0)
    model = GPT(model_config(preset))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [_rows(model.config.vocab_size, seed=s) for s in range(3)]
    sharpness = block_sharpness(model, batches, generator=torch.Generator().manual_seed(0))
    assert set(sharpness) == set(classify_model(model).values())
    assert all(math.isfinite(v) and v > 0 for v in sharpness.values())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # per-tensor values aggregate (numel-weighted) to the block values
    per_tensor = tensor_sharpness(model, batches, generator=torch.Generator().manual_seed(0))
    blocks = classify_model(model)
    params = dict(model.named_parameters())
    for block, value in sharpness.items():
        names = [n for n, b in blocks.items() if b == block]
        weighted = sum(per_tensor[n] * params[n].numel() for n in names) / sum(params[n].numel() for n in names)
        assert weighted == pytest.approx(value, rel=1e-9)


def _exact_gauss_newton_trace(model: GPT, rows: torch.Tensor) -> dict[str, float]:
    """Tr(GN_bb)/#params(b) of the per-token mean loss, from the Jacobian of the logits (no sampling).

    For token i with softmax p_i and logit Jacobian J_i, E_y ||∇(-log p_i(y))||² = tr(J_iᵀ (diag p_i - p_i p_iᵀ) J_i):
    the expected per-sample squared gradient norm that N·||ḡ||² estimates.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    vocab = model.config.vocab_size
    jac = jacrev(lambda ps: functional_call(model, ps, (rows[:, :-1],)).reshape(-1, vocab))(params)
    with torch.no_grad():
        probs = model(rows[:, :-1]).reshape(-1, vocab).softmax(-1)
    softmax_hessian = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    blocks = classify_model(model)
    trace: dict[str, float] = {}
    numel: dict[str, int] = {}
    for name, j in jac.items():
        j = j.reshape(j.shape[0], vocab, -1)
        gram = j @ j.transpose(1, 2)  # (N, V, V) per token
        block = blocks[name]
        trace[block] = trace.get(block, 0.0) + (softmax_hessian * gram).sum().item() / j.shape[0]
        numel[block] = numel.get(block, 0) + params[name].numel()
    return {b: trace[b] / numel[b] for b in trace}


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # jacrev through SDPA's backward
def test_sampled_label_estimate_matches_mean_per_token_squared_gradient_float64():
    """Spec §1.9.4: N·||ḡ||² with labels sampled from the softmax ≈ mean per-sample E||g_i||², within noise."""
    torch.manual_seed(0)
    cfg = model_config("tiny-llama", vocab_size=8, d_model=16, n_heads=2, n_kv_heads=1, n_layers=1, max_seq_len=16)
    model = GPT(cfg).double()
    rows = _rows(cfg.vocab_size, shape=(2, 7))
    exact = _exact_gauss_newton_trace(model, rows)

    draws = 120
    gen = torch.Generator().manual_seed(0)
    samples = [block_sharpness(model, [rows], generator=gen) for _ in range(draws)]
    assert set(samples[0]) == set(exact)
    for block, expected in exact.items():
        values = torch.tensor([s[block] for s in samples], dtype=torch.float64)
        mean, stderr = values.mean().item(), values.std().item() / math.sqrt(draws)
        assert stderr < 0.1 * mean, (
            block
        )  # the check is sharp enough to catch a factor-of-T (sequences vs tokens) error
        assert abs(mean - expected) < 4 * stderr, (block, mean, expected, stderr)


def test_true_labels_option_and_no_batches():
    model = GPT(model_config("tiny"))
    rows = _rows(model.config.vocab_size)
    sampled = block_sharpness(model, [rows], generator=torch.Generator().manual_seed(0))
    true_labels = block_sharpness(model, [rows], sample_labels=False)
    assert set(true_labels) == set(sampled) and true_labels != sampled
    assert true_labels == block_sharpness(model, [rows], sample_labels=False)  # no randomness without sampling
    with pytest.raises(ConfigError, match="no batches"):
        block_sharpness(model, [])


def test_ratios_from_sharpness_sqrt_and_clip():
    sharpness = {"emb": 1e-6, "qk": 0.04, "ffn": 0.25, "vo": 1.0, "norm": 4.0, "head": 8.0}
    ratios = ratios_from_sharpness(sharpness)
    assert ratios["norm"] == 1.0
    assert ratios["vo"] == pytest.approx(2.0)  # sqrt(4 / 1)
    assert ratios["ffn"] == pytest.approx(4.0)
    assert ratios["qk"] == pytest.approx(10.0)
    assert ratios["emb"] == 16.0  # clipped above
    assert ratios["head"] == 1.0  # sharper than the reference: never below base LR
    assert ratios_from_sharpness(sharpness, power=1.0)["vo"] == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="reference"):
        ratios_from_sharpness({"emb": 1.0})


def test_plot_sharpness_writes_png(tmp_path):
    path = plot_sharpness(
        {"emb": 1e-4, "qk": 1e-3, "ffn": 1e-2, "vo": 3e-2, "norm": 1.0}, tmp_path / "plots" / "sharpness.png"
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
