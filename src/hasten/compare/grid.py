"""A tuned benchmark grid: every row against a tuned baseline, each tuned at equal effort on one seed and reported on
held-out seeds, at one main model size and a ladder of others. The engine behind `benchmarks/speedup.py`, whose tables
(the rows, their knobs and the tiers) are data it hands to `Grid`.

Phases (run_grid): 1. the baseline's LR at every size; 2. single rows; 3. compositions, once the rows they build on
are chosen; 4. a second tuning round for the rows that declare one; 5. leave-one-out rows take their row's choice;
6. every row on every held-out seed (rows that can reach the baseline's loss evaluate densely, so their crossings are
resolved); 7. the ladder sizes. Runs are named by a hash of their settings, so a finished run is reused whenever the
same configuration comes up again, and a grid killed at any point resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hasten.compare.metrics import paired_difference
from hasten.compare.plots import plot_comparison, plot_ladder
from hasten.compare.report import (
    fmt_delta,
    fmt_estimate,
    fmt_loss,
    fmt_speedup,
    metric_row_name,
    quoted_row,
    write_report,
)
from hasten.compare.runner import CompareOptions, RunSpec, refuse_stale, run_all
from hasten.errors import ConfigError

TUNING_RUNS = 5
LR_FACTORS = (0.5, 2**-0.5, 1.0, 2**0.5, 2.0)  # around a centre: 5 values a factor sqrt(2) apart
WIDEN_LIMIT = 3  # extra baseline LRs at most, while the best is at an edge
DENSE_EVALS = 50  # held-out runs of a row that can cross the target evaluate every 1/50 of the budget (in tokens)
CROSSING_MARGIN = 0.05  # a row whose tuning run ends further than this above the baseline's cannot cross: 1/16 suffices
INTERIM_NOTE = (
    "**Interim results**: the grid has not finished (see the report's Interim section for what is missing); "
    "rows with fewer seeds have wide or no intervals."
)


@dataclass
class Ctx:
    """What a row's settings are derived from at one model size."""

    preset: str
    budget: int  # training tokens per run
    batch: int
    seq: int
    lr: float  # the tuned AdamW LR at this size (for the baseline's own sweep: the centre)
    chosen: dict[str, dict] = field(
        default_factory=dict
    )  # row -> the knobs it was tuned to (compositions build on them)

    @property
    def steps(self) -> int:
        return self.budget // (self.batch * self.seq)

    def frac_tokens(self, fraction: float) -> int:
        return int(round(fraction * self.budget))


@dataclass
class Row:
    """One row: a recipe, how its knobs become --set overrides, and the knobs of its tuning runs."""

    name: str
    recipe: Path
    settings: Callable[[Ctx, dict], list[str]]  # (ctx, knobs) -> overrides
    candidates: Callable[[Ctx], list[dict]]  # the tuning runs' knobs (may read ctx.chosen)
    metric: str = "val_loss"  # what the tuning minimises
    needs: tuple[str, ...] = ()  # rows tuned before this one (compositions)
    paper: str = ""  # the paper's own number (or what an ablation leaves out), for the README table
    size_overrides: Callable[[str], list[str]] = lambda preset: []
    second_round: Callable[[Ctx], list[dict]] | None = None  # more tuning runs around the first round's choice
    ablates: str | None = None  # runs at that row's chosen knobs (a leave-one-out row: no tuning of its own)
    first_round_of: str | None = None  # runs that row's first-round choice, under its run names, when a second round
    # changed the choice: how the tuning seed's pick fares on the held-out seeds

    @property
    def tuned(self) -> bool:
        """Whether the row has tuning runs of its own (leave-one-out and re-check rows run at another row's knobs)."""
        return not (self.ablates or self.first_round_of)


