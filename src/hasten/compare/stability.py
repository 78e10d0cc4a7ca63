"""Training-stability numbers of a comparison, per recipe (the SLW paper's diagnostics, arXiv 2108.06084 §4).

Every run logs them already (hasten.trainer.monitor.StabilityMonitor, the guard, the trainer):

- loss-spike events: distinct excursions of loss / min-loss-so-far above the tracker's threshold
  (`loss_spike_events`, cumulative, so exact whatever train.log_every is);
- max loss ratio, max pre-clip grad norm and max of Adam's `exp_avg_sq` (the paper's proxy for
  extreme gradient variance): maxima over the *logged* train rows, so set train.log_every=1 to see
  every step;
- non-finite losses reaching the tracker (guard off) and steps the guard skipped as non-finite;
- guard rollbacks, and whether the run diverged (the runner recorded it as failed).

A diverged run is the point of a stability experiment, so failed runs are read too (unlike the
loss curves, which only use finished runs). Recipe values are means over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

from hasten.trainer.logger import read_metrics

# per-run numbers averaged into the recipe summary, with their table headers
FIELDS = {
    "spike_events": "loss-spike events",
    "max_loss_ratio": "max loss ratio",
    "max_grad_norm": "max grad norm (pre-clip)",
    "max_exp_avg_sq": "max exp_avg_sq",
    "nonfinite_losses": "non-finite losses",
    "skipped_steps": "skipped steps",
}
SERIES = {"loss_ratio": "loss_ratio", "exp_avg_sq_max": "adam/exp_avg_sq/max", "grad_norm": "grad_norm"}


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _max(values) -> float | None:
    finite = _finite(values)
    return max(finite) if finite else None


def run_stability(rows: list[dict], diverged: bool = False) -> dict:
    """Stability numbers of one run from its metrics.jsonl rows.

    Maxima use every train row (a spike that a guard rollback later undid still happened); the
    plotted series keep the last row per step, so a resumed run's replayed steps count once.
    """
    train = [r for r in rows if r.get("kind") == "train"]
    events = [r for r in rows if r.get("kind") == "event"]
    by_step: dict[int, dict] = {}
    for r in train:
        by_step[int(r["step"])] = r
    series: dict[str, list] = {"step": [], "tokens": [], **{k: [] for k in SERIES}}
    for step in sorted(by_step):
        r = by_step[step]
        series["step"].append(step)
        series["tokens"].append(float(r.get("tokens", 0)))
        for name, key in SERIES.items():
            v = r.get(key)
            series[name].append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
    skipped = _max(e.get("skipped_total") for e in events if e.get("event") == "skipped_nonfinite")
    rollbacks = _max(e.get("rollbacks") for e in events if e.get("event") == "rollback")
    return {
        "diverged": bool(diverged),
        "train_rows": len(by_step),
        "last_step": max(by_step) if by_step else 0,
        "spike_events": _max(r.get("loss_spike_events") for r in train),
        "spike_steps": _max(r.get("loss_spike_steps") for r in train),
        "max_loss_ratio": _max(r.get("loss_ratio") for r in train),
        "max_grad_norm": _max(r.get("grad_norm") for r in train),
        "max_exp_avg_sq": _max(r.get("adam/exp_avg_sq/max") for r in train),
        "nonfinite_losses": _max(r.get("nonfinite_losses") for r in train) or 0.0,
        "skipped_steps": skipped or 0.0,
        "rollbacks": rollbacks or 0.0,
        "series": series,
    }


def _mean_series(runs: list[dict]) -> dict[str, list]:
    """Seed mean at the logged steps every run has (None where any run lacks a finite value)."""
    common = sorted(set.intersection(*(set(r["series"]["step"]) for r in runs))) if runs else []
    index = [{s: i for i, s in enumerate(r["series"]["step"])} for r in runs]
    out: dict[str, list] = {"step": common}
    for key in ("tokens", *SERIES):
        col = []
        for s in common:
            vals = [r["series"][key][ix[s]] for r, ix in zip(runs, index)]
            col.append(None if any(v is None for v in vals) else sum(vals) / len(vals))
        out[key] = col
    return out


def stability_summary(names: list[str], runs: dict[str, list], failed: dict[str, str]) -> dict[str, dict]:
    """{recipe: {seeds, diverged, mean: {field: seed mean or None}, runs: [per-run numbers], mean_series}}.

    `runs` maps recipe -> [(RunSpec, run_dir)] as in build_results; `failed` holds the run names
    the runner reported as failed (diverged or crashed). Runs that never logged a step are left out.
    """
    out: dict[str, dict] = {}
    for name in names:
        per_run = []
        for spec, run_dir in runs.get(name, []):
            rows = read_metrics(Path(run_dir))
            if not any(r.get("kind") == "train" for r in rows):
                continue
            per_run.append({"seed": spec.seed, **run_stability(rows, diverged=spec.name in failed)})
        mean = {}
        for key in FIELDS:
            vals = _finite(r[key] for r in per_run)
            mean[key] = sum(vals) / len(vals) if vals else None
        out[name] = {
            "seeds": [r["seed"] for r in per_run],
            "diverged": sum(r["diverged"] for r in per_run),
            "rollbacks": sum(r["rollbacks"] for r in per_run),
            "mean": mean,
            "runs": per_run,
            "mean_series": _mean_series(per_run),
        }
    return out


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind in ("spike_events", "nonfinite_losses", "skipped_steps"):
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    if kind == "max_loss_ratio":
        return f"{value:.3f}"
    return f"{value:.3g}"


def stability_table(stability: dict[str, dict]) -> str:
    """Markdown table: one row per recipe, seed means."""
    head = ["recipe", "seeds", "diverged", *FIELDS.values(), "rollbacks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in stability.items():
        n = len(s["seeds"])
        cells = [
            name,
            str(n),
            f"{s['diverged']}/{n}",
            *(_fmt(s["mean"][k], k) for k in FIELDS),
            f"{s['rollbacks']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_stability(stability: dict[str, dict], plot: str | None = None) -> list[str]:
    """The report.md section (a list of lines)."""
    if not stability or not any(s["seeds"] for s in stability.values()):
        return []
    rows = [r for s in stability.values() for r in s["runs"]]
    sparse = any(r["train_rows"] < r["last_step"] for r in rows)
    out = [
        "## Stability",
        "",
        stability_table(stability),
        "",
        "Seed means. *Loss-spike events* count entries of the loss ratio (train loss / lowest train loss so far) above "
        "the spike threshold (1.5; the paper's value is unconfirmed); *max exp_avg_sq* is the largest element of "
        "Adam's second moment, the SLW paper's proxy for extreme gradient variance; *skipped steps* are non-finite "
        "steps the guard discarded; *diverged* runs stopped early (they are left out of the loss table above, not out "
        "of this one)."
        + (" Maxima are over logged train rows only (train.log_every > 1); spike counts are exact." if sparse else ""),
        "",
    ]
    if plot:
        out.append(f"![loss ratio and max exp_avg_sq vs tokens]({plot})")
        out.append("")
    return out
