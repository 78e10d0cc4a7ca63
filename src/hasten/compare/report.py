"""Turn the run dirs of a comparison into results.json, report.md and the README results block.

Definitions (also printed in every report):
- seeds are paired: seed s of every recipe trains on the same data order (and from the same initial
  weights where the shapes agree), so each recipe is compared with the baseline seed by seed.
- target: the baseline's final val loss; per seed for the paired statistics, the seed mean for plots.
- speedup on an axis (tokens, FLOPs, wall-clock): for seed s, the baseline's seed-s budget over the cost at
  which the row's seed-s eval curve first reaches the baseline's seed-s final loss (linear between
  evaluations); summarised by the geometric mean over seeds with a 95 % t interval on the logs. A row
  any of whose seeds never reaches its target shows how many did and the mean remaining gap.
- delta: the row's final val loss minus the baseline's, paired by seed, with its 95 % t interval and the
  paired t-test's p (scipy); rows without paired seeds fall back to Welch's test.
- time/FLOP: the row's training seconds per FLOP over the baseline's (paired). When a row's wall-clock
  speedup differs from its FLOPs speedup by more than 5 % but this ratio's interval includes 1, the
  difference is machine noise and the wall-clock cell is marked with a dagger.
- tokens/param: training tokens per non-embedding parameter of the final model (the regime: >= 20).
- averaged-model rows (`<recipe> [<method>]`): the same numbers for an averaging method's `<method>/val_loss`
  curve, i.e. the averaged weights, next to the raw model's row of the same runs.
- stability: per recipe (seed mean) loss-spike events, max loss ratio, max grad norm, max Adam
  exp_avg_sq, non-finite/skipped steps and diverged runs (hasten.compare.stability).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from hasten.compare.metrics import (
    AXES,
    MAX_RESOLUTION,
    Curve,
    Estimate,
    mean_curve,
    mean_std,
    paired_difference,
    paired_resolutions,
    paired_speedups,
    ratio_estimate,
    welch_p,
)
from hasten.compare.metrics import curve_from_rows as curve_from_rows
from hasten.compare.stability import render_stability, stability_summary
from hasten.errors import ConfigError
from hasten.files import atomic_write_text
from hasten.methods.registry import plot_markers
from hasten.trainer.logger import read_metrics


def metric_row_name(recipe: str, metric: str) -> str:
    """The report row of a recipe's metric: `recipe` for its raw val loss, `recipe [method]` for a method's curve."""
    return recipe if metric == "val_loss" else f"{recipe} [{metric.split('/')[0]}]"


def quoted_row(rows: list[dict], recipe: str) -> dict | None:
    """The row a recipe is quoted by: the one marked `quoted` (the benchmark grid marks the metric each recipe was
    tuned on); unmarked, its averaged-weights row (`recipe [method]`, from a `method/val_loss` curve) when its runs
    logged exactly one, else its raw row; None when it has none of these."""
    own = [r for r in rows if r.get("recipe") == recipe]
    marked = [r for r in own if r.get("quoted")]
    averaged = [r for r in own if r.get("metric", "val_loss") != "val_loss"]
    if marked:
        return marked[0]
    if len(averaged) == 1:
        return averaged[0]
    return next((r for r in own if r["name"] == recipe), None)


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
CARD_BEGIN, CARD_END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"  # a method card's benchmark block
AXIS_LABEL = {"tokens": "tokens", "model_flops": "model FLOPs", "flops": "FLOPs", "train_time": "wall-clock"}
NOISE_BAND = 0.05  # wall-clock vs FLOPs speedups closer than this are not flagged


def _markers(rows: list[dict]) -> list[dict]:
    """The points of one run that the methods' specs mark (hasten.methods.registry.plot_markers), each with its line
    style."""
    train = [r for r in rows if r.get("kind") == "train" and isinstance(r.get("tokens"), (int, float))]
    out = [{**point, "style": marker.linestyle} for marker in plot_markers() for point in marker.find(rows)]
    # map token positions to FLOPs and seconds through the train rows (both grow monotonically with tokens)
    costs = {
        "model_flops": [r.get("flops", 0.0) for r in train],
        "train_time": [r.get("train_time", 0.0) for r in train],
        "flops": [r.get("flops", 0.0) + r.get("optimizer_flops", 0.0) for r in train],
    }
    for marker in out:
        for axis, ys in costs.items():
            marker[axis] = _interp(marker["tokens"], [r["tokens"] for r in train], ys)
    return out


def _interp(x: float, xs: list[float], ys: list[float]) -> float | None:
    if not xs:
        return None
    if x <= xs[0]:
        return float(ys[0])
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return float(y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return float(ys[-1])


def _curve_dict(c: Curve) -> dict:
    return {
        "step": c.step,
        "loss": c.loss,
        "tokens": c.tokens,
        "flops": c.flops,
        "model_flops": c.axis("model_flops"),
        "train_time": c.train_time,
        "optimizer_counted": c.optimizer_counted,
    }


def curve_from_dict(d: dict) -> Curve:
    return Curve(
        **{
            k: d[k]
            for k in ("step", "loss", "tokens", "flops", "train_time", "model_flops", "optimizer_counted")
            if k in d
        }
    )


def _run_info(run_dir: Path) -> dict:
    """summary.json of a finished run (params of the final model among them), or {}."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def build_results(
    opts,
    names: list[str],
    baseline: str,
    runs: dict[str, list],
    failed: dict[str, str],
    tuning: dict | None,
    max_resolution: float = MAX_RESOLUTION,
) -> dict:
    """results.json content from the run dirs; `runs` maps recipe -> [(RunSpec, run_dir)] in seed order. A speedup whose
    crossing lies between evaluations further apart than `max_resolution` of the baseline's budget is refused."""
    series: dict[str, dict] = {}  # row name -> {recipe, metric, curves, seeds, markers, params}
    order: list[str] = []
    for name in names:
        per_key: dict[str, list[tuple[int, Curve]]] = {}
        markers: list[dict] = []
        failed_seeds = []
        params: list[int] = []
        for spec, run_dir in runs[name]:
            if spec.name in failed:
                failed_seeds.append(spec.seed)
                continue
            rows = read_metrics(run_dir)
            keys = ["val_loss"] + sorted(
                {k for r in rows if r.get("kind") == "eval" for k in r if k.endswith("/val_loss")}
            )
            for key in keys:
                curve = curve_from_rows(rows, key)
                if curve.step:
                    per_key.setdefault(key, []).append((spec.seed, curve))
            if not markers:
                markers = _markers(rows)
            if isinstance(_run_info(run_dir).get("params_non_embedding"), int):
                params.append(_run_info(run_dir)["params_non_embedding"])
        for key in ["val_loss"] + sorted(k for k in per_key if k != "val_loss"):
            row = metric_row_name(name, key)
            seeded = per_key.get(key, [])
            series[row] = {
                "recipe": name,
                "metric": key,
                "curves": [c for _, c in seeded],
                "seeds": [s for s, _ in seeded],
                "failed_seeds": failed_seeds,
                "markers": markers,
                "params": params[0] if params else None,
            }
            order.append(row)
    base = series.get(baseline)
    if base is None or not base["curves"]:
        raise ConfigError(
            f"the baseline {baseline!r} has no finished run with a val loss; see {opts.report_dir / 'runs'}"
        )
    base_finals = [c.final for c in base["curves"]]
    target = sum(base_finals) / len(base_finals)
    base_cost = {axis: sum(c.end(axis) for c in base["curves"]) / len(base["curves"]) for axis in AXES}
    rows = [_row(row_name, series[row_name], base, baseline, series, max_resolution) for row_name in order]
    return {
        "format": "hasten-compare-2",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": opts.command,
        "tier": opts.tier,
        "budget_tokens": opts.budget,
        "seeds": opts.seeds,
        "jobs": opts.jobs,
        "threads_per_job": opts.threads_per_job(),
        "overrides": list(opts.overrides),
        "recipe_overrides": dict(opts.recipe_overrides),
        "machine": _machine(),
        "baseline": baseline,
        "max_resolution": max_resolution,
        "target_loss": target,
        "baseline_cost": base_cost,
        "tuning": tuning,
        "rows": rows,
        "curves": {
            name: {
                "seeds": series[name]["seeds"],
                "runs": [_curve_dict(c) for c in series[name]["curves"]],
                "mean": _curve_dict(mean_curve(series[name]["curves"])) if series[name]["curves"] else None,
                "markers": series[name]["markers"],
            }
            for name in order
        },
        "stability": stability_summary(names, runs, failed),
    }


