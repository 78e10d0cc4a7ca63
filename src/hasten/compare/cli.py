"""The `hasten compare` subcommand (listed in hasten.cli.COMMANDS)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hasten.errors import ConfigError


def _recipe_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or not name or "=" not in override:
            raise ConfigError(
                f"--set-for {item!r} must look like RECIPE:key.path=value, e.g. --set-for slw:train.batch_size=64"
            )
        out.setdefault(name, []).append(override)
    return out


def _lrs(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--tune-lrs {text!r} must be comma-separated numbers, e.g. 1e-3,2e-3,4e-3,8e-3,1.6e-2"
        ) from None


def cmd_compare(args) -> int:
    from hasten.compare.runner import CompareOptions, GridStopped, run_compare

    opts = CompareOptions(
        recipes=[Path(p) for p in args.recipes],
        report_dir=Path(args.out),
        seeds=args.seeds,
        budget=args.budget,
        baseline=args.baseline,
        tune_baseline=args.tune_baseline,
        tune_lrs=_lrs(args.tune_lrs),
        tune_seeds=args.tune_seeds,
        jobs=args.jobs,
        overrides=args.overrides,
        recipe_overrides=_recipe_overrides(args.set_for),
        keep_checkpoints=args.keep_checkpoints,
        force=args.force,
        command="hasten " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if args.command_line is None
        else args.command_line,
    )
    try:
        results = run_compare(opts)
    except GridStopped as stopped:  # a requested stop, not an error
        print(f"hasten: {stopped}", file=sys.stderr)
        return stopped.exit_code
    print((Path(args.out) / "report.md").read_text())
    print(f"report: {Path(args.out) / 'report.md'}  results: {Path(args.out) / 'results.json'}", file=sys.stderr)
    return 0 if results["rows"] else 1


def _int_tokens(text: str) -> int:
    """Token budgets as 2000000, 2e6 or 2M."""
    value = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}.get(value[-1:], 1)
    try:
        return int(float(value[:-1] if scale != 1 else value) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens; use e.g. 2000000, 2e6 or 2M") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="run recipes x seeds at one token budget and report speedups against a baseline"
    )
    p.add_argument("recipes", nargs="+", help="recipe YAML files; each row is named by its file stem")
    p.add_argument("--seeds", type=int, default=1, help="seeds per recipe (0..N-1)")
    p.add_argument(
        "--budget",
        type=_int_tokens,
        default=None,
        help="training tokens per run (2e6, 2M); default: each recipe's own length",
    )
    p.add_argument(
        "--out",
        default="reports/compare",
        help="report dir (new, empty or a compare output); finished runs in it are reused, unfinished ones resumed",
    )
    p.add_argument(
        "--baseline", default=None, help="the recipe (file stem) every other is measured against; default: the first"
    )
    p.add_argument(
        "--tune-baseline", action="store_true", help="sweep the baseline's optim.lr at the same budget and use the best"
    )
    p.add_argument(
        "--tune-lrs",
        default=None,
        help="comma-separated LR grid for --tune-baseline (default: recipe LR x 1/4..4, 5 values)",
    )
    p.add_argument(
        "--tune-seeds", type=int, default=1, help="seeds per LR in the sweep (the best LR's sweep runs are reused)"
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, in separate processes (threads are split among them)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every recipe (repeatable)",
    )
    p.add_argument(
        "--set-for",
        dest="set_for",
        action="append",
        default=[],
        metavar="RECIPE:KEY=VALUE",
        help="override for one recipe, e.g. --set-for baseline:optim.lr=3e-3 (repeatable)",
    )
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep the checkpoints of finished runs (deleted by default)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out that is not a compare output "
        "(replaces report.md, results.json and plots there)",
    )
    p.add_argument(
        "--command-line", default=None, help=argparse.SUPPRESS
    )  # benchmarks/speedup.py records its own command
    p.set_defaults(func=cmd_compare)
