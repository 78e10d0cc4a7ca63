"""Assemble a Trainer from a RunConfig and its methods: device, data, model, optimizer, schedule, sampler,
the parallel strategy, the run dir, and (with resume) every state restored from the newest good checkpoint.

The methods are built above the trainer (hasten.recipes.build_trainer builds them from the recipe);
so is loading `train.init_from` weights from a transformers checkpoint (hf:DIR).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hasten.checkpointing import TrainCheckpoint, open_checkpoint
from hasten.checkpointing.rng import seed_everything
from hasten.checkpointing.weights import load_model
from hasten.config import ModelConfig, RunConfig
from hasten.data.sampler import WindowSampler
from hasten.data.tokens import TokenData, check_fits, data_difference, prepare_from_config
from hasten.errors import CheckpointError, ConfigError, DataError, HastenError
from hasten.files import atomic_write_text
from hasten.metrics.peak import cached_peak
from hasten.model import GPT
from hasten.optim.builder import build_optimizer, check_fsdp_optimizer
from hasten.optim.schedules import build_schedule
from hasten.parallel.ranks import Distributed, gather_objects, run_on_main
from hasten.parallel.strategy import make_strategy
from hasten.trainer.checkpoints import restore
from hasten.trainer.loop import Trainer
from hasten.trainer.method import Method
from hasten.trainer.monitor import StabilityMonitor
from hasten.trainer.rundir import (
    CORPUS_FILE,
    RunDirPlan,
    abandon,
    check_checkpoint_config,
    commit_run_dir,
    flatten,
    plan_run_dir,
)
from hasten.trainer.state import Progress, TrainState

LoadInit = Callable[[str], nn.Module]  # train.init_from -> a model holding the starting weights


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


def _check_budget(plan: RunDirPlan, cfg: RunConfig, checkpoint: TrainCheckpoint | None) -> None:
    """A continued run's budget may change, but not below the progress it has made."""
    if checkpoint is None:
        return
    progress = checkpoint.progress
    for key, done in (("max_steps", progress["step"]), ("max_tokens", progress["tokens"])):
        value = getattr(cfg.train, key)
        if f"train.{key}" in plan.changes and value is not None and value < done:
            raise ConfigError(
                f"train.{key}={value:,} is below the run's progress ({done:,} {key[4:]} done); give at least {done:,}"
            )


def _notes(plan: RunDirPlan, cfg: RunConfig, trainer: Trainer) -> list[str]:
    """What a continuation changed, and what a new budget means for the LR schedule (one stderr line each)."""
    if not plan.changes:
        return []
    old, new = flatten(plan.saved.to_dict()), flatten(cfg.to_dict())
    verb = "--resume" if plan.mode == "resume" else "--from"
    lines = [
        f"hasten: note: {verb} applies {', '.join(f'{k} {old.get(k)} -> {new.get(k)}' for k in plan.changes)} "
        "(the steps already trained stay as they are)"
    ]
    if {"train.max_steps", "train.max_tokens"} & set(plan.changes):
        st, schedule = trainer.state.schedule.state, trainer.state.schedule
        by_tokens = cfg.schedule.decay_unit == "tokens" and st.total_tokens > 0
        end = st.origin_tokens + st.total_tokens if by_tokens else st.total_steps + st.origin_step - st.start_step
        unit = "tokens" if by_tokens else "steps"
        planned = cfg.planned_tokens() if by_tokens else cfg.planned_steps()
        final_lr = schedule.base_lr if cfg.schedule.name == "constant" else schedule.min_lr
        if planned > end:
            lines.append(
                f"hasten: note: the LR schedule keeps the length it was planned with ({end:,} {unit}); "
                f"training past it runs at its final LR {final_lr:.3g}"
            )
        elif planned < end:
            lines.append(
                f"hasten: note: the run now ends before its LR schedule does ({end:,} {unit}), so its LR will not "
                f"reach the final value {final_lr:.3g}"
            )
    return lines


def build_trainer(
    cfg: RunConfig,
    run_dir: str | Path,
    methods: list[Method],
    *,
    resume: bool = False,
    dist: Distributed | None = None,
    progress: bool = True,
    fork_from: str | Path | None = None,
    dynamic_shapes: bool = False,
    load_init: LoadInit | None = None,
) -> Trainer:
    """A ready Trainer for a new run in `run_dir`, its continuation (`resume`), or a fork of the run `fork_from`.

    `methods` run in the order given; `dynamic_shapes` compiles one graph for every sequence length (a method
    varies it); `load_init` loads `train.init_from` (default: hasten run and checkpoint dirs only).
    """
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
            main["data"] = prepare_from_config(
                cfg.data,
                progress=progress,
                expect=plan.corpus,
                tokenizer=plan.tokenizer,
                split_version=plan.split_version,
            )
        except BaseException:
            abandon(plan)
            raise
        return plan.checkpoint, plan.tokenizer, plan.split_version, plan.corpus

    ckpt_path, tokenizer, split_version, expect = run_on_main(plan_on_main)
    plan: RunDirPlan | None = main.get("plan")
    parallel = make_strategy(
        dist, device, cfg.train.parallelism, compile=cfg.train.compile, dynamic_shapes=dynamic_shapes
    )
    try:
        data = _same_data_on_every_rank(
            lambda: (
                main.get("data")
                or prepare_from_config(
                    cfg.data, progress=False, expect=expect, tokenizer=tokenizer, split_version=split_version
                )
            ),
            dist,
        )
        trainer = _assemble(cfg, run_dir, parallel, data, ckpt_path, plan, methods, load_init or _load_hasten_model)
    except BaseException:
        if plan is not None:
            abandon(plan)
        raise
    if plan is not None:
        for line in _notes(plan, cfg, trainer):
            print(line, file=sys.stderr)
    return trainer


