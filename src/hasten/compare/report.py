"""Turn the run dirs of a comparison into results.json, report.md and the README results block.

Definitions (also printed in every report):
- target: the baseline's final val loss, averaged over its seeds.
- cost to target: on the seed-mean eval curve of a row, the first tokens / FLOPs / train seconds at
  which val loss <= target, linear between evaluations. The baseline's cost is its whole budget.
- speedup: baseline cost / row cost (> 1 is faster); "not reached" rows give the remaining gap.
- p: Welch's t-test of the row's final val losses against the baseline's (two-sided).
- averaged-model rows (`<recipe> [lawa]`): the same numbers for the `lawa/val_loss` curve, i.e. the
  averaged weights, next to the raw model's row of the same runs.
- stability: per recipe (seed mean) loss-spike events, max loss ratio, max grad norm, max Adam
  exp_avg_sq, non-finite/skipped steps and diverged runs (hasten.compare.stability).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

from hasten.compare.metrics import AXES, Curve, cost_to_target, curve_from_rows, mean_curve, mean_std, speedup, welch_t_test
from hasten.compare.stability import render_stability, stability_summary
from hasten.errors import ConfigError
from hasten.trainer.logger import read_metrics

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
AXIS_LABEL = {"tokens": "tokens", "flops": "FLOPs", "train_time": "wall-clock"}


def _markers(rows: list[dict]) -> list[dict]:
    """Stage changes of one run: growth (state_replaced events) and the step where seq_len first reaches its final value."""
    train = [r for r in rows if r.get("kind") == "train" and isinstance(r.get("tokens"), (int, float))]
    out = [{"kind": "growth", "tokens": float(r["tokens"])} for r in rows
           if r.get("kind") == "event" and r.get("event") == "state_replaced" and r.get("reason") != "rollback" and isinstance(r.get("tokens"), (int, float))]
    lens = [(r["tokens"], r["seq_len"]) for r in train if isinstance(r.get("seq_len"), (int, float))]
    if lens and len({length for _, length in lens}) > 1:
        full = lens[-1][1]
        i = len(lens) - 1
        while i > 0 and lens[i - 1][1] == full:  # earliest logged step from which the length stays at its final value
            i -= 1
        out.append({"kind": "seq_len_full", "tokens": float(lens[i][0]), "seq_len": int(full), "from": int(lens[0][1])})
    # map token positions to FLOPs and seconds through the train rows (both grow monotonically with tokens)
    for marker in out:
        for axis in ("flops", "train_time"):
            marker[axis] = _interp(marker["tokens"], [r["tokens"] for r in train], [r.get(axis, 0.0) for r in train])
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
    return {"step": c.step, "loss": c.loss, "tokens": c.tokens, "flops": c.flops, "train_time": c.train_time}


def curve_from_dict(d: dict) -> Curve:
    return Curve(**{k: d[k] for k in ("step", "loss", "tokens", "flops", "train_time")})


def build_results(opts, names: list[str], baseline: str, runs: dict[str, list], failed: dict[str, str], tuning: dict | None) -> dict:
    """results.json content from the run dirs; `runs` maps recipe -> [(RunSpec, run_dir)] in seed order."""
    series: dict[str, dict] = {}  # row name -> {recipe, metric, curves, seeds, markers}
    order: list[str] = []
    for name in names:
        per_key: dict[str, list[tuple[int, Curve]]] = {}
        markers: list[dict] = []
        failed_seeds = []
        for spec, run_dir in runs[name]:
            if spec.name in failed:
                failed_seeds.append(spec.seed)
                continue
            rows = read_metrics(run_dir)
            keys = ["val_loss"] + sorted({k for r in rows if r.get("kind") == "eval" for k in r if k.endswith("/val_loss")})
            for key in keys:
                curve = curve_from_rows(rows, key)
                if curve.step:
                    per_key.setdefault(key, []).append((spec.seed, curve))
            if not markers:
                markers = _markers(rows)
        for key in ["val_loss"] + sorted(k for k in per_key if k != "val_loss"):
            row = name if key == "val_loss" else f"{name} [{key.split('/')[0]}]"
            seeded = per_key.get(key, [])
            series[row] = {"recipe": name, "metric": key, "curves": [c for _, c in seeded], "seeds": [s for s, _ in seeded],
                           "failed_seeds": failed_seeds, "markers": markers}
            order.append(row)
    base = series.get(baseline)
    if base is None or not base["curves"]:
        raise ConfigError(f"the baseline {baseline!r} has no finished run with a val loss; see {opts.report_dir / 'runs'}")
    base_finals = [c.final for c in base["curves"]]
    target = sum(base_finals) / len(base_finals)
    base_cost = {axis: sum(c.end(axis) for c in base["curves"]) / len(base["curves"]) for axis in AXES}

    rows = []
    for row_name in order:
        s = series[row_name]
        rows.append(_row(row_name, s, baseline, base_finals, target, base_cost, series))
    return {
        "format": "hasten-compare-1",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": opts.command,
        "tier": opts.tier,
        "budget_tokens": opts.budget,
        "seeds": opts.seeds,
        "jobs": opts.jobs,
        "overrides": list(opts.overrides),
        "recipe_overrides": dict(opts.recipe_overrides),
        "machine": _machine(),
        "baseline": baseline,
        "target_loss": target,
        "baseline_cost": base_cost,
        "tuning": tuning,
        "rows": rows,
        "curves": {name: {"seeds": series[name]["seeds"], "runs": [_curve_dict(c) for c in series[name]["curves"]],
                          "mean": _curve_dict(mean_curve(series[name]["curves"])) if series[name]["curves"] else None,
                          "markers": series[name]["markers"]} for name in order},
        "stability": stability_summary(names, runs, failed),
    }


def _row(name: str, s: dict, baseline: str, base_finals: list[float], target: float, base_cost: dict, series: dict) -> dict:
    curves: list[Curve] = s["curves"]
    row: dict = {"name": name, "recipe": s["recipe"], "metric": s["metric"], "seeds": s["seeds"], "failed_seeds": s["failed_seeds"],
                 "is_baseline": name == baseline}
    if not curves:
        row.update(final_losses=[], final_mean=None, final_std=None, cost={}, speedup={}, reached_seeds=0, gap=None,
                   welch={"t": None, "df": None, "p": None, "method": "n/a (no finished run)"})
        return row
    finals = [c.final for c in curves]
    mean, std = mean_std(finals)
    finite = all(math.isfinite(x) for x in finals)
    mean_c = mean_curve(curves)
    if name == baseline:
        cost = dict(base_cost)
    else:
        cost = {axis: cost_to_target(mean_c, target, axis) for axis in AXES}
    row.update(
        final_losses=finals,
        final_mean=mean if finite else None,
        final_std=std if finite else None,
        budget={axis: sum(c.end(axis) for c in curves) / len(curves) for axis in AXES},
        cost=cost,
        speedup={axis: (1.0 if name == baseline else speedup(base_cost[axis], cost[axis])) for axis in AXES},
        reached_seeds=sum(cost_to_target(c, target, "tokens") is not None for c in curves) if name != baseline else len(curves),
        gap=None if cost["tokens"] is not None else (mean_c.final - target),
    )
    if name == baseline:
        row["welch"] = {"t": None, "df": None, "p": None, "method": "baseline"}
    else:
        w = welch_t_test(finals, base_finals) if finite else None
        row["welch"] = {"t": w.t, "df": w.df, "p": w.p, "method": w.method} if w else {"t": None, "df": None, "p": None, "method": "n/a (diverged)"}
    if s["metric"] != "val_loss" and s["recipe"] in series and series[s["recipe"]]["curves"]:
        raw = [c.final for c in series[s["recipe"]]["curves"]]
        row["raw_final_mean"] = sum(raw) / len(raw)
        row["vs_raw"] = mean - row["raw_final_mean"]  # < 0: the averaged weights beat the raw model
    return row


def _machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# --------------------------------------------------------------------------- formatting


def fmt_cost(axis: str, value: float | None, gap: float | None = None) -> str:
    if value is None:
        return f"not reached (+{gap:.3f})" if isinstance(gap, float) else "not reached"
    if axis == "tokens":
        return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,.0f}"
    if axis == "flops":
        return f"{value:.3g}"
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def fmt_speedup(row: dict, axis: str, with_gap: bool = True) -> str:
    x = row.get("speedup", {}).get(axis)
    if x is None:
        gap = row.get("gap")
        return f"not reached (+{gap:.3f})" if with_gap and isinstance(gap, float) else "—"
    return f"{x:.2f}×"


def fmt_loss(row: dict) -> str:
    if row.get("final_mean") is None:
        return "diverged" if row.get("final_losses") else "failed"
    if len(row["final_losses"]) > 1:
        return f"{row['final_mean']:.4f} ± {row['final_std']:.4f}"
    return f"{row['final_mean']:.4f}"


def fmt_p(row: dict) -> str:
    w = row.get("welch") or {}
    if w.get("method") == "baseline":
        return "—"
    if w.get("p") is None:
        return "n/a"
    return f"{w['p']:.3g}"


def table(results: dict, compact: bool = False) -> str:
    if compact:
        lines = ["| recipe | final val loss | speedup (tokens) | speedup (FLOPs) | speedup (wall-clock) | p vs baseline |",
                 "|---|---|---|---|---|---|"]
        for row in results["rows"]:
            lines.append(f"| {row['name']} | {fmt_loss(row)} | {fmt_speedup(row, 'tokens')} | {fmt_speedup(row, 'flops')} | "
                         f"{fmt_speedup(row, 'train_time')} | {fmt_p(row)} |")
        return "\n".join(lines)
    lines = ["| recipe | seeds | final val loss | tokens to target | speedup | FLOPs to target | speedup | train time to target | speedup | p (Welch) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        n = len(row["seeds"])
        seeds = f"{n}" + (f" ({len(row['failed_seeds'])} failed)" if row["failed_seeds"] else "")
        if row.get("cost") and row["cost"].get("tokens") is None and n > 1:
            seeds += f", {row['reached_seeds']} reached"
        cells = [row["name"] + (" (baseline)" if row["is_baseline"] and row["name"] != "baseline" else ""), seeds, fmt_loss(row)]
        for axis in AXES:
            cells += [fmt_cost(axis, (row.get("cost") or {}).get(axis), row.get("gap")), fmt_speedup(row, axis, with_gap=False)]
        cells.append(fmt_p(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    base = next(r for r in results["rows"] if r["is_baseline"])
    budget = f"{results['budget_tokens']:,} training tokens per run" if results.get("budget_tokens") else "each recipe's own length"
    out = [f"# hasten compare{': ' + results['tier'] + ' tier' if results.get('tier') else ''}", ""]
    if results.get("command"):
        out += [f"Command: `{results['command']}`", ""]
    m = results["machine"]
    out += [
        f"- Budget: {budget}; {results['seeds']} seed(s) per recipe, run seed-major (recipes interleaved); {results['jobs']} job(s) at a time.",
        f"- Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}{', ' + m['cuda'] if m.get('cuda') else ''}; created {results['created']}.",
        f"- Baseline: `{results['baseline']}`; target = its final val loss {results['target_loss']:.4f} (mean of {len(base['seeds'])} seed(s)).",
    ]
    if results.get("overrides"):
        out.append(f"- Overrides for every recipe: `{' '.join(results['overrides'])}`")
    for name, extra in (results.get("recipe_overrides") or {}).items():
        out.append(f"- Overrides for `{name}`: `{' '.join(extra)}`")
    tuning = results.get("tuning")
    if tuning:
        out += ["", f"## Baseline LR sweep ({tuning['recipe']}, seed(s) {', '.join(map(str, tuning['seeds']))})", "",
                "| optim.lr | final val loss |", "|---|---|"]
        for lr, loss in tuning["final_val_loss"].items():
            mark = " **best**" if tuning["best_lr"] is not None and float(lr) == tuning["best_lr"] else ""
            out.append(f"| {lr} | {'failed' if loss is None else f'{loss:.4f}'}{mark} |")
        out += ["", f"The baseline row uses the best LR, {tuning['best_lr']:g}. Other recipes keep the LRs of their own recipes."]
        if tuning["at_edge"]:
            out.append("**The best LR is at the edge of the grid: the baseline may be under-tuned; widen --tune-lrs.**")
    out += ["", "## Results", "", table(results), ""]
    averaged = [r for r in results["rows"] if "raw_final_mean" in r]
    if averaged:
        out += ["Averaged-weight rows (`recipe [method]`) evaluate the averaged model of the same runs; against their raw model:", ""]
        for r in averaged:
            verdict = "better" if r["vs_raw"] < 0 else "worse"
            out.append(f"- {r['name']}: final {r['final_mean']:.4f} vs raw {r['raw_final_mean']:.4f} ({r['vs_raw']:+.4f}, {verdict})")
        out.append("")
    out += [
        "How to read it: *target* is the baseline's final val loss; *X to target* is where a row's seed-mean val-loss "
        "curve first reaches it (linear between evaluations); *speedup* is the baseline's cost over the row's (> 1 = faster); "
        "rows that never reach it show the remaining gap in val loss. *p* is Welch's two-sided t-test of final val losses "
        "against the baseline (n/a with one seed). FLOPs are charged at each step's model size and sequence length; "
        "wall-clock counts training steps only (no evaluation or checkpointing)"
        + (" and is inflated for every recipe alike by running several jobs at once." if results["jobs"] > 1 else "."),
        "",
    ]
    plots = results.get("plots") or {}
    for key in ("tokens", "flops", "train_time"):
        if key in plots:
            out.append(f"![val loss vs {AXIS_LABEL[key]}]({plots[key]})")
    out += ["", *render_stability(results.get("stability") or {}, plots.get("stability"))]
    return "\n".join(out).rstrip() + "\n"


def write_report(results: dict, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1, default=str)), ("report.md", render_report(results))):
        tmp = report_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(report_dir / name)


def readme_block(results: dict, report_path: str) -> str:
    tier = results.get("tier") or "custom"
    budget = f"{results['budget_tokens']:,} tokens" if results.get("budget_tokens") else "recipe lengths"
    tuned = ""
    if results.get("tuning"):
        tuned = f", AdamW LR tuned over {', '.join(f'{x:g}' for x in results['tuning']['grid'])} (best {results['tuning']['best_lr']:g})"
    lines = [
        f"Tier **{tier}** ({budget} per run, {results['seeds']} seed(s), baseline `{results['baseline']}`{tuned}; "
        f"target val loss {results['target_loss']:.4f}; {results['created']}). Produced by:",
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


def update_readme(readme: Path, results: dict, report_path: str) -> None:
    """Rewrite the block between the results markers of README.md (nothing else is touched)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ConfigError(f"{readme} has no '{BEGIN}' ... '{END}' block to rewrite; add the two markers where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{readme_block(results, report_path)}\n{END}{tail}"
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(readme)
