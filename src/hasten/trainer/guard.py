"""Loss-spike and non-finite guard: a run survives a poisoned batch or a divergence burst unattended.

Two mechanisms (config `train.guard`, hasten.config.GuardConfig):

- **Non-finite skip.** Between backward and the optimizer step the trainer asks `allow_step`: a NaN/Inf
  loss or gradient norm discards the gradients and skips the update. The step counter, the token count
  and therefore the LR schedule do not advance; the FLOPs and time are still charged (they were spent).
  Too many skips in a row means the run has diverged, which ends it with one line (DivergenceError).
- **Spike rollback.** After each step `after_step` compares the (global) loss with the lowest loss so
  far; `spike_patience` consecutive steps above `spike_ratio` x that minimum roll the whole training
  state back, in process, to the newest good checkpoint from before the spike began (PaLM, sec. 5.1,
  does this by hand). Optionally the LR is multiplied by `rollback_lr_factor` at each rollback and the
  batches between the checkpoint and the spike are skipped rather than replayed (`rollback_skip_data`),
  because on a deterministic trainer an unchanged replay reproduces the same spike.

Every action is a `kind=event` row in metrics.jsonl and a progress-bar postfix entry. The guard's
counters and LR scale are part of every checkpoint, so a resumed run behaves exactly like an
uninterrupted one. Compute spent on discarded steps stays charged to `progress.flops` / `train_time`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from hasten.checkpoint import list_checkpoints, load_checkpoint, verify_checkpoint
from hasten.config import GuardConfig
from hasten.errors import HastenError

if TYPE_CHECKING:
    from hasten.trainer.loop import Trainer


class DivergenceError(HastenError):
    """Training kept producing non-finite or spiking losses after the guard's remedies ran out."""


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` holds on any rank, so every rank takes the same branch (no collective mismatch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


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

    # ------------------------------------------------------------------ inside the step

    def scale_lr(self, optimizer, lr: float) -> float:
        """Apply the rollback LR scale on top of the schedule's values (a no-op until a scaled rollback)."""
        if self.lr_scale == 1.0:
            return lr
        for group in optimizer.param_groups:
            group["lr"] *= self.lr_scale
        return lr * self.lr_scale

    def allow_step(self, trainer: Trainer, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Called between backward and optimizer.step(); False = discard this step's gradients."""
        if not self.cfg.skip_nonfinite:
            return True
        bad = not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm)))
        if not _any_rank(bad, trainer.device):
            self.consecutive_skips = 0
            return True
        self.skipped += 1
        self.consecutive_skips += 1
        step = trainer.state.progress.step
        trainer.logger.log("event", step, event="skipped_nonfinite", loss=float(loss), grad_norm=float(grad_norm),
                           skipped_total=self.skipped, consecutive=self.consecutive_skips)
        if self.consecutive_skips >= self.cfg.max_consecutive_skips:
            raise DivergenceError(
                f"the loss or gradients were non-finite for {self.consecutive_skips} steps in a row after step {step}; "
                "lower optim.lr, raise schedule.warmup_steps or use train.dtype=float32"
            )
        return False

    # ------------------------------------------------------------------ after the step

    def after_step(self, trainer: Trainer) -> bool:
        """Track the lowest loss and spike streaks; roll back after `spike_patience` spiking steps (returns True then)."""
        loss = trainer.last_metrics.get("loss")
        if loss is None or not math.isfinite(loss):
            return False
        ratio = self.cfg.spike_ratio
        if ratio is not None and math.isfinite(self.min_loss) and self.min_loss > 0 and loss > ratio * self.min_loss:
            if self.spike_streak == 0:
                self.streak_start = trainer.state.progress.step
            self.spike_streak += 1
            trainer.logger.log("event", trainer.state.progress.step, event="loss_spike", loss=loss, min_loss=self.min_loss,
                               streak=self.spike_streak)
            return self.spike_streak >= self.cfg.spike_patience and self.rollback(trainer)
        self.spike_streak, self.streak_start = 0, None
        self.min_loss = min(self.min_loss, loss)
        return False

    def rollback(self, trainer: Trainer) -> bool:
        """Reload every state from the newest good checkpoint saved before the spike began."""
        from hasten.checkpoint import _warn

        p = trainer.state.progress
        before = self.streak_start - 1 if self.streak_start is not None else p.step
        self.spike_streak, self.streak_start = 0, None
        target = None
        for path in reversed(list_checkpoints(trainer.run_dir / "checkpoints")):
            if _checkpoint_step(path) > before:
                continue
            problem = verify_checkpoint(path)
            if problem is None:
                target = path
                break
            _warn(f"checkpoint {path} is unusable ({problem}); trying an older one for the rollback")
        if target is None:
            trainer.logger.log("event", p.step, event="rollback_unavailable", reason=f"no good checkpoint at or before step {before}")
            return False
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise DivergenceError(
                f"the loss spiked again at step {p.step} after {self.rollbacks} rollbacks; lower optim.lr, "
                "set train.guard.rollback_lr_factor below 1 or raise train.guard.max_rollbacks"
            )
        from_step = p.step
        self._restore(trainer, load_checkpoint(target))
        trainer.logger.log("event", p.step, event="rollback", from_step=from_step, path=str(target), rollbacks=self.rollbacks,
                           lr_scale=self.lr_scale)
        return True

    def _restore(self, trainer: Trainer, checkpoint: dict) -> None:
        from hasten.model import GPT, ModelConfig
        from hasten.optim.builder import build_optimizer
        from hasten.trainer.setup import restore

        st = trainer.state
        # min_loss comes back with the checkpoint: losses of the discarded steps are not a bar the restored model must meet
        kept = {"skipped": self.skipped, "rollbacks": self.rollbacks + 1, "lr_scale": self.lr_scale * self.cfg.rollback_lr_factor}
        spent = (st.progress.flops, st.progress.train_time)
        sampler = st.sampler.state_dict()
        if checkpoint["model_config"] != st.model.config.to_dict():  # growth happened since: rebuild the earlier shape
            model = GPT(ModelConfig(**checkpoint["model_config"])).to(trainer.device)
            trainer.replace_state(model, build_optimizer(model, trainer.cfg.optim), reason="rollback")
        restore(trainer, checkpoint, rollback=True)
        st.progress.flops, st.progress.train_time = spent  # discarded steps still cost compute
        if self.cfg.rollback_skip_data:
            st.sampler.load_state_dict(sampler)
        for key, value in kept.items():
            setattr(self, key, value)
        self.consecutive_skips = 0

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
        return {"skipped": self.skipped, "consecutive_skips": self.consecutive_skips, "min_loss": self.min_loss,
                "spike_streak": self.spike_streak, "streak_start": self.streak_start, "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)


def _checkpoint_step(path) -> int:
    try:
        return int(path.name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1