def _row(name: str, s: dict, base: dict, baseline: str, series: dict, max_resolution: float) -> dict:
    curves: list[Curve] = s["curves"]
    row: dict = {
        "name": name,
        "recipe": s["recipe"],
        "metric": s["metric"],
        "seeds": s["seeds"],
        "failed_seeds": s["failed_seeds"],
        "is_baseline": name == baseline,
        "params_non_embedding": s["params"],
    }
    if not curves:
        row.update(
            final_losses=[], final_mean=None, final_std=None, speedup={}, reached={}, gap=None, delta=None, p=None
        )
        return row
    finals = [c.final for c in curves]
    mean, std = mean_std(finals)
    finite = all(math.isfinite(x) for x in finals)
    budget = {axis: sum(c.end(axis) for c in curves) / len(curves) for axis in AXES}
    row.update(
        final_losses=finals,
        final_mean=mean if finite else None,
        final_std=std if finite else None,
        budget=budget,
        tokens_per_param=budget["tokens"] / s["params"] if s["params"] else None,
    )
    base_by_seed = dict(zip(base["seeds"], base["curves"]))
    paired = all(seed in base_by_seed for seed in s["seeds"])
    if name == baseline:
        one = Estimate(1.0, 1.0, 1.0, None, len(curves)).to_dict()
        row.update(
            speedup=dict.fromkeys(AXES, one),
            reached=dict.fromkeys(AXES, len(curves)),
            gap=None,
            delta=None,
            p=None,
            paired=True,
            time_per_flop=None,
            wallclock_noise=False,
            resolution={},
            refused={},
        )
        return row
    if not finite:
        row.update(
            speedup={},
            reached={},
            gap=None,
            delta=None,
            p=None,
            paired=paired,
            time_per_flop=None,
            wallclock_noise=False,
        )
        return row
    if paired:
        base_curves = [base_by_seed[seed] for seed in s["seeds"]]
        delta = paired_difference(finals, [b.final for b in base_curves])
        row.update(delta=delta.to_dict(), p=delta.p, paired=True)
        speedups, reached, resolution, refused = {}, {}, {}, {}
        for axis in AXES:
            per_seed = paired_speedups(curves, base_curves, axis)
            widths = [w for w in paired_resolutions(curves, base_curves, axis) if w is not None]
            reached[axis] = sum(x is not None for x in per_seed)
            resolution[axis] = max(widths) if widths else None
            row.setdefault("per_seed_speedup", {})[axis] = per_seed
            speedups[axis] = None
            if reached[axis] < len(per_seed):
                continue
            if axis == "flops" and not all(
                c.optimizer_counted and b.optimizer_counted for c, b in zip(curves, base_curves)
            ):
                refused[axis] = "optimizer FLOPs not recorded"
            elif resolution[axis] is not None and resolution[axis] > max_resolution:
                refused[axis] = f"unresolved: evaluations {resolution[axis]:.1%} of the run apart"
            else:
                speedups[axis] = ratio_estimate(per_seed).to_dict()
        row.update(resolution=resolution, refused=refused)
        gaps = [c.final - b.final for c, b in zip(curves, base_curves)]
        per_flop = [
            (c.end("train_time") / c.end("flops")) / (b.end("train_time") / b.end("flops"))
            for c, b in zip(curves, base_curves)
            if c.end("flops") > 0 and b.end("flops") > 0 and b.end("train_time") > 0 and c.end("train_time") > 0
        ]
        time_per_flop = ratio_estimate(per_flop) if len(per_flop) == len(curves) else None
        row.update(
            speedup=speedups,
            reached=reached,
            gap=None if reached["tokens"] == len(curves) else sum(gaps) / len(gaps),
            time_per_flop=time_per_flop.to_dict() if time_per_flop else None,
            wallclock_noise=_wallclock_is_noise(speedups, time_per_flop),
        )
    else:  # seeds that the baseline does not have: unpaired, Welch's test on the finals, speedup on the seed-mean
        # curves
        base_finals = [c.final for c in base["curves"]]
        target = sum(base_finals) / len(base_finals)
        mean_c, base_mean = mean_curve(curves), mean_curve(base["curves"])
        flat_target = replace(base_mean, loss=[target] * len(base_mean.step))
        per_axis = {axis: paired_speedups([mean_c], [flat_target], axis)[0] for axis in AXES}
        widths = {axis: paired_resolutions([mean_c], [flat_target], axis)[0] for axis in AXES}
        refused = {
            axis: f"unresolved: evaluations {w:.1%} of the run apart"
            for axis, w in widths.items()
            if w is not None and w > max_resolution
        }
        if not (mean_c.optimizer_counted and base_mean.optimizer_counted) and per_axis["flops"] is not None:
            refused["flops"] = "optimizer FLOPs not recorded"
        per_axis = {axis: None if axis in refused else x for axis, x in per_axis.items()}
        row.update(
            delta={
                "value": mean - target,
                "low": None,
                "high": None,
                "p": welch_p(finals, base_finals),
                "n": len(finals),
            },
            p=welch_p(finals, base_finals),
            paired=False,
            time_per_flop=None,
            wallclock_noise=False,
            speedup={
                axis: (Estimate(x, n=len(curves)).to_dict() if x is not None else None) for axis, x in per_axis.items()
            },
            reached={axis: (len(curves) if x is not None else 0) for axis, x in per_axis.items()},
            gap=None if per_axis["tokens"] is not None or "tokens" in refused else mean - target,
            resolution=widths,
            refused=refused,
        )
    if s["metric"] != "val_loss" and s["recipe"] in series and series[s["recipe"]]["curves"]:
        raw = [c.final for c in series[s["recipe"]]["curves"]]
        row["raw_final_mean"] = sum(raw) / len(raw)
        row["vs_raw"] = mean - row["raw_final_mean"]  # < 0: the averaged weights beat the raw model
    return row