@dataclass
class Tier:
    name: str
    main: str  # preset of the main size
    ladder: list[str]  # other presets
    seeds: tuple[int, ...]  # the held-out seeds every row reports at the main size (never the tuning seed)
    ladder_seeds: tuple[int, ...]
    ladder_rows: tuple[str, ...] = ()  # rows run at every ladder size, besides the best singles
    singles: tuple[str, ...] = ()  # the rows the ladder's best singles are picked from ...
    best_singles: int = 2  # ... and how many
    tokens_per_param: float = 20.0
    batch: int = 16
    seq: int = 128
    rows: list[str] | None = None  # None = all
    candidates: int = TUNING_RUNS
    overrides: list[str] = field(default_factory=list)
    fixed_budget: int | None = None  # tokens per run regardless of size (a smoke test of the pipeline)
    tracked: bool = True  # results are records (committed); an untracked tier trains from scratch elsewhere
    tuning_seed: int = 0  # every choice is made on this seed alone
    baseline: str = "baseline"


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
    def __init__(self, tier: Tier, rows: list[Row], out: Path, jobs: int, command: str, interim: bool = False):
        self.tier, self.out, self.jobs, self.command = tier, out, jobs, command
        self.interim = interim  # report what has finished, train nothing
        self.rows = {r.name: r for r in rows if tier.rows is None or r.name in tier.rows}
        if tier.baseline not in self.rows:
            raise ConfigError(f"tier {tier.name}: its baseline row {tier.baseline!r} is not among the rows")
        self.opts = CompareOptions(recipes=[], report_dir=out, jobs=jobs, command=command, tier=tier.name)
        self.failed: dict[str, str] = {}

    # -- runs ------------------------------------------------------------------------------------

    def size_settings(self, ctx: Ctx, row: Row, dense: bool = False) -> list[str]:
        """What every row shares at a size. `dense`: an evaluation each time the tokens pass 1/DENSE_EVALS of the budget
        (steps differ in length under SLW), for the held-out runs of rows whose crossing must be resolved."""
        steps = ctx.steps
        evals = (
            f"train.eval_every_tokens={max(1, ctx.budget // DENSE_EVALS)}"
            if dense
            else f"train.eval_every={max(1, steps // 16)}"
        )
        return [
            "train.progress_bar=false",
            f"model.preset={ctx.preset}",
            f"train.batch_size={ctx.batch}",
            f"train.seq_len={ctx.seq}",
            f"train.max_tokens={ctx.budget}",
            "train.max_steps=null",
            f"schedule.warmup_steps={max(2, round(0.03 * steps))}",
            evals,
            f"train.checkpoint_every={max(1, steps // 4)}",
            *self.tier.overrides,
            *row.size_overrides(ctx.preset),
        ]

    def spec(self, ctx: Ctx, row: Row, knobs: dict, seed: int, dense: bool = False) -> RunSpec:
        settings = [*self.size_settings(ctx, row, dense), *row.settings(ctx, knobs)]
        # named by a hash of the settings: the same configuration always maps to the same run dir, however it was
        # reached
        name = (
            f"{ctx.preset.removeprefix('bench-')}-{row.first_round_of or row.name}-"
            f"{hashlib.sha1(' '.join(settings).encode()).hexdigest()[:8]}-seed{seed}"
        )
        overrides = [*settings, f"train.seed={seed}", f"name={name}"]
        return RunSpec(
            name, row.name, seed, row.recipe, overrides, self.out / "runs" / name, self.opts.threads_per_job()
        )

    def run(self, specs: list[RunSpec]) -> None:
        # a finished run is reused only if it ran exactly this spec's config (recipes may have changed)
        for spec in specs:
            if (spec.run_dir / "summary.json").exists():
                refuse_stale(spec)
        todo = [s for s in specs if not self.finished(s)]
        print(f"{len(specs)} runs ({len(specs) - len(todo)} already finished)", file=sys.stderr, flush=True)
        if self.interim:
            return
        for outcome in run_all(todo, self.jobs):
            if outcome["status"] == "failed":
                self.failed[outcome["name"]] = outcome.get("error", "")

    def finished(self, spec: RunSpec) -> bool:
        return (spec.run_dir / "summary.json").exists() or spec.name in self.failed

    def final(self, spec: RunSpec, metric: str) -> float:
        """The run's final value of `metric` (inf when it failed or diverged)."""
        try:
            value = json.loads((spec.run_dir / "summary.json").read_text()).get(metric)
        except (OSError, ValueError):
            return math.inf
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    # -- tuning ----------------------------------------------------------------------------------

    def tune_baseline(self, ctx: Ctx) -> tuple[float, dict]:
        """Sweep the baseline LR around ctx.lr, widening while the best is at an edge; returns (best LR, tuning
        record)."""
        ctx = replace(ctx, chosen={})
        row = self.rows[self.tier.baseline]
        factors = list(LR_FACTORS[: self.tier.candidates]) if self.tier.candidates < TUNING_RUNS else list(LR_FACTORS)
        for _ in range(WIDEN_LIMIT + 1):
            specs = [self.spec(ctx, row, {"lr": f}, self.tier.tuning_seed) for f in factors]
            self.run(specs)
            finals = [self.final(s, "val_loss") for s in specs]
            best = min(range(len(factors)), key=lambda i: finals[i])
            if (
                self.tier.candidates < TUNING_RUNS
                or 0 < best < len(factors) - 1
                or len(factors) >= TUNING_RUNS + WIDEN_LIMIT
            ):
                break
            factors = [factors[0] / 2**0.5, *factors] if best == 0 else [*factors, factors[-1] * 2**0.5]
        lrs = [ctx.lr * f for f in factors]
        record = self.tuning_record(
            row, [{"lr": f} for f in factors], specs, finals, best, ctx, labels=[f"optim.lr={lr:.4g}" for lr in lrs]
        )
        record["at_edge"] = best in (0, len(factors) - 1)
        return lrs[best], record

    def tune(self, ctx: Ctx, names: list[str]) -> dict[str, dict]:
        """Tuning runs of `names` (all at once); returns each row's tuning record and stores its choice in ctx."""
        plan = {name: self.rows[name].candidates(ctx)[: self.tier.candidates] for name in names}
        specs = {
            name: [self.spec(ctx, self.rows[name], k, self.tier.tuning_seed) for k in knobs]
            for name, knobs in plan.items()
        }
        self.run([s for group in specs.values() for s in group])
        records = {}
        for name, knobs in plan.items():
            finals = [self.final(s, self.rows[name].metric) for s in specs[name]]
            best = min(range(len(knobs)), key=lambda i: finals[i])
            records[name] = self.tuning_record(self.rows[name], knobs, specs[name], finals, best, ctx)
            unfinished = sum(not self.finished(s) for s in specs[name])
            if (
                unfinished
            ):  # an interim report: the row is not chosen (nor run on more seeds) before all its candidates ran
                records[name].update(chosen=None, unfinished=unfinished)
                continue
            ctx.chosen[name] = knobs[best]
        return records

    def tune_second_round(self, ctx: Ctx, names: list[str], records: dict[str, dict]) -> None:
        """The rows with a second round: more tuning runs around the first round's choice; the best of all their runs is
        chosen. Extends each row's tuning record in place."""
        plan = {
            n: self.rows[n].second_round(ctx)[: self.tier.candidates]
            for n in names
            if n in ctx.chosen and self.rows[n].second_round
        }
        specs = {
            n: [self.spec(ctx, self.rows[n], k, self.tier.tuning_seed) for k in knobs] for n, knobs in plan.items()
        }
        self.run([s for group in specs.values() for s in group])
        for name, knobs in plan.items():
            row, record = self.rows[name], records[name]
            first = len(record["candidates"])
            extra = self.tuning_record(
                row, knobs, specs[name], [self.final(s, row.metric) for s in specs[name]], 0, ctx
            )["candidates"]
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
        base_record = records[self.tier.baseline]
        base = base_record["candidates"][base_record["chosen"]]["final"]
        out = set()
        for name in ctx.chosen:
            row = self.rows.get(name)
            if row is None or name == self.tier.baseline or row.first_round_of == self.tier.baseline:
                continue
            if row.ablates:
                out.add(name)
                continue
            rec = records.get(name)
            final = rec["candidates"][rec["chosen"]]["final"] if rec and rec.get("chosen") is not None else None
            if final is not None and base is not None and final <= base + CROSSING_MARGIN:
                out.add(name)
        return out

    def tuning_record(
        self,
        row: Row,
        knobs: list[dict],
        specs: list[RunSpec],
        finals: list[float],
        best: int,
        ctx: Ctx,
        labels: list[str] | None = None,
    ) -> dict:
        return {
            "row": row.name,
            "metric": row.metric,
            "chosen": best,
            "candidates": [
                {
                    "knobs": k,
                    "label": labels[i] if labels else describe(k),
                    "settings": row.settings(ctx, k),
                    "run": s.name,
                    "final": None if math.isinf(f) else f,
                    "finished": self.finished(s),
                }
                for i, (k, s, f) in enumerate(zip(knobs, specs, finals))
            ],
        }

    def baseline_check(self, runs: dict[str, list], results: dict) -> dict:
        """When a second round changed the baseline's choice: its first-round choice on the held-out seeds (the row
        that re-checks it), and every row's total-FLOPs speedup against that one too, so a seed-0 pick that is weaker on
        the held-out seeds cannot flatter the methods unseen."""
        from hasten.compare.report import build_results

        check = next((n for n, r in self.rows.items() if r.first_round_of == self.tier.baseline and n in runs), None)
        if check is None:
            return {}
        alt = build_results(self.opts, list(runs), check, runs, self.failed, None)
        against = {r["name"]: (r.get("speedup") or {}).get("flops") for r in alt["rows"]}
        refused = {r["name"]: (r.get("refused") or {}).get("flops") for r in alt["rows"]}
        rows = [r for r in results["rows"] if r["name"] not in (self.tier.baseline, check)]
        first = next(r for r in results["rows"] if r["name"] == check)
        return {
            "row": check,
            "chosen": results["chosen"].get(self.tier.baseline),
            "first_round": results["chosen"].get(check),
            "delta": first.get("delta"),
            "final_mean": first.get("final_mean"),
            "rows": [
                {
                    "name": r["name"],
                    "vs_chosen": (r.get("speedup") or {}).get("flops"),
                    "vs_first_round": against.get(r["name"]),
                    "refused_first_round": refused.get(r["name"]),
                    "refused_chosen": (r.get("refused") or {}).get("flops"),
                }
                for r in rows
            ],
        }

    # -- one size ----------------------------------------------------------------------------------

    def seeds_of(self, ctx: Ctx, names: list[str], seeds: tuple[int, ...], dense: set[str]) -> dict[str, list]:
        """Seed-major specs of every row at its chosen knobs on the held-out seeds (rows in `dense` evaluate
        densely)."""
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
        from hasten.compare.report import build_results

        baseline = self.rows[self.tier.baseline]
        self.opts.budget = ctx.budget
        self.opts.seeds = max(len(v) for v in runs.values())
        self.opts.overrides = self.size_settings(ctx, baseline)
        report_dir.mkdir(parents=True, exist_ok=True)
        results = build_results(self.opts, list(runs), baseline.name, runs, self.failed, None)
        for row in results["rows"]:  # the row each recipe is quoted by: the metric it was tuned on
            row["quoted"] = row["name"] == metric_row_name(row["recipe"], self.rows[row["recipe"]].metric)
        results.update(
            preset=ctx.preset,
            tuned_lr=ctx.lr,
            chosen=ctx.chosen,
            tuning_rows=tuning,
            tuning_seed=self.tier.tuning_seed,
            held_out_seeds=sorted({seed for row in results["rows"] for seed in row["seeds"]}),
            regime=regime(ctx, baseline, self.size_settings(ctx, baseline)),
            papers={name: row.paper for name, row in self.rows.items()},
        )
        if self.tier.tuning_seed in results["held_out_seeds"]:
            raise ConfigError(
                f"tier {self.tier.name}: the tuning seed {self.tier.tuning_seed} is among the reported seeds"
            )
        results["ablation"] = ablation(results, self.rows)
        results["baseline_check"] = self.baseline_check(runs, results)
        results["sections"] = [
            x
            for x in (
                render_regime(results["regime"]),
                render_tuning(tuning, self.tier.tuning_seed),
                render_ablation(results["ablation"]),
                render_baseline_check(results["baseline_check"]),
                *sections,
            )
            if x
        ]
        plots = plot_comparison(results, report_dir)
        results["plots"] = {k: p.name for k, p in plots.items()}
        write_report(results, report_dir)
        return results


