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
method's state, which re-applies them after a resume, a spike-guard rollback or a growth step
(the optimizer state_dict also carries `lr_ratio` in its param groups).
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.data.sampler import WindowSampler
from hasten.errors import ConfigError
from hasten.methods.blockwise_lr.config import SharpnessConfig
from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness
from hasten.trainer.method import Method, RunContext

_PROBE_STREAM = 0x5EED5A  # mixes into the run seed so the probe's windows and labels are their own random streams


def probe_windows(tokens: np.ndarray, seq_len: int, n_batches: int, rows: int, seed: int) -> list[torch.Tensor]:
    """`n_batches` fixed (rows, seq_len+1) batches of distinct train windows (repeating only if the split is
    smaller)."""
    sampler = WindowSampler(tokens, seq_len, seed=seed)  # a private sampler: only .rows() is used, no state is advanced
    rng = np.random.default_rng([seed, _PROBE_STREAM])
    need = n_batches * rows
    order = np.concatenate([rng.permutation(sampler.n_windows) for _ in range(-(-need // sampler.n_windows))])[:need]
    return [sampler.rows(order[i * rows : (i + 1) * rows].tolist()) for i in range(n_batches)]


class SharpnessProbe(Method):
    name = "sharpness"

    def __init__(self, cfg: SharpnessConfig, overrides: dict[str, str] | None = None):
        self.cfg = cfg
        self.overrides = overrides
        self.applied: dict[str, float] | None = None  # the auto ratios, once set
        self.applied_step: int | None = None
        self.source: dict[str, float] | None = None  # the sharpness they came from
        self._batches: list[torch.Tensor] | None = None

    # -- when -----------------------------------------------------------------------------------

    def fraction_step(self, ctx: RunContext) -> int | None:
        if self.cfg.at_fraction is None:
            return None
        return max(1, round(self.cfg.at_fraction * ctx.planned_steps))

    def ratio_step(self, ctx: RunContext) -> int:
        """The completed-step count at which auto ratios are set."""
        at = self.fraction_step(ctx)
        return at if at is not None else self.cfg.every

    def due(self, ctx: RunContext, step: int) -> bool:
        return step == self.fraction_step(ctx) or (self.cfg.every > 0 and step % self.cfg.every == 0)

    # -- hooks ----------------------------------------------------------------------------------

    def on_restore(self, ctx: RunContext, reason: str) -> None:
        self._reapply(ctx)  # a resume or a rollback built the optimizer from the recipe's ratios

    def on_fit_start(self, ctx: RunContext) -> None:
        if ctx.parallel.shards(
            ctx.state.model
        ):  # the probe differentiates the raw module; FSDP2's sharded grads are untested here
            raise ConfigError(
                "methods.sharpness does not support train.parallelism=fsdp; "
                "use ddp, or run `hasten sharpness` on a checkpoint"
            )
        if self._batches is None:
            rows = min(ctx.micro_rows, ctx.cfg.train.batch_size)
            self._batches = probe_windows(ctx.train_tokens, ctx.seq_len, self.cfg.batches, rows, ctx.cfg.train.seed)

    def after_step(self, ctx: RunContext) -> None:
        step = ctx.state.progress.step
        if not self.due(ctx, step):
            return
        sharpness = self.measure(ctx, step)
        ctx.log(
            "sharpness", step, tokens=ctx.state.progress.tokens, **{f"sharpness/{b}": v for b, v in sharpness.items()}
        )
        if ctx.is_main:
            plot_sharpness(
                sharpness, ctx.run_dir / f"sharpness_step{step}.png", title=f"average sharpness per block, step {step}"
            )
        if self.cfg.auto_ratios and self.applied is None and step >= self.ratio_step(ctx):
            self.apply_auto_ratios(ctx, step, sharpness)

    def on_state_replaced(self, ctx: RunContext, reason: str) -> None:
        self._reapply(ctx)  # growth built a new optimizer from the recipe's ratios

    # -- work -----------------------------------------------------------------------------------

    def measure(self, ctx: RunContext, step: int) -> dict[str, float]:
        """Per-block sharpness of the current model; the same on every rank (rank 0's values are shared)."""
        generator = torch.Generator(device=ctx.device)
        generator.manual_seed(
            int(np.random.SeedSequence([ctx.cfg.train.seed % 2**32, _PROBE_STREAM, step]).generate_state(1)[0])
        )
        sharpness = block_sharpness(
            ctx.state.model, self._batches, self.overrides, sample_labels=self.cfg.sample_labels, generator=generator
        )
        return ctx.parallel.broadcast(sharpness)

    def apply_auto_ratios(self, ctx: RunContext, step: int, sharpness: dict[str, float]) -> None:
        self.applied = ratios_from_sharpness(sharpness)
        self.applied_step = step
        self.source = dict(sharpness)
        self._reapply(ctx)
        ctx.log("event", step, event="auto_ratios", ratios=self.applied, sharpness=self.source)

    def _reapply(self, ctx: RunContext) -> None:
        if self.applied is None:
            return
        for group in ctx.state.optimizer.param_groups:
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


def build(cfg: SharpnessConfig, run_cfg) -> SharpnessProbe:
    return SharpnessProbe(cfg, overrides=run_cfg.optim.block_overrides)
