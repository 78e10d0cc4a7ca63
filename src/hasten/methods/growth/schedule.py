"""What growth does to the LR schedule: restart (G_stack), jump (staged training) or continue.

Shared by the trainer's growth method and the offline `hasten grow`.
"""

from __future__ import annotations

from hasten.methods.growth.config import GrowthStage
from hasten.methods.growth.timing import OPERATOR_CONSTANTS
from hasten.optim.schedules import LRSchedule


def jump_restart_step(step: int, kind: str) -> int:
    """Staged training's R when the user gives none: the current step divided by the operator's constant_op."""
    return int(round(step / OPERATOR_CONSTANTS[kind]))


def apply_schedule_policy(
    schedule: LRSchedule,
    stage: GrowthStage,
    kind: str,
    step: int,
    tokens: int,
    planned_steps: int,
    planned_tokens: int,
    min_lr_ratio: float,
    warmup_steps: int,
    decay_unit: str,
) -> dict:
    """restart / jump / continue the LRSchedule at (step, tokens); shared by the trainer and `hasten grow`."""
    if stage.lr is not None:
        schedule.set_peak(stage.lr, min_lr_ratio)
    remaining_steps = max(1, planned_steps - step)
    remaining_tokens = max(1, planned_tokens - tokens)
    info: dict = {"peak_lr": schedule.base_lr}
    if stage.schedule == "restart":
        warmup = stage.warmup_steps if stage.warmup_steps is not None else warmup_steps
        schedule.restart(step, tokens, total_steps=remaining_steps, total_tokens=remaining_tokens, warmup_steps=warmup)
        info.update(warmup_steps=warmup, total_steps=remaining_steps)
    elif stage.schedule == "jump":
        r = stage.restart_step if stage.restart_step is not None else jump_restart_step(step, kind)
        w = stage.rewarmup_steps if stage.rewarmup_steps is not None else warmup_steps // 16
        total = r + remaining_steps
        schedule.restart(step, tokens, total_steps=total, total_tokens=remaining_tokens, start_step=r, rewarmup_steps=w)
        warm = schedule.warmup
        if decay_unit == "tokens" and r >= warm and total - 1 > warm:
            # token decay: place the decay anchor so the decay fraction at the jump is the step schedule's at R
            schedule.anchor_token_decay((r - warm) / (total - 1 - warm), tokens)
        info.update(
            restart_step=r,
            rewarmup_steps=w,
            total_steps=total,
            constant=None if stage.restart_step is not None else OPERATOR_CONSTANTS[kind],
        )
    info["next_lr"] = schedule.lr(step, tokens)
    return info
