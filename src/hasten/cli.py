"""The `hasten` command line: train, eval, prepare-data, info (and the methods' commands).

User errors print one line to stderr and exit with code 2; no traceback (argparse's usage errors too).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from hasten import __version__
from hasten.errors import ConfigError, DataError, HastenError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"hasten: error: {message} (see {self.prog} --help)\n")


def _common_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/); omitted = the defaults (or the run's own config with --resume/--from)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 or methods.growth.stages.0.at_tokens=5e5 (repeatable)")


# ------------------------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from hasten.config import load_config
    from hasten.trainer.setup import build_trainer, run_config_values

    if args.resume and args.from_run:
        raise ConfigError("--resume continues a run in place and --from forks one into a new run dir; give one of them")
    if args.resume and args.run_dir is None:
        raise ConfigError("--resume needs --run-dir RUN_DIR (the run to continue)")
    continued = args.run_dir if args.resume else args.from_run
    # a continued run starts from its own config: a recipe or --set changes only what they name
    cfg = load_config(args.recipe, args.overrides, base=run_config_values(continued) if continued else None)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from hasten.distributed import launch

        return launch(args.nproc, _relaunch_argv(args.argv, run_dir))
    dist = _distributed(cfg.train.device)
    from hasten.distributed import broadcast_object

    run_dir = broadcast_object(run_dir)  # a timestamped default could differ by a second between ranks
    trainer = build_trainer(cfg, run_dir, resume=args.resume, dist=dist, fork_from=args.from_run)
    if trainer.is_main:
        n = sum(p.numel() for p in trainer.state.model.parameters())
        tokens = trainer.data.manifest["tokens"]
        print(f"run dir {run_dir}  model {cfg.model if isinstance(cfg.model, str) else 'custom'} ({n / 1e6:.2f}M params)  "
              f"corpus {trainer.data.manifest['corpus']} ({tokens['train']:,} train / {tokens['val']:,} val tokens)", file=sys.stderr)
    if args.stop_at_step is not None:
        from hasten.trainer.callbacks import StopAt

        trainer.callbacks.append(StopAt(args.stop_at_step))
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
        print(f"hasten: stopped by {name} at step {trainer.state.progress.step} with a checkpoint; continue with: "
              f"hasten train --resume --run-dir {run_dir}", file=sys.stderr)
        return _stopped_code(stop)
    summary = {"run_dir": str(run_dir), **trainer.state.progress.to_dict(), **final,
               "data_tokens": dict(trainer.data.manifest["tokens"])}
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2), run_dir)
    print(f"done: val loss {final['val_loss']:.4f} after {trainer.state.progress.tokens:,} tokens; plot {plot}")
    return 0


class StopOnSignal:
    """SIGTERM / SIGINT (preemption, Ctrl-C) end the run at the next step boundary with the usual final evaluation
    and checkpoint; a second Ctrl-C stops at once. With several ranks the stop is agreed at each step (one tiny
    all-reduce on the CPU), so every rank stops after the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, trainer):
        from hasten.trainer.callbacks import Callback

        self.trainer, self.signal, self.previous = trainer, None, {}
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        if trainer.world_size > 1:
            stopper = self

            class _AgreeOnStop(Callback):
                name = "signal_stop"

                def after_step(self, trainer) -> None:
                    import torch

                    from hasten.distributed import all_reduce_sum

                    # a CPU tensor goes through gloo (also beside NCCL), so this never waits for the GPU
                    if all_reduce_sum([1.0 if stopper.signal is not None else 0.0], torch.device("cpu"))[0] > 0:
                        trainer.stop_requested = True

            trainer.callbacks.append(_AgreeOnStop())

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (e.g. one per thread from PR_SET_PDEATHSIG): already stopping
        self.signal = signum
        if self.trainer.world_size == 1:
            self.trainer.stop_requested = True
        if self.trainer.is_main:
            try:
                again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
                print(f"\nhasten: {signal.Signals(signum).name} received; stopping after this step with a checkpoint{again}",
                      file=sys.stderr, flush=True)
            except RuntimeError:  # a print interrupted by this handler
                pass

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _stopped_code(stop: StopOnSignal) -> int:
    if stop.signal is None:
        return 0
    from hasten.distributed import launched_worker, report_to_launcher

    if launched_worker():
        report_to_launcher("stopped", signal.Signals(stop.signal).name, 128 + stop.signal)
        return 0  # a clean stop: the launcher returns 128 + signal
    return 128 + stop.signal