def _same_data_on_every_rank(prepare: Callable[[], TokenData], dist: Distributed) -> TokenData:
    """Each rank's token data (rank 0's was prepared first; a rank on another node prepares its own, or reads
    data.tokens): every rank must have the same tokens, else every rank stops with one line naming the difference."""
    try:
        data, outcome = prepare(), None
    except HastenError as err:
        data, outcome = None, err
    mine = (
        socket.gethostname(),
        data.corpus if data is not None else None,
        (type(outcome), str(outcome)) if outcome is not None else None,
    )
    ranks = gather_objects(mine)
    if outcome is not None:
        raise outcome
    for rank, (host, _, error) in enumerate(ranks):
        if error is not None:
            cls, message = error
            raise cls(f"rank {rank} on {host}: {message}")
    for rank, (host, record, _) in enumerate(ranks[1:], 1):
        difference = data_difference(ranks[0][1], record)
        if difference is not None:
            raise DataError(
                f"rank {rank} on {host} has other token data than rank 0 on {ranks[0][0]}: {difference}; "
                "give every node the same corpus and data settings, or prepare it once (hasten "
                "prepare-data RECIPE --out DIR) and train with data.tokens=DIR"
            )
    return data


def _assemble(
    cfg: RunConfig,
    run_dir: Path,
    parallel,
    data: TokenData,
    ckpt_path: Path | None,
    plan: RunDirPlan | None,
    methods: list[Method],
    load_init: LoadInit,
) -> Trainer:
    model_cfg: ModelConfig = cfg.model_config()
    if data.vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {data.vocab_size} tokens but model vocab_size is {model_cfg.vocab_size}; "
            "raise model.vocab_size"
        )
    check_fits(data, cfg.seq_len, cfg.train.batch_size, cfg.train.eval_sequences)
    if cfg.train.batch_size % parallel.world_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} does not split over {parallel.world_size} ranks; use a multiple"
        )

    seed_everything(cfg.train.seed)
    checkpoint = _open_resume_checkpoint(ckpt_path) if ckpt_path is not None else None
    if plan is not None:
        if checkpoint is not None:
            check_checkpoint_config(plan, checkpoint.run_config(), checkpoint.path)
        _check_budget(plan, cfg, checkpoint)
    if checkpoint is not None:
        model_cfg = ModelConfig(**checkpoint.model_config)  # the current stage's model (a method may change its shape)
    model = GPT(model_cfg).to(parallel.device)
    if checkpoint is None and cfg.train.init_from:
        init_weights(model, cfg.train.init_from, load_init)
    # FSDP2 shards in place, so its optimizer must be built on the shards; DDP wraps after the restore
    forward_model = parallel.wrap(model) if parallel.shards_in_place else None
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(cfg)
    sampler = WindowSampler(data.train, cfg.seq_len, seed=cfg.train.data_order_seed)
    state = TrainState(model=model, optimizer=optimizer, schedule=schedule, sampler=sampler, progress=Progress())

    peak = cfg.train.peak_flops or cached_peak(
        parallel.device, torch.bfloat16 if cfg.train.dtype == "bfloat16" else torch.float32, cfg.data.cache_dir
    )
    # everything that can refuse the run has run: now the run dir is written (rank 0), then the trainer logs into it
    new_path = run_on_main(lambda: (commit_run_dir(plan, cfg, data), plan.checkpoint)[1])
    if checkpoint is not None and new_path is not None:
        checkpoint.path = Path(new_path)  # a fork resumes from its own copy of the checkpoint
    trainer = Trainer(cfg, state, data, [StabilityMonitor(), *methods], run_dir, parallel, peak_flops=peak)
    if checkpoint is not None:
        restore(trainer, checkpoint)
    if plan is not None:
        if (
            plan.mode == "resume" and plan.corpus is None
        ):  # a run from before corpus.json: record it now that it resumed
            atomic_write_text(run_dir / CORPUS_FILE, json.dumps(data.corpus, indent=1))
        trainer.logger.lock, plan.lock = plan.lock, None  # the lock lives as long as the run logs
    state.forward_model = (
        forward_model if forward_model is not None else parallel.wrap(state.model)
    )  # DDP: after restore
    return trainer


def _open_resume_checkpoint(path: Path) -> TrainCheckpoint:
    ckpt = open_checkpoint(path)
    if not isinstance(ckpt, TrainCheckpoint):
        raise CheckpointError(
            f"{path} holds a model, not a training state; start a new run with train.init_from={path}"
        )
    return ckpt


def _load_hasten_model(spec: str) -> nn.Module:
    if spec.startswith("hf:"):
        raise ConfigError(
            f"train.init_from={spec}: transformers checkpoints are loaded by hasten.recipes.build_trainer; use it"
        )
    return load_model(open_checkpoint(spec))


def init_weights(model: GPT, spec: str, load_init: LoadInit) -> None:
    """Load starting weights (train.init_from); the run's model config must describe the same model."""
    source = load_init(spec)
    if source.config != model.config:
        mismatch = [k for k, v in source.config.to_dict().items() if model.config.to_dict()[k] != v]
        raise ConfigError(
            f"train.init_from={spec} holds a model that differs in {', '.join(mismatch)}; set model to "
            f"{{{', '.join(f'{k}: {source.config.to_dict()[k]}' for k in mismatch)}}} (or a matching preset)"
        )
    model.load_state_dict(source.state_dict())
