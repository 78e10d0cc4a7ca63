"""Metrics as JSONL in the run dir (plus TensorBoard), and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
    return rows


class MetricsLogger:
    """Appends one JSON object per line; rows have `kind` train | eval | event."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional at run time
                self.writer = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the record matches an uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value


class ProgressBar:
    def __init__(self, total_steps: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total_steps, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, desc="train")

    def update(self, n: int = 1, **postfix) -> None:
        self.bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
        self.bar.update(n)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
