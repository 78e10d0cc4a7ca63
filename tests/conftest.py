"""Shared fixtures: a small real corpus (a slice of the stdlib) and an isolated cache dir."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; one thread keeps timings stable and results reproducible


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("hasten-cache")
    os.environ["HASTEN_CACHE"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_overrides(cache_dir) -> list[str]:
    """Overrides for a seconds-long run of the `tiny` model on 60 stdlib files."""
    return [
        "model=tiny",
        "data.max_docs=60",
        "data.vocab_size=512",
        f"data.cache_dir={cache_dir}",
        "train.batch_size=8",
        "train.max_steps=24",
        "train.eval_every=8",
        "train.eval_sequences=8",
        "train.checkpoint_every=8",
        "train.log_every=4",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "train.peak_flops=1e10",
        "schedule.warmup_steps=4",
    ]


@pytest.fixture(scope="session")
def tiny_data(cache_dir):
    from hasten.data import prepare_tokens

    return prepare_tokens("stdlib", vocab_size=512, max_docs=60, cache_dir=cache_dir, progress=False)