# --------------------------------------------------------------------------- phases


def run_grid(grid: Grid) -> dict:
    tier, base = grid.tier, grid.tier.baseline
    sizes = [tier.main, *tier.ladder]
    from hasten.recipes import load_config

    base_lr = load_config(grid.rows[base].recipe).optim.lr
    ctxs = {p: Ctx(p, size_budget(tier, p), tier.batch, tier.seq, base_lr) for p in sizes}
    tuning: dict[str, dict] = {p: {} for p in sizes}
    for preset in sizes:  # 1. the baseline's LR at every size
        lr, record = grid.tune_baseline(ctxs[preset])
        ctxs[preset].lr = lr
        tuning[preset][base] = record
    main = ctxs[tier.main]
    main.chosen[base] = {"lr": 1.0}
    names = list(grid.rows)
    singles = [n for n in names if n != base and not grid.rows[n].needs and grid.rows[n].tuned]
    tuning[tier.main].update(grid.tune(main, singles))  # 2. single rows
    composed = [n for n in names if grid.rows[n].needs and grid.rows[n].tuned]
    while composed:  # 3. compositions, each once its parts are chosen
        ready = [n for n in composed if all(p in main.chosen for p in grid.rows[n].needs)]
        if not ready and grid.interim:
            break
        if not ready:
            raise ConfigError(f"tier {tier.name}: rows {composed} need rows that are not in this tier")
        tuning[tier.main].update(grid.tune(main, ready))
        composed = [n for n in composed if n not in ready]
    first_round = {n: dict(main.chosen[n]) for n in names if n in main.chosen and grid.rows[n].second_round}
    grid.tune_second_round(main, names, tuning[tier.main])  # 4. a second round for the rows that declare one
    for name in names:  # ... and the first round's choice again on the held-out seeds where the second changed it
        of = grid.rows[name].first_round_of
        if of in first_round and first_round[of] != main.chosen.get(of):
            main.chosen[name] = first_round[of]
    for name in names:  # 5. leave-one-out rows run at their row's final choice
        if grid.rows[name].ablates in main.chosen:
            main.chosen[name] = dict(main.chosen[grid.rows[name].ablates])
    dense = grid.crossing_rows(main, tuning[tier.main])
    runs = grid.seeds_of(main, names, tier.seeds, dense)  # 6. every row on every held-out seed
    results = grid.report(
        main, runs, tuning[tier.main], grid.out, [interim_section(grid, main, names, runs, len(tier.seeds))]
    )
    if grid.interim and any(len(runs.get(n, [])) < len(tier.seeds) for n in names):
        return write_interim(results, grid.out)
    ladder_rows = [base, *[n for n in tier.ladder_rows if n in grid.rows and n != base]]
    ladder_rows += [n for n in best_singles(results, tier.singles, tier.best_singles) if n not in ladder_rows]
    ladder = {tier.main: results}
    for preset in tier.ladder:  # 7. the scale ladder
        ctx = ctxs[preset]
        ctx.chosen = {n: main.chosen[n] for n in ladder_rows}
        runs = grid.seeds_of(ctx, ladder_rows, tier.ladder_seeds, set(ladder_rows) - {base})
        if grid.interim and any(len(runs.get(n, [])) < len(tier.ladder_seeds) for n in ladder_rows):
            results["sections"].append(
                f"## Interim\n\nThe scale ladder has not finished (at {preset}: "
                f"{sum(len(v) for v in runs.values())} of {len(ladder_rows) * len(tier.ladder_seeds)} runs); "
                f"resume with `{grid.command}`."
            )
            return write_interim(results, grid.out)
        ladder[preset] = grid.report(
            ctx, runs, tuning[preset], grid.out / f"ladder-{preset.removeprefix('bench-')}", []
        )
    plot = plot_ladder(ladder, ladder_rows, grid.out / "ladder.png")
    results["sections"].append(render_ladder(ladder, ladder_rows, plot))
    results["ladder"] = {
        p: {"params": r["regime"]["non_embedding_params"], "rows": {row["name"]: row for row in r["rows"]}}
        for p, r in ladder.items()
    }
    write_report(results, grid.out)
    return results


