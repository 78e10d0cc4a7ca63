"""Assemble a Trainer from a RunConfig: device, data, model, optimizer, schedule, sampler, methods,
run dir, and (with resume) every state restored from the newest good checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

from hasten.checkpoint import checkpoint_name, latest_good_checkpoint, list_checkpoints, load_checkpoint
from hasten.config import RunConfig, config_from_dict
from hasten.data.sampler import WindowSampler
from hasten.data.tokenizer import atomic_write_text
from hasten.data.tokens import SPLIT_VERSION, TokenData, check_fits, prepare_from_config
from hasten.distributed import Distributed, load_full_state, load_sharded, run_on_main, wrap_model
from hasten.errors import CheckpointError, ConfigError
from hasten.methods.registry import build_callbacks
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer, check_fsdp_optimizer
from hasten.optim.schedules import build_schedule
from hasten.trainer.loop import Trainer
from hasten.trainer.monitor import StabilityMonitor
from hasten.trainer.state import Progress, TrainState

# config keys that may differ between a run and its resume: they do not change the computation
RESUME_FREE_KEYS = {"train.progress_bar", "train.tensorboard", "train.log_every", "train.device", "train.peak_flops", "name",
                    "train.parallelism", "train.checkpoint_format",  # either checkpoint format resumes under ddp or fsdp
                    "data.cache_dir"}
# keys a continued run (--resume, --from) may change, and says so: budget, evaluation/checkpoint cadence, retention.
# They change what happens next, never the steps already trained. (Not free for `hasten compare`, which reuses runs.)
RESUME_ADJUSTABLE_KEYS = {"train.max_steps", "train.max_tokens", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints"}
LOCK_FILE = ".lock"
CORPUS_FILE = "corpus.json"  # the corpus fingerprint (files, sizes, sha256) and token counts the run trained on


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device={spec!r} is unknown; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available; use train.device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def measure_peak_flops(device: torch.device, dtype: torch.dtype, cache_dir: str | None = None) -> float:
    """Best observed dense-matmul FLOP/s on this device and dtype (cached), the MFU denominator."""
    key = f"{device.type}-{torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()}-{torch.get_num_threads()}-{dtype}"
    cache = Path(os.environ.get("HASTEN_CACHE", cache_dir or "~/.cache/hasten")).expanduser() / "peak_flops.json"
    table = json.loads(cache.read_text()) if cache.exists() else {}
    if key in table:
        return float(table[key])
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    peak = 2 * n**3 / best
    table[key] = peak
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(table, indent=2))
    return peak


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k)]


# ------------------------------------------------------------------------------------------- run dirs
#
# A run dir is written only by the run that owns it: a fresh run (or a fork) first checks everything
# it can (config, data, model, checkpoint) without writing, then commits the run dir in one rename of
# a staging folder, so a failed start leaves nothing behind that blocks a retry. A running trainer
# holds an exclusive lock on RUN_DIR/.lock (released when it stops), so a second writer is refused.


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
        raise ConfigError(f"run dir {run_dir} is in use by another hasten process; wait for it to finish or stop it first") from None
    except OSError as err:
        raise ConfigError(f"cannot lock run dir {run_dir} ({err.strerror or err}); check its permissions") from None
    return lock


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a run dir that holds anything (a run, or the user's own files) or cannot be written; writes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} is a file; pick another --run-dir")
    if run_dir.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir())
        if "config.yaml" in entries:
            raise ConfigError(f"run dir {run_dir} already holds a run; use --resume to continue it, --from to fork it, or pick another --run-dir")
        if entries:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise ConfigError(f"run dir {run_dir} is not empty (holds {shown}); hasten writes a new run only into a new or empty "
                              "folder, so pick another --run-dir")
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create run dir {run_dir}: {ancestor} is a file; pick another --run-dir")
    try:  # the one sure test of writability: make (and remove) a folder there
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".hasten-probe-"))
    except OSError as err:
        raise ConfigError(f"cannot create run dir {run_dir} ({err.strerror or err} in {ancestor}); pick a writable --run-dir") from None


def _continued_config(saved: RunConfig, cfg: RunConfig, how: str) -> list[str]:
    """The adjustable keys that differ between a run's config and its continuation; any other difference is refused."""
    diffs = config_differences(_resolved(saved), _resolved(cfg))
    fixed = [k for k in diffs if k not in RESUME_ADJUSTABLE_KEYS]
    if fixed:
        shown = ", ".join(fixed[:8]) + (f" and {len(fixed) - 8} more" if len(fixed) > 8 else "")
        raise ConfigError(
            f"{how}: the config differs from the run's in {shown}, which would change its trajectory; {how} accepts only "
            f"{', '.join(sorted(RESUME_ADJUSTABLE_KEYS))} (start a new run for other changes, e.g. with train.init_from=RUN)"
        )
    return [k for k in diffs if k in RESUME_ADJUSTABLE_KEYS]


