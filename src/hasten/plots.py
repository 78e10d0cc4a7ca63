"""Plots of a run: train and val loss against tokens, with the points the methods' specs mark (e.g. a new shape)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hasten.methods.registry import plot_markers  # noqa: E402
from hasten.trainer.logger import read_metrics  # noqa: E402


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out) if out else run_dir / "loss.png"
    train = [r for r in rows if r["kind"] == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.6, label="train loss")
    eval_keys = sorted({k for r in evals for k in r if k.endswith("val_loss")})
    for key in eval_keys:
        pts = [(r["tokens"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=key.replace("_", " "))
    for marker in plot_markers():
        for i, point in enumerate(marker.find(rows)):
            ax.axvline(point["tokens"], color="grey", ls=marker.linestyle, lw=1, label=marker.label if i == 0 else None)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
