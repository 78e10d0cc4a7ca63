"""Folders hasten creates whole: a run dir (`train`, `--from`), a grown run (`hasten grow`).

The target is checked to be new or empty without writing anything (check_new_dir), then filled in a hidden
staging folder beside it and renamed into place in one step (staged_dir), so a failure (bad input, a full
disk) leaves nothing behind that blocks a retry. enclosing_run_dir finds the run a path belongs to, so
outputs (exports, imports, compare reports) never land inside a run that retention or a resume rewrites.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hasten.errors import ConfigError
from hasten.layout import is_run_dir


def enclosing_run_dir(path: str | Path) -> Path | None:
    """The hasten run dir that `path` is or lies inside (None if it is in none)."""
    path = Path(path).expanduser().absolute()
    for folder in (path, *path.parents):
        if is_run_dir(folder):
            return folder
    return None


def check_new_dir(path: Path, label: str, flag: str) -> None:
    """Refuse a target that holds anything or cannot be created; writes nothing (`label` names it, `flag` sets it)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {path} is a file; pick another {flag}")
    if path.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise ConfigError(
                f"{label} {path} is not empty (holds {shown}); hasten writes only into a new or empty folder, so pick "
                f"another {flag}"
            )
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create {label} {path}: {ancestor} is a file; pick another {flag}")
    try:  # the one sure test of writability: make (and remove) a folder there
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".hasten-probe-"))
    except OSError as err:
        raise ConfigError(
            f"cannot create {label} {path} ({err.strerror or err} in {ancestor}); pick a writable {flag}"
        ) from None


@contextmanager
def staged_dir(target: Path, label: str, flag: str) -> Iterator[Path]:
    """Yield a hidden staging folder beside `target` to fill; on success it becomes `target` in one rename.

    A failure removes it (an OSError, e.g. a full disk, becomes one line), so nothing half-written is left.
    """
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.starting-"))
        yield staging
        os.replace(staging, target)  # onto a missing or empty folder; fails if another process filled it meanwhile
        staging = None
    except OSError as err:
        if staging is not None and target.is_dir() and any(target.iterdir()):
            raise ConfigError(
                f"{label} {target} was filled by another process meanwhile; pick another {flag}"
            ) from None
        raise ConfigError(
            f"creating {label} {target} failed ({err.strerror or err}); nothing was written, so free space "
            f"(or pick a writable {flag}) and run the same command again"
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
