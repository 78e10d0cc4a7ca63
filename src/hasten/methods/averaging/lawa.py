"""LAWA: LAtest Weight Averaging over the last k checkpoints (Kaddour 2022; Sanyal et al. 2023).

Every `interval` (nu) optimizer steps, an fp32 copy of the weights goes into a FIFO queue of
capacity k. The LAWA model is the uniform mean of the queue,

    theta_bar_t = (1/|Q|) * sum_{theta in Q} theta,   Q = {theta_t, theta_{t-nu}, ..., theta_{t-(k-1)nu}},

so it spans (k-1)*nu steps. It is for evaluation/deployment only and is never fed back into
training (the authors' code averages saved checkpoints offline). Snapshots live on CPU by default,
costing k x model size in host memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hasten.errors import CheckpointError, ConfigError
from hasten.methods.averaging.base import (
    StateDictFn,
    build_averaged_model,
    clean_state_dict,
    live_state_dict,
    unwrap_model,
)

log = logging.getLogger(__name__)

UNITS = ("steps", "tokens")


def interval_steps(interval_tokens: int, tokens_per_step: int) -> int:
    """A token interval expressed in optimizer steps, for a run with a constant tokens/step.

    Rounds to the nearest step and never returns less than 1. Under sequence-length warmup the
    tokens per step change, so prefer `LAWA(unit="tokens")`, which triggers on token boundaries.
    """
    if interval_tokens < 1 or tokens_per_step < 1:
        raise ConfigError(
            f"lawa: interval_tokens={interval_tokens} and tokens_per_step={tokens_per_step} "
            "must both be positive integers"
        )
    return max(1, round(interval_tokens / tokens_per_step))


DEFAULT_INTERVAL = 200  # the paper's nanoGPT-small eval/checkpoint interval


class LAWA:
    """Ring buffer of the last k weight snapshots and their exact fp32 mean.

    Args:
        k: queue capacity (paper: 5).
        interval: nu, the spacing between snapshots, in `unit`s (paper nanoGPT: 200-2000 steps).
        device: where snapshots are kept ("cpu" keeps accelerator memory free).
        unit: "steps" snapshots when step % interval == 0; "tokens" snapshots at the first step
            whose cumulative token count crosses a new multiple of `interval`.
    """

    name = "lawa"

    def __init__(
        self, k: int = 5, interval: int = DEFAULT_INTERVAL, device: str | torch.device = "cpu", unit: str = "steps"
    ):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"lawa: k={k!r} must be a positive integer; the paper uses k: 5")
        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"lawa: interval={interval!r} must be a positive integer (snapshot spacing in {unit})")
        if unit not in UNITS:
            raise ConfigError(f"lawa: unit={unit!r} is unknown; use one of {', '.join(UNITS)}")
        self.k, self.interval, self.unit = k, interval, unit
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"lawa: device={device!r} is not a torch device; use 'cpu' or e.g. 'cuda'") from err
        self._steps: deque[int] = deque(maxlen=k)
        self._snapshots: deque[dict[str, Tensor]] = deque(maxlen=k)
        self._token_bucket = 0  # index of the last token multiple that triggered a snapshot
        self.last_reset_reason: str | None = None

    def close(self) -> None:
        """Drop the snapshots (frees host memory)."""
        self._steps.clear()
        self._snapshots.clear()

    # ---- queue ---------------------------------------------------------------------------------

    @property
    def members(self) -> list[int]:
        """Steps whose weights are in the queue, oldest first."""
        return list(self._steps)

    @property
    def ready(self) -> bool:
        return bool(self._snapshots)

    def __len__(self) -> int:
        return len(self._snapshots)

    def is_due(self, step: int, tokens: int | None = None) -> bool:
        """Whether `maybe_snapshot` would take a snapshot now (step 0, the initial weights, never is)."""
        if step <= 0 or (self._steps and step <= self._steps[-1]):
            return False
        if self.unit == "steps":
            return step % self.interval == 0
        if tokens is None:
            raise ValueError(
                "LAWA(unit='tokens') needs the cumulative token count: maybe_snapshot(step, model, tokens=...)"
            )
        return tokens // self.interval > self._token_bucket

    def maybe_snapshot(self, step: int, model: nn.Module, tokens: int | None = None) -> bool:
        """Snapshot the live weights if `step` (completed optimizer steps) is due; True when it did."""
        if not self.is_due(step, tokens):
            return False
        self.snapshot(step, model)
        if self.unit == "tokens":
            assert tokens is not None
            self._token_bucket = tokens // self.interval
        return True

    maybe_update = maybe_snapshot  # the name the WeightAverager protocol uses

    def snapshot(self, step: int, model: nn.Module) -> None:
        """Push a copy of the live weights taken at `step`, evicting the oldest when full."""
        snap = self._store(live_state_dict(model))
        if self._snapshots:
            self._check_compatible(snap, self._snapshots[-1], what="the new snapshot")
        self._steps.append(int(step))
        self._snapshots.append(snap)

    def _store(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # copy=True: a snapshot must never alias live weights, even when device and dtype already match
        return {
            key: value.detach().to(
                self.device, dtype=torch.float32 if value.is_floating_point() else value.dtype, copy=True
            )
            for key, value in state.items()
        }

    @staticmethod
    def _check_compatible(new: Mapping[str, Tensor], old: Mapping[str, Tensor], what: str) -> None:
        if new.keys() != old.keys() or any(new[key].shape != old[key].shape for key in new):
            raise RuntimeError(
                f"lawa: {what} does not match the stored snapshots' keys/shapes (did the model grow?); "
                "call LAWA.transform(fn) or LAWA.reset(reason) when the model is replaced"
            )

    # ---- average ---------------------------------------------------------------------------------

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The exact fp32 mean of the stored snapshots (recomputed from them, no running sum).

        Non-float tensors (integer buffers, step counters) are copied from the newest snapshot.
        """
        if not self._snapshots:
            raise RuntimeError("lawa: no snapshots yet; check LAWA.ready before evaluating the average")
        newest = self._snapshots[-1]
        count = len(self._snapshots)
        averaged: dict[str, Tensor] = {}
        for key, latest in newest.items():
            if not latest.is_floating_point():
                averaged[key] = latest.clone()
                continue
            total = torch.zeros_like(latest)
            for snap in self._snapshots:
                total.add_(snap[key])
            averaged[key] = total.div_(count)
        return averaged

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A separate copy of `model` carrying the LAWA weights (eval mode, no grads)."""
        return build_averaged_model(model, self.averaged_state_dict())

    def load_averaged_into(self, model: nn.Module) -> nn.Module:
        """Copy the LAWA weights into `model` in place. Never pass the live training model: use
        `averaged_model` or `swapped_in` for that."""
        unwrap_model(model).load_state_dict(self.averaged_state_dict(), strict=True)
        return model

    def stats(self) -> dict[str, float]:
        steps = self.members
        nbytes = sum(t.numel() * t.element_size() for snap in self._snapshots for t in snap.values())
        out = {"lawa/members": float(len(steps)), "lawa/snapshot_mib": nbytes / 2**20}
        if steps:
            out.update({"lawa/oldest_step": float(steps[0]), "lawa/newest_step": float(steps[-1])})
        return out

    # ---- lifecycle ---------------------------------------------------------------------------------

    def reset(self, reason: str) -> None:
        """Empty the queue; the token trigger keeps its position so spacing stays regular."""
        log.info("lawa: reset (%s), dropping %d snapshots", reason, len(self._snapshots))
        self.close()
        self.last_reset_reason = reason

    def transform(self, fn: StateDictFn, model: nn.Module | None = None) -> None:
        """Apply a state-dict mapping (e.g. the growth operator) to every snapshot, keeping their steps.

        `fn` receives an fp32 state dict with raw keys and returns the new one; `model` is unused
        (accepted for the WeightAverager protocol).
        """
        new = [self._store(clean_state_dict(fn(dict(snap)))) for snap in self._snapshots]
        for snap in new[1:]:
            self._check_compatible(snap, new[0], what="a transformed snapshot")
        self._snapshots = deque(new, maxlen=self.k)

    def state_dict(self) -> dict:
        """Config, queue steps and the snapshots themselves (k x model size), for exact resume."""
        return {
            "kind": self.name,
            "k": self.k,
            "interval": self.interval,
            "unit": self.unit,
            "members": self.members,
            "snapshots": [dict(snap) for snap in self._snapshots],
            "token_bucket": self._token_bucket,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the queue. If k shrank since the checkpoint, the newest k snapshots are kept."""
        if state.get("kind") != self.name:
            raise CheckpointError(
                f"lawa: checkpoint averager state is {state.get('kind')!r}, not 'lawa'; resume with the same methods"
            )
        steps, snaps = list(state["members"]), list(state["snapshots"])
        if len(steps) != len(snaps):
            raise CheckpointError(
                "lawa: checkpoint has a different number of member steps and snapshots; the checkpoint is corrupt"
            )
        if (state["interval"], state["unit"]) != (self.interval, self.unit):
            log.warning(
                "lawa: checkpoint interval %s %s differs from the configured %s %s",
                state["interval"],
                state["unit"],
                self.interval,
                self.unit,
            )
        self._steps = deque((int(s) for s in steps), maxlen=self.k)
        self._snapshots = deque((self._store(clean_state_dict(snap)) for snap in snaps), maxlen=self.k)
        self._token_bucket = int(state.get("token_bucket", 0))
