"""Test hook for crash-safety tests: kill this process with SIGKILL at a named point.

Set HASTEN_FAULT_AT to one or more comma-separated `KIND:STEP[@N]` points (tests/test_fault_injection.py):

- `step:S`  during optimizer step S, after its backward pass and before the weight update;
- `save:S`  while checkpoint S is half-written (state.pt in the temp dir, no manifest, not renamed);
- `saved:S` right after checkpoint S is renamed into place, before retention runs;
- `shard:K` while token shard K of a data preparation is half-written (its first chunk is in the temp file);
- `@N` kills the N-th time this process reaches the point (e.g. step 14 again after a rollback); default 1.

Unset (normal use) it costs one environment lookup per call. It is a test hook, not a feature.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def fault_point(kind: str, step: int) -> None:
    spec = os.environ.get("HASTEN_FAULT_AT")
    if not spec:
        return
    point = f"{kind}:{step}"
    _reached[point] += 1
    for item in spec.split(","):
        name, _, nth = item.strip().partition("@")
        if name == point and _reached[point] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
