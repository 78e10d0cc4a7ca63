"""What drives a run's seed spread: its initial weights or its data order?

    python benchmarks/seed_noise.py                      # the standard tier's tuned baseline, seeds 0-2 crossed
    python benchmarks/seed_noise.py --seeds 0 1 --jobs 2
    python benchmarks/seed_noise.py --run benchmarks/results/standard/runs/d64-muon-0eb6f5c3-seed0 --out /tmp/muon-noise

`train.seed` sets the initial weights (and every other random draw) and `train.data_seed` the order of the training
windows. This trains every crossing (init seed i, data seed d) of one finished run's config, reusing that run's own
seed-s siblings in the same folder for i = d = s, and writes a table of final val losses (rows: init seed, columns:
data seed) with the spread of the row means (init) and of the column means (data order), the val loss at the first
evaluation (where the gap opens) and a plot of the curves. Resumable: finished runs are reused, unfinished ones resume.
Each job gets cores/jobs threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN = ROOT / "benchmarks/results/standard/runs/d64-baseline-4c37df81-seed0"
DEFAULT_OUT = ROOT / "benchmarks/results/diagnostics/seed-noise-d64-baseline"


def sibling(run: Path, seed: int) -> Path:
    """The grid's run of the same config at another seed (`...-seed0` -> `...-seed2`)."""
    stem = run.name.rsplit("-seed", 1)[0]
    return run.parent / f"{stem}-seed{seed}"


def shown(path: Path) -> Path:
    """A path as the README's command line shows it: relative to the repository when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def bad_input(args) -> str | None:
    """One line naming what is wrong with the arguments and the fix, or None."""
    if not (args.run / "config.yaml").is_file():
        return f"{args.run} has no config.yaml; pass --run a finished run dir"
    if args.jobs < 1:
        return f"--jobs={args.jobs} must be >= 1"
    if len(set(args.seeds)) < len(args.seeds):
        return f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each once"
    if (args.out / "README.md").exists() and not (args.out / "results.json").exists():
        return f"{args.out} holds a README.md this script did not write; pass a new --out"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a finished run whose config is crossed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    from hasten.compare.runner import RunSpec, available_cores, run_all
    from hasten.errors import ConfigError

    config = args.run / "config.yaml"
    problem = bad_input(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    threads = max(1, available_cores() // args.jobs)
    cells: dict[tuple[int, int], Path] = {}
    specs: list[RunSpec] = []
    for init in args.seeds:
        for data in args.seeds:
            own = sibling(args.run, init)
            if init == data and (own / "summary.json").exists():
                cells[init, data] = own
                continue
            name = f"init{init}-data{data}"
            run_dir = args.out / "runs" / name
            overrides = ["train.progress_bar=false", f"train.seed={init}", f"train.data_seed={data}", f"name={name}"]
            specs.append(RunSpec(name, "seed-noise", init, config, overrides, run_dir, threads))
            cells[init, data] = run_dir
    try:
        outcomes = run_all(specs, jobs=args.jobs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [o["name"] for o in outcomes if o["status"] == "failed"]
    if failed:
        print(f"error: {', '.join(failed)} failed; see their run dirs and rerun to resume", file=sys.stderr)
        return 1
    write_report(args, cells)
    return 0


def write_report(args, cells: dict[tuple[int, int], Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hasten.compare.metrics import curve_from_rows
    from hasten.trainer.logger import read_metrics

    seeds = args.seeds
    curves = {cell: curve_from_rows(read_metrics(path)) for cell, path in cells.items()}
    final = {cell: curve.final for cell, curve in curves.items()}
    first = {cell: curve.loss[1] for cell, curve in curves.items()}  # the first evaluation after step 0
    tokens = int(next(iter(curves.values())).tokens[1])
    row_means = {i: statistics.fmean(final[i, d] for d in seeds) for i in seeds}
    col_means = {d: statistics.fmean(final[i, d] for i in seeds) for d in seeds}
    spread = lambda values: max(values) - min(values)  # noqa: E731
    lines = [
        f"# What drives the seed spread of `{args.run.name}`: init or data order?",
        "",
        "Final val loss (whole validation split) of every crossing of initial-weight seed (`train.seed`, rows) and",
        "data-order seed (`train.data_seed`, columns); the diagonal is the grid's own runs. Produced by:",
        "",
        "```bash",
        f"python benchmarks/seed_noise.py --run {shown(args.run)} --seeds {' '.join(map(str, seeds))} "
        f"--out {shown(args.out)}",
        "```",
        "",
        "| init \\ data | " + " | ".join(f"data {d}" for d in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for i in seeds:
        lines.append(f"| init {i} | " + " | ".join(f"{final[i, d]:.4f}" for d in seeds) + f" | {row_means[i]:.4f} |")
    lines.append(
        "| mean | " + " | ".join(f"{col_means[d]:.4f}" for d in seeds) + f" | {statistics.fmean(final.values()):.4f} |"
    )
    lines += [
        "",
        f"- Range of the row means (initial weights): **{spread(row_means.values()):.4f}**; of the column means (data "
        f"order): **{spread(col_means.values()):.4f}**; of all {len(final)} runs: {spread(final.values()):.4f}.",
        f"- Val loss at the first evaluation ({tokens:,} tokens): range {spread(first.values()):.4f} "
        f"(rows {spread([statistics.fmean(first[i, d] for d in seeds) for i in seeds]):.4f}, columns "
        f"{spread([statistics.fmean(first[i, d] for i in seeds) for d in seeds]):.4f}).",
        "",
        "![val loss](curves.png)",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    for (i, d), curve in sorted(curves.items()):
        ax.plot(
            curve.tokens[1:],
            curve.loss[1:],
            styles[seeds.index(i) % len(styles)],
            color=f"C{seeds.index(d)}",
            label=f"init {i}, data {d}",
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("val loss (whole split)")
    ax.set_title("colour: data-order seed, line style: init seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120)
    (args.out / "README.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(
        json.dumps({f"init{i}-data{d}": final[i, d] for i, d in final}, indent=2) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