def interim_section(grid: Grid, ctx: Ctx, names: list[str], runs: dict[str, list], seeds: int) -> str:
    """What an interim report is missing (empty when the grid is complete)."""
    missing = [
        f"`{n}` ({len(runs.get(n, []))}/{seeds} seeds)" if n in ctx.chosen else f"`{n}` (still tuning)"
        for n in names
        if len(runs.get(n, [])) < seeds
    ]
    if not missing:
        return ""
    return (
        "## Interim\n\n**This report is interim**: the grid has not finished. Rows with fewer seeds have wider (or no) "
        "intervals; rows still tuning are left out of the results table. Missing: "
        + ", ".join(missing)
        + ". Resume with "
        f"`{grid.command}`; `--interim` rewrites this report from the finished runs without training."
    )


def write_interim(results: dict, out: Path) -> dict:
    """The interim main-size report, without the ladder (written only when the grid is complete)."""
    results["interim"] = True
    write_report(results, out)
    return results


def best_singles(results: dict, singles: tuple[str, ...], n: int) -> list[str]:
    """The n single rows with the best total-FLOPs speedup (by final-loss delta when none reaches the target)."""
    scored = []
    for name in singles:
        row = quoted_row(results["rows"], name)
        if row is None or row.get("final_mean") is None:
            continue
        est = (row.get("speedup") or {}).get("flops")
        scored.append(
            (0 if est else 1, -(est["value"] if est else 0.0), (row.get("delta") or {}).get("value", math.inf), name)
        )
    return [name for *_, name in sorted(scored)[:n]]


