"""Loss-spike and non-finite guard: a run survives a poisoned batch or a divergence burst unattended.

Two mechanisms (config `train.guard`, hasten.config.GuardConfig):

- **Non-finite skip.** Between backward and the optimizer step the trainer computes, on the device,
  whether the (global) loss or gradient norm is NaN/Inf (`nonfinite`), and `apply_update` discards that
  step's update without a host sync: the flag goes to the optimizer as `found_inf` (the protocol of
  torch's GradScaler), which torch's fused Adam/AdamW (the CUDA default) and hasten's AdamMini honour
  on the device. Optimizers without it (foreach/for AdamW, and any other) read the flag on the host first,
  one sync per step, as GradScaler does for them. Either way the weights and optimizer state are
  untouched by a non-finite step.
  The host learns of a skip at the next sync point (a log, eval or checkpoint step, or the end of the
  run; `resolve`), so the guard acts at most one log interval late: there the skipped attempt is
  uncounted (the step counter and token count, hence the LR schedule, do not advance for it), its
  `skipped_nonfinite` event is written with the step it happened at, and too many skips in a row end
  the run with one line (DivergenceError). Until then the host has counted the attempt as a step, so
  the few steps between a skip and the next sync point use the schedule's (and sequence length
  warmup's) values of one step later, and callbacks saw the attempt. FLOPs and time of discarded
  steps stay charged (they were spent).
- **Spike rollback.** At each sync point the recorded losses are compared, step by step, with the
  lowest loss so far; `spike_patience` consecutive steps above `spike_ratio` x that minimum roll the
  whole training state back, in process, to the newest good checkpoint from before the spike began
  (PaLM, sec. 5.1, does this by hand). The decision is the one a per-step check would make; it is
  taken at the sync point after the streak reached its patience. Optionally the LR is multiplied by
  `rollback_lr_factor` at each rollback and the batches between the checkpoint and the sync point
  are skipped rather than replayed (`rollback_skip_data`), because on a deterministic trainer an
  unchanged replay reproduces the same spike.

Every action is a `kind=event` row in metrics.jsonl and a progress-bar postfix entry. The guard's
counters and LR scale are part of every checkpoint (a checkpoint step is a sync point, so nothing is
pending then), so a resumed run behaves exactly like an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hasten.checkpointing import CHECKPOINTS, latest_good_checkpoint, open_checkpoint
from hasten.config import GuardConfig
from hasten.errors import HastenError
from hasten.trainer.checkpoints import restore


class DivergenceError(HastenError):
    """Training kept producing non-finite or spiking losses after the guard's remedies ran out."""


