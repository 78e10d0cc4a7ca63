"""Comparison plots: val loss against tokens, FLOPs and wall-clock, one line per row (seed mean) with a min-max band.

The points the methods' specs mark (hasten.methods.registry.plot_markers) are vertical lines on
each row's curve in its colour, in the marker's line style (named in the title). The baseline's target
loss is a horizontal grey line, so where each curve crosses it is the cost the report tabulates.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hasten.compare.report import AXIS_LABEL, quoted_row  # noqa: E402
from hasten.methods.registry import plot_markers  # noqa: E402

FILES = {"tokens": "loss_vs_tokens.png", "flops": "loss_vs_flops.png", "train_time": "loss_vs_time.png"}
XLABEL = {
    "tokens": "training tokens",
    "flops": "training FLOPs (model + optimizer)",
    "train_time": "training wall-clock (s)",
}


def plot_comparison(results: dict, report_dir: Path) -> dict[str, Path]:
    """Write the three plots (and stability.png when runs logged stability rows) into report_dir; returns
    {axis | "stability": path}."""
    paths = {}
    curves = results["curves"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, filename in FILES.items():
        fig, ax = plt.subplots(figsize=(9, 5))
        for i, (name, data) in enumerate(curves.items()):
            if not data["mean"] or not data["mean"]["step"]:
                continue
            color = colors[i % len(colors)]
            averaged = "[" in name
            mean = data["mean"]
            label = f"{name} (n={len(data['runs'])})"
            ax.plot(
                mean[axis],
                mean["loss"],
                color=color,
                lw=1.6,
                ls="-." if averaged else "-",
                marker="o",
                ms=2.5,
                label=label,
            )
            if len(data["runs"]) > 1:
                lo, hi = _band(data["runs"], mean["step"])
                ax.fill_between(mean[axis], lo, hi, color=color, alpha=0.15, lw=0)
            if averaged:
                continue  # the raw row of the same runs already carries the markers
            for marker in data.get("markers", []):
                x = marker.get(axis)
                if x is None:
                    continue
                ax.axvline(x, color=color, lw=1, alpha=0.7, ls=marker.get("style", ":"))
        target = results.get("target_loss")
        if target is not None:
            ax.axhline(
                target, color="grey", lw=1, alpha=0.8, label=f"target {target:.3f} ({results['baseline']} final)"
            )
        _zoom(ax, curves, target)
        ax.set_xlabel(XLABEL[axis])
        ax.set_ylabel("val loss (nats/token)")
        title = f"val loss vs {AXIS_LABEL[axis]}" + (f" ({results['tier']} tier)" if results.get("tier") else "")
        ax.set_title(title + f"  [{', '.join(f'{m.linestyle} {m.label}' for m in plot_markers())}]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = report_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[axis] = path
    stability = plot_stability(results.get("stability") or {}, report_dir, list(curves), results.get("tier"))
    if stability is not None:
        paths["stability"] = stability
    return paths


def plot_stability(
    stability: dict, report_dir: Path, order: list[str] | None = None, tier: str | None = None
) -> Path | None:
    """stability.png: loss ratio (top) and Adam's max exp_avg_sq (bottom, log scale) vs training tokens.

    One bold line per recipe (the seed mean at common logged steps), each seed faintly behind it
    when there are several; an x marks where a diverged run stopped. Colours follow `order` (the
    loss plots' row order) so a recipe has the same colour in every plot.
    """
    if not any(s.get("runs") for s in stability.values()):
        return None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = order or list(stability)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name, s in stability.items():
        color = colors[(order.index(name) if name in order else len(order)) % len(colors)]
        for ax, key in ((top, "loss_ratio"), (bottom, "exp_avg_sq_max")):
            runs = s["runs"]
            if len(runs) > 1:
                for run in runs:
                    xs, ys = _points(run["series"], key)
                    ax.plot(xs, ys, color=color, lw=0.8, alpha=0.3)
            xs, ys = _points(s["mean_series"] if len(runs) > 1 else runs[0]["series"], key)
            label = f"{name} (n={len(runs)}" + (f", {s['diverged']} diverged)" if s["diverged"] else ")")
            ax.plot(xs, ys, color=color, lw=1.6, label=label if ax is top else None)
            for run in runs:
                rx, ry = _points(run["series"], key)
                if run["diverged"] and rx:
                    ax.plot(rx[-1], ry[-1], "x", color=color, ms=8, mew=2)
    top.axhline(1.5, color="grey", lw=1, ls="--", alpha=0.8, label="spike threshold 1.5")
    top.set_ylabel("loss ratio (loss / min so far)")
    top.set_title("training stability" + (f" ({tier} tier)" if tier else "") + "  [x: diverged run stopped]")
    top.legend(fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("max |exp_avg_sq| (Adam)")
    bottom.set_xlabel("training tokens")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = report_dir / "stability.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _points(series: dict, key: str) -> tuple[list[float], list[float]]:
    """(tokens, value) pairs of a stability series where the value was logged and finite."""
    pairs = [(x, y) for x, y in zip(series["tokens"], series[key]) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _band(runs: list[dict], steps: list[int]) -> tuple[list[float], list[float]]:
    """Min and max over seeds at each common eval step."""
    lo, hi = [], []
    for step in steps:
        values = [r["loss"][r["step"].index(step)] for r in runs if step in r["step"]]
        lo.append(min(values))
        hi.append(max(values))
    return lo, hi


def _zoom(ax, curves: dict, target: float | None) -> None:
    """Skip the first evaluation (the untrained model's ~log(vocab) loss) when choosing the y range."""
    later = [
        x for d in curves.values() for run in d["runs"] for x in run["loss"][1:] if x == x and abs(x) != float("inf")
    ]
    if not later:
        return
    top, bottom = max(later), min(later + ([target] if target is not None else []))
    pad = 0.05 * max(1e-3, top - bottom)
    ax.set_ylim(bottom - pad, top + pad)


def plot_ladder(ladder: dict[str, dict], names: list[str], path: Path) -> Path:
    """Each row's total-FLOPs speedup (95 % CI) against model size, one results dict per size; names[0] is the
    baseline."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    order = sorted(ladder, key=lambda p: ladder[p]["regime"]["non_embedding_params"])
    for name in names[1:]:
        xs, ys, lo, hi = [], [], [], []
        for preset in order:
            row = quoted_row(ladder[preset]["rows"], name)
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
    ax.set_ylabel("total-FLOPs speedup to the baseline's loss")
    ax.set_title("speedup vs model size (geometric mean over seeds, 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