# --------------------------------------------------------------------------- sections of the report


def describe(knobs: dict) -> str:
    """A tuning candidate's knobs in words (relative to the tuned AdamW LR and the budget)."""
    names = {
        "lr": "LR x",
        "at": "grow at ",
        "post": "grown LR x",
        "batch": "batch x",
        "T": "warmup T=",
        "nu": "every ",
        "base": "base LR x",
        "setting": "",
        "beta2": "beta2 ",
    }
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


def regime(ctx: Ctx, baseline: Row, settings: list[str]) -> dict:
    """The numbers that make the regime: tokens per parameter, epochs of the corpus, the evaluation set."""
    from hasten.data.tokens import prepare_from_config
    from hasten.recipes import load_config

    cfg = load_config(baseline.recipe, settings)
    data = prepare_from_config(cfg.data, progress=False)
    params = non_embedding_params(ctx.preset)
    return {
        "preset": ctx.preset,
        "non_embedding_params": params,
        "budget_tokens": ctx.budget,
        "tokens_per_param": ctx.budget / params,
        "train_tokens": len(data.train),
        "epochs": ctx.budget / len(data.train),
        "val_tokens": len(data.val),
        "val_windows": (len(data.val) - 1) // ctx.seq,
        "tuned_lr": ctx.lr,
    }