def _resolved(cfg: RunConfig) -> dict:
    """The config with its model as the full model config, so `model: tiny` and `{preset: tiny, n_layers: 2}` compare equal."""
    return {**cfg.to_dict(), "model": cfg.model_config().to_dict()}


def _read_corpus_record(run_dir: Path) -> dict | None:
    path = run_dir / CORPUS_FILE
    if not path.exists():
        print(f"hasten: warning: {run_dir} has no {CORPUS_FILE} (started by an older hasten): its corpus cannot be checked",
              file=sys.stderr)
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is unreadable; restore it, or delete it to continue without the corpus check")
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
        ckpt = latest_good_checkpoint(source / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"--from {source} has no usable checkpoint to fork; resume it first or pick another run")
        return RunDirPlan(run_dir, "fork", source, ckpt, saved, _read_corpus_record(source), changes, existed=run_dir.is_dir())
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
        if list_checkpoints(run_dir / "checkpoints"):
            plan.checkpoint = latest_good_checkpoint(run_dir / "checkpoints")
            if plan.checkpoint is None:
                raise CheckpointError(f"--resume: every checkpoint under {run_dir / 'checkpoints'} is broken; start a new run dir")
    except BaseException:
        plan.lock.release()
        raise
    return plan


def _check_budget(plan: RunDirPlan, cfg: RunConfig, checkpoint: dict | None) -> None:
    """A continued run's budget may change, but not below the progress it has made."""
    if checkpoint is None:
        return
    progress = checkpoint["progress"]
    for key, done in (("max_steps", progress["step"]), ("max_tokens", progress["tokens"])):
        value = getattr(cfg.train, key)
        if f"train.{key}" in plan.changes and value is not None and value < done:
            raise ConfigError(f"train.{key}={value:,} is below the run's progress ({done:,} {key[4:]} done); give at least {done:,}")


def _notes(plan: RunDirPlan, cfg: RunConfig, trainer: Trainer) -> list[str]:
    """What a continuation changed, and what a new budget means for the LR schedule (one stderr line each)."""
    if not plan.changes:
        return []
    old, new = _flatten(plan.saved.to_dict()), _flatten(cfg.to_dict())
    verb = "--resume" if plan.mode == "resume" else "--from"
    lines = [f"hasten: note: {verb} applies {', '.join(f'{k} {old.get(k)} -> {new.get(k)}' for k in plan.changes)} "
             "(the steps already trained stay as they are)"]
    if {"train.max_steps", "train.max_tokens"} & set(plan.changes):
        st, schedule = trainer.state.schedule.state, trainer.state.schedule
        by_tokens = cfg.schedule.decay_unit == "tokens" and st.total_tokens > 0
        end = st.origin_tokens + st.total_tokens if by_tokens else st.total_steps + st.origin_step - st.start_step
        unit = "tokens" if by_tokens else "steps"
        planned = cfg.planned_tokens() if by_tokens else cfg.planned_steps()
        final_lr = schedule.base_lr if cfg.schedule.name == "constant" else schedule.min_lr
        if planned > end:
            lines.append(f"hasten: note: the LR schedule keeps the length it was planned with ({end:,} {unit}); training past it "
                         f"runs at its final LR {final_lr:.3g}")
        elif planned < end:
            lines.append(f"hasten: note: the run now ends before its LR schedule does ({end:,} {unit}), so its LR will not "
                         f"reach the final value {final_lr:.3g}")
    return lines


def _staging_dir(run_dir: Path) -> Path:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.starting-"))


