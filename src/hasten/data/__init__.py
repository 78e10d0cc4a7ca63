"""Offline-first data: corpus sources, local BPE tokenizers, token shards prepared once, resumable sampling.

Names are imported on first use, so a worker process that encodes text (hasten.data.encoding) loads
neither torch nor the sampler."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Corpus": "hasten.data.corpus",
    "load_corpus": "hasten.data.corpus",
    "WindowSampler": "hasten.data.sampler",
    "eval_windows": "hasten.data.sampler",
    "TokenData": "hasten.data.tokens",
    "check_fits": "hasten.data.tokens",
    "prepare_from_config": "hasten.data.tokens",
    "prepare_tokens": "hasten.data.tokens",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hasten.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
