"""Sequence-length warmup schedules, identical to DeepSpeed's ``CurriculumScheduler``.

Li, Zhang, He, "The Stability-Efficiency Dilemma: Investigating Sequence Length Warmup for Training
GPT Models" (NeurIPS 2022, arXiv 2108.06084). At DeepSpeed global step t (see the step convention
below) the training sequence length is

    fixed_root:     u = (t / T) ** (1 / r)
                    d = floor(u * (L_max - L_min) + L_min)
                    d = d - d % s                    (round *down* to a multiple of s)
                    L(t) = min(d, L_max)
    fixed_linear:   fixed_root with r = 1
    fixed_discrete: difficulties[i] for the first i with t <= max_steps[i], difficulties[-1] after

and L stays at L_max once it got there. The float operations follow DeepSpeed's order so the
lengths agree bit for bit, which makes the paper's recipes (T, L_min, s) transfer unchanged.

Step convention. DeepSpeed's engine calls ``update_difficulty(global_steps + 1)`` before every
forward, so the very first optimizer step trains at L(1), not L(0). Our trainer counts *completed*
optimizer steps from 0, so the step it is about to take uses ``length_for_step(completed) ==
schedule(completed + 1)``. ``__call__`` takes DeepSpeed's argument; trainers should call
``length_for_step``.

Stickiness. DeepSpeed keeps mutable state and stops recomputing once the length reached L_max. Here
the schedule is a pure function of the step (so a resumed run needs no scheduler state): the first
DeepSpeed step that reaches L_max is found once, and every later step returns L_max. Because the
formula is non-decreasing in t this equals DeepSpeed's running state.
"""

from __future__ import annotations

import bisect
import math

from hasten.data.shaping import target_tokens_per_row
from hasten.errors import ConfigError
from hasten.methods.seqlen_warmup.config import SeqLenWarmupConfig


class SeqLenSchedule:
    """Pure step -> sequence length map; see the module docstring for formula and step convention."""

    def __init__(self, config: SeqLenWarmupConfig):
        if config.max_len is None:
            raise ConfigError(
                "seqlen_warmup: max_len is unset; call config.with_max_len(model max_seq_len) or set max_len"
            )
        config.validate()
        self.config = config
        self.min_len = config.min_len
        self.max_len: int = config.max_len  # type: ignore[assignment]  # validate() ensured it is set
        self._segments: list[tuple[int, int]] | None = None
        # first DeepSpeed step at which L_max is reached; every later step returns L_max (stickiness)
        self._sticky_from = self._first_step_at_max()

    # -- DeepSpeed formula ------------------------------------------------------------------------
    def _raw(self, t: int) -> int:
        """The unclamped-but-capped DeepSpeed value at global step t, without stickiness."""
        c = self.config
        if c.kind == "fixed_discrete":
            i = bisect.bisect_left(c.max_steps, t)  # first i with t <= max_steps[i]
            return c.difficulties[i]  # i == len(max_steps) gives d_n
        r = 1.0 if c.kind == "fixed_linear" else c.root_degree
        u = (float(t) / c.total_steps) ** (1.0 / r)
        d = math.floor(u * (self.max_len - self.min_len) + self.min_len)
        d -= d % c.step
        return min(d, self.max_len)

    def _first_step_at_max(self) -> int:
        """Smallest t >= 0 with _raw(t) == max_len (exponential then binary search; _raw is non-decreasing)."""
        hi = 1
        while self._raw(hi) < self.max_len:
            hi *= 2
            if hi > 1 << 62:  # unreachable for validated configs; guard against an infinite loop
                raise ConfigError("seqlen_warmup: the schedule never reaches max_len; check the configuration")
        lo = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if self._raw(mid) >= self.max_len:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def __call__(self, t: int) -> int:
        """Sequence length at DeepSpeed global step t (the argument of update_difficulty)."""
        if t < 0:
            raise ValueError(f"step must be >= 0, got {t}")
        if t >= self._sticky_from:
            return self.max_len
        return self._raw(t)

    # -- trainer-facing API -------------------------------------------------------------------------
    def length_for_step(self, completed_steps: int) -> int:
        """Length for the optimizer step about to run after ``completed_steps`` steps (DeepSpeed's t+1)."""
        return self(completed_steps + 1)

    @property
    def full_length_from(self) -> int:
        """First completed-step count whose next step trains at max_len (warmup lasts this many steps)."""
        return max(self._sticky_from - 1, 0)

    def segments(self) -> list[tuple[int, int]]:
        """Runs of constant length as (first completed step, length); the last run lasts forever.

        Lengths take at most (max-min)/s + 1 values, so this list is short; it drives exact token
        accounting without iterating over every step, and counts distinct shapes (torch.compile
        recompiles once per shape unless the sequence dim is marked dynamic).
        """
        if self._segments is None:
            runs: list[tuple[int, int]] = []
            start, end = 0, self.full_length_from
            while start < end:
                length = self.length_for_step(start)
                lo, hi = start + 1, end  # first c in (start, end] with a longer length
                while lo < hi:
                    mid = (lo + hi) // 2
                    if self.length_for_step(mid) > length:
                        hi = mid
                    else:
                        lo = mid + 1
                runs.append((start, length))
                start = lo
            runs.append((end, self.max_len))
            self._segments = runs
        return list(self._segments)


