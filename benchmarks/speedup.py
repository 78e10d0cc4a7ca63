"""The speedup benchmark: every recipe in benchmarks/recipes/ against a tuned AdamW baseline.

    python benchmarks/speedup.py --tier smoke   # 2 recipes on the `tiny` model, ~2 minutes: proves the pipeline
    python benchmarks/speedup.py --tier quick   # every recipe, 1 seed, ~30 minutes on 2 CPU cores
    python benchmarks/speedup.py --tier full    # every recipe, 3 seeds, cpu-small at full context: hours (background it)

Results go to benchmarks/results/<tier>/ (report.md, results.json, plots; the run dirs under runs/
are reused or resumed when the command is repeated), and the quick / full tiers rewrite the results
block of README.md.

Sizing (measured on this project's 2-core CPU): cpu-small at seq_len 128 trains at about 9k tokens/s
on a quiet machine (0.7-0.9k with four other jobs on the cores). The quick tier trains it for
1,310,720 tokens (640 steps of 16 x 128): ~15 runs (11 recipes + 4 extra LR-sweep runs) x ~2.5
minutes. The full tier uses the model's whole 256-token context, 1,638,400 tokens (400 steps of
16 x 256) and 3 seeds; ~37 runs x 3-4 minutes on a quiet machine.

Budget-dependent method settings are derived from the budget here, so each tier keeps the same
proportions: growth at 1/6 (G_stack) or 1/3 (staged) of the tokens, sequence-length warmup over 30%
of the run's full-length steps, and LAWA snapshots every 1/80 of the run (k = 5 spans ~5% of it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "benchmarks" / "recipes"
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ["baseline", "blockwise", "blockwise_base1e-3", "adam_mini", "adam_mini_blockwise", "gstack", "staged", "msg", "slw", "lawa", "muon", "combined"]
BENCH_BATCH, BENCH_SEQ = 16, 128  # _bench.yaml


@dataclass
class Tier:
    recipes: list[str]
    seeds: int
    budget: int
    overrides: list[str] = field(default_factory=list)
    seq_len: int = BENCH_SEQ
    tune_baseline: bool = True
    update_readme: bool = True


TIERS: dict[str, Tier] = {
    "smoke": Tier(
        recipes=["baseline", "muon"], seeds=2, budget=6144, seq_len=64, update_readme=False,
        overrides=["model=tiny", "data.vocab_size=512", "data.max_docs=60", "train.seq_len=64", "train.batch_size=8",
                   "train.eval_every=4", "train.eval_sequences=8", "train.checkpoint_every=4", "train.log_every=2",
                   "schedule.warmup_steps=2"],
    ),
    "quick": Tier(recipes=ORDER, seeds=1, budget=1_310_720),
    "full": Tier(
        recipes=ORDER, seeds=3, budget=1_638_400, seq_len=256,
        overrides=["train.seq_len=256", "train.eval_every=50", "train.eval_sequences=64", "train.checkpoint_every=100",
                   "schedule.warmup_steps=40"],
    ),
}


def budget_overrides(recipe: str, budget: int, seq_len: int) -> list[str]:
    """Per-recipe settings that scale with the budget (see the module docstring)."""
    full_steps = budget // (BENCH_BATCH * seq_len)
    lawa_interval = max(2, full_steps // 80)  # k=5 snapshots span ~5% of the run (the paper: nu=200 of 70k steps)
    gstack = (f"methods.growth.stages=[{{dim: depth, op: stack, factor: 4, at_tokens: {budget // 6}, moments: reset, "
              "schedule: restart, warmup_steps: 20}]")

    def msg(ramp_steps: int) -> str:
        return (f"methods.growth.stages=[{{dim: width, op: random, factor: 2, at_tokens: {budget // 3}, mask_ramp_steps: {ramp_steps}, "
                "moments: map, schedule: continue}]")

    out: dict[str, list[str]] = {
        "gstack": [gstack],
        "staged": [f"methods.growth.stages=[{{dim: width, op: staged, factor: 2, at_tokens: {budget // 3}, moments: map, schedule: jump}}, "
                   "{dim: depth, op: zero, factor: 2, at: previous, moments: map, schedule: jump}]"],
        "msg": [msg(ramp_steps=20)],
        "msg_noramp": [msg(ramp_steps=0)],
        "slw": [f"methods.seqlen_warmup.total_steps={max(8, round(0.3 * budget / (2 * BENCH_BATCH * seq_len)))}"],
        "lawa": [f"methods.lawa.interval={lawa_interval}"],
        "combined": [gstack, f"methods.seqlen_warmup.total_steps={max(8, round(0.3 * full_steps))}", f"methods.lawa.interval={lawa_interval}"],
    }
    return out.get(recipe, [])


def available(names: list[str], overrides: list[str]) -> tuple[list[Path], list[str]]:
    """Recipe files that load with this tree's registered methods; the others are reported and skipped."""
    from hasten.config import load_config
    from hasten.errors import ConfigError

    paths, skipped = [], []
    for name in names:
        path = RECIPES / f"{name}.yaml"
        if not path.exists():
            skipped.append(f"{name} (no recipe file)")
            continue
        try:
            load_config(path, overrides)
        except ConfigError as err:
            skipped.append(f"{name} ({err})")
            continue
        paths.append(path)
    return paths, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="quick")
    parser.add_argument("--recipes", default=None, help="comma-separated subset of the tier's recipes")
    parser.add_argument("--seeds", type=int, default=None, help="override the tier's seed count")
    parser.add_argument("--budget", type=int, default=None, help="override the tier's training tokens per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (2 on a 2-core CPU shares the cores; wall-clock then inflates)")
    parser.add_argument("--out", default=None, help="report dir (default benchmarks/results/<tier>)")
    parser.add_argument("--no-tune", action="store_true", help="skip the baseline LR sweep")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README results block")
    args = parser.parse_args(argv)

    from hasten.compare.report import update_readme
    from hasten.compare.runner import CompareOptions, run_compare
    from hasten.errors import HastenError

    tier = TIERS[args.tier]
    names = args.recipes.split(",") if args.recipes else tier.recipes
    budget = args.budget or tier.budget
    seeds = args.seeds or tier.seeds
    out = Path(args.out) if args.out else RESULTS / args.tier
    paths, skipped = available(names, tier.overrides)
    for note in skipped:
        print(f"skipping recipe {note}", file=sys.stderr)
    if not paths or paths[0].stem != "baseline":
        print("speedup.py: the baseline recipe must load; nothing to compare against", file=sys.stderr)
        return 2
    command = f"python benchmarks/speedup.py --tier {args.tier}" + "".join(
        f" {flag} {value}" for flag, value in (("--recipes", args.recipes), ("--seeds", args.seeds), ("--budget", args.budget),
                                               ("--jobs", args.jobs if args.jobs != 1 else None)) if value is not None
    ) + (" --no-tune" if args.no_tune else "")
    opts = CompareOptions(
        recipes=paths, report_dir=out, seeds=seeds, budget=budget, baseline="baseline",
        tune_baseline=tier.tune_baseline and not args.no_tune, jobs=args.jobs, overrides=list(tier.overrides),
        recipe_overrides={p.stem: budget_overrides(p.stem, budget, tier.seq_len) for p in paths if budget_overrides(p.stem, budget, tier.seq_len)},
        command=command, tier=args.tier,
    )
    try:
        results = run_compare(opts)
    except HastenError as err:
        print(f"speedup.py: error: {err}", file=sys.stderr)
        return err.exit_code
    if skipped:
        with (out / "report.md").open("a") as f:
            f.write("\nSkipped recipes: " + "; ".join(skipped) + "\n")
    if tier.update_readme and not args.no_readme:
        report = out.resolve() / "report.md"
        update_readme(ROOT / "README.md", results, str(report.relative_to(ROOT)) if report.is_relative_to(ROOT) else str(report))
        print("README.md results block updated", file=sys.stderr)
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
