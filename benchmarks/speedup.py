"""The speedup benchmark: every method against a tuned AdamW baseline, in a regime where the papers' claims can show.

    python benchmarks/speedup.py --tier smoke      # the whole pipeline on tiny budgets (~2 min);
                                                   # benchmarks/runs/smoke, not tracked
    python benchmarks/speedup.py --tier standard   # the grid (hours on 2 CPU cores, resumable);
                                                   # benchmarks/results/standard

Regime. The models of the scale ladder (bench-d32 / d48 / d64: GPT-2 family, 4 layers, 4 heads, vocab 512, context 128)
train on 20 tokens per non-embedding parameter, the Chinchilla ratio at or beyond which the papers measure, inside one
epoch of the corpus; every evaluation uses the whole validation split. bench-d64 is the main size: there the 4-layer
model beats a 1-layer one by the end of the budget (at d48 it does not yet, so growth could not be judged).

Fair tuning. At each size the baseline's AdamW LR is swept over 5 values a factor sqrt(2) apart (widened while the best
sits at an edge). Every other row gets exactly 5 tuning runs of its key knobs on seed 0 (the ROWS table below), written
relative to the tuned AdamW LR and the budget so they carry across sizes; the lowest final val loss wins (the averaged
model's for LAWA rows). Compositions (muon_*, combined) are tuned, with the same 5 runs, around their parts' chosen
settings after those are known. The baseline and combined then get a second round of 5 runs each around their first
choice (equal extra effort; the report lists every row's count). combined's leave-one-out rows (combined_no_slw,
combined_no_muon; the raw weights of combined's runs are its "- LAWA" row) run at combined's choice, untuned.

Held-out seeds. Every choice is made on seed 0 alone; every row then runs seeds 1..5 at its chosen setting, seed-major,
and only those are reported. Seed s gives every row the same data order and, where shapes agree, the same initial
weights; hasten.compare.report compares each row with the baseline seed by seed (paired differences and speedups with
95 % intervals).

Resolved crossings. The held-out runs of every row that can reach the baseline's loss (its tuning run ended within
CROSSING_MARGIN of the baseline's) evaluate each time the tokens pass 1/50 of the budget, so the two evaluations that
bracket a crossing are ~2 % of the run apart; the report refuses any speedup whose bracket is wider than 3 % of the
row's run, on every axis (hasten.compare.metrics.MAX_RESOLUTION). FLOPs count the optimizer's own work too
(hasten.optim.flops).

Ladder. At bench-d32 and bench-d48 the baseline is tuned again, and baseline, Muon, the two best single methods of the
main size and combined run held-out seeds 1..3 at their chosen relative settings; ladder.png plots each one's
total-FLOPs speedup against model size.

Threads. --jobs N runs N trainings at once with cores/N threads each (never oversubscribed); 2 on this 2-core machine.

Records. Each finished run keeps config.yaml, metrics.jsonl and summary.json under <out>/runs/ (checkpoints are deleted
when it finishes); the reports are rewritten after every phase. Commit the directory as it fills: the next sitting
reuses finished runs and resumes unfinished ones. While <out>/PAUSE exists no new run starts (for clean timings).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from hasten.compare.grid import LR_FACTORS, Ctx, Grid, Row, Tier, card_block, results_block, run_grid
from hasten.compare.report import CARD_BEGIN, CARD_END, update_readme
from hasten.compare.runner import claim_report_dir
from hasten.errors import HastenError
from hasten.methods import registry

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "benchmarks" / "recipes"
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- the rows: recipes, knobs, tuning runs


def _row(name: str, settings, candidates, **kwargs) -> Row:
    """A row whose recipe is benchmarks/recipes/<name>.yaml."""
    return Row(name, RECIPES / f"{name}.yaml", settings, candidates, **kwargs)


def _lr(ctx: Ctx, factor: float) -> str:
    return f"optim.lr={ctx.lr * factor:.4g}"


def _baseline(ctx: Ctx, k: dict) -> list[str]:
    out = [_lr(ctx, k["lr"])]
    if "batch" in k:
        out.append(f"train.batch_size={ctx.batch * k['batch']}")
    if "warmup" in k:
        out.append(f"schedule.warmup_steps={max(2, round(k['warmup'] * ctx.steps))}")
    if "beta2" in k:
        out.append(f"optim.beta2={k['beta2']}")
    return out


def _baseline_second_round(ctx: Ctx) -> list[dict]:
    """The same effort as combined's second round: a finer LR grid, a larger batch, longer warmup, a slower beta2."""
    lr = _chosen(ctx, "baseline")["lr"]
    return [
        {"lr": lr * 2**-0.25},
        {"lr": lr * 2**0.25},
        {"lr": lr * 2**0.5, "batch": 2},
        {"lr": lr, "warmup": 0.06},
        {"lr": lr, "beta2": 0.99},
    ]


