"""LR schedules: linear warmup in steps, then cosine / WSD / linear decay in steps or tokens.

Every param group decays from its own peak (base LR x the group's `lr_ratio`) to one shared floor
(base LR x min_lr_ratio): with blockwise ratios this is the Sharpness Disparity paper's behaviour,
where effective ratios fade to 1 as the LR decays. A schedule can be restarted mid-run (growth):
G_stack restarts from step 0 with a fresh warmup; staged training jumps to the large model's step R
and re-warms up over w steps to the base schedule's value at R + w.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch.optim import Optimizer

from hasten.config import RunConfig, ScheduleConfig


@dataclass
class ScheduleState:
    origin_step: int = 0  # global step at which this schedule (re)started
    origin_tokens: int = 0
    start_step: int = 0  # schedule step at the origin (staged training: the large model's step R)
    rewarmup_steps: int = 0  # staged training's short re-warmup after a jump
    total_steps: int = 1  # schedule length in schedule steps
    total_tokens: int = 0  # decay length in tokens, counted from the origin (decay_unit=tokens)
    warmup_end_tokens: int | None = None  # tokens seen when warmup ended (token decay starts there)
    warmup_steps: int | None = (
        None  # warmup length of this (re)started schedule; None = cfg.warmup_steps (G_stack's new warmup)
    )


class LRSchedule:
    """`lr(step, tokens)` is the LR of the optimizer step taken after `step` completed steps.

    Decay ends *on* the last optimizer step, as in the reference scripts (nanoGPT-style loops run
    `get_lr(it)` up to it = max_iters): with total_steps T the last step is step T - 1 and runs at the
    floor; with token-based decay the last step starts `step_tokens` (one full-length step) before
    the token budget ends.
    """

    def __init__(
        self,
        cfg: ScheduleConfig,
        base_lr: float,
        min_lr_ratio: float,
        total_steps: int,
        total_tokens: int = 0,
        step_tokens: int | None = None,
    ):
        self.cfg = cfg
        self.base_lr = base_lr
        self.min_lr = base_lr * min_lr_ratio
        self.state = ScheduleState(total_steps=max(1, total_steps), total_tokens=total_tokens)
        # tokens of one full-length step (derived from the config, so not part of the state); default: the mean step
        self.step_tokens = step_tokens if step_tokens is not None else total_tokens // max(1, total_steps)

    def restart(
        self,
        at_step: int,
        at_tokens: int,
        total_steps: int,
        total_tokens: int = 0,
        start_step: int = 0,
        rewarmup_steps: int = 0,
        warmup_steps: int | None = None,
    ) -> None:
        """Begin a new schedule at global step `at_step` (after growth); warmup_steps=None keeps cfg.warmup_steps."""
        self.state = ScheduleState(
            origin_step=at_step,
            origin_tokens=at_tokens,
            start_step=start_step,
            rewarmup_steps=rewarmup_steps,
            total_steps=max(1, total_steps),
            total_tokens=total_tokens,
            warmup_steps=warmup_steps,
        )

    def set_peak(self, base_lr: float, min_lr_ratio: float) -> None:
        """A new peak LR (G_stack's grown model trains at a lower one); saved in state_dict for exact resume."""
        self.base_lr = base_lr
        self.min_lr = base_lr * min_lr_ratio

    @property
    def warmup(self) -> int:
        return self.cfg.warmup_steps if self.state.warmup_steps is None else self.state.warmup_steps

    def _decay_fraction(self, step: int, tokens: int) -> float:
        """Progress through the decay phase in [0, 1]."""
        s, W = step, self.warmup
        if self.cfg.decay_unit == "tokens" and self.state.total_tokens > 0:
            start = self.state.warmup_end_tokens if self.state.warmup_end_tokens is not None else tokens
            span = self._last_step_tokens() - start
            return min(1.0, max(0.0, (tokens - start) / span)) if span > 0 else 1.0
        span = self.state.total_steps - 1 - W  # the last step, T - 1, runs at the floor
        return min(1.0, max(0.0, (s - W) / span)) if span > 0 else 1.0

    def _last_step_tokens(self) -> int:
        """Tokens seen before the last step of the token budget: where token-based decay reaches the floor."""
        return self.state.origin_tokens + self.state.total_tokens - self.step_tokens

    def anchor_token_decay(self, step_fraction: float, tokens: int) -> None:
        """Token-based decay after a jump (staged training): place its start so that at `tokens` the decay is
        `step_fraction` of the way through, as the step-based schedule is at the jump's step R."""
        end = self._last_step_tokens()
        self.state.warmup_end_tokens = int(round((tokens - step_fraction * end) / (1.0 - step_fraction)))

    def _shape(self, s: int, tokens: int) -> float:
        """Fraction c in [0, 1] of the way from the floor to the peak at schedule step s."""
        W = self.warmup
        if s < W:
            return -1.0  # warmup is handled by the caller (it scales the peak, not the gap to the floor)
        name = self.cfg.name
        if name == "constant":
            return 1.0
        p = self._decay_fraction(s, tokens)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        if name == "linear":
            return 1.0 - p
        # wsd: stable, then linear decay over the last wsd_decay_fraction of training
        stable = 1.0 - self.cfg.wsd_decay_fraction
        return 1.0 if p <= stable else max(0.0, 1.0 - (p - stable) / self.cfg.wsd_decay_fraction)

    def _base(self, s: int, tokens: int, ratio: float) -> float:
        W = self.warmup
        peak = self.base_lr * ratio
        if s < W:
            return peak * s / W
        c = self._shape(s, tokens)
        return self.min_lr + c * (peak - self.min_lr)

    def lr(self, step: int, tokens: int, ratio: float = 1.0) -> float:
        """LR of a group with `ratio` for the optimizer step taken after `step` completed steps."""
        st = self.state
        s = step - st.origin_step + st.start_step
        if st.rewarmup_steps and s < st.start_step + st.rewarmup_steps:
            target = self._base(st.start_step + st.rewarmup_steps, tokens, ratio)
            return target * (s - st.start_step) / st.rewarmup_steps
        return self._base(s, tokens, ratio)

    def note_progress(self, step: int, tokens: int) -> None:
        """Record when warmup ended, the anchor of token-based decay (kept in the state for exact resume)."""
        s = step - self.state.origin_step + self.state.start_step
        if self.state.warmup_end_tokens is None and s >= self.warmup:
            self.state.warmup_end_tokens = tokens

    def apply(self, optimizer: Optimizer, step: int, tokens: int) -> float:
        """Set every group's lr for the next step; returns the LR of ratio-1 groups."""
        self.note_progress(step, tokens)
        for group in optimizer.param_groups:
            group["lr"] = self.lr(step, tokens, group.get("lr_ratio", 1.0))
        return self.lr(step, tokens, 1.0)

    def state_dict(self) -> dict:
        return {**asdict(self.state), "base_lr": self.base_lr, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.base_lr = state.pop("base_lr", self.base_lr)  # older checkpoints: the recipe's peak
        self.min_lr = state.pop("min_lr", self.min_lr)
        self.state = ScheduleState(**state)


def build_schedule(cfg: RunConfig) -> LRSchedule:
    """The run's schedule: the recipe's shape over its planned steps and tokens."""
    return LRSchedule(
        cfg.schedule,
        cfg.optim.lr,
        cfg.optim.min_lr_ratio,
        cfg.planned_steps(),
        cfg.planned_tokens(),
        step_tokens=cfg.train.batch_size * cfg.seq_len,
    )