def _fork_metrics(source: Path, step: int, checkpoint: Path) -> str:
    from hasten.trainer.logger import read_metrics

    rows = [r for r in read_metrics(source) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
    rows.append({"kind": "event", "step": step, "event": "forked", "source": str(source), "checkpoint": str(checkpoint)})
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
            raise ConfigError(f"updating run dir {run_dir} failed ({err.strerror or err}); free space and resume again") from None
        return
    staging = None
    try:
        staging = _staging_dir(run_dir)
        (staging / "config.yaml").write_text(config_text)
        shutil.copyfile(plan.tokenizer or data.tokenizer_path, staging / "tokenizer.json")  # self-contained for export and resume
        if plan.mode == "fork":
            (staging / CORPUS_FILE).write_text(json.dumps(plan.corpus or data.corpus, indent=1))
            step = _step_of_checkpoint(plan.checkpoint)
            (staging / "metrics.jsonl").write_text(_fork_metrics(plan.source, step, plan.checkpoint))
            _link_or_copy_tree(plan.checkpoint, staging / "checkpoints" / checkpoint_name(step))
        else:
            (staging / CORPUS_FILE).write_text(json.dumps(data.corpus, indent=1))
        os.replace(staging, run_dir)  # onto a missing or empty folder; fails if another process filled it meanwhile
        staging = None
    except OSError as err:
        if run_dir.is_dir() and any(run_dir.iterdir()) and staging is not None:
            raise ConfigError(f"run dir {run_dir} was filled by another process while this run was starting; pick another --run-dir") from None
        raise ConfigError(f"creating run dir {run_dir} failed ({err.strerror or err}); nothing was written, so free space "
                          "(or pick a writable --run-dir) and run the same command again") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    plan.created = True
    if plan.mode == "fork":
        plan.checkpoint = run_dir / "checkpoints" / checkpoint_name(_step_of_checkpoint(plan.checkpoint))
    plan.lock = lock_run_dir(run_dir)


def _step_of_checkpoint(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[1])


def _abandon(plan: RunDirPlan) -> None:
    """A start that failed after the commit: release the lock and remove what this process created."""
    if plan.lock is not None:
        plan.lock.release()
    if plan.created:
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        if plan.existed:
            plan.run_dir.mkdir(exist_ok=True)


def build_trainer(cfg: RunConfig, run_dir: str | Path, resume: bool = False, dist: Distributed | None = None, progress: bool = True,
                  fork_from: str | Path | None = None) -> Trainer:
    """A ready Trainer for a new run in `run_dir`, its continuation (`resume`), or a fork of the run `fork_from`."""
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank)
    if dist.world_size > 1 and cfg.train.parallelism == "fsdp":
        check_fsdp_optimizer(cfg.optim.name)
    # rank 0 checks the run dir and fills the data cache first; its plan (or error) is shared
    main: dict = {}

    def plan_on_main():
        main["plan"] = plan = plan_run_dir(cfg, run_dir, resume, Path(fork_from) if fork_from is not None else None)
        try:
            main["data"] = prepare_from_config(cfg.data, progress=progress, expect=plan.corpus, tokenizer=plan.tokenizer,
                                               split_version=plan.split_version)
        except BaseException:
            _abandon(plan)
            raise
        return plan.checkpoint, plan.tokenizer, plan.split_version

    ckpt_path, tokenizer, split_version = run_on_main(plan_on_main)
    plan: RunDirPlan | None = main.get("plan")
    try:
        data = main.get("data") or prepare_from_config(cfg.data, progress=False, tokenizer=tokenizer, split_version=split_version)
        trainer, checkpoint = _assemble(cfg, run_dir, dist, device, data, ckpt_path, plan, progress)
    except BaseException:
        if plan is not None:
            _abandon(plan)
        raise
    if plan is not None:
        for line in _notes(plan, cfg, trainer):
            print(line, file=sys.stderr)
    return trainer


