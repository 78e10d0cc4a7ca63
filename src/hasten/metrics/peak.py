"""The dense-matmul peak of a device: the MFU denominator (the trainer's, cached) and the benchmarks' measurement.

A peak is measured, not looked up: square matmuls in the dtype, n doubling until one takes `min_seconds` (or n reaches
`max_n`), then the fastest of `repeats` timed ones. A loaded moment can only lower a measured peak, so callers that
measure twice keep the higher one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    min_seconds: float = 0.05,
    max_n: int | None = None,
    repeats: int = 5,
) -> dict:
    """Best dense-matmul FLOP/s of `dtype` on `device` and the size it was measured at: {"flops_per_s", "n"}."""
    device = torch.device(device)
    max_n = max_n or (16384 if device.type == "cuda" else 4096)
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up (kernel selection, first-touch allocation)
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if time.perf_counter() - start >= min_seconds or n >= max_n:
            break
        n *= 2
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {"flops_per_s": 2 * n**3 / best, "n": n}


def cached_peak(device: torch.device, dtype: torch.dtype, cache_dir: str | None = None) -> float:
    """matmul_peak of this device, dtype and thread count, measured once and kept in HASTEN_CACHE/peak_flops.json."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else os.cpu_count()
    key = f"{device.type}-{name}-{torch.get_num_threads()}-{dtype}"
    cache = Path(os.environ.get("HASTEN_CACHE", cache_dir or "~/.cache/hasten")).expanduser() / "peak_flops.json"
    try:
        table = json.loads(cache.read_text()) if cache.exists() else {}
    except (OSError, ValueError):
        table = {}  # an unreadable cache is measured again and rewritten
    if isinstance(table.get(key), (int, float)):
        return float(table[key])
    table[key] = matmul_peak(device, dtype)["flops_per_s"]
    from hasten.files import atomic_write_text

    try:
        atomic_write_text(cache, json.dumps(table, indent=2))
    except OSError:
        pass  # a cache that cannot be written only costs a measurement next time
    return float(table[key])
