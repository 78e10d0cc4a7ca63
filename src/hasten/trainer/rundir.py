"""The run dir's lifecycle: a new run, a resume or a fork is checked without writing, then committed.

A run dir is written only by the run that owns it: a fresh run (or a fork) first checks everything
it can (config, data, model, checkpoint) without writing, then commits the run dir in one rename of
a staging folder, so a failed start leaves nothing behind that blocks a retry. A running trainer
holds an exclusive lock on RUN_DIR/.lock (released when it stops), so a second writer is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from hasten.checkpointing import CHECKPOINTS, checkpoint_name, checkpoint_step, latest_good_checkpoint, list_checkpoints
from hasten.checkpointing.dirs import check_new_dir, staged_dir
from hasten.config import RunConfig, config_from_dict
from hasten.data.tokens import SPLIT_VERSION, TokenData
from hasten.errors import CheckpointError, ConfigError
from hasten.files import atomic_write_text
from hasten.trainer.logger import read_metrics

# config keys that may differ between a run and its resume: they do not change the computation
RESUME_FREE_KEYS = {
    "train.progress_bar",
    "train.tensorboard",
    "train.log_every",
    "train.device",
    "train.peak_flops",
    "name",
    "train.parallelism",
    "train.checkpoint_format",  # either checkpoint format resumes under ddp or fsdp
    "data.cache_dir",
    "data.num_workers",
    "data.rehash",  # the corpus check covers the data ones
    "data.tokens",
}
# keys a continued run (--resume, --from) may change, and says so: budget, evaluation/checkpoint cadence, retention.
# They change what happens next, never the steps already trained. (Not free for `hasten compare`, which reuses runs.)
RESUME_ADJUSTABLE_KEYS = {
    "train.max_steps",
    "train.max_tokens",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
}
LOCK_FILE = ".lock"
CORPUS_FILE = "corpus.json"  # the corpus fingerprint (files, sizes, sha256) and token counts the run trained on


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k)]


@dataclass
class RunDirPlan:
    """What build_trainer will do with the run dir, decided before anything is written."""

    run_dir: Path
    mode: str  # new | resume | fork
    source: Path | None = None  # the run whose state continues (resume: run_dir itself; fork: the forked run)
    checkpoint: Path | None = None
    saved: RunConfig | None = None  # the source run's config
    corpus: dict | None = None  # the source's corpus.json (None: a run made before corpus fingerprints)
    changes: list[str] = field(default_factory=list)  # RESUME_ADJUSTABLE_KEYS that differ from the saved config
    lock: Any = None
    existed: bool = False  # a new run's folder was already there (empty): a failed start empties it but keeps it
    created: bool = False  # this process committed the run dir (removed again if the start then fails)

    @property
    def tokenizer(self) -> str | None:
        """A continued run tokenizes with its own tokenizer.json, so token ids can never change under it."""
        path = self.source / "tokenizer.json" if self.source is not None else None
        return str(path) if path is not None and path.is_file() else None

    @property
    def split_version(self) -> int:
        if self.source is None:
            return SPLIT_VERSION
        return int((self.corpus or {}).get("split_version", 1))  # runs without corpus.json used split version 1


def lock_run_dir(run_dir: Path):
    """The run dir's writer lock (reentrant within one process, released when the trainer stops logging)."""
    lock = FileLock(run_dir / LOCK_FILE, timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"run dir {run_dir} is in use by another hasten process; wait for it to finish or stop it first"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot lock run dir {run_dir} ({err.strerror or err}); check its permissions") from None
    return lock


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run dir that holds anything (a run, or the user's own files) or cannot be written; writes nothing."""
    if (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"run dir {run_dir} already holds a run; "
            "use --resume to continue it, --from to fork it, or pick another --run-dir"
        )
    check_new_dir(run_dir, "run dir", "--run-dir")


def _continued_config(saved: RunConfig, cfg: RunConfig, how: str) -> list[str]:
    """The adjustable keys that differ between a run's config and its continuation; any other difference is refused."""
    diffs = config_differences(_resolved(saved), _resolved(cfg))
    fixed = [k for k in diffs if k not in RESUME_ADJUSTABLE_KEYS]
    if fixed:
        shown = ", ".join(fixed[:8]) + (f" and {len(fixed) - 8} more" if len(fixed) > 8 else "")
        raise ConfigError(
            f"{how}: the config differs from the run's in {shown}, which would change its trajectory; "
            f"{how} accepts only {', '.join(sorted(RESUME_ADJUSTABLE_KEYS))} "
            "(start a new run for other changes, e.g. with train.init_from=RUN)"
        )
    return [k for k in diffs if k in RESUME_ADJUSTABLE_KEYS]


def _resolved(cfg: RunConfig) -> dict:
    """The config with its model as the full model config, so `model: tiny` and `{preset: tiny, n_layers: 2}` compare
    equal."""
    return {**cfg.to_dict(), "model": cfg.model_config().to_dict()}


def read_corpus_record(run_dir: Path) -> dict | None:
    """A run's corpus.json (None if it has none: started by an older hasten); one line if it is unusable."""
    path = run_dir / CORPUS_FILE
    if not path.exists():
        return None
    unusable = "is unreadable; restore it, or delete it to continue without the corpus check"
    record = _read_mapping(path, json.loads, unusable)
    if not isinstance(record.get("split_version", 1), int):
        raise ConfigError(f"{path} {unusable}")
    return record


def _read_corpus_record(run_dir: Path) -> dict | None:
    record = read_corpus_record(run_dir)
    if record is None:
        print(
            f"hasten: warning: {run_dir} has no {CORPUS_FILE} (started by an older hasten): "
            "its corpus cannot be checked",
            file=sys.stderr,
        )
    return record


def plan_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, fork_from: Path | None = None) -> RunDirPlan:
    """Check the run dir (and the run to continue) and pick the checkpoint; writes nothing (a resume takes the lock)."""
    if fork_from is not None:
        source = Path(fork_from)
        if not (source / "config.yaml").is_file():
            raise ConfigError(f"--from {source} is not a run dir (no config.yaml); give the run to fork")
        if source.resolve() == run_dir.resolve():
            raise ConfigError("--from and --run-dir are the same run; use --resume to continue a run in place")
        check_new_run_dir(run_dir)
        saved = config_from_dict(_read_run_config(source / "config.yaml"))
        changes = _continued_config(saved, cfg, "--from")
        ckpt = latest_good_checkpoint(source / CHECKPOINTS)
        if ckpt is None:
            raise CheckpointError(
                f"--from {source} has no usable checkpoint to fork; resume it first or pick another run"
            )
        return RunDirPlan(
            run_dir, "fork", source, ckpt, saved, _read_corpus_record(source), changes, existed=run_dir.is_dir()
        )
    if not resume:
        check_new_run_dir(run_dir)
        return RunDirPlan(run_dir, "new", existed=run_dir.is_dir())
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"--resume: {run_dir} holds no run (no config.yaml); start it without --resume")
    plan = RunDirPlan(run_dir, "resume", source=run_dir, lock=lock_run_dir(run_dir))
    try:
        plan.saved = config_from_dict(_read_run_config(run_dir / "config.yaml"))
        plan.changes = _continued_config(plan.saved, cfg, "--resume")
        plan.corpus = _read_corpus_record(run_dir)
        if list_checkpoints(run_dir / CHECKPOINTS):
            plan.checkpoint = latest_good_checkpoint(run_dir / CHECKPOINTS)
            if plan.checkpoint is None:
                raise CheckpointError(
                    f"--resume: every checkpoint under {run_dir / 'checkpoints'} is broken; start a new run dir"
                )
        else:
            _refuse_lost_checkpoints(run_dir)
    except BaseException:
        plan.lock.release()
        raise
    return plan


