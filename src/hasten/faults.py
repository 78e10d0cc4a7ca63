"""Test hook for crash-safety tests: kill this process with SIGKILL at a named point.

Set HASTEN_FAULT_AT to one or more comma-separated `KIND:STEP` points (tests/test_fault_injection.py):

- `step:N`  during optimizer step N, after its backward pass and before the weight update;
- `save:N`  while checkpoint N is half-written (state.pt in the temp dir, no manifest, not renamed);
- `saved:N` right after checkpoint N is renamed into place, before retention runs.

Unset (normal use) it costs one environment lookup per call. It is a test hook, not a feature.
"""

from __future__ import annotations

import os
import signal


def fault_point(kind: str, step: int) -> None:
    spec = os.environ.get("HASTEN_FAULT_AT")
    if spec and f"{kind}:{step}" in spec.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