def read_scalars(values: list) -> list:
    """Many scalars (0-dim tensors or Python numbers) as Python numbers, with one device-to-host
    transfer per device instead of one per tensor. Used at sync points only."""
    out = list(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        if torch.is_tensor(value):
            by_device.setdefault(value.device, []).append(i)
    for indices in by_device.values():
        host = torch.stack([values[i].detach().reshape(()).to(torch.float64) for i in indices]).tolist()
        for i, value in zip(indices, host):
            out[i] = value
    return out


@dataclass
class Attempt:
    """One optimizer step as the host recorded it, before the guard has read its device values."""

    step: int  # the step counter after the attempt (provisional: the guard uncounts a skipped attempt)
    tokens: int
    loss: torch.Tensor | float | None
    grad_norm: torch.Tensor | float | None
    nonfinite: torch.Tensor | bool | None  # the device flag the update was skipped on (None: guard off)


def _found_inf_optimizers(optimizer) -> list | None:
    """The optimizers that take a device-side skip flag (`found_inf`), or None if any part of `optimizer` does not.

    torch marks such optimizers with `_step_supports_amp_scaling` (fused Adam/AdamW); so does hasten's AdamMini.
    Wrappers that step several optimizers expose them as `optimizers`.
    """
    parts = list(getattr(optimizer, "optimizers", None) or [optimizer])
    return parts if all(getattr(opt, "_step_supports_amp_scaling", False) for opt in parts) else None


class Guard:
    name = "guard"

    def __init__(self, cfg: GuardConfig | None = None):
        self.cfg = cfg or GuardConfig()
        self.skipped = 0  # non-finite steps skipped over the whole run
        self.consecutive_skips = 0
        self.min_loss = math.inf
        self.spike_streak = 0
        self.streak_start: int | None = None  # step at which the current spike streak began
        self.rollbacks = 0
        self.lr_scale = 1.0  # product of rollback_lr_factor over the rollbacks so far
        self.pending: list[
            Attempt
        ] = []  # attempts since the last sync point (never checkpointed: saves are sync points)

    # ------------------------------------------------------------------ inside the step

    def scale_lr(self, optimizer, lr: float) -> float:
        """Apply the rollback LR scale on top of the schedule's values (a no-op until a scaled rollback)."""
        if self.lr_scale == 1.0:
            return lr
        for group in optimizer.param_groups:
            group["lr"] *= self.lr_scale
        return lr * self.lr_scale

    def nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor | None:
        """A bool tensor on the device, True when the loss or the gradient norm is NaN/Inf (None when the skip is off).

        Both are global (the loss is all-reduced, the norm is over all shards), so every rank gets the same flag.
        """
        if not self.cfg.skip_nonfinite:
            return None
        return ~(torch.isfinite(loss) & torch.isfinite(grad_norm))

    def apply_update(self, optimizer, nonfinite: torch.Tensor | None) -> None:
        """optimizer.step(), unless `nonfinite` is set: skipped on the device when the optimizer supports it."""
        if nonfinite is None:
            optimizer.step()
            return
        parts = _found_inf_optimizers(optimizer)
        if parts is None:  # no device-side skip: read the flag (a host sync), as torch's GradScaler does
            if not bool(nonfinite):
                optimizer.step()
            return
        found_inf = nonfinite.to(torch.float32)
        for opt in parts:
            opt.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            for opt in parts:
                del opt.found_inf

    def record(self, step: int, tokens: int, metrics: dict) -> None:
        """Remember one attempt (its metrics after the methods' after_step); decided on at the next sync point."""
        self.pending.append(
            Attempt(step, tokens, metrics.get("loss"), metrics.get("grad_norm"), metrics.get("nonfinite"))
        )

    # ------------------------------------------------------------------ at a sync point

    def resolve(self, trainer) -> bool:
        """Decide on the attempts since the last sync point, in order; True if the state was rolled back.

        Skipped attempts are uncounted (step and tokens); spike streaks are tracked on the others.
        """
        pending, self.pending = self.pending, []
        if not pending:
            return False
        flat = read_scalars([v for a in pending for v in (a.loss, a.grad_norm, a.nonfinite)])
        p = trainer.state.progress
        uncounted_steps = uncounted_tokens = 0
        for i, attempt in enumerate(pending):
            loss, grad_norm, nonfinite = flat[3 * i : 3 * i + 3]
            step = attempt.step - uncounted_steps  # this attempt's step number without the skipped ones before it
            if nonfinite:
                uncounted_steps += 1
                uncounted_tokens += attempt.tokens
                self._note_skip(trainer, step - 1, loss, grad_norm)
                continue
            self.consecutive_skips = 0
            if self._track_loss(trainer, step, loss):
                return True  # rolled back: the later attempts belong to the discarded stretch
        p.step -= uncounted_steps
        p.tokens -= uncounted_tokens
        return False

    def allow_step(self, trainer, loss, grad_norm, step: int | None = None) -> bool:
        """The non-finite decision on host values; False = discard the step (counted as a skip, an event
        at `step` (default: the current step), DivergenceError after too many in a row)."""
        if not self.cfg.skip_nonfinite or (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
            self.consecutive_skips = 0
            return True
        self._note_skip(trainer, trainer.state.progress.step if step is None else step, loss, grad_norm)
        return False

    def _note_skip(self, trainer, step: int, loss, grad_norm) -> None:
        self.skipped += 1
        self.consecutive_skips += 1
        trainer.logger.log(
            "event",
            step,
            event="skipped_nonfinite",
            loss=float(loss),
            grad_norm=float(grad_norm),
            skipped_total=self.skipped,
            consecutive=self.consecutive_skips,
        )
        if self.consecutive_skips >= self.cfg.max_consecutive_skips:
            raise DivergenceError(
                f"the loss or gradients were non-finite for {self.consecutive_skips} steps in a row after step {step}; "
                "lower optim.lr, raise schedule.warmup_steps or use train.dtype=float32"
            )

    def _track_loss(self, trainer, step: int, loss) -> bool:
        """Track the lowest loss and spike streaks at `step`; roll back after `spike_patience` spiking steps (True
        then)."""
        if loss is None or not math.isfinite(loss):
            return False
        ratio = self.cfg.spike_ratio
        if ratio is not None and math.isfinite(self.min_loss) and self.min_loss > 0 and loss > ratio * self.min_loss:
            if self.spike_streak == 0:
                self.streak_start = step
            self.spike_streak += 1
            trainer.logger.log(
                "event", step, event="loss_spike", loss=loss, min_loss=self.min_loss, streak=self.spike_streak
            )
            return self.spike_streak >= self.cfg.spike_patience and self.rollback(trainer, step)
        self.spike_streak, self.streak_start = 0, None
        self.min_loss = min(self.min_loss, loss)
        return False

    def rollback(self, trainer, at_step: int | None = None) -> bool:
        """Reload every state from the newest good checkpoint saved before the spike began (`at_step`: the
        step the decision was made at; default the current step)."""
        p = trainer.state.progress
        at_step = p.step if at_step is None else at_step
        before = self.streak_start - 1 if self.streak_start is not None else at_step
        self.spike_streak, self.streak_start = 0, None
        target = latest_good_checkpoint(trainer.run_dir / CHECKPOINTS, at_most=before)
        if target is None:
            trainer.logger.log(
                "event", at_step, event="rollback_unavailable", reason=f"no good checkpoint at or before step {before}"
            )
            return False
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise DivergenceError(
                f"the loss spiked again at step {at_step} after {self.rollbacks} rollbacks; lower optim.lr, "
                "set train.guard.rollback_lr_factor below 1 or raise train.guard.max_rollbacks"
            )
        # min_loss comes back with the checkpoint: losses of the discarded steps are not a bar the restored model must
        # meet
        kept = {
            "skipped": self.skipped,
            "rollbacks": self.rollbacks + 1,
            "lr_scale": self.lr_scale * self.cfg.rollback_lr_factor,
        }
        restore(trainer, open_checkpoint(target), reason="rollback", replay_data=not self.cfg.rollback_skip_data)
        for key, value in kept.items():
            setattr(self, key, value)
        self.consecutive_skips = 0
        trainer.logger.log(
            "event",
            p.step,
            event="rollback",
            from_step=at_step,
            path=str(target),
            rollbacks=self.rollbacks,
            lr_scale=self.lr_scale,
        )
        return True

    # ------------------------------------------------------------------ reporting and state

    def postfix(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.rollbacks:
            out["rollbacks"] = self.rollbacks
        if self.lr_scale != 1.0:
            out["lr_x"] = f"{self.lr_scale:g}"
        return out

    def state_dict(self) -> dict:
        return {
            "skipped": self.skipped,
            "consecutive_skips": self.consecutive_skips,
            "min_loss": self.min_loss,
            "spike_streak": self.spike_streak,
            "streak_start": self.streak_start,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if hasattr(self, key) and key != "pending":
                setattr(self, key, value)
        self.pending = []