def render_regime(r: dict) -> str:
    return (
        f"## Regime\n\n{r['preset']}: {r['non_embedding_params']:,} non-embedding parameters, "
        f"{r['budget_tokens']:,} training tokens per run = **{r['tokens_per_param']:.1f} tokens per parameter**, "
        f"{r['epochs']:.2f} epochs of the {r['train_tokens']:,}-token training split; every evaluation covers the "
        f"whole validation split ({r['val_windows']:,} windows, {r['val_tokens']:,} tokens). "
        f"Tuned AdamW LR: {r['tuned_lr']:.4g}."
    )


def candidate_texts(rec: dict) -> list[str]:
    """`label: final` per tuning candidate ("not run yet" in an interim report; records before that key existed were
    complete)."""
    return [
        f"{c['label']}: "
        + ("not run yet" if not c.get("finished", True) else "failed" if c["final"] is None else f"{c['final']:.4f}")
        for c in rec["candidates"]
    ]


def render_tuning(tuning: dict, seed: int = 0) -> str:
    effort = {name: len(rec["candidates"]) for name, rec in tuning.items()}
    usual = max(set(effort.values()), key=list(effort.values()).count) if effort else TUNING_RUNS
    return "\n".join(
        [
            f"## Tuning (seed {seed} only; it is not among the reported seeds)",
            "",
            "Each row's candidates with their final val loss (the averaged model's for rows tuned on averaged "
            "weights); **bold** = chosen, then run on every held-out seed. Tuning effort: "
            + "".join(f"`{n}` {k} runs, " for n, k in effort.items() if k != usual)
            + f"every other row {usual}. Rows with a second round (_round 2_) get it around their first choice.",
            "",
            tuning_lines(tuning),
        ]
    )


def tuning_lines(tuning: dict) -> str:
    """One line per tuned row: its candidates with their final val loss, the chosen one in bold."""
    lines = []
    for name, rec in tuning.items():
        cells = [f"**{text}**" if i == rec["chosen"] else text for i, text in enumerate(candidate_texts(rec))]
        cells = [
            f"_round 2_: {text}"
            if c.get("round") == 2 and (i == 0 or rec["candidates"][i - 1].get("round") != 2)
            else text
            for i, (c, text) in enumerate(zip(rec["candidates"], cells))
        ]
        unfinished = f", {rec['unfinished']} of {len(cells)} still to run" if rec.get("unfinished") else ""
        lines.append(f"- `{name}` ({rec['metric']}{unfinished}): " + "; ".join(cells))
    return "\n".join(lines)


