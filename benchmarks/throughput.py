"""Throughput: the hasten trainer against a bare nanoGPT-style loop, and what each method costs per step.

    python benchmarks/throughput.py --quick              # a few steps per measurement (minutes on 2 CPU cores)
    python benchmarks/throughput.py                      # cpu-small, seq 256, batch 16, 30 timed steps each
    python benchmarks/throughput.py --model tiny --quick # seconds: checks the script itself

Part 1 trains the same model at the same shapes and dtype (float32, then bfloat16 autocast) with
(a) `hasten.trainer` built from a config and (b) a bare loop: random windows of the same token file,
forward, backward, clip, AdamW step. Both time the same region (the step, not data loading or
evaluation), so the difference is the trainer's own overhead. MFU = training FLOPs per token
(hasten.model.flops_per_token) x tokens/s / the measured matmul peak of this device and dtype.

Rates are medians over the timed steps (robust to other jobs on a shared machine).

Part 2 runs the trainer at equal shapes with each method or optimizer on and reports steps/s
against all off. Sequence length warmup and growth change the shapes on purpose (that is their
speedup), so SLW is measured after its warmup has ended (total_steps=1: its per-step bookkeeping
only) and growth is left out; `hasten compare` measures both end to end.

Writes benchmarks/results/throughput.md and throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
METHODS: dict[str, list[str]] = {
    "blockwise LR": ["optim.blockwise=true"],
    "adam_mini": ["optim.name=adam_mini"],
    "muon": ["optim.name=muon"],
    "lawa (k=5, every 5 steps)": ["methods.lawa.k=5", "methods.lawa.interval=5"],
    "ema (decay 0.99)": ["methods.ema.decay=0.99"],
    "seqlen_warmup (after warmup)": ["methods.seqlen_warmup.total_steps=1", "methods.seqlen_warmup.min_len=16"],
}


def base_overrides(args, steps: int, dtype: str, cache: str) -> list[str]:
    return [f"model={args.model}", f"train.batch_size={args.batch_size}", f"train.seq_len={args.seq_len}", f"train.max_steps={steps}",
            f"train.dtype={dtype}", "train.eval_every=1000000", "train.eval_sequences=4", "train.checkpoint_every=0", "train.log_every=1",
            "train.progress_bar=false", "train.tensorboard=false", "schedule.warmup_steps=2", f"data.vocab_size={args.vocab_size}",
            *([f"data.max_docs={args.max_docs}"] if args.max_docs else []), *([f"data.cache_dir={cache}"] if cache else [])]


def trainer_rate(overrides: list[str], warmup: int, run_dir: Path) -> dict:
    """Steps/s and tokens/s of the trainer over the steps after `warmup`, from its own metrics rows."""
    from hasten.config import load_config
    from hasten.trainer.logger import read_metrics
    from hasten.trainer.setup import build_trainer

    cfg = load_config(None, overrides)
    trainer = build_trainer(cfg, run_dir, progress=False)
    trainer.fit()
    rows = [r for r in read_metrics(run_dir) if r["kind"] == "train" and r["step"] >= warmup]
    pairs = [(b["train_time"] - a["train_time"], b["tokens"] - a["tokens"], b["flops"] - a["flops"]) for a, b in zip(rows, rows[1:])
             if b["step"] == a["step"] + 1]
    return {"steps_per_s": 1 / statistics.median(dt for dt, _, _ in pairs),
            "tokens_per_s": statistics.median(tok / dt for dt, tok, _ in pairs),
            "flops_per_s": statistics.median(fl / dt for dt, _, fl in pairs), "peak_flops": trainer.peak_flops}


def bare_rate(overrides: list[str], warmup: int, steps: int) -> dict:
    """The nanoGPT loop on the same model, data, shapes and dtype: sample, forward, backward, clip, step."""
    from hasten.config import load_config
    from hasten.data.tokens import prepare_from_config
    from hasten.model import GPT, flops_per_token

    cfg = load_config(None, overrides)
    data = prepare_from_config(cfg.data, progress=False)
    torch.manual_seed(0)
    model = GPT(cfg.model_config())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=cfg.optim.lr,
                            betas=(0.9, 0.95), foreach=True)
    tokens = torch.as_tensor(data.train[: len(data.train)].astype("int64"))
    B, L = cfg.train.batch_size, cfg.seq_len
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.train.dtype == "bfloat16" else None
    times = []
    for i in range(warmup + steps):
        ix = torch.randint(len(tokens) - L - 1, (B,))
        batch = torch.stack([tokens[j : j + L + 1] for j in ix])
        start = time.perf_counter()
        if autocast is not None:
            with autocast:
                loss = model(batch[:, :-1], batch[:, 1:])
        else:
            loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)  # the median step resists the other jobs of a shared machine
    return {"steps_per_s": 1 / step, "tokens_per_s": B * L / step, "flops_per_s": flops_per_token(model.config, L) * B * L / step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cpu-small")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 256 (64 for tiny models)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the per-method runs (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="8 timed steps, 2 warmup, 1 repeat")
    parser.add_argument("--max-docs", type=int, default=None, help="cap the corpus (fast checks)")
    parser.add_argument("--cache-dir", default="", help="data cache dir (default: the config's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput"), help="output path without suffix")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 8, 2, 1
    from hasten.model import model_config

    preset = model_config(args.model)
    args.seq_len = args.seq_len or min(256, preset.max_seq_len)
    args.vocab_size = min(4096, preset.vocab_size)
    total = args.warmup + args.steps
    results: dict = {"model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size, "timed_steps": args.steps,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "trainer_vs_bare": {}, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            ov = base_overrides(args, total, dtype, args.cache_dir)
            trainer = trainer_rate(ov, args.warmup, Path(tmp) / f"trainer-{dtype}")
            bare = bare_rate(ov, args.warmup, args.steps)
            peak = trainer.pop("peak_flops")
            results["trainer_vs_bare"][dtype] = {"trainer": {**trainer, "mfu": trainer["flops_per_s"] / peak},
                                                 "bare": {**bare, "mfu": bare["flops_per_s"] / peak}, "peak_flops": peak}
            print(f"{dtype}: trainer {trainer['tokens_per_s']:,.0f} tok/s, bare {bare['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
        ov = base_overrides(args, total, "float32", args.cache_dir)
        rates: dict[str, list[float]] = {}
        for rep in range(args.repeats):  # interleaved, so a slow phase of a shared machine hits every method alike
            for name, extra in {"(none)": [], **METHODS}.items():
                if name in results["methods"]:
                    continue
                try:
                    rate = trainer_rate(ov + extra, args.warmup, Path(tmp) / f"{name.split()[0]}-{rep}")["steps_per_s"]
                except Exception as err:  # a method missing from this tree is reported, not fatal
                    results["methods"][name] = {"error": f"{type(err).__name__}: {str(err)[:160]}"}
                    continue
                rates.setdefault(name, []).append(rate)
                print(f"[{rep + 1}/{args.repeats}] {name}: {rate:.2f} steps/s", file=sys.stderr)
        off = statistics.median(rates["(none)"])
        for name, values in rates.items():
            rate = statistics.median(values)
            results["methods"][name] = {"steps_per_s": rate, "relative": rate / off,
                                        "relative_range": [min(values) / off, max(values) / off], "repeats": len(values)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(render(results, " ".join(["python benchmarks/throughput.py", *(argv or sys.argv[1:])])))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict, command: str) -> str:
    lines = [f"# Throughput: {r['model']}, batch {r['batch_size']} x seq {r['seq_len']}", "",
             f"Command: `{command}`; torch {r['torch']}, {r['threads']} threads, {r['timed_steps']} timed steps each; {r['created']}.",
             "Timings on a shared machine are noisy; compare rows of one run, not across runs.", "",
             "| dtype | loop | tokens/s | MFU | trainer / bare |", "|---|---|---|---|---|"]
    for dtype, d in r["trainer_vs_bare"].items():
        ratio = d["trainer"]["tokens_per_s"] / d["bare"]["tokens_per_s"]
        lines.append(f"| {dtype} | hasten trainer | {d['trainer']['tokens_per_s']:,.0f} | {d['trainer']['mfu']:.1%} | {ratio:.2f} |")
        lines.append(f"| {dtype} | bare nanoGPT-style loop | {d['bare']['tokens_per_s']:,.0f} | {d['bare']['mfu']:.1%} | |")
    lines += ["", "MFU is against the measured dense-matmul peak of this device and dtype (`train.peak_flops` overrides it).", "",
              "| method (float32, equal shapes) | steps/s (median) | relative to none | range over repeats |", "|---|---|---|---|"]
    for name, m in r["methods"].items():
        if "error" in m:
            lines.append(f"| {name} | failed: {m['error']} | |")
        else:
            low, high = m.get("relative_range", [m["relative"], m["relative"]])
            lines.append(f"| {name} | {m['steps_per_s']:.2f} | {m['relative']:.2f}× | {low:.2f}–{high:.2f}× ({m.get('repeats', 1)} runs) |")
    lines += ["", "Per-method rates are medians of interleaved repeats; a spread of ±0.1× or more between repeats on this "
              "shared 2-core machine means differences below that are noise."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
