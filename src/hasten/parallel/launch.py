"""`hasten train --nproc N` runs torch.distributed.run's agent in this process (no torchrun child), so
its SIGTERM/SIGINT handling covers the workers directly: they get the signal and stop at the next
step boundary with a checkpoint. Each worker dies with its launcher (PR_SET_PDEATHSIG, die_with_parent,
which `hasten compare`'s worker processes use too), so not even a SIGKILL of the launcher leaves orphans.
Workers report errors through files in REPORT_ENV instead of printing them, and the launcher prints the
first user error once, without torchrun's traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hasten.files import atomic_write_text

REPORT_ENV = "HASTEN_LAUNCH_REPORTS"  # folder where each worker writes rank<R>.json when it fails or stops
LAUNCHER_ENV = "HASTEN_LAUNCHER_PID"


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set; on exit every key is as it was (one that was unset is removed again)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launched_worker() -> bool:
    """True in a worker of `hasten train --nproc` (not under a plain torchrun)."""
    return REPORT_ENV in os.environ and "RANK" in os.environ


def die_with_launcher() -> None:
    """In a launched worker: ask Linux to send SIGTERM when the launcher (our parent) dies."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher is not None and launched_worker():
        die_with_parent(int(launcher))


def die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when `parent` (the process that started it) dies, so that not even a
    SIGKILL of the parent leaves it running (PR_SET_PDEATHSIG); used by --nproc's workers and compare's pool."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def report_to_launcher(kind: str, message: str, code: int) -> None:
    """A worker's outcome for the launcher: kind error (a user error, one line), crash (a traceback) or stopped."""
    path = Path(os.environ[REPORT_ENV]) / f"rank{os.environ.get('RANK', '0')}.json"
    record = {
        "kind": kind,
        "message": message,
        "code": code,
        "time": time.time(),
        "rank": int(os.environ.get("RANK", "0")),
    }
    atomic_write_text(path, json.dumps(record), fsync=False)


def launch(nproc: int, argv: list[str]) -> int:
    """`hasten train --nproc N ...`: re-run the same command on N local ranks; returns the exit code.

    2 with the workers' first user error printed once; 128+signal when stopped by SIGTERM/SIGINT (after the
    workers checkpointed); 1 with the first traceback when a worker crashed.
    """
    import logging
    import tempfile

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for name in list(
        logging.root.manager.loggerDict
    ):  # the outcome is reported below, once (torch sets levels per logger)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="hasten-launch-") as reports:
        # OMP_NUM_THREADS=1 is torchrun's default for several ranks (set here, it does not warn)
        env = {
            REPORT_ENV: reports,
            LAUNCHER_ENV: str(os.getpid()),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        args = torchrun.get_args_parser().parse_args(
            ["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.1", "-m", "hasten", *argv]
        )
        code, killed = 0, {}
        with environment(env):
            try:
                torchrun.run(args)
            except ChildFailedError as err:
                code = max((f.exitcode for f in err.failures.values()), default=1) or 1
                killed = {
                    rank: -f.exitcode for rank, f in err.failures.items() if f.exitcode < 0
                }  # rank -> signal number, in the order torch recorded the failures
            except SignalException as err:
                code = 128 + int(err.sigval)
        return _launch_outcome(Path(reports), code, killed)


def _launch_outcome(reports: Path, code: int, killed: dict[int, int] | None = None) -> int:
    """The exit code, with the cause printed once: a user error, a rank killed from outside, or the first traceback.

    A rank killed by a signal leaves no report; the ranks that lost it then fail in a collective (or die of the
    agent's SIGTERM), so their tracebacks are consequences and the killed rank is named instead."""
    records = []
    for path in reports.glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (r["time"], r["rank"]))
    error = next((r for r in records if r["kind"] == "error"), None)
    if error is not None:
        print(f"hasten: error: {error['message']}", file=sys.stderr)
        return error["code"]
    # Once a rank fails, the agent stops the others with SIGTERM (SIGKILL after 30 s) and records those deaths after
    # the first; a rank stuck in a collective with the dead one dies of them without a report. So the cause is a rank
    # killed by another signal than SIGTERM, and among those the first recorded (`killed` keeps torch's order).
    order = {rank: i for i, rank in enumerate(killed or {})}
    silent = sorted(set(order) - {r["rank"] for r in records}, key=lambda r: (killed[r] == signal.SIGTERM, order[r]))
    if silent:
        rank, name = silent[0], signal.Signals(killed[silent[0]]).name
        print(
            f"hasten: error: rank {rank} was killed by {name} from outside hasten (the OOM killer, a kill command); "
            "the other ranks stopped with it, so --resume continues from the last checkpoint",
            file=sys.stderr,
        )
        return 1
    crash = next((r for r in records if r["kind"] == "crash"), None)
    if crash is not None:
        print(crash["message"].rstrip(), file=sys.stderr)
        print(f"hasten: error: rank {crash['rank']} crashed (traceback above)", file=sys.stderr)
        return 1
    stopped = next((r for r in records if r["kind"] == "stopped"), None)
    if stopped is not None:
        return stopped["code"]
    if code > 128:
        return code
    if code:
        print(f"hasten: error: a worker exited with code {code} without a report (killed?)", file=sys.stderr)
    return code