def _wallclock_is_noise(speedups: dict, time_per_flop: Estimate | None) -> bool:
    """Wall-clock and FLOPs speedups differ by more than NOISE_BAND although time per FLOP is not shown to differ."""
    wall, flops = speedups.get("train_time"), speedups.get("flops")
    if wall is None or flops is None or time_per_flop is None:
        return False
    shown = time_per_flop.low is not None and time_per_flop.excludes(1.0)  # one seed has no interval: nothing is shown
    return abs(wall["value"] / flops["value"] - 1.0) > NOISE_BAND and not shown


def _machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------- formatting


def fmt_estimate(est: dict | None, unit: str = "×", digits: int = 2) -> str:
    if est is None:
        return "—"
    text = f"{est['value']:.{digits}f}{unit}"
    if est.get("low") is not None and est["n"] > 1 and not (est["low"] == est["high"] == est["value"]):
        text += f" [{est['low']:.{digits}f}, {est['high']:.{digits}f}]"
    return text


def fmt_speedup(row: dict, axis: str) -> str:
    est = (row.get("speedup") or {}).get(axis)
    refused = (row.get("refused") or {}).get(axis)
    if est is None and refused:
        return refused
    if est is None:
        n, k = len(row.get("seeds") or []), (row.get("reached") or {}).get(axis, 0)
        gap = row.get("gap")
        return f"not reached ({k}/{n} seeds{f'; gap {gap:+.3f}' if isinstance(gap, float) else ''})" if n else "—"
    text = fmt_estimate(est)
    if axis == "train_time" and row.get("wallclock_noise"):
        text += " †"
    return text