def _gstack(ctx: Ctx, k: dict) -> list[str]:
    stage = (
        f"{{dim: depth, op: stack, factor: 4, at_tokens: {ctx.frac_tokens(k['at'])}, "
        "moments: reset, schedule: restart, "
        f"lr: {ctx.lr * k.get('lr', 1.0) * k['post']:.4g}}}"
    )
    return [_lr(ctx, k.get("lr", 1.0)), f"methods.growth.stages=[{stage}]"]


def _staged(ctx: Ctx, k: dict) -> list[str]:
    trigger = "at: slope, slope_threshold: -0.03" if k["at"] == "slope" else f"at_tokens: {ctx.frac_tokens(k['at'])}"
    # dropout is the recipe's; restated so these runs are not the dropout-free first attempt's (run dirs are named by
    # settings)
    return [
        _lr(ctx, 1.0),
        "model.dropout=0.1",
        f"methods.growth.stages=[{{dim: width, op: staged, factor: 2, {trigger}, moments: map, schedule: jump}}, "
        "{dim: depth, op: interpolate, factor: 2, at: previous, moments: map, schedule: jump}]",
    ]


def _slw(ctx: Ctx, k: dict) -> list[str]:
    batch = ctx.batch * k["batch"]
    full_steps = ctx.budget // (batch * ctx.seq)
    return [
        _lr(ctx, k["lr"] * k.get("base", 1.0)),
        f"train.batch_size={batch}",
        f"methods.seqlen_warmup.total_steps={max(8, round(k['T'] * full_steps))}",
    ]


def _lawa(ctx: Ctx, k: dict) -> list[str]:
    return [_lr(ctx, k["lr"]), f"methods.lawa.interval={max(1, round(k['nu'] * ctx.steps))}"]


def _blockwise(ctx: Ctx, k: dict) -> list[str]:
    out = [_lr(ctx, k["base"])]
    if k.get("setting") == "reference":  # the reference scripts (train_gpt_bw.py): wd on every tensor, floor base/20
        out += ["optim.decay_policy=all", "optim.min_lr_ratio=0.05"]
    if k.get("setting") == "probe":  # ratios from the sharpness probe at 2 % of the run
        out += ["methods.sharpness.auto_ratios=true", "methods.sharpness.at_fraction=0.02"]
    return out


def _half_width(preset: str) -> list[str]:
    from hasten.model import PRESETS

    return [f"model.d_model={PRESETS[preset]['d_model'] // 2}"]


def _chosen(ctx: Ctx, row: str) -> dict:
    return dict(ctx.chosen[row])


def _muon_gstack_candidates(ctx: Ctx) -> list[dict]:
    g, m = _chosen(ctx, "gstack"), _chosen(ctx, "muon")["lr"]
    at, post = g["at"], g["post"]
    return [
        {"lr": m, "at": at, "post": post},
        {"lr": m, "at": at / 2, "post": post},
        {"lr": m, "at": min(0.4, at * 2), "post": post},
        {"lr": m, "at": at, "post": post * 2**-0.5},
        {"lr": m * 2**-0.5, "at": at, "post": post},
    ]


