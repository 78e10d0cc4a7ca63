"""The speedup benchmark: every method against a tuned AdamW baseline, in a regime where the papers' claims can show.

    python benchmarks/speedup.py --tier smoke      # the whole pipeline on tiny budgets (~2 min); benchmarks/runs/smoke, not tracked
    python benchmarks/speedup.py --tier standard   # the grid (hours on 2 CPU cores, resumable); benchmarks/results/standard

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
bracket a crossing are ~2 % of the budget apart; the report refuses any speedup whose bracket is wider than 3 %
(hasten.compare.metrics.MAX_RESOLUTION). FLOPs count the optimizer's own work too (hasten.optim.flops).

Ladder. At bench-d32 and bench-d48 the baseline is tuned again, and baseline, Muon, the two best single methods of the
main size and combined run held-out seeds 1..3 at their chosen relative settings; ladder.png plots each one's total-FLOPs
speedup against model size.

Threads. --jobs N runs N trainings at once with cores/N threads each (never oversubscribed); 2 on this 2-core machine.

Records. Each finished run keeps config.yaml, metrics.jsonl and summary.json under <out>/runs/ (checkpoints are deleted
when it finishes); the reports are rewritten after every phase. Commit the directory as it fills: the next sitting
reuses finished runs and resumes unfinished ones. While <out>/PAUSE exists no new run starts (for clean timings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "benchmarks" / "recipes"
RESULTS = ROOT / "benchmarks" / "results"
TUNING_RUNS = 5
LR_FACTORS = (0.5, 2**-0.5, 1.0, 2**0.5, 2.0)  # around a centre: 5 values a factor sqrt(2) apart
WIDEN_LIMIT = 3  # extra baseline LRs at most, while the best is at an edge
DENSE_EVALS = 50  # held-out runs of a row that can cross the target evaluate every 1/50 of the budget (in tokens)
CROSSING_MARGIN = 0.05  # a row whose tuning run ends further than this above the baseline's cannot cross: 1/16 suffices


# --------------------------------------------------------------------------- what a row is


@dataclass
class Ctx:
    """What a row's settings are derived from at one model size."""

    preset: str
    budget: int  # training tokens per run
    batch: int
    seq: int
    lr: float  # the tuned AdamW LR at this size (for the baseline's own sweep: the centre)
    chosen: dict[str, dict] = field(default_factory=dict)  # row -> the knobs it was tuned to (compositions build on them)

    @property
    def steps(self) -> int:
        return self.budget // (self.batch * self.seq)

    def frac_tokens(self, fraction: float) -> int:
        return int(round(fraction * self.budget))


@dataclass
class Row:
    """One benchmark row: a recipe, how its knobs become --set overrides, and the knobs of its 5 tuning runs."""

    name: str
    settings: Callable[[Ctx, dict], list[str]]  # (ctx, knobs) -> overrides
    candidates: Callable[[Ctx], list[dict]]  # the tuning runs' knobs (may read ctx.chosen)
    metric: str = "val_loss"  # what the tuning minimises
    needs: tuple[str, ...] = ()  # rows tuned before this one (compositions)
    paper: str = ""  # the paper's own number, for the README and the method card
    card: str | None = None  # method card (README.md) whose results block shows this row
    size_overrides: Callable[[str], list[str]] = lambda preset: []
    second_round: Callable[[Ctx], list[dict]] | None = None  # 5 more tuning runs around the first round's choice
    ablates: str | None = None  # runs at that row's chosen knobs (a leave-one-out row: no tuning of its own)

    @property
    def recipe(self) -> Path:
        return RECIPES / f"{self.name}.yaml"


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
    return [{"lr": lr * 2**-0.25}, {"lr": lr * 2**0.25}, {"lr": lr * 2**0.5, "batch": 2}, {"lr": lr, "warmup": 0.06},
            {"lr": lr, "beta2": 0.99}]


def _gstack(ctx: Ctx, k: dict) -> list[str]:
    stage = (f"{{dim: depth, op: stack, factor: 4, at_tokens: {ctx.frac_tokens(k['at'])}, moments: reset, schedule: restart, "
             f"lr: {ctx.lr * k.get('lr', 1.0) * k['post']:.4g}}}")
    return [_lr(ctx, k.get("lr", 1.0)), f"methods.growth.stages=[{stage}]"]


def _staged(ctx: Ctx, k: dict) -> list[str]:
    trigger = "at: slope, slope_threshold: -0.03" if k["at"] == "slope" else f"at_tokens: {ctx.frac_tokens(k['at'])}"
    # dropout is the recipe's; restated so these runs are not the dropout-free first attempt's (run dirs are named by settings)
    return [_lr(ctx, 1.0), "model.dropout=0.1", f"methods.growth.stages=[{{dim: width, op: staged, factor: 2, {trigger}, moments: map, schedule: jump}}, "
                           "{dim: depth, op: interpolate, factor: 2, at: previous, moments: map, schedule: jump}]"]


def _slw(ctx: Ctx, k: dict) -> list[str]:
    batch = ctx.batch * k["batch"]
    full_steps = ctx.budget // (batch * ctx.seq)
    return [_lr(ctx, k["lr"] * k.get("base", 1.0)), f"train.batch_size={batch}",
            f"methods.seqlen_warmup.total_steps={max(8, round(k['T'] * full_steps))}"]


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
    return [{"lr": m, "at": at, "post": post}, {"lr": m, "at": at / 2, "post": post}, {"lr": m, "at": min(0.4, at * 2), "post": post},
            {"lr": m, "at": at, "post": post * 2**-0.5}, {"lr": m * 2**-0.5, "at": at, "post": post}]


