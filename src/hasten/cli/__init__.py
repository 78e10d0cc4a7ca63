"""The `hasten` command line: train, eval, prepare-data, info, and the commands of tools and methods.

User errors print one line to stderr and exit with code 2; no traceback (argparse's usage errors too).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from hasten import __version__
from hasten.checkpointing.weights import RAW, WEIGHTS_HELP
from hasten.cli import generate, methods
from hasten.cli.evaluate import cmd_eval
from hasten.cli.info import cmd_info, cmd_prepare_data
from hasten.cli.train import StopOnSignal, cmd_train
from hasten.compare import cli as compare_cli
from hasten.errors import HastenError
from hasten.interop import cli as interop_cli
from hasten.methods.registry import commands as method_commands
from hasten.parallel.launch import die_with_launcher, launched_worker, report_to_launcher
from hasten.recipes import load_checkpoint_model

# the tools' commands; the methods' own come from their specs
COMMANDS = (generate.add_parser, interop_cli.add_parser, compare_cli.add_parser, methods.add_parser)
__all__ = ["StopOnSignal", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"hasten: error: {message} (see {self.prog} --help)\n")


def _common_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        nargs="?",
        help="YAML recipe (see recipes/); omitted = the defaults (or the run's own config with --resume/--from)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100; a number picks a list element: "
        "section.list.0.key=5e5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hasten", description="Reach a target pre-training loss with less compute.")
    parser.add_argument("--version", action="version", version=f"hasten {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe (no arguments: cpu-small on the embedded stdlib corpus)")
    _common_config_args(p)
    p.add_argument(
        "--run-dir", help="where the run lives (default runs/NAME-TIMESTAMP); a new run needs a new or empty folder"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest good checkpoint "
        "(a recipe/--set may change only its budget, eval/checkpoint cadence and retention)",
    )
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN",
        default=None,
        help="fork RUN: a new run dir that continues from RUN's newest checkpoint (same changes as --resume); "
        "RUN is untouched",
    )
    p.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        metavar="N",
        help="stop (with a checkpoint) after N completed steps without changing the schedule; --resume continues",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="data-parallel over N local processes (torch.distributed.run; train.parallelism picks ddp or fsdp)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss of a checkpoint or run dir on its val split, or on other data")
    p.add_argument("checkpoint", help="run dir, checkpoint dir, model checkpoint (import-hf) or hf:DIR")
    p.add_argument(
        "--sequences",
        type=int,
        default=None,
        help="number of full-context windows (default: the run's train.eval_sequences)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="evaluate on other data (file, folder, glob, hf:NAME): windows over all of it",
    )
    p.add_argument("--weights", default=RAW, help=WEIGHTS_HELP)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run's or the checkpoint's own)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare-data", help="build the tokenizer and token shards of a recipe's corpus (resumable)")
    _common_config_args(p)
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the token dir here instead of the cache (new or empty, or a token dir to continue or "
        "extend); train on it from any node with --set data.tokens=DIR",
    )
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("info", help="the presets (no argument), or one model's parameters and training FLOPs per token")
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a preset name, a recipe file or a model mapping like '{preset: tiny, d_model: 64}'",
    )
    p.add_argument("--seq-len", type=int, default=None)
    p.set_defaults(func=cmd_info)

    for add_parser in (*COMMANDS, *method_commands()):  # tools' commands, and the methods' own (their specs name them)
        add_parser(sub)
    # a command that loads a checkpoint's model (eval, generate, export, a method's) gets it as its run computed
    # with it: what a method changed in the forward comes back through the method registry, which their own layers
    # may not import
    parser.set_defaults(load_model=load_checkpoint_model)
    return parser


def main(argv: list[str] | None = None) -> int:
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