def _muon_slw_candidates(ctx: Ctx) -> list[dict]:
    s, m = _chosen(ctx, "slw"), _chosen(ctx, "muon")["lr"]
    return [
        {**s, "base": m},
        {**s, "base": m * 2**-0.5},
        {**s, "base": m * 2**0.5},
        {**s, "T": s["T"] / 2, "base": m},
        {**s, "T": min(0.9, s["T"] * 2), "base": m},
    ]


def _muon_lawa_candidates(ctx: Ctx) -> list[dict]:
    m = _chosen(ctx, "muon")["lr"]
    nu = _chosen(ctx, "lawa")["nu"]
    return [
        {"lr": m, "nu": nu},
        {"lr": m * 2**0.5, "nu": nu},
        {"lr": m * 2, "nu": nu},
        {"lr": m * 2**0.5, "nu": nu / 3},
        {"lr": m * 2**0.5, "nu": nu * 3},
    ]


def _combined(ctx: Ctx, k: dict) -> list[str]:
    steps = ctx.budget // (ctx.batch * k["batch"] * ctx.seq)  # SLW's batch multiplier changes the step count
    out = [*_slw(ctx, k), f"methods.lawa.interval={max(1, round(k['nu'] * steps))}"]
    if "at" in k:  # the candidate with G_stack too: a 1-layer start stacked x4 at the LR the rest of the run uses
        out += ["model.n_layers=1", _gstack(ctx, {"lr": k["lr"] * k["base"], "at": k["at"], "post": k["post"]})[1]]
    return out


def _combined_second_round(ctx: Ctx) -> list[dict]:
    """Past the first round's top LR (it won at the edge), a larger batch (fewer Newton-Schulz steps per token, the
    SLW paper's lever) and a warmup over the whole full-length budget."""
    c = _chosen(ctx, "combined")
    return [
        {**c, "base": c["base"] * 2**0.5},
        {**c, "base": c["base"] * 2},
        {**c, "batch": c["batch"] * 2, "lr": c["lr"] * 2**0.5},
        {**c, "batch": c["batch"] * 2, "lr": c["lr"] * 2},
        {**c, "base": c["base"] * 2**0.5, "T": 1.0},
    ]


def _combined_no_slw(ctx: Ctx, k: dict) -> list[str]:
    """combined's batch, LR and LAWA spacing, no sequence length warmup (recipe combined_no_slw: Muon + LAWA)."""
    batch = ctx.batch * k["batch"]
    steps = ctx.budget // (batch * ctx.seq)
    return [
        _lr(ctx, k["lr"] * k["base"]),
        f"train.batch_size={batch}",
        f"methods.lawa.interval={max(1, round(k['nu'] * steps))}",
    ]


def _combined_no_muon(ctx: Ctx, k: dict) -> list[str]:
    """combined's SLW and LAWA on AdamW (recipe combined_no_muon) at AdamW's LR for that batch: Muon's multiplier
    dropped."""
    return _combined(ctx, {**k, "base": 1.0})


def _combined_candidates(ctx: Ctx) -> list[dict]:
    s, nu, g = _chosen(ctx, "muon_slw"), _chosen(ctx, "lawa")["nu"], _chosen(ctx, "gstack")
    return [
        {**s, "nu": nu},
        {**s, "base": s["base"] * 2**0.5, "nu": nu},
        {**s, "nu": nu * 3},
        {**s, "T": s["T"] / 2, "nu": nu},
        {**s, "nu": nu, "at": g["at"], "post": g["post"]},
    ]


