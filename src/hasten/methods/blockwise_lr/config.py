"""`methods.sharpness`: when the sharpness probe measures, on how much data, and whether it sets the blockwise LR
ratios.

Blockwise LR itself is switched on in the optimizer section (`optim.blockwise`, `optim.lr_ratios`,
`optim.block_overrides`: hasten.config.OptimConfig, checked against the block vocabulary in
hasten.config.blocks), because the optimizer's param groups carry the ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasten.errors import ConfigError


@dataclass
class SharpnessConfig:
    """Recipe section `methods: {sharpness: {every: 0, at_fraction: 0.02, batches: 8}}`."""

    every: int = 0  # probe every N completed steps; 0 = only at at_fraction
    at_fraction: float | None = (
        0.02  # probe once at this fraction of the planned steps (the paper: the order shows by ~2%)
    )
    batches: int = 8  # fixed training windows per probe, in micro-batches of train.micro_batch_size rows
    sample_labels: bool = (
        True  # labels drawn from the model's softmax (unbiased Gauss-Newton trace); false = data labels
    )
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
