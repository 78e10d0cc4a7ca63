"""Truncate / reshape of packed rows: order kept, drops bounded, labels aligned."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hasten.errors import ConfigError
from hasten.methods.seqlen_warmup import (
    BatchShape,
    reshape_rows,
    rows_after_shaping,
    shape_rows,
    target_tokens_per_row,
    truncate_rows,
)


def packed_rows(batch: int, max_len: int, seed: int = 0) -> torch.Tensor:
    """Rows like the sampler's: shuffled windows tokens[i*Lmax : i*Lmax+Lmax+1] of one token stream."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, 50_000, ((batch + 1) * max_len + 1,), generator=g)
    starts = torch.randperm(batch + 1, generator=g)[:batch] * max_len
    return torch.stack([stream[s : s + max_len + 1] for s in starts.tolist()])


def pairs(rows: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(row, position, input token, target token) for every training pair of a batch."""
    x, y = rows[:, :-1], rows[:, 1:]
    return [(i, j, int(x[i, j]), int(y[i, j])) for i in range(rows.shape[0]) for j in range(x.shape[1])]


def test_truncate_equals_prefix_slice_and_keeps_batch():
    rows = packed_rows(4, 32)
    out = truncate_rows(rows, 8)
    assert out.shape == (4, 9)
    assert torch.equal(out, rows[:, :9])
    x, y = out[:, :-1], out[:, 1:]
    assert torch.equal(x, rows[:, :8]) and torch.equal(y, rows[:, 1:9])  # targets are the next token


def test_full_length_is_identity():
    rows = packed_rows(3, 16)
    assert torch.equal(truncate_rows(rows, 16), rows)
    assert torch.equal(reshape_rows(rows, 16), rows)


def test_reshape_layout_order_and_overlap():
    rows = torch.arange(2 * 11).view(2, 11)  # Lmax = 10
    out = reshape_rows(rows, 3)  # floor(10/3) = 3 windows of 4 tokens per row
    expected = torch.tensor(
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [11, 12, 13, 14], [14, 15, 16, 17], [17, 18, 19, 20]]
    )
    assert torch.equal(out, expected)
    assert out.is_contiguous()


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4), max_len=st.integers(1, 64), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10))
def test_reshape_properties(batch, max_len, frac, seed):
    L = max(1, round(frac * max_len))
    rows = packed_rows(batch, max_len, seed)
    out = reshape_rows(rows, L)
    k = max_len // L
    assert out.shape == (batch * k, L + 1) == (rows_after_shaping(batch, L, max_len, "reshape"), L + 1)
    for i in range(batch):
        mine = out[i * k : (i + 1) * k]
        # token order kept: the windows' targets, concatenated, are the row's targets in order, minus a tail
        kept_targets = mine[:, 1:].reshape(-1)
        assert torch.equal(kept_targets, rows[i, 1 : 1 + k * L])
        # consecutive windows overlap by exactly one token, so no target loses its input
        assert torch.equal(mine[:, 0], rows[i, 0 : k * L : L])
        dropped = max_len - kept_targets.numel()
        assert dropped == max_len % L and dropped <= L - 1
    # every (input, target) pair of the output is a pair of the input batch (labels aligned)
    src = {(a, b) for (_, _, a, b) in pairs(rows)}
    assert {(a, b) for (_, _, a, b) in pairs(out)} <= src
    assert out.shape[0] * L == batch * target_tokens_per_row(L, max_len, "reshape")


def test_reshape_keeps_tokens_per_step_better_than_truncate():
    B, Lmax = 8, 1024
    for L in (8, 64, 256, 520, 1016):
        kept = BatchShape(B, L, "reshape").target_tokens(Lmax)
        assert kept == B * (Lmax - Lmax % L) and B * Lmax - kept <= B * (L - 1)
        assert BatchShape(B, L, "truncate").target_tokens(Lmax) == B * L <= kept


def test_shape_rows_dispatch():
    rows = packed_rows(2, 24)
    assert torch.equal(shape_rows(rows, BatchShape(2, 8)), truncate_rows(rows, 8))
    assert torch.equal(shape_rows(rows, BatchShape(2, 8, "reshape")), reshape_rows(rows, 8))
    assert BatchShape(2, 8, "reshape").rows(24) == 6 and BatchShape(2, 8).rows(24) == 2


def test_errors():
    rows = packed_rows(2, 16)
    with pytest.raises(ConfigError, match="seq_len=17"):
        truncate_rows(rows, 17)
    with pytest.raises(ConfigError, match="seq_len=0"):
        reshape_rows(rows, 0)
    with pytest.raises(ValueError, match="shape"):
        truncate_rows(rows[0], 4)
    with pytest.raises(ConfigError, match="mode"):
        BatchShape(2, 8, "crop")
    with pytest.raises(ConfigError, match="positive"):
        BatchShape(0, 8)
    with pytest.raises(AttributeError):
        BatchShape(2, 8).seq_len = 4  # frozen: a shape handed to the sampler cannot change under it