def ablation(results: dict, rows: dict[str, Row]) -> list[dict]:
    """Each ablated row and its leave-one-out rows: final loss against the full row's, paired by seed (Δ > 0: the part
    left out helps), and the total-FLOPs speedup to the baseline. A row tuned on averaged weights also shows its raw
    weights (the same runs without the averaging)."""
    by_name = {r["name"]: r for r in results["rows"]}
    out = []
    for full_name in sorted({row.ablates for row in rows.values() if row.ablates}):
        full_row = rows[full_name]
        full = by_name.get(metric_row_name(full_name, full_row.metric))
        if full is None or not full.get("final_losses"):
            continue
        entries = [(full["name"], f"{full_name} (all parts)")]
        if full_row.metric != "val_loss":
            entries.append((full_name, f"- {full_row.metric.split('/')[0].upper()} (the raw weights of the same runs)"))
        entries += [
            (metric_row_name(r.name, r.metric), r.paper or r.name) for r in rows.values() if r.ablates == full_name
        ]
        reference = dict(zip(full["seeds"], full["final_losses"]))
        for name, label in entries:
            row = by_name.get(name)
            if row is None or not row.get("final_losses"):
                continue
            pairs = [(f, reference[s]) for s, f in zip(row["seeds"], row["final_losses"]) if s in reference]
            delta = (
                paired_difference([a for a, _ in pairs], [b for _, b in pairs]).to_dict()
                if pairs and name != full["name"]
                else None
            )
            out.append(
                {
                    "ablates": full_name,
                    "row": name,
                    "label": label,
                    "final_mean": row.get("final_mean"),
                    "vs_full": delta,
                    "speedup_flops": (row.get("speedup") or {}).get("flops"),
                    "refused": (row.get("refused") or {}).get("flops"),
                    "seeds": row["seeds"],
                }
            )
    return out


