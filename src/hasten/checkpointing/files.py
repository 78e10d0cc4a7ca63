"""Atomic, verified checkpoint directories (what a checkpoint holds is schema.py).

A checkpoint is a directory `step_XXXXXXXX/` with `state.pt` and `manifest.json` (format version,
step, sha256 and size of every file). It is written into a hidden temp dir, fsynced, then renamed
into place, so a crash mid-save never leaves a half checkpoint under a real name. Loading verifies
the checksums; a corrupt latest checkpoint is reported and the previous good one is used.
Retention deletes old checkpoints only after the new one is in place and verified.

The manifest's sha256 proves integrity, not authorship, so state.pt is read with torch's weights-only
unpickler: tensors, plain Python values and containers, and numpy's RNG state array, nothing that runs code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from hasten.errors import CheckpointError
from hasten.faults import fault_point
from hasten.files import sha256_file

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp-"  # a save in progress (a leftover one is a crash mid-save; removed by the next save)
OLD_PREFIX = ".old-"  # the previous copy of a step being re-saved; stands in for it if a crash hits the swap


def _numpy_array_globals() -> list:
    """What pickling numpy's RNG state (a uint32 array) refers to, for torch's weights-only unpickler: the array
    rebuilder under its numpy 2 and numpy 1 names, the array and dtype types. None of them runs code."""
    rebuild = np.zeros(1, np.uint32).__reduce__()[0]
    return [
        (rebuild, "numpy._core.multiarray._reconstruct"),
        (rebuild, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


SAFE_GLOBALS = _numpy_array_globals()


def warn(message: str) -> None:
    """Report a skipped checkpoint on one stderr line (warnings.warn would add a second, source line)."""
    print(f"hasten: warning: {message}", file=sys.stderr)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _put_file(target: Path, data: bytes | Path) -> dict:
    """Write bytes, or move a file (e.g. a DCP shard), into the checkpoint; returns its manifest entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, (bytes, bytearray)):
        _write_file(target, bytes(data))
        return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    shutil.move(data, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return {"sha256": sha256_file(target), "bytes": target.stat().st_size}


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    directory: str | Path, step: int, state: dict, keep: int = 2, extra_files: dict[str, bytes | Path] | None = None
) -> Path:
    """Atomically write `state` as checkpoint `step` under `directory`; keep the newest `keep` good ones.

    `extra_files` values are bytes, or paths of files already on disk (sharded DCP shards) that are
    moved in, so they never pass through memory; names may contain `/` (sub-directories).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f"{TMP_PREFIX}{final.name}-"))
    trash = directory / f"{OLD_PREFIX}{final.name}"
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files = {STATE_FILE: buffer.getvalue(), **(extra_files or {})}
        entries = {}
        for name, data in files.items():
            entries[name] = _put_file(tmp / name, data)
        fault_point("save", step)  # test hook: a crash with the data written but no manifest yet
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": entries}
        _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a rollback): replace it atomically
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash.exists() and not final.exists():  # failed between the two renames: put the old copy back
            os.replace(trash, final)
        raise
    fault_point("saved", step)  # test hook: a crash after the rename, before retention
    _apply_retention(directory, keep)
    return final


def verify_checkpoint(path: str | Path) -> str | None:
    """None if the checkpoint is complete and its checksums match, else the reason it is not."""
    path = Path(path)
    if not path.is_dir():
        return "it does not exist"
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return "no manifest.json (incomplete save)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "manifest.json is unreadable"
    if not isinstance(manifest, dict):
        return "manifest.json is malformed"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format version {manifest.get('format_version')} is not {FORMAT_VERSION}"
    files = manifest.get("files")
    if not isinstance(files, dict) or STATE_FILE not in files:
        return f"manifest.json does not list {STATE_FILE}"
    for name, info in files.items():
        file = path / name
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("bytes"), int)
            or not isinstance(info.get("sha256"), str)
        ):
            return f"manifest.json entry for {name} is malformed"
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != info["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, expected {info['bytes']}"
        if sha256_file(file) != info["sha256"]:
            return f"{name} checksum mismatch"
    return None


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint dir's name (`step_00000012` -> 12); -1 for other names."""
    try:
        return int(path.name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint dirs under `directory`, oldest first (by step).

    A `.old-step_N` left by a crash in the middle of re-saving step N stands in for the missing `step_N`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = {
        p.name: p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step_") and checkpoint_step(p) >= 0
    }
    for old in directory.glob(f"{OLD_PREFIX}step_*"):
        name = old.name[len(OLD_PREFIX) :]
        if old.is_dir() and name not in found and checkpoint_step(old) >= 0:
            found[name] = old
    return sorted(found.values(), key=checkpoint_step)


def latest_good_checkpoint(directory: str | Path, report=warn, at_most: int | None = None) -> Path | None:
    """The newest verified checkpoint (of a step <= `at_most` if given); each newer broken one is reported (never
    skipped silently)."""
    for path in reversed(list_checkpoints(directory)):
        if at_most is not None and checkpoint_step(path) > at_most:
            continue
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        report(f"checkpoint {path} is unusable ({problem}); falling back to the previous one")
    return None


def _apply_retention(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` verified checkpoints (so never the last good one) and stale temp dirs.

    Broken checkpoints are left alone: they are evidence, and each one is reported when skipped on load.
    """
    good = [p for p in list_checkpoints(directory) if verify_checkpoint(p) is None]
    for path in good[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for stale in directory.glob(f"{TMP_PREFIX}step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in directory.glob(f"{OLD_PREFIX}step_*"):
        if (directory / old.name[len(OLD_PREFIX) :]).exists():
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dir (or a run's checkpoints dir, taking the newest good one) after verifying it."""
    path = Path(path)
    if not (path / MANIFEST_FILE).exists() and list_checkpoints(path):
        found = latest_good_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no usable checkpoint under {path}; every one failed verification")
        path = found
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(_unusable(path, problem))
    state = read_state(path / STATE_FILE)
    state["_path"] = str(path)
    return state


def read_state(file: Path, writer: str = "hasten") -> dict:
    """A torch-pickled dict (a verified state.pt, or a transformers pytorch_model.bin written by `writer`), unpickled
    with torch's weights-only unpickler: a payload is refused, never run."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        foreign = _foreign_globals(file) if isinstance(err, pickle.UnpicklingError) else []
        if foreign:  # globals outside the allowlist: the weights-only unpickler refused to build them
            raise CheckpointError(
                f"{file} would run code to load (it names {', '.join(foreign[:3])}); hasten loads only tensors "
                f"and plain values from a checkpoint, so it was not loaded (it was not written by {writer}, or was "
                "altered)"
            ) from None
        # verified bytes that still do not unpickle: written by an incompatible version
        raise CheckpointError(
            f"{file} cannot be read ({type(err).__name__}: {_reason(err)}); it is damaged or was not written by "
            f"{'this version of ' if writer == 'hasten' else ''}{writer}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a state dict")
    return state


def _foreign_globals(file: Path) -> list[str]:
    """The globals outside the allowlist that a refused pickle names (read without running it)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a torch zip at all: it names nothing
        return []
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [name for name in names if name not in allowed]


def _reason(err: Exception) -> str:
    """The telling line of an unpickling error (torch's weights-only errors put it after several lines of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [
        line
        for line in lines
        if not line.startswith(
            (
                "Weights only load failed",
                "(1)",
                "(2)",
                "In PyTorch",
                "Check the doc",
                "Please file an issue",
                "WeightsUnpickler error",
            )
        )
    ]
    return (telling or lines or [""])[0][:120]


def _unusable(path: Path, problem: str) -> str:
    """Why `path` cannot be loaded, in words that fit what it is: a checkpoint, a run without one yet, or another
    folder."""
    if not problem.startswith("no manifest.json") or (path / STATE_FILE).exists() or path.name.startswith("step_"):
        return f"checkpoint {path} is unusable: {problem}"
    run = path.parent if path.name == "checkpoints" else path
    if (run / "config.yaml").is_file():
        return (
            f"run {run} has no checkpoint yet (it writes one every train.checkpoint_every steps and at the end); "
            f"wait for it, or continue it with hasten train --resume --run-dir {run}"
        )
    return f"{path} is not a checkpoint (no manifest.json); give a run dir or a checkpoint dir (step_XXXXXXXX)"