ROWS: list[Row] = [
    _row(
        "baseline",
        _baseline,
        lambda c: [{"lr": f} for f in LR_FACTORS],
        paper="AdamW, LR tuned",
        second_round=_baseline_second_round,
    ),
    _row(
        "adam_mini",
        lambda c, k: [_lr(c, k["lr"])],
        lambda c: [{"lr": f} for f in LR_FACTORS],
        paper="on par with AdamW, ~50 % less optimizer memory (39M-13B)",
    ),
    _row(
        "adam_mini_blockwise",
        lambda c, k: [_lr(c, k["lr"])],
        lambda c: [{"lr": f} for f in (0.125, 0.25, 2**-1.5, 0.5, 1.0)],
        paper="2x speed and 2x memory vs AdamW",
    ),
    _row(
        "blockwise",
        _blockwise,
        lambda c: [
            {"base": 1.0},
            {"base": 0.5},
            {"base": 0.25},
            {"base": 0.5, "setting": "reference"},
            {"base": 0.5, "setting": "probe"},
        ],
        paper="~2x tokens (1.92x, LLaMA 1.1B / OpenWebText)",
    ),
    _row(
        "muon",
        lambda c, k: [_lr(c, k["lr"])],
        lambda c: [{"lr": f} for f in LR_FACTORS],
        paper="~1.5x tokens (modded-nanogpt, GPT-2 124M)",
    ),
    _row(
        "gstack",
        _gstack,
        lambda c: [
            {"at": 0.05, "post": 1.0},
            {"at": 0.1, "post": 1.0},
            {"at": 0.2, "post": 1.0},
            {"at": 0.1, "post": 0.5},
            {"at": 0.1, "post": 0.3},
        ],
        paper="1.55x tokens (7B: 194B vs 300B)",
    ),
    _row(
        "staged",
        _staged,
        lambda c: [{"at": "slope"}, {"at": 0.15}, {"at": 0.25}, {"at": 0.35}, {"at": 0.5}],
        paper="up to 1.28x compute (22 % saved, GPT-2 large)",
        size_overrides=_half_width,
    ),
    _row(
        "slw",
        _slw,
        lambda c: [
            {"batch": 1, "lr": 1.0, "T": 0.3},
            {"batch": 2, "lr": 2.0, "T": 0.3},
            {"batch": 4, "lr": 4.0, "T": 0.3},
            {"batch": 8, "lr": 4.0, "T": 0.3},
            {"batch": 2, "lr": 2.0, "T": 0.6},
        ],
        paper="up to 2.2x tokens, 3.7x wall-clock (GPT-2, 8x batch / 4x LR)",
    ),
    _row(
        "lawa",
        _lawa,
        lambda c: [
            {"lr": 1.0, "nu": 0.01},
            {"lr": 2.0, "nu": 0.01},
            {"lr": 4.0, "nu": 0.01},
            {"lr": 2.0, "nu": 0.003},
            {"lr": 2.0, "nu": 0.03},
        ],
        metric="lawa/val_loss",
        paper="faster early / mid-run; gains shrink as the LR decays (no end-of-run number)",
    ),
    _row("muon_gstack", _gstack, _muon_gstack_candidates, needs=("muon", "gstack"), paper="—"),
    _row("muon_slw", _slw, _muon_slw_candidates, needs=("muon", "slw"), paper="—"),
    _row("muon_lawa", _lawa, _muon_lawa_candidates, metric="lawa/val_loss", needs=("muon", "lawa"), paper="—"),
    _row(
        "combined",
        _combined,
        _combined_candidates,
        metric="lawa/val_loss",
        needs=("muon", "lawa", "gstack", "muon_slw"),
        paper="project target: >= 3x FLOPs",
        second_round=_combined_second_round,
    ),
    Row(
        "baseline_first_round",
        RECIPES / "baseline.yaml",
        _baseline,
        lambda c: [],
        first_round_of="baseline",
        paper="the baseline's first-round choice on the held-out seeds",
    ),
    _row(
        "combined_no_slw",
        _combined_no_slw,
        lambda c: [],
        metric="lawa/val_loss",
        needs=("combined",),
        ablates="combined",
        paper="combined without SLW (Muon + LAWA at combined's batch and LR)",
    ),
    _row(
        "combined_no_muon",
        _combined_no_muon,
        lambda c: [],
        metric="lawa/val_loss",
        needs=("combined",),
        ablates="combined",
        paper="combined without Muon (AdamW + SLW + LAWA)",
    ),
]
SINGLE = (
    "adam_mini",
    "adam_mini_blockwise",
    "blockwise",
    "gstack",
    "staged",
    "slw",
    "lawa",
)  # the ladder's best two come from these