def _write_atomic(path: Path, text: str, run_dir: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise HastenError(f"writing {path} failed ({err.strerror or err}); the run and its checkpoint are saved, so free space "
                          f"and run hasten train --resume --run-dir {run_dir} to write it") from None


def _write_plot(run_dir: Path) -> Path:
    from hasten.plots import plot_run

    path = run_dir / "loss.png"
    tmp = run_dir / ".loss.tmp.png"
    try:
        plot_run(run_dir, out=tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise HastenError(f"writing {path} failed ({err.strerror or err}); the run and its checkpoint are saved, so free space "
                          f"and run hasten train --resume --run-dir {run_dir} to write it") from None
    return path


def _distributed(device: str = "auto"):
    from hasten.trainer.setup import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    from hasten.distributed import init_distributed

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


# ------------------------------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from hasten.config import DataConfig, config_from_dict
    from hasten.data.sampler import eval_windows
    from hasten.data.tokens import prepare_from_config
    from hasten.interop.cli import load_model_and_checkpoint, run_tokenizer
    from hasten.trainer.setup import resolve_device

    if args.sequences is not None and args.sequences < 1:
        raise ConfigError(f"--sequences={args.sequences} must be >= 1")
    model, ckpt, run_dir = load_model_and_checkpoint(args.checkpoint, args.weights)
    cfg = config_from_dict(ckpt["config"]) if ckpt is not None and "config" in ckpt else None
    if cfg is None and args.data is None:
        raise ConfigError(f"{args.checkpoint} holds a model without a training config; say what to evaluate on with --data SOURCE")
    tokenizer = args.tokenizer or run_tokenizer(args.checkpoint, ckpt, run_dir)
    if tokenizer is None and (cfg is None or cfg.data.tokenizer == "bpe"):
        raise ConfigError(f"{args.checkpoint} has no tokenizer.json beside it; pass the model's tokenizer with --tokenizer FILE")
    data_cfg = cfg.data if cfg is not None else DataConfig()
    split_version = _run_split_version(run_dir)
    if args.data is not None:
        data_cfg = DataConfig(**{**vars(data_cfg), "source": args.data, "max_docs": None})
        split_version = None  # other data: the windows are spread over all of it, so its split does not matter
    kwargs = {"split_version": split_version} if split_version is not None else {}
    if args.data is None and run_dir is not None and (run_dir / "corpus.json").is_file():
        kwargs["expect"] = json.loads((run_dir / "corpus.json").read_text())  # its own val split, or one line
    try:
        data = prepare_from_config(data_cfg, progress=False, tokenizer=tokenizer, **kwargs)
    except DataError as err:
        if "expect" not in kwargs:
            raise
        raise DataError(f"{str(err).split(';')[0]}; so its val split is not the run's: evaluate on it with --data {data_cfg.source}") from None
    if data.vocab_size > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {data.vocab_size} tokens but the model only {model.config.vocab_size}; "
                          "pass the model's own tokenizer with --tokenizer")
    seq_len = cfg.seq_len if cfg is not None else model.config.max_seq_len
    wanted = args.sequences or (cfg.train.eval_sequences if cfg is not None else 64)
    if args.data is None:
        rows, split = eval_windows(data.val, seq_len, wanted), "val"
    else:  # the whole of other data: windows spread over both of its streams in proportion
        streams = [s for s in (data.train, data.val) if (len(s) - 1) // seq_len >= 1]
        total = sum((len(s) - 1) // seq_len for s in streams)
        if not streams:
            raise ConfigError(f"--data {args.data} has fewer than {seq_len + 1} tokens; give more text")
        wanted = wanted or total
        counts = [max(1, round(wanted * ((len(s) - 1) // seq_len) / total)) for s in streams]
        rows, split = torch.cat([eval_windows(s, seq_len, n) for s, n in zip(streams, counts)]), "all"
    device = resolve_device("auto")
    model.to(device).eval()
    with torch.no_grad():
        losses = [model(chunk[:, :-1].to(device), chunk[:, 1:].to(device)).item() * len(chunk) for chunk in rows.split(8)]
    loss = float(np.sum(losses) / len(rows))
    result = {"checkpoint": ckpt["_path"] if ckpt is not None else str(args.checkpoint),
              "step": ckpt["progress"]["step"] if ckpt is not None and "progress" in ckpt else None,
              "weights": args.weights, "data": data_cfg.source, "split": split, "loss": loss, "sequences": len(rows)}
    if split == "val":
        result["val_loss"] = loss
    print(json.dumps(result))
    return 0


def _run_split_version(run_dir: Path | None) -> int | None:
    """How the run split its corpus (its corpus.json); runs from before corpus.json used split version 1."""
    if run_dir is None:
        return None
    path = run_dir / "corpus.json"
    if not path.is_file():
        return 1 if (run_dir / "config.yaml").is_file() else None
    try:
        return int(json.loads(path.read_text()).get("split_version", 1))
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------- prepare-data / info


def cmd_prepare_data(args) -> int:
    from hasten.config import load_config
    from hasten.data.tokens import prepare_from_config

    cfg = load_config(args.recipe, args.overrides)
    data = prepare_from_config(cfg.data, progress=True)
    m = data.manifest
    tokens, docs = m["tokens"], m["documents"]
    share = tokens["val"] / max(1, tokens["train"] + tokens["val"])
    print(f"{m['corpus']}: {docs['total']} documents, {tokens['train']:,} train / {tokens['val']:,} val tokens ({share:.1%} val; "
          f"{docs['val']} document(s) in val, {docs['cut']} cut), vocab {m['vocab_size']}, skipped {m['skipped'] or 'none'}")
    print(f"token files: {data.directory}")
    print(f"tokenizer:   {data.tokenizer_path}")
    return 0


def cmd_info(args) -> int:
    import torch

    from hasten.model import GPT, PRESETS, ModelInfo, count_params, flops_per_token

    if args.model is None:
        rows = [("preset", "family", "layers", "d_model", "heads", "params", "non-embedding")]
        for name in PRESETS:
            cfg, counts = _info_model(name)
            rows.append((name, cfg.family, str(cfg.n_layers), str(cfg.d_model), f"{cfg.n_heads} ({cfg.n_kv_heads} kv)",
                         f"{counts['total']:,}", f"{counts['non_embedding']:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        print("hasten info NAME | RECIPE.yaml | '{preset: NAME, d_model: ...}' shows one model with its FLOPs per token")
        return 0
    cfg, seq, label = _info_target(args.model)
    with torch.device("meta"):
        model = GPT(cfg)
    seq = args.seq_len or seq
    info = ModelInfo(label, count_params(model), flops_per_token(cfg, seq))
    print("\n".join(info.lines()))
    print(f"  config: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
          f"({cfg.n_kv_heads} kv), d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, context {cfg.max_seq_len} (FLOPs at seq {seq})")
    return 0


def _info_model(spec):
    import torch

    from hasten.model import GPT, count_params, model_config

    cfg = model_config(spec)
    with torch.device("meta"):
        return cfg, count_params(GPT(cfg))


def _info_target(text: str):
    """(model config, sequence length, label) of a preset name, a recipe file or a model mapping."""
    import yaml

    from hasten.config import _checked_model_fields, _suggest, load_config
    from hasten.model import PRESETS, model_config

    if text in PRESETS:
        cfg = model_config(text)
        return cfg, cfg.max_seq_len, text
    if Path(text).is_file():
        run = load_config(text)
        return run.model_config(), run.seq_len, f"{run.model if isinstance(run.model, str) else 'custom'} (recipe {text})"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, dict):
        cfg = model_config(_checked_model_fields(value))
        return cfg, cfg.max_seq_len, text
    raise ConfigError(f"{text!r} is not a model preset, a recipe file or a model mapping like '{{preset: tiny, d_model: 64}}'; "
                      f"{_suggest(text, list(PRESETS))} (hasten info lists the presets)")


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hasten", description="Reach a target pre-training loss with less compute.")
    parser.add_argument("--version", action="version", version=f"hasten {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe (no arguments: cpu-small on the embedded stdlib corpus)")
    _common_config_args(p)
    p.add_argument("--run-dir", help="where the run lives (default runs/NAME-TIMESTAMP); a new run needs a new or empty folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its newest good checkpoint (a recipe/--set may change only its budget, "
                        "eval/checkpoint cadence and retention)")
    p.add_argument("--from", dest="from_run", metavar="RUN", default=None,
                   help="fork RUN: a new run dir that continues from RUN's newest checkpoint (same changes as --resume); RUN is untouched")
    p.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) after N completed steps without changing the schedule; --resume continues")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel over N local processes (torch.distributed.run; train.parallelism picks ddp or fsdp)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss of a checkpoint or run dir on its val split, or on other data")
    p.add_argument("checkpoint", help="run dir, checkpoint dir, model checkpoint (import-hf) or hf:DIR")
    p.add_argument("--sequences", type=int, default=None, help="number of full-context windows (default: the run's train.eval_sequences)")
    p.add_argument("--data", default=None, metavar="SOURCE", help="evaluate on other data (file, folder, glob, hf:NAME): windows over all of it")
    p.add_argument("--weights", default="raw", choices=["raw", "lawa", "ema", "swa"], help="raw weights or a run's weight average")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run's or the checkpoint's own)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare-data", help="build the tokenizer and token files of a recipe's corpus")
    _common_config_args(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("info", help="the presets (no argument), or one model's parameters and training FLOPs per token")
    p.add_argument("model", nargs="?", default=None, help="a preset name, a recipe file or a model mapping like '{preset: tiny, d_model: 64}'")
    p.add_argument("--seq-len", type=int, default=None)
    p.set_defaults(func=cmd_info)

    from hasten.commands import register_commands

    register_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hasten.distributed import die_with_launcher, launched_worker, report_to_launcher

    die_with_launcher()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` re-launches this command line
    try:
        return args.func(args)
    except HastenError as err:
        if launched_worker():  # the launcher prints the first worker error once
            report_to_launcher("error", str(err), err.exit_code)
        else:
            print(f"hasten: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if not launched_worker():
            raise
        report_to_launcher("crash", traceback.format_exc(), 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
