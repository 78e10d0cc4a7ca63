"""Training-instability signals used by the sequence-length-warmup paper (arXiv 2108.06084).

The paper links instability to extreme gradient variance, measured through Adam's second moment
``exp_avg_sq``, and counts loss spikes with a "loss ratio" (current loss / minimum loss so far).
``optimizer_moment_stats`` mirrors Megatron-DeepSpeed's ``--log-optimizer-state``: L1, L2 and
max|.| of exp_avg_sq, of its square root, of exp_avg and of the weights. Values are for the local
process; under data parallelism with sharded optimizer state, sum squared L2 and L1 across ranks and
take the max of the maxima.
"""

from __future__ import annotations

import math

import torch

# (log name, optimizer-state key or None for the parameter itself, transform)
_MOMENTS = (
    ("exp_avg_sq", "exp_avg_sq", None),
    ("exp_avg_sq_sqrt", "exp_avg_sq", torch.sqrt),
    ("exp_avg", "exp_avg", None),
)


@torch.no_grad()
def optimizer_moment_stats(optimizer: torch.optim.Optimizer, include_weights: bool = True) -> dict[str, float]:
    """Global L1, L2 and max|.| of Adam's moments over all parameters, as ``{"<moment>/<l1|l2|max>": value}``.

    Parameters without optimizer state (not yet stepped, frozen) or without a given key are skipped;
    a moment found on no parameter is left out of the result. Norms accumulate in float64 on the
    tensors' device and are read back with a single transfer.
    """
    sources = list(_MOMENTS)
    if include_weights:
        sources.append(("weights", None, None))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names: list[str] = []
    values: list[torch.Tensor] = []
    for name, key, transform in sources:
        tensors = []
        for p in params:
            t = p if key is None else optimizer.state.get(p, {}).get(key)
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                tensors.append(transform(t) if transform is not None else t)
        if not tensors:
            continue
        names += [f"{name}/l1", f"{name}/l2", f"{name}/max"]
        values += [_norms(tensors, 1).sum(), _norms(tensors, 2).square().sum().sqrt(), _norms(tensors, math.inf).max()]
    if not values:
        return {}
    return dict(zip(names, torch.stack([v.to(values[0].device) for v in values]).tolist()))


def _norms(tensors: list[torch.Tensor], order: float) -> torch.Tensor:
    """Per-tensor vector norms in float64, stacked on the first tensor's device (no host sync)."""
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t.detach(), ord=order, dtype=torch.float64) for t in tensors]
    # FSDP2 state is a DTensor shard: its norm is a DTensor over all shards, read as a plain tensor
    return torch.stack([(n.full_tensor() if hasattr(n, "full_tensor") else n).to(device) for n in norms])


class LossSpikeTracker:
    """Loss ratio (loss / minimum finite loss so far) and loss-spike counts.

    threshold  a step is a spike step when its loss ratio exceeds it. The paper's value is
               [UNCONFIRMED]: 1.5 is from memory and must be checked against the PDF.

    ``spike_steps`` counts every step above the threshold; ``spike_events`` counts distinct spikes
    (entries from at-or-below to above), so a 50-step plateau above the threshold is one event.
    Non-finite losses (nan/inf, e.g. fp16 overflow) neither move the minimum nor count as spikes;
    ``nonfinite`` counts them. Losses must be positive (cross-entropy is).
    """

    def __init__(self, threshold: float = 1.5):
        if not threshold > 1.0:
            raise ValueError(f"threshold={threshold} must be > 1 (it compares loss to the minimum loss)")
        self.threshold = float(threshold)
        self.min_loss = math.inf
        self.last_ratio = math.nan
        self.spike_steps = 0
        self.spike_events = 0
        self.nonfinite = 0
        self.updates = 0
        self._above = False

    def update(self, loss: float | torch.Tensor) -> float:
        """Record one step's training loss; returns its loss ratio (nan for a non-finite loss)."""
        loss = float(loss)
        self.updates += 1
        if not math.isfinite(loss):
            self.nonfinite += 1
            self.last_ratio = math.nan
            return self.last_ratio
        if loss <= 0:
            raise ValueError(f"loss={loss} must be positive for a loss ratio")
        self.min_loss = min(self.min_loss, loss)
        ratio = loss / self.min_loss
        above = ratio > self.threshold
        if above:
            self.spike_steps += 1
            if not self._above:
                self.spike_events += 1
        self._above = above
        self.last_ratio = ratio
        return ratio

    def metrics(self) -> dict[str, float]:
        """Values to log each step."""
        return {
            "loss_ratio": self.last_ratio,
            "loss_spike_events": float(self.spike_events),
            "loss_spike_steps": float(self.spike_steps),
            "nonfinite_losses": float(self.nonfinite),
        }

    def state_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "min_loss": self.min_loss,
            "last_ratio": self.last_ratio,
            "spike_steps": self.spike_steps,
            "spike_events": self.spike_events,
            "nonfinite": self.nonfinite,
            "updates": self.updates,
            "above": self._above,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore counters; the configured threshold wins over the saved one (it is saved for reference)."""
        self.min_loss = float(state["min_loss"])
        self.last_ratio = float(state["last_ratio"])
        self.spike_steps = int(state["spike_steps"])
        self.spike_events = int(state["spike_events"])
        self.nonfinite = int(state["nonfinite"])
        self.updates = int(state["updates"])
        self._above = bool(state["above"])