# The rows each method card's benchmark block shows, by the method whose card it is (a composition with Muon sits in
# the card of the method it adds to Muon; `combined` and its ablation are the README's).
CARD_ROWS = {
    "muon": ("muon",),
    "blockwise": ("blockwise", "adam_mini", "adam_mini_blockwise"),
    "growth": ("gstack", "staged", "muon_gstack"),
    "seqlen_warmup": ("slw", "muon_slw"),
    "lawa": ("lawa", "muon_lawa"),
}

TIERS = {
    "smoke": Tier(
        "smoke",
        main="bench-d32",
        ladder=["bench-d48"],
        seeds=(1, 2),
        ladder_seeds=(1, 2),
        ladder_rows=("muon", "combined"),
        singles=SINGLE,
        batch=8,
        seq=64,
        rows=[
            "baseline",
            "muon",
            "gstack",
            "slw",
            "lawa",
            "muon_slw",
            "combined",
            "combined_no_slw",
            "baseline_first_round",
        ],
        candidates=2,
        fixed_budget=8 * 64 * 12,
        tracked=False,
        overrides=["data.max_docs=60", "train.eval_sequences=8"],
    ),
    "standard": Tier(
        "standard",
        main="bench-d64",
        ladder=["bench-d32", "bench-d48"],
        seeds=(1, 2, 3, 4, 5),
        ladder_seeds=(1, 2, 3),
        ladder_rows=("muon", "combined"),
        singles=SINGLE,
    ),
}


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="standard")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time; each gets cores/jobs threads")
    parser.add_argument(
        "--out", default=None, help="report dir (default benchmarks/results/<tier>; smoke: benchmarks/runs/smoke)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the README's results block")
    parser.add_argument(
        "--interim",
        action="store_true",
        help="train nothing: rewrite the report (and the README block) from the runs finished so far, marked interim",
    )
    args = parser.parse_args(argv)
    tier = TIERS[args.tier]
    out = (
        Path(args.out)
        if args.out
        else (RESULTS / args.tier if tier.tracked else ROOT / "benchmarks" / "runs" / args.tier)
    )
    if args.interim and not tier.tracked:
        parser.error("--interim reads a tracked tier's finished runs; the smoke tier always trains from scratch")
    command = f"python benchmarks/speedup.py --tier {args.tier}" + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
    try:
        claim_report_dir(out)  # hasten compare's contract: a new or empty folder, or a comparison's own output
        if not tier.tracked:  # the smoke tier proves the pipeline: it always trains from scratch
            shutil.rmtree(out)
            claim_report_dir(out)
        results = run_grid(Grid(tier, ROWS, out, args.jobs, command, interim=args.interim))
        if tier.tracked and not args.no_docs:  # the README's and the cards' blocks: the only files written outside out
            update_docs(results, out / "report.md")
    except HastenError as err:
        print(f"speedup.py: error: {err}", file=sys.stderr)
        return err.exit_code
    print((out / "report.md").read_text())
    return 0


def update_docs(results: dict, report: Path) -> None:
    """The README's results block and each method card's benchmark block, from `results` (links relative to each)."""
    update_readme(ROOT / "README.md", results_block(results, os.path.relpath(report, ROOT)))
    cards = registry.registered()
    for method, recipes in CARD_ROWS.items():
        card = Path(cards[method].card)
        update_readme(card, card_block(results, recipes, os.path.relpath(report, card.parent)), CARD_BEGIN, CARD_END)
    print(f"README.md results block and {len(CARD_ROWS)} method cards' benchmark blocks updated", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