def _refuse_lost_checkpoints(run_dir: Path) -> None:
    """A run with no checkpoint restarts from step 0 only if it never wrote one: otherwise its history would be
    retrained over."""
    saved = [
        r.get("step", 0) for r in read_metrics(run_dir) if r.get("kind") == "event" and r.get("event") == "checkpoint"
    ]
    if not saved and not (run_dir / "summary.json").exists():
        return  # stopped before its first checkpoint: nothing to lose
    record = f"checkpoints up to step {max(saved)}" if saved else "a finished run"
    raise CheckpointError(
        f"--resume: {run_dir} has no checkpoint, but its metrics.jsonl records {record} ({run_dir / CHECKPOINTS} "
        f"is missing or emptied), so resuming would retrain its history from step 0; restore {CHECKPOINTS}/ to "
        f"continue it, or start over in a new run dir: hasten train {run_dir / 'config.yaml'} --run-dir NEW_DIR"
    )


def check_checkpoint_config(plan: RunDirPlan, trained: RunConfig, checkpoint: Path) -> None:
    """The run's config.yaml must agree with the config its checkpoint trained with (a hand edit would change the
    trajectory unseen); budget and cadence may differ (a continuation that stopped before its next checkpoint)."""
    saved, actual = flatten(_resolved(plan.saved)), flatten(_resolved(trained))
    edited = [
        k for k in config_differences(_resolved(trained), _resolved(plan.saved)) if k not in RESUME_ADJUSTABLE_KEYS
    ]
    if edited:
        shown = ", ".join(f"{k} {actual.get(k)} -> {saved.get(k)}" for k in edited[:6]) + (
            f" and {len(edited) - 6} more" if len(edited) > 6 else ""
        )
        raise ConfigError(
            f"{plan.source / 'config.yaml'} differs from the config checkpoint {checkpoint} trained with in {shown} "
            "(edited by hand?), which would change the run's trajectory; put the checkpoint's values back "
            "(a continued run may change only its budget and cadence, with --set)"
        )


