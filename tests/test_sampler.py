"""WindowSampler: deterministic, resumable, epoch-complete, rank-invariant; fixed eval windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hasten.data.sampler import WindowSampler, eval_windows
from hasten.data.shaping import BatchShape
from hasten.errors import CheckpointError

L = 8


def _tokens(n_windows: int) -> np.ndarray:
    # token value = its position, so a row's first token / L is its window index
    return np.arange(n_windows * L + 1, dtype=np.uint16)


def _window_ids(rows: torch.Tensor) -> list[int]:
    return (rows[:, 0] // L).tolist()


def _draw(sampler: WindowSampler, steps: int, rows: int) -> list[torch.Tensor]:
    return [sampler.next_rows(rows) for _ in range(steps)]


def test_rows_are_packed_windows():
    sampler = WindowSampler(_tokens(10), L, seed=0)
    assert sampler.n_windows == 10
    rows = sampler.next_rows(4)
    assert rows.shape == (4, L + 1) and rows.dtype == torch.int64
    for row in rows:  # contiguous slice of L + 1 tokens starting on a window boundary
        start = int(row[0])
        assert start % L == 0
        assert row.tolist() == list(range(start, start + L + 1))
    with pytest.raises(ValueError, match="do not fill one window"):
        WindowSampler(np.arange(L, dtype=np.uint16), L)


def test_deterministic_given_seed():
    a = _draw(WindowSampler(_tokens(50), L, seed=3), 6, 4)
    b = _draw(WindowSampler(_tokens(50), L, seed=3), 6, 4)
    c = _draw(WindowSampler(_tokens(50), L, seed=4), 6, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_epoch_wrap_visits_every_window_once_per_epoch():
    n = 10
    sampler = WindowSampler(_tokens(n), L, seed=1)
    stream = [
        w for rows in _draw(sampler, 10, 3) for w in _window_ids(rows)
    ]  # 30 rows = 3 epochs, batches straddle epochs
    epochs = [stream[i * n : (i + 1) * n] for i in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in epochs}) > 1  # a fresh permutation each epoch
    assert (sampler.state.epoch, sampler.state.cursor) == (3, 0)
    # within one epoch every token after the first is a target exactly once
    targets = sorted(t for w in epochs[0] for t in range(w * L + 1, w * L + L + 1))
    assert targets == list(range(1, n * L + 1))


def test_state_dict_round_trip_continues_identically():
    reference = WindowSampler(_tokens(23), L, seed=5)
    _draw(reference, 7, 4)  # into the second epoch
    state = reference.state_dict()
    expected = _draw(reference, 9, 4)

    resumed = WindowSampler(_tokens(23), L, seed=5)
    resumed.load_state_dict(dict(state))
    got = _draw(resumed, 9, 4)
    assert all(torch.equal(x, y) for x, y in zip(expected, got))
    assert resumed.state_dict() == reference.state_dict()

    for key, value in (("seed", 6), ("seq_len", L * 2), ("n_windows", 99)):
        with pytest.raises(CheckpointError, match=key):
            WindowSampler(_tokens(23), L, seed=5).load_state_dict({**state, key: value})


def test_rank_slices_concatenate_to_the_global_batch():
    single = WindowSampler(_tokens(30), L, seed=2)
    ranks = [WindowSampler(_tokens(30), L, seed=2) for _ in range(2)]  # each rank owns a sampler
    for _ in range(12):  # crosses epochs (30 windows, 8 rows per step)
        glob = single.next_rows(8)
        parts = [s.next_rows(8, rank=r, world_size=2) for r, s in enumerate(ranks)]
        assert all(p.shape == (4, L + 1) for p in parts)
        assert torch.equal(torch.cat(parts), glob)
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()
    with pytest.raises(ValueError, match="does not split"):
        single.next_rows(7, rank=0, world_size=2)


def test_next_batch_at_full_length_is_next_rows():
    a, b = WindowSampler(_tokens(20), L, seed=0), WindowSampler(_tokens(20), L, seed=0)
    assert torch.equal(a.next_batch(BatchShape(4, L)), b.next_rows(4))
    short = a.next_batch(BatchShape(4, L // 2, "truncate"))
    assert torch.equal(short, b.next_rows(4)[:, : L // 2 + 1])


def test_eval_windows_are_fixed_and_spread():
    tokens = np.arange(40 * L + 5, dtype=np.uint16)  # 40 full windows (+ a partial tail)
    rows = eval_windows(tokens, L, 5)
    assert torch.equal(rows, eval_windows(tokens, L, 5))
    starts = (rows[:, 0] // L).tolist()
    assert starts == [0, 10, 20, 29, 39]  # evenly spread, first and last window included
    for row in rows:
        assert row.tolist() == list(range(int(row[0]), int(row[0]) + L + 1))
    assert len(eval_windows(tokens, L, 1000)) == 40  # capped at the windows available
    assert len(set(map(tuple, eval_windows(tokens, L, 40).tolist()))) == 40