def _muon_slw_candidates(ctx: Ctx) -> list[dict]:
    s, m = _chosen(ctx, "slw"), _chosen(ctx, "muon")["lr"]
    return [{**s, "base": m}, {**s, "base": m * 2**-0.5}, {**s, "base": m * 2**0.5}, {**s, "T": s["T"] / 2, "base": m},
            {**s, "T": min(0.9, s["T"] * 2), "base": m}]


def _muon_lawa_candidates(ctx: Ctx) -> list[dict]:
    m = _chosen(ctx, "muon")["lr"]
    nu = _chosen(ctx, "lawa")["nu"]
    return [{"lr": m, "nu": nu}, {"lr": m * 2**0.5, "nu": nu}, {"lr": m * 2, "nu": nu}, {"lr": m * 2**0.5, "nu": nu / 3},
            {"lr": m * 2**0.5, "nu": nu * 3}]


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
    return [{**c, "base": c["base"] * 2**0.5}, {**c, "base": c["base"] * 2}, {**c, "batch": c["batch"] * 2, "lr": c["lr"] * 2**0.5},
            {**c, "batch": c["batch"] * 2, "lr": c["lr"] * 2}, {**c, "base": c["base"] * 2**0.5, "T": 1.0}]


def _combined_no_slw(ctx: Ctx, k: dict) -> list[str]:
    """combined's batch, LR and LAWA spacing, no sequence length warmup (recipe combined_no_slw: Muon + LAWA)."""
    batch = ctx.batch * k["batch"]
    steps = ctx.budget // (batch * ctx.seq)
    return [_lr(ctx, k["lr"] * k["base"]), f"train.batch_size={batch}", f"methods.lawa.interval={max(1, round(k['nu'] * steps))}"]


def _combined_no_muon(ctx: Ctx, k: dict) -> list[str]:
    """combined's SLW and LAWA on AdamW (recipe combined_no_muon) at AdamW's LR for that batch: Muon's multiplier dropped."""
    return _combined(ctx, {**k, "base": 1.0})


def _combined_candidates(ctx: Ctx) -> list[dict]:
    s, nu, g = _chosen(ctx, "muon_slw"), _chosen(ctx, "lawa")["nu"], _chosen(ctx, "gstack")
    return [{**s, "nu": nu}, {**s, "base": s["base"] * 2**0.5, "nu": nu}, {**s, "nu": nu * 3}, {**s, "T": s["T"] / 2, "nu": nu},
            {**s, "nu": nu, "at": g["at"], "post": g["post"]}]


GROWTH = "src/hasten/methods/growth/README.md"
BLOCKWISE = "src/hasten/methods/blockwise_lr/README.md"
SLW_CARD = "src/hasten/methods/seqlen_warmup/README.md"
AVERAGING = "src/hasten/methods/averaging/README.md"

ROWS: list[Row] = [
    Row("baseline", _baseline, lambda c: [{"lr": f} for f in LR_FACTORS], paper="AdamW, LR tuned", second_round=_baseline_second_round),
    Row("adam_mini", lambda c, k: [_lr(c, k["lr"])], lambda c: [{"lr": f} for f in LR_FACTORS], card=BLOCKWISE,
        paper="on par with AdamW, ~50 % less optimizer memory (39M-13B)"),
    Row("adam_mini_blockwise", lambda c, k: [_lr(c, k["lr"])], lambda c: [{"lr": f} for f in (0.125, 0.25, 2**-1.5, 0.5, 1.0)],
        card=BLOCKWISE, paper="2x speed and 2x memory vs AdamW"),
    Row("blockwise", _blockwise, lambda c: [{"base": 1.0}, {"base": 0.5}, {"base": 0.25}, {"base": 0.5, "setting": "reference"},
                                            {"base": 0.5, "setting": "probe"}],
        card=BLOCKWISE, paper="~2x tokens (1.92x, LLaMA 1.1B / OpenWebText)"),
    Row("muon", lambda c, k: [_lr(c, k["lr"])], lambda c: [{"lr": f} for f in LR_FACTORS], paper="~1.5x tokens (modded-nanogpt, GPT-2 124M)"),
    Row("gstack", _gstack, lambda c: [{"at": 0.05, "post": 1.0}, {"at": 0.1, "post": 1.0}, {"at": 0.2, "post": 1.0},
                                      {"at": 0.1, "post": 0.5}, {"at": 0.1, "post": 0.3}],
        card=GROWTH, paper="1.55x tokens (7B: 194B vs 300B)"),
    Row("staged", _staged, lambda c: [{"at": "slope"}, {"at": 0.15}, {"at": 0.25}, {"at": 0.35}, {"at": 0.5}],
        card=GROWTH, paper="up to 1.28x compute (22 % saved, GPT-2 large)", size_overrides=_half_width),
    Row("slw", _slw, lambda c: [{"batch": 1, "lr": 1.0, "T": 0.3}, {"batch": 2, "lr": 2.0, "T": 0.3}, {"batch": 4, "lr": 4.0, "T": 0.3},
                                {"batch": 8, "lr": 4.0, "T": 0.3}, {"batch": 2, "lr": 2.0, "T": 0.6}],
        card=SLW_CARD, paper="up to 2.2x tokens, 3.7x wall-clock (GPT-2, 8x batch / 4x LR)"),
    Row("lawa", _lawa, lambda c: [{"lr": 1.0, "nu": 0.01}, {"lr": 2.0, "nu": 0.01}, {"lr": 4.0, "nu": 0.01}, {"lr": 2.0, "nu": 0.003},
                                  {"lr": 2.0, "nu": 0.03}],
        metric="lawa/val_loss", card=AVERAGING, paper="faster early / mid-run; gains shrink as the LR decays (no end-of-run number)"),
    Row("muon_gstack", _gstack, _muon_gstack_candidates, needs=("muon", "gstack"), card=GROWTH, paper="—"),
    Row("muon_slw", _slw, _muon_slw_candidates, needs=("muon", "slw"), card=SLW_CARD, paper="—"),
    Row("muon_lawa", _lawa, _muon_lawa_candidates, metric="lawa/val_loss", needs=("muon", "lawa"), card=AVERAGING, paper="—"),
    Row("combined", _combined, _combined_candidates, metric="lawa/val_loss", needs=("muon", "lawa", "gstack", "muon_slw"),
        paper="project target: >= 3x FLOPs", second_round=_combined_second_round),
    Row("combined_no_slw", _combined_no_slw, lambda c: [], metric="lawa/val_loss", needs=("combined",), ablates="combined",
        paper="ablation: combined without SLW"),
    Row("combined_no_muon", _combined_no_muon, lambda c: [], metric="lawa/val_loss", needs=("combined",), ablates="combined",
        paper="ablation: combined without Muon"),
]
SINGLE = ("adam_mini", "adam_mini_blockwise", "blockwise", "gstack", "staged", "slw", "lawa")  # "two best methods" come from these