def _fork_metrics(source: Path, step: int, checkpoint: Path) -> str:
    rows = [r for r in read_metrics(source) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
    rows.append(
        {"kind": "event", "step": step, "event": "forked", "source": str(source), "checkpoint": str(checkpoint)}
    )
    return "".join(json.dumps(r) + "\n" for r in rows)


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """A checkpoint's files into the fork: hard links where possible (checkpoints are never modified in place)."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def commit_run_dir(plan: RunDirPlan, cfg: RunConfig, data: TokenData) -> None:
    """Write the run dir now that the run really starts: a new run or a fork appears in one rename."""
    run_dir = plan.run_dir
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if plan.mode == "resume":
        try:
            if plan.changes:
                atomic_write_text(run_dir / "config.yaml", config_text)
            if plan.tokenizer is None:
                shutil.copyfile(data.tokenizer_path, run_dir / "tokenizer.json")
            if plan.checkpoint is None:  # stopped before its first checkpoint: nothing to lose, start over
                print(f"hasten: {run_dir} has no checkpoint yet; resuming from step 0", file=sys.stderr)
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        except OSError as err:
            raise ConfigError(
                f"updating run dir {run_dir} failed ({err.strerror or err}); free space and resume again"
            ) from None
        return
    with staged_dir(run_dir, "run dir", "--run-dir") as staging:
        (staging / "config.yaml").write_text(config_text)
        shutil.copyfile(
            plan.tokenizer or data.tokenizer_path, staging / "tokenizer.json"
        )  # self-contained for export and resume
        if plan.mode == "fork":
            (staging / CORPUS_FILE).write_text(json.dumps(plan.corpus or data.corpus, indent=1))
            step = checkpoint_step(plan.checkpoint)
            (staging / "metrics.jsonl").write_text(_fork_metrics(plan.source, step, plan.checkpoint))
            _link_or_copy_tree(plan.checkpoint, staging / CHECKPOINTS / checkpoint_name(step))
        else:
            (staging / CORPUS_FILE).write_text(json.dumps(data.corpus, indent=1))
    plan.created = True
    if plan.mode == "fork":
        plan.checkpoint = run_dir / CHECKPOINTS / checkpoint_name(checkpoint_step(plan.checkpoint))
    plan.lock = lock_run_dir(run_dir)


def abandon(plan: RunDirPlan) -> None:
    """A start that failed after the commit: release the lock and remove what this process created."""
    if plan.lock is not None:
        plan.lock.release()
    if plan.created:
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        if plan.existed:
            plan.run_dir.mkdir(exist_ok=True)


def _read_mapping(path: Path, parse, unusable: str) -> dict:
    """A run dir file (config.yaml, corpus.json) as a mapping, or one line saying why it cannot be used."""
    try:
        values = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):  # json's decode error is a ValueError
        values = None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} {unusable}")
    return values


def _read_run_config(path: Path) -> dict:
    """A run dir's saved config.yaml as a mapping, or one line saying why it cannot be used."""
    return _read_mapping(path, yaml.safe_load, "is unreadable or not a mapping; this run dir cannot be resumed")


def run_config_values(run_dir: str | Path) -> dict:
    """A run dir's config.yaml as a mapping (the base a continued run's recipe and --set apply to)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml)")
    return _read_run_config(path)
