r"""The SLW stability experiment: baseline vs sequence length warmup at a larger batch and LR.

    python benchmarks/stability.py            # cpu-small, batch 64, LR 2.4e-2 (8x the bench LR): 2 runs of ~4-6 min
    python benchmarks/stability.py --smoke    # the `tiny` model, seconds: proves the pipeline
    python benchmarks/stability.py --lr 3e-2 --batch 64 --budget 786432 --seeds 2 \
        --out benchmarks/results/stability-lr3e-2

The SLW paper (arXiv 2108.06084) reports that GPT-2 trains stably with sequence length warmup at an
8x batch and 4x LR where the baseline is unstable (loss spikes, extreme Adam variance). This runs
`benchmarks/recipes/baseline.yaml` and `slw.yaml` with the *same* batch and peak LR (both larger
than the speed-up benchmark's 16 x 3e-3) and the same token budget, SLW's warmup length T set to
`--slw-frac` (default 35%) of its own optimizer steps, and every step logged (train.log_every=1) so
the maxima in the report see each step. Nothing tries to rescue a spike: the guard's rollback stays
off (its default), only non-finite steps are skipped, and a run with 10 non-finite steps in a row is
recorded as diverged.

The report (benchmarks/results/stability/report.md, results.json, stability.png and the loss plots)
carries the `hasten compare` stability table: per recipe loss-spike events (loss / min-loss-so-far
entering > 1.5), max loss ratio, max pre-clip grad norm, max element of Adam's exp_avg_sq,
non-finite / skipped steps and diverged runs, followed by a one-line verdict computed from them.
If neither recipe spikes, the effect does not reproduce at this setting: try a larger --lr (or a
shorter --warmup); if both spike, try a smaller one. Use a new --out for each setting (a report dir
refuses to reuse runs made with a different config).

Sizing: the default budget is 96 full-length steps of 64 x 128 = 786,432 tokens per run; cpu-small
trains at roughly 2-3k tokens/s on this 2-core CPU when it is quiet, so ~4-6 minutes a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "benchmarks" / "recipes"
RESULTS = ROOT / "benchmarks" / "results"
BENCH_LR, BENCH_BATCH = (
    3.0e-3,
    16,
)  # AdamW LR tuned for cpu-small at batch 16 x seq 128 (the reference this experiment scales)


def slw_total_steps(budget: int, batch: int, seq_len: int, warmup: dict, frac: float) -> int:
    """Smallest T with T >= frac x (SLW's steps to `budget` tokens when its warmup lasts T steps).

    Truncation makes warmup steps cheaper, so the run's step count grows with T; T - frac x steps(T)
    is increasing, so the first T that crosses is the fixed point.
    """
    from hasten.methods.seqlen_warmup import SeqLenSchedule, SeqLenWarmupConfig, steps_for_tokens

    base = {k: v for k, v in warmup.items() if k != "total_steps"}
    full_steps = max(1, budget // (batch * seq_len))
    for total in range(1, 4 * full_steps + 2):
        schedule = SeqLenSchedule(SeqLenWarmupConfig.from_dict({**base, "total_steps": total}).with_max_len(seq_len))
        if total >= frac * steps_for_tokens(schedule, batch, budget):
            return total
    return 4 * full_steps + 1


def verdict(stability: dict, baseline: str = "baseline", method: str = "slw") -> str:
    """One honest sentence from the stability numbers: did the baseline spike where SLW did not?"""
    b, m = stability.get(baseline), stability.get(method)
    if not b or not m or not b["seeds"] or not m["seeds"]:
        return "No verdict: a recipe logged no training step."

    def unstable(s: dict) -> bool:
        mean = s["mean"]
        return bool(
            s["diverged"]
            or (mean["spike_events"] or 0) > 0
            or (mean["skipped_steps"] or 0) > 0
            or (mean["nonfinite_losses"] or 0) > 0
        )

    def describe(name: str, s: dict) -> str:
        mean = s["mean"]
        parts = [f"{mean['spike_events'] or 0:g} spike event(s)"]
        if s["diverged"]:
            parts.append(f"{s['diverged']}/{len(s['seeds'])} run(s) diverged")
        if mean["skipped_steps"]:
            parts.append(f"{mean['skipped_steps']:g} skipped step(s)")
        ratio = mean["max_loss_ratio"]
        parts.append(f"max loss ratio {ratio:.3f}" if ratio is not None else "no loss ratio")
        return f"{name}: " + ", ".join(parts)

    sq_b, sq_m = b["mean"]["max_exp_avg_sq"], m["mean"]["max_exp_avg_sq"]
    sq = f"; max exp_avg_sq {sq_b:.3g} vs {sq_m:.3g}" if sq_b is not None and sq_m is not None else ""
    detail = f"({describe(baseline, b)}; {describe(method, m)}{sq}, seed means)"
    if unstable(b) and not unstable(m):
        return f"**Reproduced at this scale:** the baseline was unstable and SLW was not {detail}."
    if not unstable(b) and not unstable(m):
        return f"**Not reproduced at this setting:** neither run spiked; try a larger --lr {detail}."
    if unstable(b) and unstable(m):
        return f"**Not reproduced at this setting:** both recipes were unstable; try a smaller --lr {detail}."
    return f"**Not reproduced (reversed):** SLW was unstable and the baseline was not {detail}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model and budget (seconds); writes benchmarks/results/stability-smoke",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="sequences per step for both recipes (default 64; smoke 16)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"peak LR for both recipes (default 8 x {BENCH_LR:g} = 2.4e-2)"
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="training tokens per run (default 96 full-length steps)"
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--warmup", type=int, default=None, help="LR warmup steps for both recipes (default: the recipes' 20; smoke 2)"
    )
    parser.add_argument(
        "--slw-frac", type=float, default=0.35, help="SLW warmup length T as a fraction of SLW's optimizer steps"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (2 on a 2-core CPU shares the cores)")
    parser.add_argument(
        "--out", default=None, help="report dir (default benchmarks/results/stability, or stability-smoke)"
    )
    args = parser.parse_args(argv)

    from hasten.compare.runner import CompareOptions, recipes_from_paths, run_compare, run_spec
    from hasten.errors import HastenError
    from hasten.recipes import load_config

    seq_len = 64 if args.smoke else 128
    batch = args.batch or (16 if args.smoke else 64)
    lr = args.lr or 8 * BENCH_LR
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 20)
    budget = args.budget or (12 if args.smoke else 96) * batch * seq_len
    out = Path(args.out) if args.out else RESULTS / ("stability-smoke" if args.smoke else "stability")
    full_steps = max(1, budget // (batch * seq_len))
    if not 0 < args.slw_frac < 1 or batch < 1 or lr <= 0 or budget < batch * seq_len:
        print(
            "stability.py: error: need 0 < --slw-frac < 1, --batch >= 1, --lr > 0 and --budget of at least "
            "one full step",
            file=sys.stderr,
        )
        return 2
    every = max(1, full_steps // 6)
    overrides = [
        f"train.batch_size={batch}",
        f"optim.lr={lr!r}",
        f"train.seq_len={seq_len}",
        "train.log_every=1",
        f"train.eval_every={every}",
        f"train.checkpoint_every={2 * every}",
    ]
    if warmup is not None:
        overrides.append(f"schedule.warmup_steps={warmup}")
    if args.smoke:
        overrides = ["model=tiny", "data.vocab_size=512", "data.max_docs=60", "train.eval_sequences=8"] + overrides
    else:  # the experiment's own model (the speedup recipes moved to the bench-d* ladder; this record is on cpu-small)
        overrides = ["model=cpu-small", "data.vocab_size=4096", "train.eval_sequences=32"] + overrides
    paths = [RECIPES / "baseline.yaml", RECIPES / "slw.yaml"]
    try:
        slw_cfg = load_config(paths[1], overrides).methods["seqlen_warmup"]
        total = slw_total_steps(budget, batch, seq_len, slw_cfg, args.slw_frac)
    except HastenError as err:
        print(f"stability.py: error: {err}", file=sys.stderr)
        return err.exit_code
    command = (
        "python benchmarks/stability.py"
        + (" --smoke" if args.smoke else "")
        + "".join(
            f" {flag} {value}"
            for flag, value in (
                ("--batch", args.batch),
                ("--lr", args.lr),
                ("--budget", args.budget),
                ("--seeds", args.seeds if args.seeds != 1 else None),
                ("--warmup", args.warmup),
                ("--slw-frac", args.slw_frac if args.slw_frac != 0.35 else None),
                ("--jobs", args.jobs if args.jobs != 1 else None),
            )
            if value is not None
        )
    )
    opts = CompareOptions(
        recipes=paths,
        report_dir=out,
        seeds=args.seeds,
        budget=budget,
        baseline="baseline",
        jobs=args.jobs,
        overrides=overrides,
        recipe_overrides={
            "slw": [
                f"methods.seqlen_warmup.total_steps={total}",
                *([] if args.smoke else ["methods.seqlen_warmup.min_len=16"]),
            ]
        },
        command=command,
        tier="stability-smoke" if args.smoke else "stability",
    )
    settings = (
        f"Both recipes: batch {batch} x seq {seq_len} ({batch / BENCH_BATCH:g}x the reference batch of 16), "
        f"peak LR {lr:g} ({lr / BENCH_LR:g}x cpu-small's tuned {BENCH_LR:g}), {budget:,} tokens "
        f"({full_steps} full-length steps); SLW warmup T = {total} steps "
        f"({args.slw_frac:.0%} of its steps). Every step logged; guard rollback off."
    )
    print(settings, file=sys.stderr)
    try:
        results = run_compare(opts)
        stability = results["stability"]
    except (
        HastenError
    ) as err:  # e.g. every baseline seed diverged: no loss table, but the stability numbers are the result
        print(
            f"stability.py: the comparison report failed ({err}); writing the stability section alone", file=sys.stderr
        )
        stability = _stability_only(opts, recipes_from_paths, run_spec, out)
        if stability is None:
            print(f"stability.py: error: {err}", file=sys.stderr)
            return err.exit_code
    line = verdict(stability)
    with (out / "report.md").open("a") as f:
        f.write(f"\n## Stability experiment\n\n{settings}\n\n{line}\n")
    print((out / "report.md").read_text())
    return 0


def _stability_only(opts, recipes_from_paths, run_spec, out: Path) -> dict | None:
    """Stability report without the loss comparison, from whatever the runs logged; None if nothing ran."""
    from hasten.compare.plots import plot_stability
    from hasten.compare.stability import render_stability, stability_summary

    recipes = recipes_from_paths(opts.recipes, opts.recipe_overrides)
    runs = {r.name: [(s, s.run_dir) for s in (run_spec(opts, r, seed) for seed in range(opts.seeds))] for r in recipes}
    failed = {
        s.name: "no summary.json" for pairs in runs.values() for s, d in pairs if not (d / "summary.json").exists()
    }
    stability = stability_summary([r.name for r in recipes], runs, failed)
    if not any(s["seeds"] for s in stability.values()):
        return None
    plot = plot_stability(stability, out, [r.name for r in recipes], opts.tier)
    text = [
        f"# hasten stability: {opts.tier}",
        "",
        f"Command: `{opts.command}`",
        "",
        "No loss comparison: the baseline has no finished run (see runs/*/metrics.jsonl).",
        "",
        *render_stability(stability, plot.name if plot else None),
    ]
    (out / "report.md").write_text("\n".join(text).rstrip() + "\n")
    (out / "results.json").write_text(json.dumps({"command": opts.command, "stability": stability}, indent=1))
    return stability


if __name__ == "__main__":
    sys.exit(main())
