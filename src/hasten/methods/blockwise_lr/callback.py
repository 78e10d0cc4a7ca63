"""The sharpness probe inside the trainer (method `sharpness`), optionally setting blockwise LR ratios.

At its probe points the callback measures the average sharpness S(b) = Tr(H_bb)/#params(b) of each
block type (hasten.methods.blockwise_lr.sharpness) on a fixed set of training windows, logs it as a
`kind: sharpness` row with `sharpness/<block>` metrics and writes `run_dir/sharpness_step<N>.png`.

It never perturbs training: the windows are drawn once from the train split with their own numpy
generator (the trainer's sampler is not touched), labels are sampled with a dedicated
torch.Generator seeded from (seed, step), and the probe uses autograd.grad, so `.grad`, the weights
and every global RNG are left as they were. With `auto_ratios: false` a run with the probe is
bitwise identical to one without it.

With `auto_ratios: true` (needs `optim.blockwise: true`) the first probe point at which ratios are due
(the `at_fraction` point when set, else the first `every` point) sets each param group's `lr_ratio`
from `ratios_from_sharpness` (hasten's sqrt heuristic, not the paper's hand-tuned 10/8/6/4/1); the
schedule picks them up from the next step. The ratios are logged as an event and kept in this
callback's state, which re-applies them after a resume, a spike-guard rollback or a growth step
(the optimizer state_dict also carries `lr_ratio` in its param groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hasten.data.sampler import WindowSampler
from hasten.errors import ConfigError
from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness
from hasten.trainer.callbacks import Callback

_PROBE_STREAM = 0x5EED5A  # mixes into the run seed so the probe's windows and labels are their own random streams


@dataclass
class SharpnessConfig:
    """Recipe section `methods: {sharpness: {every: 0, at_fraction: 0.02, batches: 8}}`."""

    every: int = 0  # probe every N completed steps; 0 = only at at_fraction
    at_fraction: float | None = 0.02  # probe once at this fraction of the planned steps (the paper: the order shows by ~2%)
    batches: int = 8  # fixed training windows per probe, in micro-batches of train.micro_batch_size rows
    sample_labels: bool = True  # labels drawn from the model's softmax (unbiased Gauss-Newton trace); false = data labels
    auto_ratios: bool = False  # set the blockwise lr ratios from the measurement, once (needs optim.blockwise)
    enabled: bool = True

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"methods.sharpness.every={self.every} must be >= 0 (0 = only at at_fraction)")
        if self.at_fraction is not None and not 0.0 < self.at_fraction <= 1.0:
            raise ConfigError(f"methods.sharpness.at_fraction={self.at_fraction} must be in (0, 1], or null")
        if self.every == 0 and self.at_fraction is None:
            raise ConfigError("methods.sharpness never probes: set every > 0 or at_fraction (e.g. 0.02)")
        if self.batches < 1:
            raise ConfigError(f"methods.sharpness.batches={self.batches} must be >= 1 (10-50 recommended)")

    def validate_run(self, run_cfg) -> None:
        """Checks against the rest of the recipe (called by the method registry at config time)."""
        if self.auto_ratios and not run_cfg.optim.blockwise:
            raise ConfigError("methods.sharpness.auto_ratios needs per-block param groups; set optim.blockwise=true")


def probe_windows(tokens: np.ndarray, seq_len: int, n_batches: int, rows: int, seed: int) -> list[torch.Tensor]:
    """`n_batches` fixed (rows, seq_len+1) batches of distinct train windows (repeating only if the split is smaller)."""
    sampler = WindowSampler(tokens, seq_len, seed=seed)  # a private sampler: only .rows() is used, no state is advanced
    rng = np.random.default_rng([seed, _PROBE_STREAM])
    need = n_batches * rows
    order = np.concatenate([rng.permutation(sampler.n_windows) for _ in range(-(-need // sampler.n_windows))])[:need]
    return [sampler.rows(order[i * rows : (i + 1) * rows].tolist()) for i in range(n_batches)]


class SharpnessProbe(Callback):
    name = "sharpness"

    def __init__(self, cfg: SharpnessConfig, overrides: dict[str, str] | None = None):
        self.cfg = cfg
        self.overrides = overrides
        self.applied: dict[str, float] | None = None  # the auto ratios, once set
        self.applied_step: int | None = None
        self.source: dict[str, float] | None = None  # the sharpness they came from
        self._batches: list[torch.Tensor] | None = None
        self._trainer = None

    # -- when -----------------------------------------------------------------------------------

    def fraction_step(self, trainer) -> int | None:
        if self.cfg.at_fraction is None:
            return None
        return max(1, round(self.cfg.at_fraction * trainer.planned_steps(trainer.cfg)))

    def ratio_step(self, trainer) -> int:
        """The completed-step count at which auto ratios are set."""
        at = self.fraction_step(trainer)
        return at if at is not None else self.cfg.every

    def due(self, trainer, step: int) -> bool:
        return step == self.fraction_step(trainer) or (self.cfg.every > 0 and step % self.cfg.every == 0)

    # -- hooks ----------------------------------------------------------------------------------

    def on_fit_start(self, trainer) -> None:
        from hasten.distributed import is_fsdp

        if is_fsdp(trainer.state.model):  # the probe differentiates the raw module; FSDP2's sharded grads are untested here
            raise ConfigError("methods.sharpness does not support train.parallelism=fsdp; use ddp, or run `hasten sharpness` on a checkpoint")
        self._trainer = trainer
        if self._batches is None:
            rows = min(trainer.micro_rows, trainer.cfg.train.batch_size)
            self._batches = probe_windows(trainer.data.train, trainer.seq_len, self.cfg.batches, rows, trainer.cfg.train.seed)
        self._reapply(trainer)

    def after_step(self, trainer) -> None:
        step = trainer.state.progress.step
        if not self.due(trainer, step):
            return
        sharpness = self.measure(trainer, step)
        trainer.logger.log("sharpness", step, tokens=trainer.state.progress.tokens, **{f"sharpness/{b}": v for b, v in sharpness.items()})
        if trainer.is_main:
            plot_sharpness(sharpness, trainer.run_dir / f"sharpness_step{step}.png", title=f"average sharpness per block, step {step}")
        if self.cfg.auto_ratios and self.applied is None and step >= self.ratio_step(trainer):
            self.apply_auto_ratios(trainer, step, sharpness)

    def on_state_replaced(self, trainer, reason: str) -> None:
        self._reapply(trainer)  # growth built a new optimizer from the recipe's ratios

    # -- work -----------------------------------------------------------------------------------

    def measure(self, trainer, step: int) -> dict[str, float]:
        """Per-block sharpness of the current model; the same on every rank (rank 0's values are shared)."""
        from hasten.distributed import broadcast_object

        generator = torch.Generator(device=trainer.device)
        generator.manual_seed(int(np.random.SeedSequence([trainer.cfg.train.seed % 2**32, _PROBE_STREAM, step]).generate_state(1)[0]))
        sharpness = block_sharpness(
            trainer.state.model, self._batches, self.overrides, sample_labels=self.cfg.sample_labels, generator=generator
        )
        return broadcast_object(sharpness)

    def apply_auto_ratios(self, trainer, step: int, sharpness: dict[str, float]) -> None:
        self.applied = ratios_from_sharpness(sharpness)
        self.applied_step = step
        self.source = dict(sharpness)
        self._reapply(trainer)
        trainer.logger.log("event", step, event="auto_ratios", ratios=self.applied, sharpness=self.source)

    def _reapply(self, trainer) -> None:
        if self.applied is None:
            return
        for group in trainer.state.optimizer.param_groups:
            block = group.get("block")
            if block in self.applied:
                group["lr_ratio"] = self.applied[block]

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"applied": self.applied, "applied_step": self.applied_step, "source": self.source}

    def load_state_dict(self, state: dict) -> None:
        self.applied = state.get("applied")
        self.applied_step = state.get("applied_step")
        self.source = state.get("source")
        if self._trainer is not None:  # a rollback mid-run (on_fit_start covers a resume)
            self._reapply(self._trainer)


def build(cfg: SharpnessConfig, run_cfg) -> SharpnessProbe:
    return SharpnessProbe(cfg, overrides=run_cfg.optim.block_overrides)
