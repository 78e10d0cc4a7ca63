"""Throughput: the hasten trainer against a bare nanoGPT-style loop, what each method costs per step, and
Adam-mini's optimizer step against torch's foreach AdamW.

    python benchmarks/throughput.py                  # cpu-small and cpu-medium, 3 interleaved repeats
                                                     # (~20 min on 2 cores)
    python benchmarks/throughput.py --repeats 5      # tighter medians
    python benchmarks/throughput.py --quick          # SMOKE CHECK: tiny model, few steps; says so in its record

For each model, every measurement is one short run in this process at equal threads, and the runs are
interleaved: each repeat runs every variant once, in an order rotated by one per repeat, so a slow phase
of a shared machine hits all variants alike. Ratios are formed within a repeat (paired) and reported as
the median over repeats with their range (min-max).

- Trainer vs bare loop (float32 and bfloat16 autocast): `hasten.trainer` built from a config against a
  bare loop on the same model, shapes and token file (random windows, forward, backward, clip, foreach
  AdamW step, `loss.item()` once per log interval as nanoGPT does). Both are timed over the same steps
  after a warmup, data loading included; the trainer's time is its own `train_time` between two log
  steps (its sync points), so its per-step guard, stability signals and log-step reads are included.
- Per-method overhead (float32, equal shapes): the trainer's step time with one method or optimizer on,
  relative to all off. Sequence length warmup and growth change the shapes on purpose (that is their
  speedup), so SLW is measured after its warmup (its per-step bookkeeping only) and growth is left out
  (`hasten compare` and benchmarks/gpu_check.py measure it end to end). "guard off" shows what the
  default non-finite guard costs.
- Adam-mini vs AdamW: `optimizer.step()` alone on the model's parameters with fixed random gradients.
- MFU: training FLOPs (hasten.model.flops_per_token) per second over each dtype's dense-matmul peak,
  measured here at the start and at the end of the run (large matmuls, several repeats, the best kept:
  a loaded moment can only lower a peak, so the higher one is used). An MFU above 100 % would mean the
  peak measurement failed; it is shown as "n/a" then. A dtype without native support on this CPU is
  named on one line.

Writes benchmarks/results/throughput.md and throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hasten.methods.registry import step_costs
from hasten.metrics.peak import matmul_peak

ROOT = Path(__file__).resolve().parent.parent
GRID_DIR = ROOT / "benchmarks" / "results" / "standard"  # a long benchmark grid may share the machine
# every method at its steady per-step cost (its spec's step_cost), and the trainer's guard off
METHODS: dict[str, list[str]] = {**step_costs(), "guard off": ["train.guard.skip_nonfinite=false"]}
# per model: batch size and sequence length (one step of a few hundred ms to a few s on 2 cores)
SHAPES = {"cpu-small": (16, 256), "cpu-medium": (8, 256), "tiny": (8, 64)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- the machine


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_support(dtype: str, flags: set[str]) -> str | None:
    """None if this CPU computes `dtype` natively, else why not (one line)."""
    if dtype == "bfloat16" and not flags & {"avx512_bf16", "amx_bf16", "bf16"}:  # x86 AVX512-BF16 / AMX, Arm BF16
        return "bfloat16 has no native support on this CPU (no avx512_bf16, amx_bf16 or bf16 flag): torch emulates it"
    return None


def machine_state() -> dict:
    running = sorted(p.name for p in (GRID_DIR / ".running").iterdir()) if (GRID_DIR / ".running").is_dir() else []
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "grid_paused": (GRID_DIR / "PAUSE").exists(),
        "grid_runs_in_flight": running,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --------------------------------------------------------------------------- one measurement each


def base_overrides(
    model: str, batch: int, seq_len: int, dtype: str, cache: str | None, vocab: int, max_docs: int | None
) -> list[str]:
    return [
        f"model={model}",
        f"train.batch_size={batch}",
        f"train.seq_len={seq_len}",
        f"train.dtype={dtype}",
        "train.device=cpu",
        "train.eval_every=1000000",
        "train.eval_sequences=4",
        "train.checkpoint_every=0",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "train.peak_flops=1e12",
        "schedule.warmup_steps=2",
        f"data.vocab_size={vocab}",
        *([f"data.max_docs={max_docs}"] if max_docs else []),
        *([f"data.cache_dir={cache}"] if cache else []),
    ]


def trainer_step_time(overrides: list[str], warmup: int, steps: int, run_dir: Path) -> float:
    """Seconds per step of the trainer between its log steps `warmup` and `warmup + steps` (its own train_time)."""
    from hasten.recipes import build_trainer, load_config
    from hasten.trainer.logger import read_metrics

    cfg = load_config(None, [*overrides, f"train.max_steps={warmup + steps}", f"train.log_every={warmup}"])
    build_trainer(cfg, run_dir, progress=False).fit()
    time_at = {r["step"]: r["train_time"] for r in read_metrics(run_dir) if r["kind"] == "train"}
    return (time_at[warmup + steps] - time_at[warmup]) / steps


class BareLoop:
    """nanoGPT's loop on the same model, data, shapes, dtype and device: sample, forward, backward, clip, step.

    Like the trainer it compiles the model with `train.compile` and picks fused AdamW on CUDA (optim.implementation)."""

    def __init__(self, overrides: list[str], device: str = "cpu"):
        from hasten.data.tokens import prepare_from_config
        from hasten.recipes import load_config

        self.cfg = load_config(None, overrides)
        self.device = torch.device(device)
        data = prepare_from_config(self.cfg.data, progress=False)
        self.tokens = torch.as_tensor(data.train[: len(data.train)].astype("int64"))

    def step_time(self, warmup: int, steps: int, log_every: int) -> float:
        from hasten.model import GPT
        from hasten.optim.builder import implementation_kwargs

        cfg, device = self.cfg, self.device
        torch.manual_seed(0)
        model = GPT(cfg.model_config()).to(device)
        forward = torch.compile(model) if cfg.train.compile else model
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            **implementation_kwargs(cfg.optim, device),
        )
        B, L = cfg.train.batch_size, cfg.seq_len
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.dtype == "bfloat16")
        start = None
        for i in range(warmup + steps):
            if i == warmup:
                _synchronize(device)
                start = time.perf_counter()
            ix = torch.randint(len(self.tokens) - L - 1, (B,))
            batch = torch.stack([self.tokens[j : j + L + 1] for j in ix])
            if device.type == "cuda":
                batch = batch.pin_memory().to(device, non_blocking=True)
            with autocast:
                loss = forward(batch[:, :-1], batch[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (i + 1) % log_every == 0:
                loss.item()
        _synchronize(device)
        return (time.perf_counter() - start) / steps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimizer_step_times(model_name: str, steps: int) -> dict[str, float]:
    """Seconds per optimizer.step() of Adam-mini, foreach AdamW and fused AdamW on `model_name`'s parameters."""
    from hasten.config import OptimConfig
    from hasten.model import GPT, model_config
    from hasten.optim.builder import build_optimizer

    torch.manual_seed(0)
    model = GPT(model_config(model_name))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    times = {}
    for name, cfg in {
        "adam_mini": OptimConfig(name="adam_mini"),
        "adam_mini found_inf": OptimConfig(name="adam_mini"),
        "adamw foreach": OptimConfig(implementation="foreach"),
        "adamw fused": OptimConfig(implementation="fused"),
    }.items():
        opt = build_optimizer(model, cfg)
        for group in opt.param_groups:
            group["lr"] = 1e-4
        if name.endswith("found_inf"):  # the trainer's path: the guard's device-side skip flag (0 here)
            opt.found_inf = torch.tensor(0.0)
        opt.step()  # state is created on the first step
        start = time.perf_counter()
        for _ in range(steps):
            opt.step()
        times[name] = (time.perf_counter() - start) / steps
    return times