def _assemble(cfg, run_dir, dist, device, data, ckpt_path, plan, progress):
    model_cfg: ModelConfig = cfg.model_config()
    if data.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but model vocab_size is {model_cfg.vocab_size}; raise model.vocab_size")
    check_fits(data, cfg.seq_len, cfg.train.batch_size, cfg.train.eval_sequences)
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not split over {dist.world_size} ranks; use a multiple")

    seed_everything(cfg.train.seed)
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if plan is not None:
        _check_budget(plan, cfg, checkpoint)
    if checkpoint is not None:
        model_cfg = ModelConfig(**checkpoint["model_config"])  # the current stage's model (growth changes it)
    model = GPT(model_cfg).to(device)
    if checkpoint is None and cfg.train.init_from:
        init_weights(model, cfg.train.init_from)
    wrap = _model_wrapper(cfg, dist, device)
    sharded = dist.world_size > 1 and cfg.train.parallelism == "fsdp"
    forward_model = wrap(model) if sharded else None  # FSDP2 shards in place: the optimizer must be built on the shards
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(cfg)
    sampler = WindowSampler(data.train, cfg.seq_len, seed=cfg.train.seed)
    state = TrainState(model=model, optimizer=optimizer, schedule=schedule, sampler=sampler, progress=Progress())

    callbacks = [StabilityMonitor(), *build_callbacks(cfg)]
    peak = cfg.train.peak_flops or measure_peak_flops(device, torch.bfloat16 if cfg.train.dtype == "bfloat16" else torch.float32, cfg.data.cache_dir)
    # everything that can refuse the run has run: now the run dir is written (rank 0), then the trainer logs into it
    new_path = run_on_main(lambda: (commit_run_dir(plan, cfg, data), plan.checkpoint)[1])
    if checkpoint is not None and new_path is not None:
        checkpoint["_path"] = str(new_path)  # a fork resumes from its own copy of the checkpoint
    trainer = Trainer(cfg, state, data, callbacks, run_dir, device, rank=dist.rank, world_size=dist.world_size, peak_flops=peak, wrap_model=wrap)
    if checkpoint is not None:
        restore(trainer, checkpoint)
    if plan is not None:
        if plan.mode == "resume" and plan.corpus is None:  # a run from before corpus.json: record it now that it resumed
            atomic_write_text(run_dir / CORPUS_FILE, json.dumps(data.corpus, indent=1))
        trainer.logger.lock, plan.lock = plan.lock, None  # the lock lives as long as the run logs
    state.forward_model = forward_model if forward_model is not None else wrap(state.model)  # DDP: after restore
    return trainer, checkpoint


def init_weights(model: GPT, spec: str) -> None:
    """Load starting weights (train.init_from); the run's model config must describe the same model."""
    from hasten.interop.cli import load_model_from

    source = load_model_from(spec)
    if source.config != model.config:
        mismatch = [k for k, v in source.config.to_dict().items() if model.config.to_dict()[k] != v]
        raise ConfigError(
            f"train.init_from={spec} holds a model that differs in {', '.join(mismatch)}; set model to "
            f"{{{', '.join(f'{k}: {source.config.to_dict()[k]}' for k in mismatch)}}} (or a matching preset)"
        )
    model.load_state_dict(source.state_dict())


def _model_wrapper(cfg: RunConfig, dist: Distributed, device: torch.device):
    def wrap(model):
        return wrap_model(model, cfg, dist, device)

    return wrap


def restore(trainer: Trainer, checkpoint: dict, rollback: bool = False) -> None:
    """Load every state from a checkpoint into a trainer (model already of the right shape).

    rollback=True (the spike guard, mid-run) keeps the metrics written since the checkpoint: they are the record.
    """
    st = trainer.state
    try:
        if checkpoint.get("sharded"):  # DCP shards beside state.pt, resharded to this run's ranks
            load_sharded(st.model, st.optimizer, Path(checkpoint["_path"]) / checkpoint["sharded"])
        else:  # consolidated: full tensors, loaded into a plain, DDP or FSDP-sharded model alike
            load_full_state(st.model, st.optimizer, checkpoint["model"], checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {checkpoint.get('_path')} does not fit this model/optimizer ({str(err).splitlines()[0][:160]})") from None
    st.schedule.load_state_dict(checkpoint["schedule"])
    st.sampler.load_state_dict(checkpoint["sampler"])
    vars(st.progress).update(vars(Progress(**checkpoint["progress"])))  # in place: fit() holds a reference to it
    trainer.guard.load_state_dict(checkpoint.get("guard", {}))
    saved_callbacks = checkpoint.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.name in saved_callbacks:
            cb.load_state_dict(saved_callbacks[cb.name])
    set_rng_state(checkpoint["rng"])
    if not rollback:
        trainer.logger.truncate_after(st.progress.step)
        trainer.logger.log("event", st.progress.step, event="resumed", path=checkpoint.get("_path"))


def _read_run_config(path: Path) -> dict:
    """A run dir's saved config.yaml as a mapping, or one line saying why it cannot be used."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        values = None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} is unreadable or not a mapping; this run dir cannot be resumed")
    return values


def run_config_values(run_dir: str | Path) -> dict:
    """A run dir's config.yaml as a mapping (the base a continued run's recipe and --set apply to)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml)")
    return _read_run_config(path)

