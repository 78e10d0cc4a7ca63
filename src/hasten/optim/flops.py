"""FLOPs of one optimizer step, so that an optimizer's own work is charged to a run's compute.

Convention: a matmul of (m x k) by (k x n) costs 2mnk (as torch.utils.flop_counter.FlopCounterMode counts it); an
elementwise arithmetic op costs one FLOP per element. The model's forward and backward are counted elsewhere
(hasten.model.flops_per_token); this module counts what `optimizer.step()` does on top of them.

- AdamW: 14 per parameter element: decoupled decay (1), m <- lerp(m, g, 1 - b1) (3), v <- b2 v + (1 - b2) g^2 (4),
  denom = sqrt(v) / sqrt(bc2) + eps (3), p <- p - lr / bc1 * m / denom (3). Blockwise LR changes only the groups' LRs.
- Adam-mini: 11 per element: decay (1), m (3), g^2 and its block sum (2), p update (3) with the per-block denominator
  broadcast (2); the per-block sqrt and v update are per block, not per element, and are left out (< 1 %).
- Muon (torch.optim.Muon) per hidden matrix of m x n with m <= n (the iteration runs on the wide orientation):
  momentum lerp and Nesterov lerp (6 per element), the Frobenius normalisation (3 per element), decay and update
  (3 per element), and `ns_steps` Newton-Schulz iterations, each X X^T (2 m^2 n), b A + c A A (2 m^3, plus 2 m^2
  elementwise) and a X + B X (2 m^2 n, plus 2 m n elementwise). The matmul part is exactly what FlopCounterMode counts.

Gradient clipping (3 per element, the same for every optimizer) belongs to the trainer's step and is not counted here.
"""

from __future__ import annotations

import torch

ADAMW_PER_ELEMENT = 14
ADAM_MINI_PER_ELEMENT = 11
MUON_PER_ELEMENT = 12


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _trained(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def adamw_step_flops(params) -> float:
    """FLOPs of one AdamW (or Adam) step over `params`."""
    return float(ADAMW_PER_ELEMENT * _numel(params))


def adam_mini_step_flops(params) -> float:
    """FLOPs of one Adam-mini step over `params` (per-block second moments)."""
    return float(ADAM_MINI_PER_ELEMENT * _numel(params))


def newton_schulz_matmul_flops(shape: tuple[int, ...], ns_steps: int) -> float:
    """Matmul FLOPs of torch.optim.Muon's Newton-Schulz orthogonalisation of one 2-D update of `shape`."""
    m, n = sorted(shape)
    return float(ns_steps * (4 * m * m * n + 2 * m**3))


def muon_step_flops(params, ns_steps: int) -> float:
    """FLOPs of one torch.optim.Muon step over 2-D `params`: elementwise work plus the Newton-Schulz iterations."""
    total = 0.0
    for p in params:
        m, n = sorted(p.shape)
        total += MUON_PER_ELEMENT * p.numel() + newton_schulz_matmul_flops(tuple(p.shape), ns_steps)
        total += ns_steps * (2 * m * m + 2 * m * n)  # the beta / alpha scalings of the two addmm's
    return total


def optimizer_step_flops(optimizer) -> float | None:
    """FLOPs of one step of `optimizer` as run on one process (None for an optimizer this module does not know).

    hasten's own optimizers report themselves (`step_flops()`); torch's AdamW / Adam / Muon are counted here.
    """
    if hasattr(optimizer, "step_flops"):
        return float(optimizer.step_flops())
    if isinstance(optimizer, (torch.optim.AdamW, torch.optim.Adam)):
        return adamw_step_flops(_trained(optimizer))
    if isinstance(optimizer, torch.optim.Muon):
        return sum(
            muon_step_flops([p for p in group["params"] if p.requires_grad], group["ns_steps"])
            for group in optimizer.param_groups
        )
    return None