def render_ablation(entries: list[dict]) -> str:
    if len(entries) < 2:
        return ""
    lines = []
    for full in dict.fromkeys(e["ablates"] for e in entries):
        lines += [
            f"## What each part of {full} adds (leave-one-out, held-out seeds)",
            "",
            f"Each row drops one part of {full} and keeps its other settings (not re-tuned). Δ is the row's final "
            f"val loss minus {full}'s, paired by seed, 95 % interval: Δ > 0 means the part left out helps.",
            "",
            f"| row | final val loss | Δ vs {full} [95% CI] | total-FLOPs speedup to the baseline [95% CI] |",
            "|---|---|---|---|",
        ]
        for e in (e for e in entries if e["ablates"] == full):
            delta = fmt_delta({"delta": e["vs_full"]}) if e["vs_full"] else "—"
            speed = fmt_estimate(e["speedup_flops"]) if e["speedup_flops"] else (e["refused"] or "not reached")
            final = "—" if e["final_mean"] is None else f"{e['final_mean']:.4f}"
            lines.append(f"| {e['label']} (`{e['row']}`) | {final} | {delta} | {speed} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def render_baseline_check(check: dict) -> str:
    if not check:
        return ""
    delta = fmt_delta({"delta": check["delta"]}) if check.get("delta") else "—"
    lines = [
        "## Baseline check (the tuning seed's pick on the held-out seeds)",
        "",
        f"The baseline's second tuning round changed its choice on seed 0 from `{describe(check['first_round'])}` to "
        f"`{describe(check['chosen'])}`. On the held-out seeds the first-round choice (row `{check['row']}`) ends at "
        f"{check['final_mean']:.4f}, Δ {delta} against the chosen one (Δ < 0: the first round's pick is the stronger "
        "baseline there). Every row's total-FLOPs speedup against both:",
        "",
        f"| row | vs the chosen baseline [95% CI] | vs `{check['row']}` [95% CI] |",
        "|---|---|---|",
    ]
    for r in check["rows"]:
        chosen = fmt_estimate(r["vs_chosen"]) if r["vs_chosen"] else (r["refused_chosen"] or "not reached")
        first = (
            fmt_estimate(r["vs_first_round"]) if r["vs_first_round"] else (r["refused_first_round"] or "not reached")
        )
        lines.append(f"| {r['name']} | {chosen} | {first} |")
    return "\n".join(lines)


def render_ladder(ladder: dict[str, dict], names: list[str], plot: Path) -> str:
    order = sorted(ladder, key=lambda p: ladder[p]["regime"]["non_embedding_params"])
    head = (
        "| row | "
        + " | ".join(
            f"{p} ({ladder[p]['regime']['non_embedding_params'] / 1e3:.0f}k params, "
            f"{len(ladder[p]['rows'][0]['seeds'])} seeds)"
            for p in order
        )
        + " |"
    )
    lines = [
        "## Scale ladder (total-FLOPs speedup to the baseline's final loss, 95 % CI)",
        "",
        head,
        "|---" * (len(order) + 1) + "|",
    ]
    for name in names:
        cells = []
        for preset in order:
            row = quoted_row(ladder[preset]["rows"], name)
            cells.append(fmt_speedup(row, "flops") if row else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![speedup vs model size]({plot.name})"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the README's results block


def readme_table(results: dict) -> str:
    paper = results.get("papers") or {}
    lines = [
        "| recipe | final val loss | Δ vs baseline [95% CI] | speedup tokens [95% CI] | total FLOPs [95% CI] | "
        "wall-clock [95% CI] | paper's claim |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        claim = paper.get(row["recipe"], "") if row["metric"] == "val_loss" or row.get("quoted") else ""
        lines.append(
            f"| {row['name']} | {fmt_loss(row)} | {fmt_delta(row)} | {fmt_speedup(row, 'tokens')} | "
            f"{fmt_speedup(row, 'flops')} | {fmt_speedup(row, 'train_time')} | {claim} |"
        )
    return "\n".join(lines)


def _regime_line(results: dict) -> str:
    r = results["regime"]
    base = next(x for x in results["rows"] if x["is_baseline"])
    seeds = ", ".join(map(str, results["held_out_seeds"]))
    return (
        f"Tier **{results['tier']}**: {r['preset']} ({r['non_embedding_params']:,} non-embedding params), "
        f"{r['budget_tokens']:,} tokens per run ({r['tokens_per_param']:.1f} tokens/param, "
        f"{r['epochs']:.2f} epochs), whole-split evaluation; settings chosen on seed {results['tuning_seed']}, "
        f"reported on held-out paired seeds {seeds}; AdamW LR tuned to {r['tuned_lr']:.4g}; baseline final "
        f"val loss {base['final_mean']:.4f} ± {base['final_std']:.4f}; FLOPs are total (model + optimizer); "
        f"a speedup rests on evaluations at most {results['max_resolution']:.0%} of the run apart; "
        f"{results['created']}. Produced by:"
    )


def _block_head(results: dict) -> list[str]:
    """What the README's and the cards' blocks open with: the interim note, the regime and the command."""
    return [
        *([INTERIM_NOTE, ""] if results.get("interim") else []),
        _regime_line(results),
        "",
        "```bash",
        results["command"],
        "```",
        "",
    ]


def results_block(results: dict, report_path: str) -> str:
    """The README's results block: the tier's regime, its command and the main size's table."""
    return "\n".join(
        [
            *_block_head(results),
            readme_table(results),
            "",
            f"Tuning runs, ablations, stability, plots and the scale ladder: [{report_path}]({report_path}).",
        ]
    )


def card_block(results: dict, recipes: tuple[str, ...], report_path: str) -> str:
    """A method card's benchmark block: the README's regime line, then the rows of `recipes` (every metric of their
    runs) and their tuning runs."""
    rows = {**results, "rows": [r for r in results["rows"] if r["recipe"] in recipes or r["is_baseline"]]}
    tuning = {n: rec for n, rec in results.get("tuning_rows", {}).items() if n in recipes}
    return "\n".join(
        [
            *_block_head(results),
            readme_table(rows),
            "",
            f"Tuning runs (seed {results['tuning_seed']}; chosen in bold):",
            "",
            tuning_lines(tuning),
            "",
            f"Full report (ablations, stability, plots, the scale ladder): [report.md]({report_path}).",
        ]
    )
