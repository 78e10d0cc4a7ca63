"""Per-block-type sharpness probe (Blockwise LR, arXiv 2502.19002 §3).

Average sharpness of block type b is S(b) = Tr(H_bb) / #params(b). We estimate Tr(H_bb) with the
Gauss-Newton / Fisher diagonal, which needs only one mini-batch gradient: with labels *sampled from
the model's own softmax* every per-token gradient g_i has zero mean (E_y ∇ log p(y) = 0) and the
tokens' labels are drawn independently, so for the mean loss over N tokens

    E ||ḡ||² = (1/N²) Σ_i E ||g_i||²    =>    N · ||ḡ||² is unbiased for mean_i E ||g_i||²,

and mean_i E ||g_i||² is exactly the trace of the Gauss-Newton matrix of the per-token mean loss
(the Fisher identity). With the true labels instead, N·||E ḡ||² is added (a bias that grows with N),
which is why sampling is the default.

**B counts tokens, not sequences.** hasten's loss is a mean over every token, and the label samples
are independent per token, so the variance argument above runs over tokens: N = B_seqs · T. Counting
sequences would give the mean per-*sequence* squared gradient, which is Tr(GN)/T (each sequence's loss
is itself a mean over T tokens) - the same for every block up to the constant T, so orderings and the
ratios below do not depend on the choice, but only the token count estimates Tr(H)/#params itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hasten.errors import ConfigError
from hasten.optim.blocks import BLOCK_TYPES, classify_model, normalize_name


def _logits(output) -> torch.Tensor:
    logits = getattr(output, "logits", output)  # hasten returns logits; HF models return an output object
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits


def _probe(
    model: nn.Module, batches: Iterable[torch.Tensor], sample_labels: bool, generator: torch.Generator | None
) -> tuple[dict[str, float], dict[str, int]]:
    """Per-tensor N·||g||² averaged over batches (float64), and each tensor's numel."""
    named = [(normalize_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    device = params[0].device
    totals = dict.fromkeys(names, 0.0)
    n_batches = 0
    was_training = model.training
    model.eval()  # no dropout noise in the curvature estimate
    try:
        for batch in batches:
            batch = batch.to(device)
            if batch.dim() != 2 or batch.shape[1] < 2:
                raise ConfigError(f"sharpness probe batches must be (B, T+1) token rows, got shape {list(batch.shape)}")
            inputs, targets = batch[:, :-1], batch[:, 1:]
            logits = _logits(model(inputs))
            flat = logits.reshape(-1, logits.shape[-1])
            if sample_labels:
                with torch.no_grad():
                    probs = torch.softmax(
                        flat.detach(), dim=-1
                    )  # the logits' precision (>= fp32): a float64 copy of B*T*V is GBs on GPU
                    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                labels = targets.reshape(-1)
            loss = F.cross_entropy(flat, labels)
            # autograd.grad leaves .grad untouched, so the probe can run between training steps
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            n_tokens = labels.numel()
            for name, grad in zip(names, grads):
                if grad is not None:
                    totals[name] += n_tokens * grad.detach().double().square().sum().item()
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ConfigError("sharpness probe got no batches; pass at least one (B, T+1) batch (10-50 recommended)")
    return {n: total / n_batches for n, total in totals.items()}, {n: p.numel() for n, p in named}


def tensor_sharpness(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    sample_labels: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Average sharpness of every parameter tensor (N·||g||²/numel, averaged over batches): the per-layer
    distribution."""
    sq_norms, numels = _probe(model, batches, sample_labels, generator)
    return {name: sq_norms[name] / numels[name] for name in sq_norms}


def block_sharpness(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    overrides: dict[str, str] | None = None,
    sample_labels: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """S(b) ≈ N·||∇_b L||² / #params(b) per block type present in the model, averaged over batches.

    `batches` yields (B, T+1) token rows (inputs are [:, :-1]); N = B·T tokens (see the module
    docstring for why tokens). Labels are sampled from the model's softmax unless `sample_labels` is
    False (then the data's next tokens are used, which adds the squared full-batch gradient).
    The expected ordering after ~2% of training is emb < qk < ffn < vo < norm.
    """
    blocks = classify_model(model, overrides)  # before the probe: an unknown name fails fast
    sq_norms, numels = _probe(model, batches, sample_labels, generator)
    sums = dict.fromkeys(BLOCK_TYPES, 0.0)
    counts = dict.fromkeys(BLOCK_TYPES, 0)
    for name, block in blocks.items():
        sums[block] += sq_norms[name]
        counts[block] += numels[name]
    return {block: sums[block] / counts[block] for block in BLOCK_TYPES if counts[block]}


def ratios_from_sharpness(
    sharpness: dict[str, float], reference: str = "norm", power: float = 0.5, clip: tuple[float, float] = (1.0, 16.0)
) -> dict[str, float]:
    """LR ratios for an `auto` mode: r(b) = clip((S_ref / S_b) ** power), the reference block gets 1.

    The square root (power 0.5) is our choice, not the paper's (the paper hand-tuned 10/8/6/4/1): Adam
    divides by sqrt(v) and v tracks the Fisher diagonal, so the preconditioned curvature of a block
    scales like sqrt(S_b); equalizing lr_b · sqrt(S_b) across blocks gives (S_ref/S_b)^(1/2). It also
    maps the measured orders-of-magnitude spread onto the paper's 1-10 range instead of the clip.
    Blocks sharper than the reference are clipped to 1, never below the base LR.
    """
    if reference not in sharpness:
        raise ConfigError(
            f"reference block {reference!r} has no sharpness value; measured blocks: {', '.join(sharpness)}"
        )
    low, high = clip
    if not 0 < low <= high:
        raise ConfigError(f"ratio clip {clip} must satisfy 0 < low <= high")
    ref = sharpness[reference]
    if not (math.isfinite(ref) and ref > 0):
        raise ConfigError(f"reference sharpness S({reference})={ref} must be a positive finite number")
    ratios = {}
    for block, value in sharpness.items():
        raw = high if value <= 0 else (ref / value) ** power
        ratios[block] = 1.0 if block == reference else min(max(raw, low), high)
    return ratios


def plot_sharpness(
    sharpness: dict[str, float], path: str | Path, title: str = "average sharpness per block type"
) -> Path:
    """Bar chart (log scale) of per-block sharpness, written as a PNG; uses the Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = [b for b in BLOCK_TYPES if b in sharpness] + [b for b in sharpness if b not in BLOCK_TYPES]
    values = [sharpness[b] for b in order]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(order, values, color="tab:blue")
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    ax.set_ylabel("Tr(H_b) / #params(b)")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
