"""`methods.lawa`, `methods.ema` and `methods.swa`: each recipe section's settings and the averager it builds."""

from __future__ import annotations

from dataclasses import dataclass

from hasten.errors import ConfigError
from hasten.methods.averaging.ema import EMA, SWA
from hasten.methods.averaging.lawa import DEFAULT_INTERVAL, LAWA


@dataclass
class LAWAConfig:
    """Recipe section `methods: {lawa: {k: 5, interval: 50}}`, or `interval_tokens: N` instead of `interval`.

    `interval` None means the paper's 200 steps; `interval_tokens` switches to token-based spacing.
    """

    k: int = 5
    interval: int | None = None
    interval_tokens: int | None = None
    device: str = "cpu"
    enabled: bool = True

    def validate(self) -> None:
        if self.interval is not None and self.interval_tokens is not None:
            raise ConfigError("lawa: set either interval (steps) or interval_tokens, not both; drop one of them")
        self.build()  # the constructor validates k, interval and device

    def build(self) -> LAWA:
        if self.interval_tokens is not None:
            return LAWA(k=self.k, interval=self.interval_tokens, device=self.device, unit="tokens")
        return LAWA(
            k=self.k, interval=self.interval if self.interval is not None else DEFAULT_INTERVAL, device=self.device
        )


@dataclass
class EMAConfig:
    """Recipe section `methods: {ema: {decay: 0.99}}` (or `half_life: <steps>` instead of decay)."""

    decay: float | None = None  # None = 0.999 unless half_life is given
    half_life: float | None = None
    every: int = 1
    start_step: int = 0
    device: str | None = None
    enabled: bool = True

    def validate(self) -> None:
        _either("ema", decay=self.decay, half_life=self.half_life)
        self.build()

    def build(self) -> EMA:
        if self.half_life is not None:
            return EMA.from_half_life(self.half_life, every=self.every, start_step=self.start_step, device=self.device)
        return EMA(
            decay=0.999 if self.decay is None else self.decay,
            every=self.every,
            start_step=self.start_step,
            device=self.device,
        )


@dataclass
class SWAConfig:
    """Recipe section `methods: {swa: {start_fraction: 0.75, every: 10}}` (or `start_step:` instead)."""

    start_fraction: float | None = None  # None = 0.75 unless start_step is given
    start_step: int | None = None
    every: int = 10
    device: str | None = None
    enabled: bool = True

    def validate(self) -> None:
        _either("swa", start_fraction=self.start_fraction, start_step=self.start_step)
        self.build(total_steps=1 if self.start_step is None else None)

    def build(self, total_steps: int | None = None) -> SWA:
        """`total_steps` is needed unless start_step is set (a token budget must be converted to steps first)."""
        if self.start_step is not None:
            return SWA(start_step=self.start_step, every=self.every, device=self.device)
        if total_steps is None:
            raise ConfigError("swa: start_fraction needs the run's total steps; set swa.start_step or a step budget")
        fraction = 0.75 if self.start_fraction is None else self.start_fraction
        return SWA.from_fraction(fraction, total_steps, every=self.every, device=self.device)


def _either(section: str, **alternatives) -> None:
    """Two settings that say the same thing two ways: at most one may be given."""
    if all(value is not None for value in alternatives.values()):
        first, second = alternatives
        raise ConfigError(f"{section}: set either {first} or {second}, not both; drop one of them")
