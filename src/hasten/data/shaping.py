"""Shorten a batch of packed rows to the warmup length: truncate (paper default) or reshape.

Our sampler yields rows of L_max + 1 tokens: inputs are ``row[:-1]`` and targets ``row[1:]``. A row
shortened to length L therefore keeps L + 1 tokens (as Megatron does), so its targets are still the
next token of each input.

- truncate: keep the first L + 1 tokens of every row. Batch size is unchanged and each row gives L
  targets instead of L_max, so tokens per step shrink during warmup (the paper's setting).
- reshape: cut every row into floor(L_max / L) consecutive windows of L + 1 tokens that overlap by
  one token (window j = row[j*L : j*L + L + 1]), exactly how the sampler cuts the corpus into rows.
  Rows in a batch are shuffled windows of the corpus, so each row is re-chunked on its own; the
  output keeps token order (row 0's windows first, then row 1's, ...). Each row keeps
  floor(L_max / L) * L of its L_max targets: the last L_max mod L (at most L - 1) are dropped.

Every function is pure; positions restart at 0 in every shortened row, which is correct for the
model (learned positions and RoPE index by position within the row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.errors import ConfigError

MODES = ("truncate", "reshape")


def target_tokens_per_row(seq_len: int, max_len: int, mode: str) -> int:
    """Training targets that one packed row of max_len + 1 tokens yields after shaping to seq_len."""
    if not 1 <= seq_len <= max_len:
        raise ValueError(f"seq_len={seq_len} must be in [1, max_len={max_len}]")
    if mode == "truncate":
        return seq_len
    if mode == "reshape":
        return (max_len // seq_len) * seq_len
    raise ConfigError(f"batch shape: mode={mode!r} is unknown; use one of {', '.join(MODES)}")


def rows_after_shaping(batch_size: int, seq_len: int, max_len: int, mode: str) -> int:
    """Number of rows a batch of ``batch_size`` packed rows becomes (reshape multiplies it)."""
    if mode == "reshape":
        return batch_size * (max_len // seq_len)
    target_tokens_per_row(seq_len, max_len, mode)  # validates mode and seq_len
    return batch_size


def _check_rows(rows: torch.Tensor, seq_len: int) -> int:
    if rows.dim() != 2:
        raise ValueError(f"expected packed rows of shape (B, L_max+1), got shape {tuple(rows.shape)}")
    max_len = rows.shape[1] - 1
    if not 1 <= seq_len <= max_len:
        raise ConfigError(
            f"batch shape: seq_len={seq_len} is outside [1, {max_len}] for rows of {max_len + 1} tokens; "
            f"keep max_len <= the sampler's sequence length"
        )
    return max_len


def truncate_rows(rows: torch.Tensor, seq_len: int) -> torch.Tensor:
    """First seq_len + 1 tokens of every row: (B, L_max+1) -> (B, seq_len+1), contiguous."""
    max_len = _check_rows(rows, seq_len)
    if seq_len == max_len:
        return rows
    return rows[:, : seq_len + 1].contiguous()


def reshape_rows(rows: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Re-chunk each row into floor(L_max/L) windows of L + 1 tokens: (B, L_max+1) -> (B * floor(L_max/L), L+1).

    Output row i * k + j (k = floor(L_max/L)) is ``rows[i, j*L : j*L + L + 1]``, so consecutive
    output rows of one input row overlap by one token, like the sampler's windows, and every
    (input, target) pair of the output is an (input, target) pair of the input. L_max mod L targets
    per row (at most L - 1) are dropped.
    """
    max_len = _check_rows(rows, seq_len)
    if seq_len == max_len:
        return rows
    windows = rows.unfold(1, seq_len + 1, seq_len)  # (B, floor(L_max/L), L+1), a view
    return windows.reshape(-1, seq_len + 1)  # copies into a contiguous tensor


@dataclass(frozen=True)
class BatchShape:
    """What the trainer asks the sampler for this step.

    batch_size  packed rows drawn per optimizer step (before reshape multiplies them)
    seq_len     training sequence length L (targets per shortened row)
    mode        truncate or reshape
    """

    batch_size: int
    seq_len: int
    mode: str = "truncate"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1:
            raise ConfigError(f"batch shape: batch_size={self.batch_size} and seq_len={self.seq_len} must be positive")
        if self.mode not in MODES:
            raise ConfigError(f"batch shape: mode={self.mode!r} is unknown; use one of {', '.join(MODES)}")

    def rows(self, max_len: int) -> int:
        """Rows after shaping (what the model's forward sees), for rows of max_len + 1 tokens."""
        return rows_after_shaping(self.batch_size, self.seq_len, max_len, self.mode)

    def target_tokens(self, max_len: int) -> int:
        """Tokens trained on per step (loss targets), for rows of max_len + 1 tokens."""
        return self.batch_size * target_tokens_per_row(self.seq_len, max_len, self.mode)


def shape_rows(rows: torch.Tensor, shape: BatchShape) -> torch.Tensor:
    """Apply ``shape.mode`` at ``shape.seq_len`` to packed rows (any number of rows, e.g. a micro-batch)."""
    if shape.mode == "reshape":
        return reshape_rows(rows, shape.seq_len)
    return truncate_rows(rows, shape.seq_len)