@dataclass
class Tier:
    main: str  # preset of the main size
    ladder: list[str]  # other presets
    seeds: tuple[int, ...]  # the held-out seeds every row reports at the main size (never the tuning seed)
    ladder_seeds: tuple[int, ...]
    tokens_per_param: float = 20.0
    batch: int = 16
    seq: int = 128
    rows: list[str] | None = None  # None = all
    candidates: int = TUNING_RUNS
    overrides: list[str] = field(default_factory=list)
    fixed_budget: int | None = None  # smoke: tokens per run regardless of size
    tracked: bool = True  # results are records (committed); smoke trains from scratch elsewhere
    tuning_seed: int = 0  # every choice is made on this seed alone


TIERS = {
    "smoke": Tier(main="bench-d32", ladder=["bench-d48"], seeds=(1, 2), ladder_seeds=(1, 2), batch=8, seq=64,
                  rows=["baseline", "muon", "gstack", "slw", "lawa", "muon_slw", "combined", "combined_no_slw"], candidates=2,
                  fixed_budget=8 * 64 * 12, tracked=False, overrides=["data.max_docs=60", "train.eval_sequences=8"]),
    "standard": Tier(main="bench-d64", ladder=["bench-d32", "bench-d48"], seeds=(1, 2, 3, 4, 5), ladder_seeds=(1, 2, 3)),
}


# --------------------------------------------------------------------------- the grid


def non_embedding_params(preset: str) -> int:
    import torch

    from hasten.model import GPT, count_params, model_config

    with torch.device("meta"):
        return count_params(GPT(model_config(preset)))["non_embedding"]


def size_budget(tier: Tier, preset: str) -> int:
    """Training tokens at >= tokens_per_param per non-embedding parameter, in whole steps."""
    if tier.fixed_budget:
        return tier.fixed_budget
    step = tier.batch * tier.seq
    return math.ceil(tier.tokens_per_param * non_embedding_params(preset) / step) * step