def tokens_for_steps(schedule: SeqLenSchedule, batch_size: int, steps: int, mode: str | None = None) -> int:
    """Target tokens trained on during the first ``steps`` optimizer steps: sum_c B * L(c).

    L(c) = ``schedule.length_for_step(c)``. In truncate mode each of the B rows gives L targets;
    in reshape mode a row gives floor(L_max/L) * L targets (mode defaults to the config's).
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    mode = mode or schedule.config.mode
    runs = schedule.segments()
    total = 0
    for i, (start, length) in enumerate(runs):
        stop = runs[i + 1][0] if i + 1 < len(runs) else steps
        n = max(0, min(stop, steps) - start)
        total += n * batch_size * target_tokens_per_row(length, schedule.max_len, mode)
    return total


def steps_for_tokens(schedule: SeqLenSchedule, batch_size: int, tokens: int, mode: str | None = None) -> int:
    """Fewest optimizer steps whose cumulative tokens reach ``tokens`` (token-based termination)."""
    if tokens < 0 or batch_size < 1:
        raise ValueError(f"need tokens >= 0 and batch_size >= 1, got tokens={tokens}, batch_size={batch_size}")
    mode = mode or schedule.config.mode
    runs = schedule.segments()
    seen = 0
    for i, (start, length) in enumerate(runs):
        per_step = batch_size * target_tokens_per_row(length, schedule.max_len, mode)
        stop = runs[i + 1][0] if i + 1 < len(runs) else None
        needed = -(-(tokens - seen) // per_step)  # ceil
        if stop is None or start + needed <= stop:
            return start + max(needed, 0)
        seen += (stop - start) * per_step
    raise AssertionError("unreachable: the last run is unbounded")


def warmup_iters_for_tokens(warmup_tokens: int, min_len: int, batch_size: int) -> int:
    """Step-based LR warmup length for a token budget: ceil(X / (L_min * B)) (DeepSpeed tutorial §2.5).

    The authors keep LR warmup step-based under SLW and size it as if every warmup step had L_min
    tokens per row, e.g. GPT-3's 375M warmup tokens with L_min=64, B=4096 gives 1431 steps.
    """
    if warmup_tokens < 0 or min_len < 1 or batch_size < 1:
        raise ValueError(
            f"need warmup_tokens >= 0, min_len >= 1, batch_size >= 1; got {warmup_tokens}, {min_len}, {batch_size}"
        )
    return -(-warmup_tokens // (min_len * batch_size))
