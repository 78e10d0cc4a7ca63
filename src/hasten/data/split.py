"""The train/validation split of a token dir, computed from document lengths alone (the tokens are never read).

Split version 2 (the default): documents are visited in a seeded random order and held out until
validation holds round(val_fraction * total) tokens (or exactly data.val_tokens), at least one and never
all; the document that crosses the mark gives its tail to validation and keeps its head for training.
So one file, or a few large ones, get a validation split of the stated size, and a corpus of many small
documents gets whole held-out documents (plus the tail of one). The visiting order is exactly
`random.Random(seed).sample(range(n), n)`, the order before token shards existed, so the split is the
same token for token; it is drawn lazily (sample is a Fisher-Yates pass over a pool, and the few pool
entries it moves are kept in a dict), so memory grows with the validation documents, not the corpus.

Split version 1 (a seeded coin per whole document, which left a single file without validation data)
is kept only so runs started with it resume identically.

Each split is a list of token ranges over the shards, in corpus order (hasten.data.shards.TokenView).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from hasten.data.shards import ShardSet, TokenView
from hasten.errors import DataError

SPLIT_VERSION = 2  # recorded by each run (corpus.json); version 1 split whole documents by a coin per document


def validation_need(total: int, val_fraction: float, val_tokens: int | None) -> int:
    """Tokens that go to validation: val_tokens, or round(val_fraction * total), at least one and never all."""
    if val_tokens is not None:
        if not 0 < val_tokens < total:
            raise DataError(f"data.val_tokens={val_tokens:,} must be below the corpus's {total:,} tokens; lower it")
        return val_tokens
    return min(max(1, round(val_fraction * total)), total - 1)


def val_starts_v2(n_docs: int, length: Callable[[int], int], need: int, seed: int) -> dict[int, int]:
    """Per validation document, the token offset where its validation part begins (0: all of it)."""
    rng = random.Random(seed)
    moved: dict[int, int] = {}  # pool entries that differ from their index
    out: dict[int, int] = {}
    for i in range(n_docs):
        if need <= 0:
            break
        j = rng.randrange(n_docs - i)  # random.sample's draw: _randbelow(n - i) on a pool of the unvisited
        doc = moved.get(j, j)
        last = n_docs - i - 1
        moved[j] = moved.pop(last, last)
        n = length(doc)
        take = min(n, need)
        out[doc] = n - take
        need -= take
    return out


def val_docs_v1(n_docs: int, val_fraction: float, seed: int) -> list[int]:
    """Split version 1: the documents held out whole (a seeded coin each, at least one per side)."""
    rng = random.Random(seed)
    chosen = [i for i in range(n_docs) if rng.random() < val_fraction]
    if not chosen:
        chosen = [rng.randrange(n_docs)]
    if len(chosen) == n_docs:
        chosen = chosen[1:]
    return chosen


def split_points(lengths: list[int], val_fraction: float, seed: int) -> list[int]:
    """Split version 2 for a list of document lengths: per document, where its validation part begins."""
    starts = list(lengths)
    need = validation_need(sum(lengths), val_fraction, None)
    for doc, start in val_starts_v2(len(lengths), lengths.__getitem__, need, seed).items():
        starts[doc] = start
    return starts


def split_documents(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """Split version 1 for n documents: is_val per document."""
    flags = [False] * n_docs
    for doc in val_docs_v1(n_docs, val_fraction, seed):
        flags[doc] = True
    return flags


def split_ranges(spans: np.ndarray, starts: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and val token ranges, from the validation documents' spans (sorted) and where their val part starts."""
    val = np.stack([spans[:, 0] + starts, spans[:, 1]], axis=1) if len(spans) else np.zeros((0, 2), dtype=np.int64)
    val = val[val[:, 1] > val[:, 0]]
    if len(val):  # merge neighbours: consecutive held-out documents are one range
        breaks = np.flatnonzero(val[1:, 0] != val[:-1, 1]) + 1
        firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks - 1, [len(val) - 1]])
        val = np.stack([val[firsts, 0], val[lasts, 1]], axis=1)
    edges = np.concatenate([[0], val.reshape(-1), [total]]).reshape(-1, 2)
    train = edges[edges[:, 1] > edges[:, 0]]
    return train, val


def split_view(
    shards: ShardSet, version: int, val_fraction: float, val_tokens: int | None, seed: int
) -> tuple[TokenView, TokenView, dict]:
    """(train, val, document counts) of a shard set under a split version."""
    n_docs, total = shards.n_documents, shards.n_tokens
    if n_docs < 1 or total < 2:
        raise DataError(
            f"the corpus has {total} token(s); it needs at least two (one for training, one for validation)"
        )
    if version == 1:
        starts = {doc: 0 for doc in val_docs_v1(n_docs, val_fraction, seed)}
    elif version == 2:
        starts = val_starts_v2(n_docs, shards.document_length, validation_need(total, val_fraction, val_tokens), seed)
    else:
        raise DataError(
            f"split version {version} is unknown to this hasten (it knows 1 and 2); use the hasten that made the run"
        )
    docs = np.array(sorted(starts), dtype=np.int64)
    spans = shards.document_spans(docs)
    offsets = np.array([starts[d] for d in docs.tolist()], dtype=np.int64)
    train, val = split_ranges(spans, offsets, total)
    cut = int(np.count_nonzero((offsets > 0) & (offsets < spans[:, 1] - spans[:, 0]))) if len(docs) else 0
    whole = len(docs) - cut
    counts = {"total": n_docs, "train": n_docs - whole, "val": len(docs), "cut": cut}
    return TokenView(shards, train), TokenView(shards, val), counts