class Grid:
    def __init__(self, tier_name: str, out: Path, jobs: int, command: str, interim: bool = False):
        from hasten.compare.runner import CompareOptions

        self.tier_name, self.tier, self.out, self.jobs, self.command = tier_name, TIERS[tier_name], out, jobs, command
        self.interim = interim  # report what has finished, train nothing
        self.rows = {r.name: r for r in ROWS if self.tier.rows is None or r.name in self.tier.rows}
        self.opts = CompareOptions(recipes=[], report_dir=out, jobs=jobs, command=command, tier=tier_name)
        self.failed: dict[str, str] = {}

    # -- runs ------------------------------------------------------------------------------------

    def size_settings(self, ctx: Ctx, row: Row, dense: bool = False) -> list[str]:
        """What every row shares at a size. `dense`: an evaluation each time the tokens pass 1/DENSE_EVALS of the budget
        (steps differ in length under SLW), for the held-out runs of rows whose crossing must be resolved."""
        steps = ctx.steps
        evals = f"train.eval_every_tokens={max(1, ctx.budget // DENSE_EVALS)}" if dense else f"train.eval_every={max(1, steps // 16)}"
        return ["train.progress_bar=false", f"model.preset={ctx.preset}", f"train.batch_size={ctx.batch}", f"train.seq_len={ctx.seq}",
                f"train.max_tokens={ctx.budget}", "train.max_steps=null", f"schedule.warmup_steps={max(2, round(0.03 * steps))}", evals,
                f"train.checkpoint_every={max(1, steps // 4)}", *self.tier.overrides, *row.size_overrides(ctx.preset)]

    def spec(self, ctx: Ctx, row: Row, knobs: dict, seed: int, dense: bool = False):
        from hasten.compare.runner import RunSpec

        settings = [*self.size_settings(ctx, row, dense), *row.settings(ctx, knobs)]
        # named by a hash of the settings: the same configuration always maps to the same run dir, however it was reached
        name = f"{ctx.preset.removeprefix('bench-')}-{row.name}-{hashlib.sha1(' '.join(settings).encode()).hexdigest()[:8]}-seed{seed}"
        overrides = [*settings, f"train.seed={seed}", f"name={name}"]
        return RunSpec(name, row.name, seed, row.recipe, overrides, self.out / "runs" / name, self.opts.threads_per_job())

    def run(self, specs: list) -> None:
        from hasten.compare.runner import refuse_stale, run_all

        for spec in specs:  # a finished run is reused only if it ran exactly this spec's config (recipes may have changed)
            if (spec.run_dir / "summary.json").exists():
                refuse_stale(spec)
        todo = [s for s in specs if not self.finished(s)]
        done = len(specs) - len(todo)
        print(f"{len(specs)} runs ({done} already finished)", file=sys.stderr, flush=True)
        if self.interim:
            return
        for outcome in run_all(todo, self.jobs):
            if outcome["status"] == "failed":
                self.failed[outcome["name"]] = outcome.get("error", "")

    def final(self, spec, metric: str) -> float:
        """The run's final value of `metric` (inf when it failed or diverged)."""
        try:
            value = json.loads((spec.run_dir / "summary.json").read_text()).get(metric)
        except (OSError, ValueError):
            return math.inf
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    # -- tuning ----------------------------------------------------------------------------------

    def tune_baseline(self, ctx: Ctx) -> tuple[float, dict]:
        """Sweep the baseline LR around ctx.lr, widening while the best is at an edge; returns (best LR, tuning record)."""
        from dataclasses import replace

        ctx = replace(ctx, chosen={})
        row = self.rows["baseline"]
        factors = list(LR_FACTORS[: self.tier.candidates]) if self.tier.candidates < TUNING_RUNS else list(LR_FACTORS)
        for _ in range(WIDEN_LIMIT + 1):
            specs = [self.spec(ctx, row, {"lr": f}, self.tier.tuning_seed) for f in factors]
            self.run(specs)
            finals = [self.final(s, "val_loss") for s in specs]
            best = min(range(len(factors)), key=lambda i: finals[i])
            if self.tier.candidates < TUNING_RUNS or 0 < best < len(factors) - 1 or len(factors) >= TUNING_RUNS + WIDEN_LIMIT:
                break
            factors = [factors[0] / 2**0.5, *factors] if best == 0 else [*factors, factors[-1] * 2**0.5]
        lrs = [ctx.lr * f for f in factors]
        record = self.tuning_record(row, [{"lr": f} for f in factors], specs, finals, best, ctx,
                                    labels=[f"optim.lr={lr:.4g}" for lr in lrs])
        record["at_edge"] = best in (0, len(factors) - 1)
        return lrs[best], record

    def tune(self, ctx: Ctx, names: list[str]) -> dict[str, dict]:
        """Seed-0 tuning runs of `names` (all at once); returns each row's tuning record and stores its choice in ctx."""
        plan = {name: self.rows[name].candidates(ctx)[: self.tier.candidates] for name in names}
        specs = {name: [self.spec(ctx, self.rows[name], k, self.tier.tuning_seed) for k in knobs] for name, knobs in plan.items()}
        self.run([s for group in specs.values() for s in group])
        records = {}
        for name, knobs in plan.items():
            finals = [self.final(s, self.rows[name].metric) for s in specs[name]]
            best = min(range(len(knobs)), key=lambda i: finals[i])
            records[name] = self.tuning_record(self.rows[name], knobs, specs[name], finals, best, ctx)
            unfinished = sum(not self.finished(s) for s in specs[name])
            if unfinished:  # an interim report: the row is not chosen (nor run on more seeds) before all its candidates ran
                records[name].update(chosen=None, unfinished=unfinished)
                continue
            ctx.chosen[name] = knobs[best]
        return records

    def tune_second_round(self, ctx: Ctx, names: list[str], records: dict[str, dict]) -> None:
        """The rows with a second round (baseline and combined): 5 more tuning runs around the first round's choice; the
        best of all their runs is chosen. Extends each row's tuning record in place."""
        plan = {n: self.rows[n].second_round(ctx)[: self.tier.candidates] for n in names if n in ctx.chosen and self.rows[n].second_round}
        specs = {n: [self.spec(ctx, self.rows[n], k, self.tier.tuning_seed) for k in knobs] for n, knobs in plan.items()}
        self.run([s for group in specs.values() for s in group])
        for name, knobs in plan.items():
            row, record = self.rows[name], records[name]
            first = len(record["candidates"])
            extra = self.tuning_record(row, knobs, specs[name], [self.final(s, row.metric) for s in specs[name]], 0, ctx)["candidates"]
            record["candidates"] += [{**c, "round": 2} for c in extra]
            if any(not c["finished"] for c in extra):  # an interim report keeps the first round's choice meanwhile
                record["unfinished"] = record.get("unfinished", 0) + sum(not c["finished"] for c in extra)
                continue
            finals = [math.inf if c["final"] is None else c["final"] for c in record["candidates"]]
            record["chosen"] = min(range(len(finals)), key=lambda i: finals[i])
            if record["chosen"] >= first:
                ctx.chosen[name] = knobs[record["chosen"] - first]

    def crossing_rows(self, ctx: Ctx, records: dict[str, dict]) -> set[str]:
        """Rows whose held-out runs need dense evaluations: every row but the baseline whose chosen tuning run ended
        within CROSSING_MARGIN of the baseline's tuning run (the others cannot cross its loss; the report's resolution
        check refuses a speedup of any row whose crossing is not resolved), and the ablations."""
        base = records["baseline"]["candidates"][records["baseline"]["chosen"]]["final"]
        out = set()
        for name in ctx.chosen:
            row = self.rows.get(name)
            if row is None or name == "baseline":
                continue
            if row.ablates:
                out.add(name)
                continue
            rec = records.get(name)
            final = rec["candidates"][rec["chosen"]]["final"] if rec and rec.get("chosen") is not None else None
            if final is not None and base is not None and final <= base + CROSSING_MARGIN:
                out.add(name)
        return out

    def finished(self, spec) -> bool:
        return (spec.run_dir / "summary.json").exists() or spec.name in self.failed

    def tuning_record(self, row: Row, knobs: list[dict], specs: list, finals: list[float], best: int, ctx: Ctx,
                      labels: list[str] | None = None) -> dict:
        return {"row": row.name, "metric": row.metric, "chosen": best, "candidates": [
            {"knobs": k, "label": labels[i] if labels else describe(row, k), "settings": row.settings(ctx, k), "run": s.name,
             "final": None if math.isinf(f) else f, "finished": self.finished(s)} for i, (k, s, f) in enumerate(zip(knobs, specs, finals))]}

    # -- one size ----------------------------------------------------------------------------------

    def seeds_of(self, ctx: Ctx, names: list[str], seeds: tuple[int, ...], dense: set[str]) -> dict[str, list]:
        """Seed-major specs of every row at its chosen knobs on the held-out seeds (rows in `dense` evaluate densely)."""
        names = [name for name in names if name in ctx.chosen]  # an interim report leaves out rows still being tuned
        order = [(name, s) for s in seeds for name in names]
        specs = [(name, self.spec(ctx, self.rows[name], ctx.chosen[name], s, name in dense)) for name, s in order]
        self.run([s for _, s in specs])
        out: dict[str, list] = {name: [] for name in names}
        for name, spec in specs:
            if self.finished(spec):
                out[name].append((spec, spec.run_dir))
        return {name: runs for name, runs in out.items() if runs}

    def report(self, ctx: Ctx, runs: dict[str, list], tuning: dict, report_dir: Path, sections: list[str]) -> dict:
        from hasten.compare.plots import plot_comparison
        from hasten.compare.report import build_results, write_report

        self.opts.budget = ctx.budget
        self.opts.seeds = max(len(v) for v in runs.values())
        self.opts.overrides = self.size_settings(ctx, self.rows["baseline"])
        report_dir.mkdir(parents=True, exist_ok=True)
        results = build_results(self.opts, list(runs), "baseline", runs, self.failed, None)
        results.update(preset=ctx.preset, tuned_lr=ctx.lr, chosen=ctx.chosen, tuning_rows=tuning, tuning_seed=self.tier.tuning_seed,
                       held_out_seeds=sorted({seed for row in results["rows"] for seed in row["seeds"]}),
                       regime=regime(ctx, self.size_settings(ctx, self.rows["baseline"])))
        if self.tier.tuning_seed in results["held_out_seeds"]:
            raise SystemExit(f"speedup.py: the tuning seed {self.tier.tuning_seed} is among the reported seeds")
        results["ablation"] = ablation(results)
        results["sections"] = [render_regime(results["regime"]), render_tuning(tuning, self.tier.tuning_seed), render_ablation(results["ablation"]),
                               *[x for x in sections if x]]
        results["sections"] = [x for x in results["sections"] if x]
        plots = plot_comparison(results, report_dir)
        results["plots"] = {k: p.name for k, p in plots.items()}
        write_report(results, report_dir)
        return results