# --------------------------------------------------------------------------- the grid


def paired(values: dict[str, list[float]], num: str, den: str) -> dict:
    """Median and range over repeats of values[num][r] / values[den][r]."""
    ratios = [a / b for a, b in zip(values[num], values[den])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "repeats": len(ratios)}


def measure_model(model: str, args, tmp: Path) -> dict:
    from hasten.model import flops_per_token, model_config

    batch, seq_len = SHAPES.get(model, (16, 256))
    preset = model_config(model)
    seq_len = min(seq_len, preset.max_seq_len)
    vocab = min(4096, preset.vocab_size)
    base = {
        dtype: base_overrides(model, batch, seq_len, dtype, args.cache_dir, vocab, args.max_docs) for dtype in DTYPES
    }
    bare = {dtype: BareLoop(base[dtype]) for dtype in DTYPES}
    variants: dict[str, callable] = {}
    for dtype in DTYPES:
        variants[f"bare {dtype}"] = lambda r, d=dtype: bare[d].step_time(args.warmup, args.steps, args.warmup)
        variants[f"trainer {dtype}"] = lambda r, d=dtype: trainer_step_time(
            base[d], args.warmup, args.steps, tmp / f"{model}-{d}-{r}"
        )
    for name, extra in METHODS.items():
        variants[name] = lambda r, e=extra, n=name: trainer_step_time(
            base["float32"] + e, args.warmup, args.steps, tmp / f"{model}-{n.split()[0]}-{r}"
        )
    times: dict[str, list[float]] = {name: [] for name in variants}
    optimizer: dict[str, list[float]] = {}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotated: no variant always runs first or last
        for name in order:
            times[name].append(variants[name](r))
            print(f"{model} [{r + 1}/{args.repeats}] {name}: {times[name][-1] * 1e3:.1f} ms/step", file=sys.stderr)
        for name, t in optimizer_step_times(model, args.optimizer_steps).items():
            optimizer.setdefault(name, []).append(t)
    flops = flops_per_token(bare["float32"].cfg.model_config(), seq_len) * batch * seq_len
    out = {
        "batch_size": batch,
        "seq_len": seq_len,
        "vocab_size": vocab,
        "flops_per_step": flops,
        "step_seconds": {name: statistics.median(v) for name, v in times.items()},
        "step_seconds_all": times,
        "trainer_vs_bare": {d: paired(times, f"bare {d}", f"trainer {d}") for d in DTYPES},  # speed ratio trainer/bare
        "methods": {name: paired(times, name, "trainer float32") for name in METHODS},  # step-time ratio method/none
        "optimizer_step_seconds": {name: statistics.median(v) for name, v in optimizer.items()},
        "adam_mini_vs_adamw": paired(optimizer, "adam_mini", "adamw foreach"),
        "adam_mini_found_inf_vs_adamw": paired(optimizer, "adam_mini found_inf", "adamw foreach"),
        "adamw_fused_vs_foreach": paired(optimizer, "adamw fused", "adamw foreach"),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cpu-small", "cpu-medium"])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first; also the trainer's log interval")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (ratios are medians over them)")
    parser.add_argument("--optimizer-steps", type=int, default=20, help="timed optimizer steps per repeat")
    parser.add_argument("--quick", action="store_true", help="smoke check: the tiny model, 3 repeats of 4 steps")
    parser.add_argument("--max-docs", type=int, default=None, help="cap the corpus (fast checks)")
    parser.add_argument("--cache-dir", default=None, help="data cache dir (default: the config's)")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "throughput"), help="output path without suffix"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.warmup, args.repeats, args.optimizer_steps = ["tiny"], 4, 2, 3, 5
        args.max_docs = args.max_docs or 60
    if args.steps % args.warmup:
        parser.error(
            f"--steps {args.steps} must be a multiple of --warmup {args.warmup} "
            "(the trainer is timed between log steps)"
        )
    flags = cpu_flags()
    results: dict = {
        "kind": "smoke check (--quick: tiny model, few steps)" if args.quick else "full",
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
            "state_at_start": machine_state(),
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "models": {},
    }
    peaks = {name: [matmul_peak("cpu", dtype, min_seconds=0.15)] for name, dtype in DTYPES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            results["models"][model] = measure_model(model, args, Path(tmp))
    for name, dtype in DTYPES.items():
        peaks[name].append(matmul_peak("cpu", dtype, min_seconds=0.15))
    results["machine"]["state_at_end"] = machine_state()
    results["peak_flops"] = {
        name: {
            "flops_per_s": max(p["flops_per_s"] for p in ps),
            "n": ps[0]["n"],
            "start": ps[0]["flops_per_s"],
            "end": ps[1]["flops_per_s"],
            "native": native_support(name, flags) is None,
            "note": native_support(name, flags),
        }
        for name, ps in peaks.items()
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    command = " ".join(["python benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])])
    out.with_suffix(".md").write_text(render(results, command))
    print(out.with_suffix(".md").read_text())
    return 0


# --------------------------------------------------------------------------- the record


def mfu_text(flops_per_s: float, peak: float) -> str:
    mfu = flops_per_s / peak
    return f"{mfu:.1%}" if mfu <= 1.0 else "n/a (above the measured peak)"


def _ratio(p: dict, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(p['median'])} ({fmt.format(p['min'])}–{fmt.format(p['max'])})"


def _overhead(p: dict) -> str:
    return f"{p['median'] - 1:+.1%} ({p['min'] - 1:+.1%} to {p['max'] - 1:+.1%})"


def render(r: dict, command: str) -> str:
    m = r["machine"]
    lines = [
        f"# Throughput ({r['kind']})",
        "",
        f"Command: `OMP_NUM_THREADS={m['threads']} {command}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['threads']} threads; "
        f"{r['repeats']} interleaved repeats of {r['steps']} timed steps after {r['warmup']} warmup steps "
        "per measurement.",
        f"State: load average {m['state_at_start']['load_average']} at the start ({m['state_at_start']['time']}) and "
        f"{m['state_at_end']['load_average']} at the end; benchmark grid paused: {m['state_at_start']['grid_paused']}, "
        f"grid runs in flight at the start: {len(m['state_at_start']['grid_runs_in_flight'])}.",
        "",
    ]
    peaks = r["peak_flops"]
    lines += [
        "Dense-matmul peaks (best of 5 matmuls, measured at the start and the end; the higher is the MFU denominator): "
        + "; ".join(
            f"{d} {p['flops_per_s'] / 1e9:,.0f} GFLOP/s "
            f"(n={p['n']}; start {p['start'] / 1e9:,.0f}, end {p['end'] / 1e9:,.0f})"
            for d, p in peaks.items()
        )
        + "."
    ]
    lines += [p["note"] + "." for p in peaks.values() if p["note"]]
    lines += [""]
    for model, d in r["models"].items():
        s = d["step_seconds"]
        lines += [
            f"## {model}: batch {d['batch_size']} x seq {d['seq_len']}",
            "",
            "| dtype | loop | ms/step (median) | tokens/s | MFU | trainer speed / bare (median, range) |",
            "|---|---|---|---|---|---|",
        ]
        tokens = d["batch_size"] * d["seq_len"]
        for dtype in ("float32", "bfloat16"):
            for loop in ("trainer", "bare"):
                sec = s[f"{loop} {dtype}"]
                ratio = _ratio(d["trainer_vs_bare"][dtype]) if loop == "trainer" else ""
                name = "hasten trainer" if loop == "trainer" else "bare nanoGPT-style loop"
                lines.append(
                    f"| {dtype} | {name} | {sec * 1e3:,.1f} | {tokens / sec:,.0f} | "
                    f"{mfu_text(d['flops_per_step'] / sec, peaks[dtype]['flops_per_s'])} | {ratio} |"
                )
        lines += [
            "",
            "| method (float32, equal shapes) | ms/step (median) | step-time overhead vs none (median, range) |",
            "|---|---|---|",
            f"| (none: the trainer) | {s['trainer float32'] * 1e3:,.1f} | |",
        ]
        for name, p in d["methods"].items():
            lines.append(f"| {name} | {s[name] * 1e3:,.1f} | {_overhead(p)} |")
        o = d["optimizer_step_seconds"]
        lines += [
            "",
            "| optimizer.step() alone | ms (median) | vs foreach AdamW (median, range) |",
            "|---|---|---|",
            f"| AdamW foreach | {o['adamw foreach'] * 1e3:.2f} | 1 |",
            f"| AdamW fused | {o['adamw fused'] * 1e3:.2f} | {_ratio(d['adamw_fused_vs_foreach'])} |",
            f"| Adam-mini | {o['adam_mini'] * 1e3:.2f} | {_ratio(d['adam_mini_vs_adamw'])} |",
            "| Adam-mini with found_inf (the trainer's path: the guard's skip flag) | "
            f"{o['adam_mini found_inf'] * 1e3:.2f} | "
            f"{_ratio(d['adam_mini_found_inf_vs_adamw'])} |",
            "",
        ]
    lines += [
        "Ratios are paired within a repeat and reported as the median over repeats with their range. On a shared "
        "2-core machine differences of a few percent are within the noise: read the ranges, not the medians alone."
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
