"""Metrics as JSONL in the run dir (plus TensorBoard), and the progress bar (plain lines when
stderr is not a terminal, so log files hold one readable line per update instead of carriage returns)."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from hasten.errors import HastenError
from hasten.files import atomic_write_text


def read_metrics(path: str | Path, skipped: list | None = None) -> list[dict]:
    """The rows of a metrics.jsonl; lines that are not JSON objects (a torn last line after a crash, stray
    bytes) are left out, and counted in `skipped` when given."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif skipped is not None:
            skipped.append(raw)
    return rows


class MetricsLogger:
    """Appends one JSON object per line; rows have `kind` train | eval | event."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        self.lock = None  # set by setup: released on close
        if enabled and tensorboard:
            _quiet_writer_thread()
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except OSError as err:  # it writes its first event at once (a full disk, a read-only folder)
                raise self._tensorboard_error(err, "at the start") from None
            except Exception:  # tensorboard is optional at run time
                self.writer = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the record matches an uninterrupted run
        (and lines that are not rows at all, reported on one line)."""
        if not self.enabled or not self.path.exists():
            return
        skipped: list = []
        keep = [
            r
            for r in read_metrics(self.path, skipped)
            if not isinstance(r.get("step", 0), int) or r.get("step", 0) <= step
        ]
        if skipped:
            print(f"hasten: warning: {self.path} had {len(skipped)} unreadable line(s); dropped them", file=sys.stderr)
        try:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        except OSError as err:
            raise HastenError(
                f"rewriting {self.path} failed ({err.strerror or err}); it is unchanged; free space and --resume"
            ) from None

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, **{k: _clean(v) for k, v in values.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:
            raise HastenError(
                f"writing {self.path} failed at step {step} ({err.strerror or err}); free space, then "
                f"hasten train --resume --run-dir {self.path.parent} continues from the last checkpoint"
            ) from None
        if self.writer is not None:
            try:
                for key, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                        self.writer.add_scalar(f"{kind}/{key}", value, step)
            except OSError as err:  # its writer thread failed (a full disk): it raises here, in the next call
                self.writer = None  # given up: close() must not flush it again
                raise self._tensorboard_error(err, f"at step {step}") from None

    def close(self) -> None:
        writer, self.writer, failure = self.writer, None, None
        if writer is not None:
            try:
                writer.close()
            except OSError as err:
                failure = err
        if self.lock is not None:  # the run dir's writer lock (hasten.trainer.setup) ends with the run's logging
            self.lock.release()
            self.lock = None
        if failure is not None and sys.exc_info()[1] is None:  # the error already on its way out is the one to report
            raise self._tensorboard_error(failure, "at the end")

    def _tensorboard_error(self, err: OSError, when: str) -> HastenError:
        run_dir = self.path.parent
        return HastenError(
            f"writing TensorBoard events to {run_dir / 'tensorboard'} failed {when} ({err.strerror or err}); "
            f"free space (or set train.tensorboard=false), then hasten train --resume --run-dir {run_dir} continues "
            "from the last checkpoint"
        )


def _quiet_writer_thread() -> None:
    """TensorBoard's writer thread stores a failed write (a full disk) for the training thread to raise, then re-raises
    it, which would print its traceback too; MetricsLogger reports it once, so that thread's OSErrors are not
    printed."""
    previous = threading.excepthook
    if getattr(previous, "hasten_quiet", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.hasten_quiet = True
    threading.excepthook = hook


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value


class ProgressBar:
    """A tqdm bar on a terminal; otherwise (a log file, a pipe, a batch job) a plain line every
    `plain_every` seconds (with the values of the latest update that carried them) and at the end,
    e.g. `train step 120/300 (40%) loss=3.214 val=3.301 tok_s=12,345`."""

    def __init__(self, total_steps: int, initial: int, enabled: bool, stream=None, plain_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.plain = enabled and not _is_terminal(self.stream)
        self.total, self.step = total_steps, initial
        self.plain_every, self.last_line = plain_every, -math.inf
        self.postfix: dict = {}
        self.shown = initial  # the step of the last plain line
        self.bar = (
            None
            if self.plain
            else tqdm(
                total=total_steps,
                initial=initial,
                disable=not enabled,
                unit="step",
                dynamic_ncols=True,
                desc="train",
                file=self.stream,
            )
        )

    def update(self, n: int = 1, **postfix) -> None:
        values = {k: v for k, v in postfix.items() if v is not None}
        if self.bar is not None:
            if values:
                self.bar.set_postfix(values, refresh=False)
            self.bar.update(n)
            return
        if not self.plain:
            return
        self.step += n
        self.postfix.update(values)
        if values and time.monotonic() - self.last_line >= self.plain_every:  # lines carry the latest logged values
            self._line()

    def _line(self) -> None:
        self.last_line, self.shown = time.monotonic(), self.step
        fields = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        self.write(f"train step {self.step}/{self.total} ({self.step / max(1, self.total):.0%}) {fields}".rstrip())

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.step > self.shown:  # the last step's line
            self._line()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
