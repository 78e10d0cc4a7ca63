"""Assemble a Trainer from a RunConfig: device, data, model, optimizer, schedule, sampler, methods,
run dir, and (with resume) every state restored from the newest good checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from hasten.checkpoint import latest_good_checkpoint, list_checkpoints, load_checkpoint
from hasten.config import RunConfig, config_from_dict
from hasten.data.sampler import WindowSampler
from hasten.data.tokens import check_fits, prepare_from_config
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
                    "train.parallelism", "train.checkpoint_format"}  # either checkpoint format resumes under ddp or fsdp


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(spec)


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


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> Path | None:
    """Create or check the run dir; returns the checkpoint to resume from (or None for a fresh run)."""
    config_path = run_dir / "config.yaml"
    if resume:
        if not config_path.exists():
            raise ConfigError(f"--resume: {run_dir} holds no run (no config.yaml); start it without --resume")
        saved = _read_run_config(config_path)
        diffs = config_differences(saved, cfg.to_dict())
        if diffs:
            raise ConfigError(
                f"--resume: the config differs from the run's in {', '.join(diffs[:4])}; resume with the run's own config "
                "(omit the recipe) or start a new run dir"
            )
        if not list_checkpoints(run_dir / "checkpoints"):  # stopped before its first checkpoint: nothing to lose, start over
            print(f"hasten: {run_dir} has no checkpoint yet; resuming from step 0", file=sys.stderr)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return None
        ckpt = latest_good_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"--resume: every checkpoint under {run_dir / 'checkpoints'} is broken; start a new run dir")
        return ckpt
    if config_path.exists():
        raise ConfigError(f"run dir {run_dir} already holds a run; use --resume to continue it or pick another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} is a file; pick another --run-dir")
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run dir {run_dir} holds another run's files but no config.yaml; pick another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(config_path)
    return None


def build_trainer(cfg: RunConfig, run_dir: str | Path, resume: bool = False, dist: Distributed | None = None, progress: bool = True) -> Trainer:
    dist = dist or Distributed()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank)
    if dist.world_size > 1 and cfg.train.parallelism == "fsdp":
        check_fsdp_optimizer(cfg.optim.name)  # before the run dir is made, so the same command with ddp can follow
    # rank 0 checks the run dir and fills the data cache first; its checkpoint choice (or error) is shared
    main_data: dict = {}

    def on_main():
        path = prepare_run_dir(cfg, run_dir, resume)
        main_data["data"] = prepare_from_config(cfg.data, progress=progress)
        shutil.copyfile(main_data["data"].tokenizer_path, run_dir / "tokenizer.json")  # the run dir is self-contained for export
        return path

    ckpt_path = run_on_main(on_main)
    data = main_data.get("data") or prepare_from_config(cfg.data, progress=False)
    model_cfg: ModelConfig = cfg.model_config()
    if data.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but model vocab_size is {model_cfg.vocab_size}; raise model.vocab_size")
    check_fits(data, cfg.seq_len, cfg.train.batch_size, cfg.train.eval_sequences)
    if cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not split over {dist.world_size} ranks; use a multiple")

    seed_everything(cfg.train.seed)
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path is not None else None
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
    trainer = Trainer(cfg, state, data, callbacks, run_dir, device, rank=dist.rank, world_size=dist.world_size, peak_flops=peak, wrap_model=wrap)
    if checkpoint is not None:
        restore(trainer, checkpoint)
    state.forward_model = forward_model if forward_model is not None else wrap(state.model)  # DDP: after restore
    return trainer


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


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml)")
    return config_from_dict(_read_run_config(path))
