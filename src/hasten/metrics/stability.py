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
    stats = moment_stat_tensors(optimizer, include_weights)
    if not stats:
        return {}
    device = next(iter(stats.values())).device
    return dict(zip(stats, torch.stack([v.to(device) for v in stats.values()]).tolist()))


@torch.no_grad()
def moment_stat_tensors(optimizer: torch.optim.Optimizer, include_weights: bool = True) -> dict[str, torch.Tensor]:
    """What optimizer_moment_stats returns, as 0-dim float64 tensors left on the device (no host sync):
    the trainer reads them with everything else it logs, in one transfer per log step."""
    sources = list(_MOMENTS)
    if include_weights:
        sources.append(("weights", None, None))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[str, torch.Tensor] = {}
    for name, key, transform in sources:
        tensors = []
        for p in params:
            t = p if key is None else optimizer.state.get(p, {}).get(key)
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                tensors.append(transform(t) if transform is not None else t)
        if not tensors:
            continue
        out[f"{name}/l1"] = _norms(tensors, 1).sum()
        out[f"{name}/l2"] = _norms(tensors, 2).square().sum().sqrt()
        out[f"{name}/max"] = _norms(tensors, math.inf).max()
    return out


def _norms(tensors: list[torch.Tensor], order: float) -> torch.Tensor:
    """Per-tensor vector norms in float64, stacked on the first tensor's device (no host sync)."""
    device = tensors[0].device
    if any(_is_dtensor(t) for t in tensors):  # FSDP2 state is a DTensor shard: its norm is a DTensor over all shards
        norms = [torch.linalg.vector_norm(t.detach(), ord=order, dtype=torch.float64) for t in tensors]
        return torch.stack([(n.full_tensor() if _is_dtensor(n) else n).to(device) for n in norms])
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach())
    # one batched kernel per device (torch._foreach_norm) instead of one per tensor
    return torch.cat(
        [torch.stack(torch._foreach_norm(ts, order, dtype=torch.float64)).to(device) for ts in by_device.values()]
    )


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


class LossSpikeTracker:
    """Loss ratio (loss / minimum finite loss so far) and loss-spike counts.

    threshold  a step is a spike step when its loss ratio exceeds it. The paper's value is
               [UNCONFIRMED]: 1.5 is from memory and must be checked against the PDF.

    ``spike_steps`` counts every step above the threshold; ``spike_events`` counts distinct spikes
    (entries from at-or-below to above), so a 50-step plateau above the threshold is one event.
    Non-finite losses (nan/inf, e.g. fp16 overflow) neither move the minimum nor count as spikes;
    ``nonfinite`` counts them. Losses must be positive (cross-entropy is; checked for Python numbers).

    The counters live in float64 tensors on the loss's device: ``update`` with a device tensor does
    no host sync, and ``metrics`` returns tensors for the caller to read once per log step. Updating
    with a Python number returns a Python number; the attributes read back as Python numbers.
    """

    _FIELDS = ("min_loss", "last_ratio", "spike_steps", "spike_events", "nonfinite", "updates", "above")

    def __init__(self, threshold: float = 1.5):
        if not threshold > 1.0:
            raise ValueError(f"threshold={threshold} must be > 1 (it compares loss to the minimum loss)")
        self.threshold = float(threshold)
        self._state = self._fresh(torch.device("cpu"))

    @staticmethod
    def _fresh(device: torch.device) -> dict[str, torch.Tensor]:
        values = {"min_loss": math.inf, "last_ratio": math.nan}
        return {
            k: torch.tensor(values.get(k, 0.0), dtype=torch.float64, device=device) for k in LossSpikeTracker._FIELDS
        }

    @torch.no_grad()
    def update(self, loss: float | torch.Tensor, skip: torch.Tensor | None = None) -> float | torch.Tensor:
        """Record one step's training loss; returns its loss ratio (nan for a non-finite loss).

        `skip` (a bool tensor, e.g. the guard's non-finite flag) marks a step whose update was discarded:
        it changes nothing, as if update had not been called.
        """
        host = not torch.is_tensor(loss)
        if host:
            loss = float(loss)
            if math.isfinite(loss) and loss <= 0:
                raise ValueError(f"loss={loss} must be positive for a loss ratio")
            loss = torch.tensor(loss, dtype=torch.float64)
        loss = loss.detach().to(torch.float64).reshape(())
        s = self._state
        if s["min_loss"].device != loss.device:
            self._state = s = {k: v.to(loss.device) for k, v in s.items()}
        finite = torch.isfinite(loss)
        live = (
            torch.ones((), dtype=torch.bool, device=loss.device) if skip is None else ~skip.to(loss.device).reshape(())
        )
        counted = finite & live
        new_min = torch.where(counted, torch.minimum(s["min_loss"], loss), s["min_loss"])
        ratio = torch.where(finite, loss / new_min, math.nan)
        above = counted & (ratio > self.threshold)
        s["spike_steps"] += above
        s["spike_events"] += above & (s["above"] == 0)
        s["nonfinite"] += live & ~finite
        s["updates"] += live
        s["above"] = torch.where(counted, above.double(), s["above"])
        s["last_ratio"] = torch.where(live, ratio, s["last_ratio"])
        s["min_loss"] = new_min
        return float(ratio) if host else ratio

    def metrics(self) -> dict[str, torch.Tensor]:
        """Values to log each step (0-dim tensors on the loss's device)."""
        s = self._state
        return {
            "loss_ratio": s["last_ratio"],
            "loss_spike_events": s["spike_events"],
            "loss_spike_steps": s["spike_steps"],
            "nonfinite_losses": s["nonfinite"],
        }

    # read back as Python numbers (a host read when the state is on an accelerator)
    min_loss = property(lambda self: float(self._state["min_loss"]))
    last_ratio = property(lambda self: float(self._state["last_ratio"]))
    spike_steps = property(lambda self: int(self._state["spike_steps"]))
    spike_events = property(lambda self: int(self._state["spike_events"]))
    nonfinite = property(lambda self: int(self._state["nonfinite"]))
    updates = property(lambda self: int(self._state["updates"]))

    def state_dict(self) -> dict:
        values = dict(zip(self._FIELDS, torch.stack(list(self._state.values())).tolist()))
        return {
            "threshold": self.threshold,
            "min_loss": values["min_loss"],
            "last_ratio": values["last_ratio"],
            "spike_steps": int(values["spike_steps"]),
            "spike_events": int(values["spike_events"]),
            "nonfinite": int(values["nonfinite"]),
            "updates": int(values["updates"]),
            "above": bool(values["above"]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore counters; the configured threshold wins over the saved one (it is saved for reference)."""
        device = self._state["min_loss"].device
        self._state = {k: torch.tensor(float(state[k]), dtype=torch.float64, device=device) for k in self._FIELDS}