ABLATION = {"combined [lawa]": "combined (Muon + SLW + LAWA)", "combined": "- LAWA (the raw weights of the same runs)",
            "combined_no_slw [lawa]": "- SLW (Muon + LAWA at combined's batch and LR)",
            "combined_no_muon [lawa]": "- Muon (AdamW + SLW + LAWA)"}


def ablation(results: dict) -> list[dict]:
    """combined and its leave-one-out rows: each one's final loss against combined's, paired by seed (Δ > 0: the part
    left out helps), and its total-FLOPs speedup to the baseline."""
    from hasten.compare.metrics import paired_difference

    rows = {r["name"]: r for r in results["rows"]}
    full = rows.get("combined [lawa]")
    if full is None or not full.get("final_losses"):
        return []
    by_seed = dict(zip(full["seeds"], full["final_losses"]))
    out = []
    for name, label in ABLATION.items():
        row = rows.get(name)
        if row is None or not row.get("final_losses"):
            continue
        pairs = [(f, by_seed[s]) for s, f in zip(row["seeds"], row["final_losses"]) if s in by_seed]
        delta = paired_difference([a for a, _ in pairs], [b for _, b in pairs]).to_dict() if pairs and name != "combined [lawa]" else None
        out.append({"row": name, "label": label, "final_mean": row.get("final_mean"), "vs_combined": delta,
                    "speedup_flops": (row.get("speedup") or {}).get("flops"), "seeds": row["seeds"]})
    return out


def render_ablation(entries: list[dict]) -> str:
    from hasten.compare.report import fmt_delta, fmt_estimate

    if len(entries) < 2:
        return ""
    lines = ["## What each part of combined adds (leave-one-out, held-out seeds)", "",
             "Each row drops one part of combined and keeps its other settings (not re-tuned). Δ is the row's final val loss "
             "minus combined's (averaged weights), paired by seed, 95 % interval: Δ > 0 means the part left out helps.", "",
             "| row | final val loss | Δ vs combined [95% CI] | total-FLOPs speedup to the baseline [95% CI] |", "|---|---|---|---|"]
    for e in entries:
        delta = fmt_delta({"delta": e["vs_combined"]}) if e["vs_combined"] else "—"
        speed = fmt_estimate(e["speedup_flops"]) if e["speedup_flops"] else "not reached"
        lines.append(f"| {e['label']} (`{e['row']}`) | {e['final_mean']:.4f} | {delta} | {speed} |")
    return "\n".join(lines)