def fmt_loss(row: dict) -> str:
    if row.get("final_mean") is None:
        return "diverged" if row.get("final_losses") else "failed"
    if len(row["final_losses"]) > 1:
        return f"{row['final_mean']:.4f} ± {row['final_std']:.4f}"
    return f"{row['final_mean']:.4f}"


def fmt_delta(row: dict) -> str:
    d = row.get("delta")
    if row.get("is_baseline"):
        return "—"
    if not d:
        return "n/a"
    text = f"{d['value']:+.4f}"
    if d.get("low") is not None and d["low"] != d["high"]:
        text += f" [{d['low']:+.4f}, {d['high']:+.4f}]"
    return text


def fmt_p(row: dict) -> str:
    p = row.get("p")
    if row.get("is_baseline"):
        return "—"
    return "n/a" if p is None else f"{p:.3g}"


def fmt_resolution(row: dict, axis: str = "flops") -> str:
    """The widest crossing bracket over the seeds, as a fraction of the row's run (— when nothing crossed)."""
    width = (row.get("resolution") or {}).get(axis)
    return "—" if width is None or row.get("is_baseline") else f"{width:.1%}"


def fmt_tokens_per_param(row: dict) -> str:
    x = row.get("tokens_per_param")
    return "—" if x is None else f"{x:.1f}"


