"""`hasten train`: a new run, `--resume`, `--from` a fork, `--nproc` ranks; stops cleanly on SIGTERM/SIGINT
(StopOnSignal)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from hasten import plots
from hasten.checkpointing import checkpoint_step, checkpoints_dir, latest_good_checkpoint
from hasten.errors import ConfigError, HastenError
from hasten.files import atomic_write, atomic_write_text
from hasten.parallel.launch import launch, launched_worker, report_to_launcher
from hasten.parallel.ranks import Distributed, broadcast_object, init_distributed
from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import StopAt
from hasten.trainer.rundir import run_config_values
from hasten.trainer.stopping import StopOnSignal


def cmd_train(args) -> int:
    if args.resume and args.from_run:
        raise ConfigError("--resume continues a run in place and --from forks one into a new run dir; give one of them")
    if args.resume and args.run_dir is None:
        raise ConfigError("--resume needs --run-dir RUN_DIR (the run to continue)")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc={args.nproc} must be >= 1 (the number of local processes)")
    continued = args.run_dir if args.resume else args.from_run
    if args.stop_at_step is not None:
        _check_stop_step(args.stop_at_step, continued)
    # a continued run starts from its own config: a recipe or --set changes only what they name
    cfg = load_config(args.recipe, args.overrides, base=run_config_values(continued) if continued else None)
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg.name)
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, _relaunch_argv(args.argv, run_dir))
    dist = _distributed(cfg.train.device)
    run_dir = broadcast_object(run_dir)  # a timestamped default could differ by a second between ranks
    trainer = build_trainer(cfg, run_dir, resume=args.resume, dist=dist, fork_from=args.from_run)
    if trainer.is_main:
        n = sum(p.numel() for p in trainer.state.model.parameters())
        tokens = trainer.data.manifest["tokens"]
        print(
            f"run dir {run_dir}  model {cfg.model if isinstance(cfg.model, str) else 'custom'} "
            f"({n / 1e6:.2f}M params)  "
            f"corpus {trainer.data.manifest['corpus']} ({tokens['train']:,} train / {tokens['val']:,} val tokens)",
            file=sys.stderr,
        )
    if args.stop_at_step is not None:
        trainer.methods.append(StopAt(args.stop_at_step))
    stop = StopOnSignal(trainer)
    try:
        final = trainer.fit()
    finally:
        stop.uninstall()
    if not trainer.is_main:
        return _stopped_code(stop)
    plot = _write_plot(run_dir)
    if stop.signal is not None:
        name = signal.Signals(stop.signal).name
        print(
            f"hasten: stopped by {name} at step {trainer.state.progress.step} with a checkpoint; continue with: "
            f"hasten train --resume --run-dir {run_dir}",
            file=sys.stderr,
        )
        return _stopped_code(stop)
    summary = {
        "run_dir": str(run_dir),
        **trainer.state.progress.to_dict(),
        **final,
        "data_tokens": dict(trainer.data.manifest["tokens"]),
    }
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2), run_dir)
    print(f"done: val loss {final['val_loss']:.4f} after {trainer.state.progress.tokens:,} tokens; plot {plot}")
    return 0


def _default_run_dir(name: str) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS, with -2, -3, ... when a run of the same name started in the same second."""
    stem = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = stem, 1
    while run_dir.exists():
        n += 1
        run_dir = stem.with_name(f"{stem.name}-{n}")
    return run_dir


def _check_stop_step(step: int, continued: str | None) -> None:
    """--stop-at-step must lie ahead of the run: a step already done would never be reached, so the run would not
    stop."""
    done = 0
    if continued is not None:
        newest = latest_good_checkpoint(checkpoints_dir(continued), report=lambda message: None)
        done = checkpoint_step(newest) if newest is not None else 0
    if step < 1:
        raise ConfigError(f"--stop-at-step={step} must be >= 1 (the number of completed steps to stop after)")
    if step <= done:
        raise ConfigError(
            f"--stop-at-step={step} must be above {done}, the step the run continues from; "
            "give a later step to stop after"
        )


def _stopped_code(stop: StopOnSignal) -> int:
    if stop.signal is None:
        return 0
    if launched_worker():
        report_to_launcher("stopped", signal.Signals(stop.signal).name, 128 + stop.signal)
        return 0  # a clean stop: the launcher returns 128 + signal
    return 128 + stop.signal


def _write_atomic(path: Path, text: str, run_dir: Path) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise HastenError(
            f"writing {path} failed ({err.strerror or err}); the run and its checkpoint are saved, so free space "
            f"and run hasten train --resume --run-dir {run_dir} to write it"
        ) from None


def _write_plot(run_dir: Path) -> Path:
    path = run_dir / "loss.png"
    try:
        atomic_write(path, lambda tmp: plots.plot_run(run_dir, out=tmp))
    except OSError as err:
        raise HastenError(
            f"writing {path} failed ({err.strerror or err}); the run and its checkpoint are saved, so free space "
            f"and run hasten train --resume --run-dir {run_dir} to write it"
        ) from None
    return path


def _distributed(device: str = "auto") -> Distributed:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    return init_distributed(device)


def _relaunch_argv(argv: list[str], run_dir: Path) -> list[str]:
    """The command line minus --nproc, with the run dir pinned so every rank uses the same one."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    if not any(a == "--run-dir" or a.startswith("--run-dir=") for a in out):
        out += ["--run-dir", str(run_dir)]
    return out
