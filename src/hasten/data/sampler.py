"""Deterministic, resumable sampling of packed token windows.

The train stream is cut into windows of `seq_len + 1` tokens with stride `seq_len` (consecutive
windows share one token, so every token is a target once). Each epoch visits all windows in a
permutation drawn from (seed, epoch). The state is just (epoch, cursor), so a checkpoint restores
the exact batch sequence, and the global batch is the same whatever the number of ranks: rank r
takes its contiguous slice of the global rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hasten.data.shaping import shape_rows
from hasten.errors import CheckpointError


@dataclass
class SamplerState:
    epoch: int = 0
    cursor: int = 0


class WindowSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0):
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(tokens)} tokens do not fill one window of {seq_len + 1}")
        self.state = SamplerState()
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def _next_indices(self, n_rows: int) -> list[int]:
        out: list[int] = []
        while len(out) < n_rows:
            perm = self._permutation(self.state.epoch)
            take = min(n_rows - len(out), self.n_windows - self.state.cursor)
            out.extend(perm[self.state.cursor : self.state.cursor + take].tolist())
            self.state.cursor += take
            if self.state.cursor == self.n_windows:
                self.state = SamplerState(epoch=self.state.epoch + 1, cursor=0)
        return out

    def rows(self, indices: list[int]) -> torch.Tensor:
        L = self.seq_len
        batch = np.stack([np.asarray(self.tokens[i * L : i * L + L + 1], dtype=np.int64) for i in indices])
        return torch.from_numpy(batch)

    def next_rows(self, global_rows: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """The next `global_rows` windows (global batch) and this rank's contiguous share of them."""
        if global_rows % world_size:
            raise ValueError(f"global batch of {global_rows} rows does not split over {world_size} ranks")
        indices = self._next_indices(global_rows)
        share = global_rows // world_size
        return self.rows(indices[rank * share : (rank + 1) * share])

    def next_batch(self, shape, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This rank's rows for one step, shortened to `shape.seq_len` by truncate or reshape (SLW)."""
        rows = self.next_rows(shape.batch_size, rank, world_size)
        if shape.seq_len >= self.seq_len:
            return rows
        return shape_rows(rows, shape)

    def state_dict(self) -> dict:
        return {
            "epoch": self.state.epoch,
            "cursor": self.state.cursor,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len", "n_windows"):
            if state[key] != getattr(self, key):
                raise CheckpointError(
                    f"checkpoint sampler has {key}={state[key]} but this run has {getattr(self, key)}; "
                    "resume with the same data and config"
                )
        self.state = SamplerState(epoch=int(state["epoch"]), cursor=int(state["cursor"]))


def eval_windows(tokens: np.ndarray, seq_len: int, n_sequences: int | None) -> torch.Tensor:
    """A fixed set of full-context validation windows, spread evenly over the val split (None: every window of it)."""
    available = (len(tokens) - 1) // seq_len
    n = available if n_sequences is None else min(n_sequences, available)
    starts = np.linspace(0, available - 1, n).round().astype(np.int64)
    return torch.from_numpy(
        np.stack([np.asarray(tokens[s * seq_len : s * seq_len + seq_len + 1], dtype=np.int64) for s in starts])
    )
