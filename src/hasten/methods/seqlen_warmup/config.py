"""`methods.seqlen_warmup`: the hyperparameters of sequence length warmup, checked when a recipe loads."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from hasten.data.shaping import MODES
from hasten.errors import ConfigError

KINDS = ("fixed_linear", "fixed_root", "fixed_discrete")


@dataclass
class SeqLenWarmupConfig:
    """Hyperparameters of sequence-length warmup (DeepSpeed names in brackets).

    kind          fixed_linear (recommended by the authors), fixed_root or fixed_discrete [schedule_type]
    min_len       start length L_min: 8 for ~100M models, 64 for billion-scale [min_difficulty]
    max_len       full context L_max; None = the model's max_seq_len, filled by ``with_max_len`` [max_difficulty]
    total_steps   warmup duration T in DeepSpeed steps (linear/root only) [total_step]
    step          granularity s: lengths are multiples of s (8 for fp16/bf16 tensor cores) [difficulty_step]
    root_degree   r for fixed_root (2 = square root) [root_degree]
    difficulties  fixed_discrete lengths d_0..d_n [difficulty]
    max_steps     fixed_discrete last step of each of d_0..d_{n-1} [max_step]
    mode          truncate (paper default; fewer tokens per step early) or reshape (re-chunk rows,
                  tokens per step kept)
    enabled       recipe switch read by the method registry (``enabled: false`` turns the method off)
    """

    kind: str = "fixed_linear"
    min_len: int = 8
    max_len: int | None = None
    total_steps: int | None = None
    step: int = 8
    root_degree: float | None = None
    difficulties: list[int] | None = None
    max_steps: list[int] | None = None
    mode: str = "truncate"
    enabled: bool = True

    @classmethod
    def from_dict(cls, raw: Mapping) -> SeqLenWarmupConfig:
        """Build from a recipe mapping, rejecting unknown keys (a typo would silently do nothing)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"seqlen_warmup: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(known))}"
            )
        cfg = cls(**dict(raw))
        return cfg

    def with_max_len(self, context_len: int) -> SeqLenWarmupConfig:
        """Fill max_len from the model context when unset; reject a max_len longer than the context."""
        if self.max_len is None:
            return replace(self, max_len=int(context_len))
        if self.max_len > context_len:
            raise ConfigError(
                f"seqlen_warmup: max_len={self.max_len} exceeds the model context {context_len}; "
                f"lower max_len or raise model max_seq_len"
            )
        return self

    def validate(self) -> None:
        """Raise ConfigError on contradictions; warn where DeepSpeed would silently give odd lengths.

        With max_len unset (recipe validation runs before the model context is known) the checks
        that need it are skipped; ``SeqLenSchedule`` requires it, so they run again there.
        """

        def bad(msg: str) -> None:
            raise ConfigError(f"seqlen_warmup: {msg}")

        if self.kind not in KINDS:
            bad(f"kind={self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            bad(f"mode={self.mode!r} is unknown; use one of {', '.join(MODES)}")
        for key in ("min_len", "max_len", "step"):
            value = getattr(self, key)
            if key == "max_len" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(f"{key}={value!r} must be a positive integer")
        if self.max_len is not None and self.min_len > self.max_len:
            bad(f"min_len={self.min_len} is larger than max_len={self.max_len}; min_len must be <= max_len")
        if self.kind == "fixed_discrete":
            self._validate_discrete(bad)
        else:
            self._validate_continuous(bad)

    def _validate_continuous(self, bad) -> None:
        if self.difficulties is not None or self.max_steps is not None:
            bad(f"difficulties/max_steps are only used by kind=fixed_discrete, not {self.kind}; remove them")
        T = self.total_steps
        if T is None or isinstance(T, bool) or not isinstance(T, int) or T < 1:
            bad(f"total_steps={T!r} must be a positive integer (the warmup length T in steps) for kind={self.kind}")
        if self.kind == "fixed_root":
            r = self.root_degree
            if r is None or isinstance(r, bool) or not isinstance(r, int | float) or not r > 0 or not math.isfinite(r):
                bad(f"root_degree={r!r} must be a positive number for kind=fixed_root (2 = square root)")
        elif self.root_degree not in (None, 1):
            bad(
                f"root_degree={self.root_degree} contradicts kind=fixed_linear (r=1); "
                "use kind=fixed_root or drop root_degree"
            )
        if self.min_len < self.step:
            bad(
                f"min_len={self.min_len} is below step={self.step}: DeepSpeed's round-down would give length 0; "
                f"use a min_len that is a multiple of step"
            )
        if self.min_len % self.step:
            warnings.warn(
                f"seqlen_warmup: min_len={self.min_len} is not a multiple of step={self.step}; DeepSpeed's round-down "
                f"gives lengths below min_len early on (as low as {self.min_len - self.min_len % self.step}). "
                f"Use a min_len that is a multiple of step.",
                stacklevel=3,
            )
        if self.max_len is not None and self.max_len % self.step:
            warnings.warn(
                f"seqlen_warmup: max_len={self.max_len} is not a multiple of step={self.step}; the length reaches "
                f"max_len only after total_steps={self.total_steps}.",
                stacklevel=3,
            )

    def _validate_discrete(self, bad) -> None:
        d, m = self.difficulties, self.max_steps
        if self.total_steps is not None:
            bad("total_steps is not used by kind=fixed_discrete; give the step boundaries in max_steps instead")
        if self.root_degree is not None:
            bad("root_degree is only used by kind=fixed_root; remove it")
        if not d or m is None:
            bad("kind=fixed_discrete needs difficulties=[d_0..d_n] and max_steps=[m_0..m_{n-1}]")
        if len(m) != len(d) - 1:
            bad(
                f"max_steps has {len(m)} entries but needs len(difficulties)-1 = {len(d) - 1} "
                "(the last length lasts forever)"
            )
        if any(isinstance(x, bool) or not isinstance(x, int) for x in [*d, *m]):
            bad("difficulties and max_steps must be integers")
        if any(b < a for a, b in zip(d, d[1:])):
            bad(f"difficulties={d} must be non-decreasing (sequence length only grows)")
        if any(b <= a for a, b in zip(m, m[1:])) or (m and m[0] < 0):
            bad(f"max_steps={m} must be non-negative and strictly increasing")
        if d[0] < self.min_len or (self.max_len is not None and d[-1] > self.max_len):
            bad(f"difficulties={d} must lie within [min_len={self.min_len}, max_len={self.max_len}]")
        if self.max_len is not None and d[-1] != self.max_len:
            bad(
                f"difficulties end at {d[-1]} but must end at max_len={self.max_len}, "
                "or training never reaches full context"
            )
        off = [x for x in d if x % self.step]
        if off:
            warnings.warn(
                f"seqlen_warmup: difficulties {off} are not multiples of step={self.step} "
                "(tensor-core friendly lengths)",
                stacklevel=3,
            )
