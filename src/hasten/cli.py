"""The `hasten` command line: train, eval, prepare-data, info (and the methods' commands).

User errors print one line to stderr and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hasten.errors import HastenError


def _common_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/); omitted = the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")


def cmd_train(args) -> int:
    from hasten.config import load_config
    from hasten.plots import plot_run
    from hasten.trainer.setup import build_trainer, load_run_config

    if args.resume and args.recipe is None and not args.overrides:
        if args.run_dir is None:
            raise HastenError("--resume needs --run-dir RUN_DIR (the run to continue)")
        cfg = load_run_config(args.run_dir)
    else:
        cfg = load_config(args.recipe, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from hasten.distributed import launch

        return launch(args.nproc, _relaunch_argv(args.argv, run_dir))
    dist = _distributed(cfg.train.device)
    from hasten.distributed import broadcast_object

    run_dir = broadcast_object(run_dir)  # a timestamped default could differ by a second between ranks
    trainer = build_trainer(cfg, run_dir, resume=args.resume, dist=dist)
    if trainer.is_main:
        n = sum(p.numel() for p in trainer.state.model.parameters())
        print(f"run dir {run_dir}  model {cfg.model if isinstance(cfg.model, str) else 'custom'} ({n / 1e6:.2f}M params)  "
              f"corpus {trainer.data.manifest['corpus']} ({trainer.data.manifest['tokens']['train']:,} train tokens)", file=sys.stderr)
    if args.stop_at_step is not None:
        from hasten.trainer.callbacks import StopAt

        trainer.callbacks.append(StopAt(args.stop_at_step))
    final = trainer.fit()
    if trainer.is_main:
        plot = plot_run(run_dir)
        summary = {"run_dir": str(run_dir), **trainer.state.progress.to_dict(), **final}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"done: val loss {final['val_loss']:.4f} after {trainer.state.progress.tokens:,} tokens; plot {plot}")
    return 0


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


def cmd_eval(args) -> int:
    import torch

    from hasten.checkpoint import load_checkpoint
    from hasten.config import config_from_dict
    from hasten.data.sampler import eval_windows
    from hasten.data.tokens import prepare_from_config
    from hasten.interop.cli import model_from_checkpoint

    path = Path(args.checkpoint)
    ckpt = load_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    cfg = config_from_dict(ckpt["config"])
    model = model_from_checkpoint(ckpt)
    data = prepare_from_config(cfg.data)
    rows = eval_windows(data.val, cfg.seq_len, args.sequences or cfg.train.eval_sequences)
    model.eval()
    with torch.no_grad():
        losses = [model(chunk[:, :-1], chunk[:, 1:]).item() * len(chunk) for chunk in rows.split(8)]
    loss = sum(losses) / len(rows)
    print(json.dumps({"checkpoint": ckpt["_path"], "step": ckpt["progress"]["step"], "val_loss": loss, "sequences": len(rows)}))
    return 0


def cmd_prepare_data(args) -> int:
    from hasten.config import load_config
    from hasten.data.tokens import prepare_from_config

    cfg = load_config(args.recipe, args.overrides)
    data = prepare_from_config(cfg.data)
    m = data.manifest
    print(f"{m['corpus']}: {m['documents']['train']} train / {m['documents']['val']} val documents, "
          f"{m['tokens']['train']:,} / {m['tokens']['val']:,} tokens, vocab {m['vocab_size']}, skipped {m['skipped'] or 'none'}")
    print(f"token files: {data.directory}")
    print(f"tokenizer:   {data.tokenizer_path}")
    return 0


def cmd_info(args) -> int:
    from hasten.model import GPT, ModelInfo, count_params, flops_per_token, model_config

    cfg = model_config(args.model)
    import torch

    with torch.device("meta"):
        model = GPT(cfg)
    seq = args.seq_len or cfg.max_seq_len
    info = ModelInfo(args.model, count_params(model), flops_per_token(cfg, seq))
    print("\n".join(info.lines()))
    print(f"  config: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
          f"({cfg.n_kv_heads} kv), d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, context {cfg.max_seq_len} (FLOPs at seq {seq})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hasten", description="Reach a target pre-training loss with less compute.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe (no arguments: cpu-small on the embedded stdlib corpus)")
    _common_config_args(p)
    p.add_argument("--run-dir", help="where the run lives (default runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its newest good checkpoint")
    p.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) after N completed steps without changing the schedule; --resume continues")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel over N local processes (re-launches via torch.distributed.run; train.parallelism picks ddp or fsdp)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="val loss of a checkpoint or run dir")
    p.add_argument("checkpoint")
    p.add_argument("--sequences", type=int, default=None, help="number of full-context val windows")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare-data", help="build the tokenizer and token files of a recipe's corpus")
    _common_config_args(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("info", help="parameters and training FLOPs per token of a model preset")
    p.add_argument("model")
    p.add_argument("--seq-len", type=int, default=None)
    p.set_defaults(func=cmd_info)

    from hasten.commands import register_commands

    register_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` re-launches this command line
    try:
        return args.func(args)
    except HastenError as err:
        print(f"hasten: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hasten: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