def table(results: dict, compact: bool = False) -> str:
    if compact:
        lines = [
            "| recipe | final val loss | Δ vs baseline [95% CI] | speedup tokens | speedup total FLOPs | "
            "speedup wall-clock |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["rows"]:
            lines.append(
                f"| {row['name']} | {fmt_loss(row)} | {fmt_delta(row)} | {fmt_speedup(row, 'tokens')} | "
                f"{fmt_speedup(row, 'flops')} | {fmt_speedup(row, 'train_time')} |"
            )
        return "\n".join(lines)
    lines = [
        "| recipe | seeds | tokens/param | final val loss | Δ vs baseline [95% CI] | p (paired t) | "
        "speedup tokens [95% CI] | model FLOPs [95% CI] | total FLOPs [95% CI] | wall-clock [95% CI] | "
        "crossing resolution | time/FLOP vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        n = len(row["seeds"])
        seeds = f"{n}" + (f" ({len(row['failed_seeds'])} failed)" if row["failed_seeds"] else "")
        if not row.get("paired", True):
            seeds += " (unpaired)"
        cells = [
            row["name"] + (" (baseline)" if row["is_baseline"] and row["name"] != "baseline" else ""),
            seeds,
            fmt_tokens_per_param(row),
            fmt_loss(row),
            fmt_delta(row),
            fmt_p(row),
            *(fmt_speedup(row, axis) for axis in AXES),
            fmt_resolution(row),
            fmt_estimate(row.get("time_per_flop"), unit=""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    base = next(r for r in results["rows"] if r["is_baseline"])
    budget = (
        f"{results['budget_tokens']:,} training tokens per run"
        if results.get("budget_tokens")
        else "each recipe's own length"
    )
    out = [f"# hasten compare{': ' + results['tier'] + ' tier' if results.get('tier') else ''}", ""]
    if results.get("command"):
        out += [f"Command: `{results['command']}`", ""]
    m = results["machine"]
    threads = results.get("threads_per_job")
    out += [
        f"- Budget: {budget}; {results['seeds']} seed(s) per recipe, paired (seed s: same data order for every "
        f"recipe), run seed-major; {results['jobs']} job(s) at a time"
        + (f", {threads} thread(s) each." if threads else "."),
        f"- Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}{', ' + m['cuda'] if m.get('cuda') else ''}; "
        f"created {results['created']}.",
        f"- Baseline: `{results['baseline']}`; target = its final val loss, per seed "
        f"(mean {results['target_loss']:.4f} over {len(base['seeds'])} seed(s), "
        f"spread ± {base['final_std'] or 0:.4f}).",
    ]
    if results.get("overrides"):
        out.append(f"- Overrides for every recipe: `{' '.join(results['overrides'])}`")
    for name, extra in (results.get("recipe_overrides") or {}).items():
        out.append(f"- Overrides for `{name}`: `{' '.join(extra)}`")
    tuning = results.get("tuning")
    if tuning:
        out += [
            "",
            f"## Baseline LR sweep ({tuning['recipe']}, seed(s) {', '.join(map(str, tuning['seeds']))})",
            "",
            "| optim.lr | final val loss |",
            "|---|---|",
        ]
        for lr, loss in tuning["final_val_loss"].items():
            mark = " **best**" if tuning["best_lr"] is not None and float(lr) == tuning["best_lr"] else ""
            out.append(f"| {lr} | {'failed' if loss is None else f'{loss:.4f}'}{mark} |")
        out += [
            "",
            f"The baseline row uses the best LR, {tuning['best_lr']:g}. "
            "Other recipes keep the LRs of their own recipes.",
        ]
        if tuning["at_edge"]:
            out.append("**The best LR is at the edge of the grid: the baseline may be under-tuned; widen --tune-lrs.**")
    out += ["", "## Results", "", table(results), ""]
    averaged = [r for r in results["rows"] if "raw_final_mean" in r]
    if averaged:
        out += [
            "Averaged-weight rows (`recipe [method]`) evaluate the averaged model of the same runs; "
            "against their raw model:",
            "",
        ]
        for r in averaged:
            verdict = "better" if r["vs_raw"] < 0 else "worse"
            out.append(
                f"- {r['name']}: final {r['final_mean']:.4f} vs raw {r['raw_final_mean']:.4f} "
                f"({r['vs_raw']:+.4f}, {verdict})"
            )
        out.append("")
    out += [
        "How to read it: for each seed, the *target* is the baseline's final val loss of that seed; a row's *speedup* "
        "is the baseline's budget over the tokens / FLOPs / training seconds at which the row's curve of the same seed "
        "first reaches that target (linear between the two evaluations around the crossing); the table gives the "
        "geometric mean over seeds with a 95 % t interval, or how many seeds reached it and the mean remaining gap. "
        "*Crossing resolution* is the widest gap, over the seeds, between the two evaluations that bracket a crossing, "
        "as a fraction of the row's own run (on each axis alike: tokens, FLOPs or seconds, so slower steps do not "
        "make a crossing look coarser in seconds than it is in tokens); a speedup whose bracket is wider than "
        f'{results.get("max_resolution", MAX_RESOLUTION):.0%} is refused ("unresolved"), so interpolation never '
        "decides more than that share of the budget (evaluate more often, e.g. `--set train.eval_every_tokens=` 1/50 "
        "of the budget, to resolve one). *Δ* is the paired difference of final val losses with its 95 % interval and "
        "the paired t-test's p (scipy). *Model FLOPs* are 6 x (matmul parameters) + 12 x layers x d_model x seq_len "
        "per token, forward and backward (PaLM, Chowdhery et al. 2022, appendix B: attention at full context, the "
        "causal mask not credited), charged at each step's model size and sequence length; *total FLOPs* add every "
        "optimizer step's own work (hasten.optim.flops: Muon's Newton-Schulz matmuls, the elementwise updates of AdamW "
        "and Adam-mini). Wall-clock counts training steps only (no evaluation or checkpointing)"
        + (" and is inflated for every recipe alike by running several jobs at once." if results["jobs"] > 1 else ".")
        + " *time/FLOP* is the row's training seconds per total FLOP over the baseline's; † marks a wall-clock speedup "
        "that differs from the total-FLOPs speedup by more than 5 % while time/FLOP is not shown to differ from 1: "
        "that difference is machine noise.",
        "",
    ]
    for section in (
        results.get("sections") or []
    ):  # added by callers such as benchmarks/speedup.py (tuning tables, ladder)
        out += [section.rstrip(), ""]
    plots = results.get("plots") or {}
    for key in ("tokens", "flops", "train_time"):
        if key in plots:
            out.append(f"![val loss vs {AXIS_LABEL[key]}]({plots[key]})")
    out += ["", *render_stability(results.get("stability") or {}, plots.get("stability"))]
    return "\n".join(out).rstrip() + "\n"


def write_report(results: dict, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("results.json", json.dumps(results, indent=1, default=str)),
        ("report.md", render_report(results)),
    ):
        atomic_write_text(report_dir / name, text)


def readme_block(results: dict, report_path: str) -> str:
    tier = results.get("tier") or "custom"
    budget = f"{results['budget_tokens']:,} tokens" if results.get("budget_tokens") else "recipe lengths"
    tuned = ""
    if results.get("tuning"):
        tuned = (
            f", AdamW LR tuned over {', '.join(f'{x:g}' for x in results['tuning']['grid'])} "
            f"(best {results['tuning']['best_lr']:g})"
        )
    lines = [
        f"Tier **{tier}** ({budget} per run, {results['seeds']} paired seed(s), baseline `{results['baseline']}`"
        f"{tuned}; target val loss {results['target_loss']:.4f}; {results['created']}). Produced by:",
        "",
        "```bash",
        results.get("command") or "hasten compare ...",
        "```",
        "",
        table(results, compact=True),
        "",
        f"Full report with costs to target and plots: [{report_path}]({report_path}).",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Rewrite the block between the markers `begin` and `end` of a markdown file (the README's results block by
    default, a method card's benchmark block) with `block`; nothing else is touched, atomically."""
    text = readme.read_text()
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise ConfigError(
            f"{readme} has no '{begin}' ... '{end}' block to rewrite; add the two markers where the table goes"
        )
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{begin}\n{block}\n{end}{tail}")