def describe(row: Row, knobs: dict) -> str:
    names = {"lr": "LR x", "at": "grow at ", "post": "grown LR x", "batch": "batch x", "T": "warmup T=", "nu": "every ",
             "base": "base LR x", "setting": "", "beta2": "beta2 ", "warmup": "LR warmup "}
    out = []
    for k, v in knobs.items():
        if k == "at" and isinstance(v, float):
            out.append(f"grow at {v:.0%} of tokens")
        elif k == "T":
            out.append(f"T = {v:.0%} of steps")
        elif k == "nu":
            out.append(f"every {v:.1%} of steps")
        elif k == "warmup":
            out.append(f"LR warmup {v:.0%} of steps")
        elif k == "setting":
            out.append({"reference": "reference setting", "probe": "probe ratios"}[v])
        else:
            out.append(f"{names.get(k, k)}{v:.3g}" if isinstance(v, float) else f"{names.get(k, k)}{v}")
    return ", ".join(out)


def regime(ctx: Ctx, settings: list[str]) -> dict:
    """The numbers that make the regime: tokens per parameter, epochs of the corpus, the evaluation set."""
    from hasten.data.tokens import prepare_from_config
    from hasten.recipes import load_config

    cfg = load_config(RECIPES / "baseline.yaml", settings)
    data = prepare_from_config(cfg.data, progress=False)
    params = non_embedding_params(ctx.preset)
    return {"preset": ctx.preset, "non_embedding_params": params, "budget_tokens": ctx.budget, "tokens_per_param": ctx.budget / params,
            "train_tokens": len(data.train), "epochs": ctx.budget / len(data.train), "val_tokens": len(data.val),
            "val_windows": (len(data.val) - 1) // ctx.seq, "tuned_lr": ctx.lr}


def render_regime(r: dict) -> str:
    return (f"## Regime\n\n{r['preset']}: {r['non_embedding_params']:,} non-embedding parameters, {r['budget_tokens']:,} training tokens "
            f"per run = **{r['tokens_per_param']:.1f} tokens per parameter**, {r['epochs']:.2f} epochs of the {r['train_tokens']:,}-token "
            f"training split; every evaluation covers the whole validation split ({r['val_windows']:,} windows, {r['val_tokens']:,} "
            f"tokens). Tuned AdamW LR: {r['tuned_lr']:.4g}.")


def candidate_texts(rec: dict) -> list[str]:
    """`label: final` per tuning candidate ("not run yet" in an interim report; records before that key existed were complete)."""
    return [f"{c['label']}: " + ("not run yet" if not c.get("finished", True) else "failed" if c["final"] is None else f"{c['final']:.4f}")
            for c in rec["candidates"]]


def render_tuning(tuning: dict, seed: int = 0) -> str:
    effort = {name: len(rec["candidates"]) for name, rec in tuning.items()}
    lines = [f"## Tuning (seed {seed} only; it is not among the reported seeds)", "",
             "Each row's candidates with their final val loss (the averaged model's for LAWA rows); **bold** = chosen, then run on "
             "every held-out seed. Tuning effort: " + ", ".join(f"`{n}` {k} runs" for n, k in effort.items() if k != TUNING_RUNS)
             + f", every other row {TUNING_RUNS}. The second round (_round 2_) of the baseline and of combined gives both the same "
             "extra effort around their first choice.", ""]
    for name, rec in tuning.items():
        cells = [f"**{text}**" if i == rec["chosen"] else text for i, text in enumerate(candidate_texts(rec))]
        cells = [f"_round 2_: {text}" if c.get("round") == 2 and (i == 0 or rec["candidates"][i - 1].get("round") != 2) else text
                 for i, (c, text) in enumerate(zip(rec["candidates"], cells))]
        unfinished = f", {rec['unfinished']} of {len(cells)} still to run" if rec.get("unfinished") else ""
        lines.append(f"- `{name}` ({rec['metric']}{unfinished}): " + "; ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- phases


def run_grid(grid: Grid) -> dict:
    tier = grid.tier
    sizes = [tier.main, *tier.ladder]
    base_lr = _recipe_lr()
    ctxs = {p: Ctx(p, size_budget(tier, p), tier.batch, tier.seq, base_lr) for p in sizes}
    tuning: dict[str, dict] = {p: {} for p in sizes}
    for preset in sizes:  # 1. the baseline's LR at every size
        lr, record = grid.tune_baseline(ctxs[preset])
        ctxs[preset].lr = lr
        tuning[preset]["baseline"] = record
    main = ctxs[tier.main]
    main.chosen["baseline"] = {"lr": 1.0}
    names = list(grid.rows)
    singles = [n for n in names if n != "baseline" and not grid.rows[n].needs]
    tuning[tier.main].update(grid.tune(main, singles))  # 2. single methods
    composed = [n for n in names if grid.rows[n].needs and not grid.rows[n].ablates]
    while composed:  # 3. compositions, each once its parts are chosen
        ready = [n for n in composed if all(p in main.chosen for p in grid.rows[n].needs)]
        if not ready and grid.interim:
            break
        if not ready:
            raise SystemExit(f"speedup.py: rows {composed} need rows that are not in this tier")
        tuning[tier.main].update(grid.tune(main, ready))
        composed = [n for n in composed if n not in ready]
    grid.tune_second_round(main, names, tuning[tier.main])  # 4. baseline and combined: 5 more tuning runs each
    for name in names:  # 5. the leave-one-out rows of combined run at its final choice
        if grid.rows[name].ablates in main.chosen:
            main.chosen[name] = dict(main.chosen[grid.rows[name].ablates])
    dense = grid.crossing_rows(main, tuning[tier.main])
    runs = grid.seeds_of(main, names, tier.seeds, dense)  # 6. every row on every held-out seed
    results = grid.report(main, runs, tuning[tier.main], grid.out, [interim_section(grid, main, names, runs, len(tier.seeds))])
    if grid.interim and any(len(runs.get(n, [])) < len(tier.seeds) for n in names):
        write_interim(results, grid.out)
        return results
    ladder_rows = ["baseline", *[n for n in ("muon",) if n in grid.rows], *best_singles(results, 2),
                   *[n for n in ("combined",) if n in grid.rows]]
    ladder = {tier.main: results}
    for preset in tier.ladder:  # 7. the scale ladder
        ctx = ctxs[preset]
        ctx.chosen = {n: main.chosen[n] for n in ladder_rows}
        runs = grid.seeds_of(ctx, ladder_rows, tier.ladder_seeds, set(ladder_rows) - {"baseline"})
        if grid.interim and any(len(runs.get(n, [])) < len(tier.ladder_seeds) for n in ladder_rows):
            results["sections"].append(f"## Interim\n\nThe scale ladder has not finished (at {preset}: "
                                       f"{sum(len(v) for v in runs.values())} of {len(ladder_rows) * len(tier.ladder_seeds)} runs); "
                                       f"resume with `{grid.command}`.")
            write_interim(results, grid.out)
            return results
        ladder[preset] = grid.report(ctx, runs, tuning[preset], grid.out / f"ladder-{preset.removeprefix('bench-')}", [])
    plot = plot_ladder(ladder, ladder_rows, grid.out / "ladder.png")
    results["sections"].append(render_ladder(ladder, ladder_rows, plot))
    results["ladder"] = {p: {"params": r["regime"]["non_embedding_params"], "rows": {row["name"]: row for row in r["rows"]}}
                         for p, r in ladder.items()}
    from hasten.compare.report import write_report

    write_report(results, grid.out)
    return results


def interim_section(grid: Grid, ctx: Ctx, names: list[str], runs: dict[str, list], seeds: int) -> str:
    """What an interim report is missing (empty when the grid is complete)."""
    missing = [f"`{n}` ({len(runs.get(n, []))}/{seeds} seeds)" if n in ctx.chosen else f"`{n}` (still tuning)"
               for n in names if len(runs.get(n, [])) < seeds]
    if not missing:
        return ""
    return ("## Interim\n\n**This report is interim**: the grid has not finished. Rows with fewer seeds have wider (or no) intervals; "
            "rows still tuning are left out of the results table. Missing: " + ", ".join(missing) + ". Resume with "
            f"`{grid.command}`; `--interim` rewrites this report from the finished runs without training.")


def write_interim(results: dict, out: Path) -> None:
    """The interim main-size report, without the ladder (written only when the grid is complete)."""
    from hasten.compare.report import write_report

    results["interim"] = True
    write_report(results, out)


def _recipe_lr() -> float:
    from hasten.recipes import load_config

    return load_config(RECIPES / "baseline.yaml").optim.lr


def best_singles(results: dict, n: int) -> list[str]:
    """The n single methods with the best FLOPs speedup (by final-loss delta when none reaches the target)."""
    rows = {r["name"]: r for r in results["rows"]}
    scored = []
    for name in SINGLE:
        key = f"{name} [lawa]" if f"{name} [lawa]" in rows else name
        row = rows.get(key)
        if row is None or row.get("final_mean") is None:
            continue
        est = (row.get("speedup") or {}).get("flops")
        scored.append((0 if est else 1, -(est["value"] if est else 0.0), (row.get("delta") or {}).get("value", math.inf), name))
    return [name for *_, name in sorted(scored)[:n]]


def plot_ladder(ladder: dict[str, dict], names: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    order = sorted(ladder, key=lambda p: ladder[p]["regime"]["non_embedding_params"])
    for name in names[1:]:
        xs, ys, lo, hi = [], [], [], []
        for preset in order:
            row = next((r for r in ladder[preset]["rows"] if r["name"] in (f"{name} [lawa]", name) and (r["name"] != name or
                        not any(x["name"] == f"{name} [lawa]" for x in ladder[preset]["rows"]))), None)
            est = (row or {}).get("speedup", {}).get("flops") if row else None
            if est is None:
                continue
            xs.append(ladder[preset]["regime"]["non_embedding_params"])
            ys.append(est["value"])
            lo.append(est["value"] - (est["low"] if est.get("low") is not None else est["value"]))
            hi.append((est["high"] if est.get("high") is not None else est["value"]) - est["value"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
    ax.axhline(1.0, color="grey", lw=1, ls="--", label="baseline (tuned AdamW)")
    ax.set_xscale("log")
    ax.set_yscale("log")  # speedups are ratios: 2x and 0.5x sit equally far from the baseline
    ax.set_xlabel("non-embedding parameters (each at 20 tokens / parameter)")
    ax.set_ylabel("FLOPs speedup to the baseline's loss")
    ax.set_title("speedup vs model size (geometric mean over seeds, 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_ladder(ladder: dict[str, dict], names: list[str], plot: Path) -> str:
    from hasten.compare.report import fmt_speedup

    order = sorted(ladder, key=lambda p: ladder[p]["regime"]["non_embedding_params"])
    head = "| row | " + " | ".join(f"{p} ({ladder[p]['regime']['non_embedding_params'] / 1e3:.0f}k params, {len(ladder[p]['rows'][0]['seeds'])} seeds)"
                                    for p in order) + " |"
    lines = ["## Scale ladder (FLOPs speedup to the baseline's final loss, 95 % CI)", "", head, "|---" * (len(order) + 1) + "|"]
    for name in names:
        cells = []
        for preset in order:
            rows = {r["name"]: r for r in ladder[preset]["rows"]}
            row = rows.get(f"{name} [lawa]", rows.get(name))
            cells.append(fmt_speedup(row, "flops") if row else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![speedup vs model size]({plot.name})"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- README and method cards


def readme_table(results: dict) -> str:
    from hasten.compare.report import fmt_delta, fmt_loss, fmt_speedup

    paper = {r.name: r.paper for r in ROWS}
    lines = ["| recipe | final val loss | Δ vs baseline [95% CI] | speedup tokens [95% CI] | FLOPs [95% CI] | wall-clock [95% CI] | paper's claim |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        claim = paper.get(row["name"], "") if row["metric"] == "val_loss" or row["name"].endswith("[lawa]") else ""
        if row["name"].endswith("[lawa]"):
            claim = paper.get(row["recipe"], "")
        lines.append(f"| {row['name']} | {fmt_loss(row)} | {fmt_delta(row)} | {fmt_speedup(row, 'tokens')} | {fmt_speedup(row, 'flops')} | "
                     f"{fmt_speedup(row, 'train_time')} | {claim} |")
    return "\n".join(lines)


def results_block(results: dict, report_path: str) -> str:
    r = results["regime"]
    base = next(x for x in results["rows"] if x["is_baseline"])
    return "\n".join([
        *([INTERIM_NOTE, ""] if results.get("interim") else []),
        f"Tier **{results['tier']}**: {r['preset']} ({r['non_embedding_params']:,} non-embedding params), {r['budget_tokens']:,} tokens per run "
        f"({r['tokens_per_param']:.1f} tokens/param, {r['epochs']:.2f} epochs), whole-split evaluation, {results['seeds']} paired seeds; "
        f"AdamW LR tuned to {r['tuned_lr']:.4g}; baseline final val loss {base['final_mean']:.4f} ± {base['final_std']:.4f}; "
        f"{results['created']}. Produced by:", "", "```bash", results["command"], "```", "", readme_table(results), "",
        f"Tuning runs, stability, plots and the scale ladder: [{report_path}]({report_path}).",
    ])


INTERIM_NOTE = ("**Interim results**: the grid has not finished (see the report's Interim section for what is missing); "
                "rows with fewer seeds have wide or no intervals.")
CARD_BEGIN, CARD_END = "<!-- speedup:begin -->", "<!-- speedup:end -->"


def card_block(results: dict, rows: list[str], report_path: str) -> str:
    from hasten.compare.report import fmt_delta, fmt_loss, fmt_speedup

    paper = {r.name: r.paper for r in ROWS}
    lines = [*([INTERIM_NOTE, ""] if results.get("interim") else []), f"Measured by `{results['command']}` ({results['regime']['preset']}, {results['regime']['tokens_per_param']:.0f} tokens per "
             f"parameter, {results['seeds']} paired seeds, tuned AdamW baseline; full report: [{Path(report_path).name}]({report_path})):", "",
             "| row | final val loss | Δ vs baseline [95% CI] | speedup tokens | FLOPs | wall-clock | paper |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if row["recipe"] in rows:
            lines.append(f"| {row['name']} | {fmt_loss(row)} | {fmt_delta(row)} | {fmt_speedup(row, 'tokens')} | {fmt_speedup(row, 'flops')} | "
                         f"{fmt_speedup(row, 'train_time')} | {paper.get(row['recipe'], '') if row['metric'] == 'val_loss' else ''} |")
    lines += ["", "Tuning runs (seed 0; chosen in bold):", ""]
    for name in rows:
        rec = results["tuning_rows"].get(name)
        if rec:
            cells = [f"**{text}**" if i == rec["chosen"] else text for i, text in enumerate(candidate_texts(rec))]
            lines.append(f"- `{name}`: " + "; ".join(cells))
    return "\n".join(lines)


def update_block(path: Path, begin: str, end: str, text: str) -> None:
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"speedup.py: {path} has no {begin} ... {end} block; add the two markers where the results go")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    tmp.replace(path)


def update_docs(results: dict, out: Path) -> None:
    from hasten.compare.report import BEGIN, END

    report = str((out / "report.md").relative_to(ROOT))
    update_block(ROOT / "README.md", BEGIN, END, results_block(results, report))
    cards: dict[str, list[str]] = {}
    for row in ROWS:
        if row.card:
            cards.setdefault(row.card, []).append(row.name)
    for card, rows in cards.items():
        path = ROOT / card
        update_block(path, CARD_BEGIN, CARD_END, card_block(results, rows, str(Path("../../../..") / report)))


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="standard")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time; each gets cores/jobs threads")
    parser.add_argument("--out", default=None, help="report dir (default benchmarks/results/<tier>; smoke: benchmarks/runs/smoke)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the README results block and the method cards")
    parser.add_argument("--interim", action="store_true",
                        help="train nothing: rewrite the report (and docs) from the runs finished so far, marked interim")
    args = parser.parse_args(argv)
    tier = TIERS[args.tier]
    out = Path(args.out) if args.out else (RESULTS / args.tier if tier.tracked else ROOT / "benchmarks" / "runs" / args.tier)
    if args.interim and not tier.tracked:
        parser.error("--interim reads a tracked tier's finished runs; the smoke tier always trains from scratch")
    if not tier.tracked and out.exists():
        shutil.rmtree(out)  # the smoke tier proves the pipeline: it always trains from scratch
    command = f"python benchmarks/speedup.py --tier {args.tier}" + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
    from hasten.errors import HastenError

    try:
        results = run_grid(Grid(args.tier, out, args.jobs, command, interim=args.interim))
    except HastenError as err:
        print(f"speedup.py: error: {err}", file=sys.stderr)
        return err.exit_code
    if tier.tracked and not args.no_docs:
        update_docs(results, out)
        print("README.md results block and the method cards updated", file=sys.stderr)
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
