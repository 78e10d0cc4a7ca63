"""`hasten grow`: grow a saved training state offline, or print G_stack's growth-timing guideline.

    hasten grow RUN_OR_CKPT --op stack --factor 4 [--dim depth] [--moments reset|map]
                [--schedule restart|jump|continue] [--lr LR] [--warmup-steps N] [--restart-step R]
                [--rewarmup-steps W] --out NEW_RUN_DIR
    hasten train --resume --run-dir NEW_RUN_DIR

    hasten grow --guideline N D      # d (tokens on the small model) for N target params, D tokens

The output is a new run dir (config.yaml with the model section set to the grown model, the
checkpoint, the source's metrics up to the checkpoint plus the growth events, tokenizer.json), so
`hasten train --resume` continues it like any run: same data order (sampler state), same step and
token counters, the optimizer state mapped (`map`) or fresh (`reset`), the LR schedule restarted,
jumped or continued exactly as the `growth` method does inside the trainer.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from hasten.checkpointing import CHECKPOINTS, checkpoint_name, open_train_checkpoint, save_checkpoint
from hasten.checkpointing.dirs import check_new_dir, enclosing_run_dir, staged_dir
from hasten.checkpointing.schema import METHODS
from hasten.errors import CheckpointError, ConfigError
from hasten.methods.growth.config import GrowthStage
from hasten.methods.growth.schedule import apply_schedule_policy
from hasten.methods.growth.state import grow_training_state
from hasten.methods.growth.timing import gstack_growth_tokens
from hasten.model import GPT, ModelConfig
from hasten.optim.builder import build_optimizer
from hasten.optim.schedules import build_schedule
from hasten.trainer.logger import read_metrics

KEPT_METHOD_STATES = ("stability",)  # shape-agnostic; other methods' states (weight averages) describe the small model


def cmd_grow(args) -> int:
    if args.guideline is not None:
        return _print_guideline(*args.guideline)
    missing = [
        flag
        for flag, value in (
            ("RUN_OR_CKPT", args.source),
            ("--op", args.op),
            ("--factor", args.factor),
            ("--out", args.out),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"hasten grow needs {', '.join(missing)} (or --guideline N D)")
    out = grow_checkpoint(args)
    print(f"continue it with: hasten train --resume --run-dir {out}")
    return 0


def _print_guideline(n_params: float, tokens: float) -> int:
    d = gstack_growth_tokens(n_params, tokens)
    print(
        f"d = {d:.4g} tokens  (G_stack guideline: log10 d = 0.88 log10 N + 163.27 / log10(6 N D) - 5.74, "
        f"N = {n_params:.4g} target params, D = {tokens:.4g} tokens, {d / tokens:.2%} of D)"
    )
    return 0


def grow_checkpoint(args) -> Path:
    """Grow the training state of args.source into the new run dir args.out; returns it."""
    out = Path(args.out)
    inside = enclosing_run_dir(out)
    if inside is not None:
        raise ConfigError(
            f"--out {out} is inside the run dir {inside}; a grown run is a run dir of its own, so put it outside"
        )
    check_new_dir(out, "grown run dir", "--out")
    ckpt = open_train_checkpoint(args.source, "hasten grow")
    if ckpt.sharded:
        raise CheckpointError(
            f"{ckpt.path} is a sharded checkpoint; "
            "save it consolidated (train.checkpoint_format=consolidated) to grow it"
        )
    cfg = ckpt.run_config()
    progress = dict(ckpt.progress)
    step, tokens = int(progress["step"]), int(progress["tokens"])
    stage = GrowthStage(
        dim=args.dim,
        op=args.op,
        factor=args.factor,
        at_steps=max(1, step),
        moments=args.moments,
        schedule=args.schedule,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        restart_step=args.restart_step,
        rewarmup_steps=args.rewarmup_steps,
    )
    stage.validate("hasten grow")

    model = GPT(ModelConfig(**ckpt.model_config))
    optimizer = build_optimizer(model, cfg.optim)
    try:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.parts["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{ckpt.path} does not fit its own model config ({str(err).splitlines()[0][:160]})"
        ) from None
    generator = torch.Generator().manual_seed(cfg.train.seed + step)  # fresh tensors of the random/zero operators
    grown = grow_training_state(
        model,
        optimizer,
        stage.op,
        stage.factor,
        stage.dim,
        build_optimizer=lambda m: build_optimizer(m, cfg.optim),
        moments=stage.moments,
        generator=generator,
    )

    schedule = build_schedule(cfg)
    schedule.load_state_dict(ckpt.parts["schedule"])
    schedule_info = apply_schedule_policy(
        schedule,
        stage,
        stage.dim,
        step,
        tokens,
        cfg.planned_steps(),
        cfg.planned_tokens(),
        cfg.optim.min_lr_ratio,
        cfg.schedule.warmup_steps,
        cfg.schedule.decay_unit,
    )

    values = cfg.to_dict()
    values["model"] = grown.model.config.to_dict()  # the full grown config: resume rebuilds this model
    dropped_methods = [name for name in ("growth",) if name in values["methods"]]
    for name in dropped_methods:  # its stages describe the small model's schedule; the growth happened here
        del values["methods"][name]
    dropped_states = sorted(name for name in ckpt.methods if name not in KEPT_METHOD_STATES)
    progress["stage"] = int(progress.get("stage", 0)) + 1
    parts = {
        **ckpt.parts,
        "model": grown.model.state_dict(),
        "optimizer": grown.optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "progress": progress,
    }
    parts.update({f"{METHODS}.{name}": None for name in dropped_states})  # reset on purpose: a resume starts afresh
    state = replace(ckpt, config=values, model_config=grown.model.config.to_dict(), parts=parts)

    run_dir = ckpt.run_dir
    rows = _metrics_until(run_dir, step) if run_dir is not None else []
    summary = grown.plan.summary()
    rows.append({"kind": "event", "step": step, "event": "state_replaced", "reason": summary, "tokens": tokens})
    rows.append(
        {
            "kind": "event",
            "step": step,
            "event": "growth",
            "stage": progress["stage"] - 1,
            "summary": summary,
            "notes": grown.notes,
            "tokens": tokens,
            "flops": progress["flops"],
            "model_config": grown.model.config.to_dict(),
            "offline": str(ckpt.path),
        }
    )
    rows.append({"kind": "event", "step": step, "event": "growth_schedule", "policy": stage.schedule, **schedule_info})
    with staged_dir(
        out, "grown run dir", "--out"
    ) as staging:  # the grown run appears whole, or not at all (a full disk: one line)
        for name in (
            "tokenizer.json",
            "corpus.json",
        ):  # the grown run resumes on the same tokens, and checks its corpus
            if run_dir is not None and (run_dir / name).exists():
                shutil.copyfile(run_dir / name, staging / name)
        (staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        save_checkpoint(staging / CHECKPOINTS, step, state.to_dict(), keep=cfg.train.keep_checkpoints)
        (staging / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))

    print(f"{ckpt.path} (step {step}, {tokens:,} tokens) -> {out / CHECKPOINTS / checkpoint_name(step)}")
    print(f"  {summary}")
    for note in grown.notes[1:]:
        print(f"  {note}")
    print(
        f"  schedule {stage.schedule}: "
        f"{', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in schedule_info.items())}"
    )
    if stage.dim == "width" and stage.op == "random":
        print(
            "  note: offline growth has no MSG mask ramp, so the new units act from the first step; "
            "grow inside the trainer (methods.growth) to ramp them in",
            file=sys.stderr,
        )
    if dropped_methods or dropped_states:
        print(
            f"  note: reset method state {', '.join(dropped_states) or '-'}; "
            f"removed methods.{', methods.'.join(dropped_methods) or '-'} from the new run's config",
            file=sys.stderr,
        )
    return out


def _metrics_until(run_dir: Path, step: int) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "grow", help="grow a checkpoint's training state into a bigger model (G_stack, staged), or --guideline N D"
    )
    p.add_argument("source", nargs="?", help="run dir (its newest good checkpoint) or checkpoint dir")
    p.add_argument("--op", default=None, help="depth: stack interpolate zero random; width: staged direct zero random")
    p.add_argument("--factor", type=float, default=None, help="growth factor (G_stack: 4; staged: 2)")
    p.add_argument("--dim", default="depth", choices=["depth", "width"])
    p.add_argument(
        "--moments",
        default="reset",
        choices=["reset", "map"],
        help="fresh optimizer (G_stack) or Adam state mapped (staged)",
    )
    p.add_argument(
        "--schedule", default="restart", choices=["restart", "jump", "continue"], help="LR schedule policy after growth"
    )
    p.add_argument("--lr", type=float, default=None, help="new peak LR from now on")
    p.add_argument("--warmup-steps", type=int, default=None, help="restart: warmup length (default the recipe's)")
    p.add_argument(
        "--restart-step", type=int, default=None, help="jump: the large model's step R (default step / constant_op)"
    )
    p.add_argument(
        "--rewarmup-steps", type=int, default=None, help="jump: re-warmup length (default warmup_steps // 16)"
    )
    p.add_argument(
        "--out", default=None, help="new run dir for the grown state (then: hasten train --resume --run-dir OUT)"
    )
    p.add_argument(
        "--guideline",
        nargs=2,
        type=float,
        metavar=("N", "D"),
        default=None,
        help="print G_stack's growth timing d for N target params and D training tokens, and exit",
    )
    p.set_defaults(func=cmd_grow)
