"""One prepared GPU check: how fast hasten trains on a single modern GPU, and what each method costs there.

    python benchmarks/gpu_check.py          # on a CUDA machine: about 6 minutes (under 8) on an H100/H200-class GPU
    python benchmarks/gpu_check.py --dry    # anywhere: a tiny CPU version in under a minute (CI runs it)

On CUDA it measures, in bf16 autocast with torch.compile and fused AdamW throughout:

1. The device: its name, the dense bf16 peak from the vendor's datasheet (the MFU denominator; the
   measured matmul rate stands in for a device missing from the table) and a measured bf16 matmul rate.
2. gpt2-124m (batch 16 x 1024) and llama-410m (batch 8 x 2048): tokens/s, MFU and peak memory of the
   hasten trainer and of a bare nanoGPT-style loop on the same model and shapes (benchmarks/throughput.py's
   BareLoop), and the trainer/bare speed ratio. Both are timed over 20 steps after 10 warmup steps
   (compilation happens in the warmup); the trainer logs every 10 steps (its sync points).
3. On gpt2-124m, each method for a few dozen steps with its step-time overhead against the plain trainer,
   all logging every step (each step a sync point, alike for all): every method whose spec declares a per-step
   cost (MethodSpec.step_cost: blockwise LR, Adam-mini, Muon, sequence length warmup after its warmup on the
   dynamic-shape graph it compiles, LAWA k=5 with a CPU snapshot every 5 steps, EMA, SWA), and growth at one step
   (G_stack from 6 to 12 layers: the growth step once, then the grown model's steps against a 12-layer plain run).

Data: the stdlib corpus (400 files, an 8192-token BPE trained on the spot); the models keep their own
vocabularies (50304 and 32000). Without CUDA (or with --dry) the same code runs on CPU with the tiny and
tiny-llama models, no compile, fused AdamW on CPU and a few steps: a check that the script still works
(tests/test_gpu_check.py runs it in CI); its numbers mean nothing. A time budget (--budget, default
7.5 minutes) skips the remaining parts, with a note, if compilation is slower than expected.

Writes a markdown record and its JSON (default benchmarks/results/gpu_check.md; dry runs: gpu_check-dry.md).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import BareLoop, machine_state  # noqa: E402

from hasten.methods.registry import step_costs  # noqa: E402
from hasten.metrics.peak import matmul_peak  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity); first match wins
BF16_PEAKS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989.4e12),
    (("H200",), 989.4e12),
    (("GH200",), 989.4e12),
    (("H800",), 989.4e12),
    (("B200",), 2250e12),
    (("A100",), 312e12),
    (("A800",), 312e12),
    (("L40S",), 362e12),
    (("L4",), 121e12),
]

# what each mode runs: the models with (batch, seq len, vocab), the methods' model, steps, data
SETTINGS = {
    "cuda": {
        "models": {"gpt2-124m": (16, 1024, 50304), "llama-410m": (8, 2048, 32000)},
        "warmup": 10,
        "steps": 20,
        "device": "cuda",
        "compile": True,
        "implementation": "fused",
        "data": ["data.max_docs=400", "data.vocab_size=8192"],
    },
    "dry": {
        "models": {"tiny": (4, 64, 512), "tiny-llama": (4, 64, 512)},
        "warmup": 2,
        "steps": 4,
        "device": "cpu",
        "compile": False,
        "implementation": "fused",
        "data": ["data.max_docs=60", "data.vocab_size=512"],
    },
}


def vendor_peak(name: str) -> float | None:
    for words, peak in BF16_PEAKS:
        if all(w in name for w in words):
            return peak
    return None


class Check:
    def __init__(self, mode: str, budget: float, out: Path):
        self.mode, self.s, self.budget, self.out = mode, SETTINGS[mode], budget, out
        self.start = time.perf_counter()
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.cuda = self.s["device"] == "cuda"
        self.record: dict = {"mode": mode, "torch": torch.__version__, "parts": {}, "skipped": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self, part: str) -> bool:
        if self.elapsed() > self.budget:
            self.record["skipped"].append(f"{part} (time budget of {self.budget:.0f} s spent)")
            return True
        return False

    # ------------------------------------------------------------------ pieces

    def overrides(
        self, model: str, batch: int, seq_len: int, vocab: int, log_every: int, steps: int, extra=()
    ) -> list[str]:
        s = self.s
        return [
            f"model={{preset: {model}, vocab_size: {vocab}}}",
            f"train.batch_size={batch}",
            f"train.seq_len={seq_len}",
            "train.dtype=bfloat16",
            f"train.device={s['device']}",
            f"train.compile={str(s['compile']).lower()}",
            f"optim.implementation={s['implementation']}",
            f"train.peak_flops={self.peak}",
            "train.eval_every=1000000",
            "train.eval_sequences=2",
            "train.checkpoint_every=0",
            "train.progress_bar=false",
            "train.tensorboard=false",
            f"train.log_every={log_every}",
            f"train.max_steps={steps}",
            "schedule.warmup_steps=5",
            *s["data"],
            *extra,
        ]

    def run_trainer(self, name: str, overrides: list[str]) -> tuple[list[dict], float | None]:
        """Fit one trainer; its train rows and the peak device memory (bytes; None on CPU)."""
        from hasten.recipes import build_trainer, load_config
        from hasten.trainer.logger import read_metrics

        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        run_dir = self.tmp / name
        build_trainer(load_config(None, overrides), run_dir, progress=False).fit()
        memory = torch.cuda.max_memory_allocated() if self.cuda else None
        return [r for r in read_metrics(run_dir) if r["kind"] == "train"], memory

    def bare(self, overrides: list[str]) -> tuple[float, float | None]:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds = BareLoop(overrides, self.s["device"]).step_time(self.s["warmup"], self.s["steps"], self.s["warmup"])
        return seconds, (torch.cuda.max_memory_allocated() if self.cuda else None)

    @staticmethod
    def step_times(rows: list[dict], first: int, last: int) -> list[float]:
        """Per-step seconds of steps first..last from a run that logged every step."""
        at = {r["step"]: r["train_time"] for r in rows}
        return [at[s] - at[s - 1] for s in range(first, last + 1) if s in at and s - 1 in at]

    # ------------------------------------------------------------------ parts

    def device(self) -> None:
        if self.cuda:
            name = torch.cuda.get_device_name()
            measured = matmul_peak("cuda", torch.bfloat16, max_n=8192, repeats=10)["flops_per_s"]
            vendor = vendor_peak(name)
            self.peak = vendor or measured
            self.record["device"] = {
                "name": name,
                "bf16_peak_vendor": vendor,
                "bf16_matmul_measured": measured,
                "mfu_denominator": "vendor datasheet" if vendor else "measured matmul (device not in the table)",
                "memory_total": torch.cuda.get_device_properties(0).total_memory,
            }
        else:
            # a CPU without bf16 matmul units runs plain bf16 matmuls slower than fp32 ones, while autocast's kernels
            # may not: the denominator is the best of both, so it bounds what the run can reach
            measured = matmul_peak("cpu", torch.bfloat16, min_seconds=0.02, max_n=2048, repeats=3)["flops_per_s"]
            fp32 = matmul_peak("cpu", torch.float32, min_seconds=0.02, max_n=2048, repeats=3)["flops_per_s"]
            self.peak = max(measured, fp32)
            self.record["device"] = {
                "name": "CPU (dry run)",
                "bf16_peak_vendor": None,
                "bf16_matmul_measured": measured,
                "fp32_matmul_measured": fp32,
                "mfu_denominator": "measured matmul (the better of bf16 and fp32)",
                "state": machine_state(),
            }

    def models(self) -> None:
        s, out = self.s, {}
        for model, (batch, seq_len, vocab) in s["models"].items():
            if self.over_budget(f"{model}: trainer vs bare"):
                continue
            total = s["warmup"] + s["steps"]
            ov = self.overrides(model, batch, seq_len, vocab, s["warmup"], total)
            rows, memory = self.run_trainer(f"{model}-trainer", ov)
            at = {r["step"]: r for r in rows}
            trainer_step = (at[total]["train_time"] - at[s["warmup"]]["train_time"]) / s["steps"]
            bare_step, bare_memory = self.bare(ov)
            flops = (at[total]["flops"] - at[s["warmup"]]["flops"]) / s["steps"]
            tokens = batch * seq_len
            out[model] = {
                "batch_size": batch,
                "seq_len": seq_len,
                "vocab_size": vocab,
                "flops_per_step": flops,
                "trainer": {
                    "step_s": trainer_step,
                    "tokens_per_s": tokens / trainer_step,
                    "mfu": flops / trainer_step / self.peak,
                    "peak_memory": memory,
                },
                "bare": {
                    "step_s": bare_step,
                    "tokens_per_s": tokens / bare_step,
                    "mfu": flops / bare_step / self.peak,
                    "peak_memory": bare_memory,
                },
                "trainer_speed_vs_bare": bare_step / trainer_step,
            }
            print(
                f"{model}: trainer {tokens / trainer_step:,.0f} tok/s, bare {tokens / bare_step:,.0f} tok/s",
                file=sys.stderr,
            )
        self.record["parts"]["models"] = out

    def methods(self) -> None:
        s = self.s
        model, (batch, seq_len, vocab) = next(iter(s["models"].items()))
        warmup, steps = s["warmup"], s["steps"]
        total = warmup + steps
        from hasten.model import model_config

        layers = model_config(model).n_layers
        grow_at = warmup + steps // 2
        first = {"(none)": []}
        later = step_costs()  # every method at its steady per-step cost (its spec's step_cost)
        out: dict = {}

        def run(name: str, extra: list[str]) -> None:
            if self.over_budget(f"method {name}"):
                return
            rows, memory = self.run_trainer(
                f"method-{len(out)}", self.overrides(model, batch, seq_len, vocab, 1, total, extra)
            )
            times = self.step_times(rows, warmup + 1, total)
            out[name] = {"step_s": statistics.median(times), "steps": len(times), "peak_memory": memory}
            print(f"{model} {name}: {out[name]['step_s'] * 1e3:.1f} ms/step", file=sys.stderr)

        for name, extra in first.items():
            run(name, extra)
        none = out.get("(none)", {}).get("step_s")
        if not self.over_budget("method growth"):
            half = [f"model={{preset: {model}, vocab_size: {vocab}, n_layers: {layers // 2}}}"]
            stage = (
                f"methods.growth.stages=[{{dim: depth, op: stack, factor: 2, at_steps: {grow_at}, "
                "moments: reset, schedule: restart}]"
            )
            ov = self.overrides(model, batch, seq_len, vocab, 1, total + 4, [stage])
            ov = [o for o in ov if not o.startswith("model=")] + half
            rows, memory = self.run_trainer("method-growth", ov)
            before = self.step_times(rows, warmup + 1, grow_at)
            after = self.step_times(
                rows, grow_at + 3, total + 4
            )  # the first steps after growth compile the grown model
            at = {r["step"]: r["train_time"] for r in rows}
            out["growth (G_stack x2 at one step)"] = {
                "small_step_s": statistics.median(before),
                "growth_step_s": at[grow_at] - at[grow_at - 1],
                "first_grown_steps_s": [at[k] - at[k - 1] for k in (grow_at + 1, grow_at + 2) if k in at],
                "step_s": statistics.median(after),
                "steps": len(after),
                "peak_memory": memory,
            }
            print(
                f"{model} growth: the growth step {out['growth (G_stack x2 at one step)']['growth_step_s']:.2f} s",
                file=sys.stderr,
            )
        for name, extra in later.items():
            run(name, extra)
        for m in out.values():
            m["overhead"] = m["step_s"] / none - 1 if none else None
        self.record["parts"]["methods"] = {"model": model, "log_every": 1, "measured_steps": steps, "results": out}

    # ------------------------------------------------------------------ record

    def write(self) -> Path:
        self.record["seconds"] = self.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.with_suffix(".json").write_text(json.dumps(self.record, indent=2))
        self.out.with_suffix(".md").write_text(render(self.record))
        return self.out.with_suffix(".md")


def _mem(value) -> str:
    return "n/a (CPU)" if value is None else f"{value / 2**30:.1f} GiB"


def _mfu(value: float) -> str:
    return f"{value:.1%}" if value <= 1 else "n/a (above the peak: check the denominator)"


def render(r: dict) -> str:
    d = r["device"]
    dry = r["mode"] == "dry"
    lines = [
        f"# GPU check{' (DRY RUN on CPU: checks the script, the numbers mean nothing)' if dry else ''}",
        "",
        f"Command: `python benchmarks/gpu_check.py{' --dry' if dry else ''}`; torch {r['torch']}; "
        f"{r['seconds']:.0f} s in all.",
        "",
        f"Device: {d['name']}. MFU denominator: {d['mfu_denominator']}"
        + (f" ({d['bf16_peak_vendor'] / 1e12:,.0f} TFLOP/s dense bf16)" if d["bf16_peak_vendor"] else "")
        + f"; measured bf16 matmul: {d['bf16_matmul_measured'] / 1e12:,.1f} TFLOP/s.",
        "",
    ]
    models = r["parts"].get("models", {})
    if models:
        lines += [
            "bf16 autocast"
            + ("" if dry else ", torch.compile, fused AdamW")
            + "; 20 timed steps after 10 warmup steps"
            + (" (dry: 4 after 2)" if dry else "")
            + ".",
            "",
            "| model | batch x seq | loop | tokens/s | MFU | peak memory | trainer speed / bare |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, m in models.items():
            for loop, label, ratio in (
                ("trainer", "hasten trainer", f"{m['trainer_speed_vs_bare']:.3f}"),
                ("bare", "bare loop", ""),
            ):
                x = m[loop]
                lines.append(
                    f"| {model} | {m['batch_size']} x {m['seq_len']} | {label} | {x['tokens_per_s']:,.0f} | "
                    f"{_mfu(x['mfu'])} | {_mem(x['peak_memory'])} | {ratio} |"
                )
    methods = r["parts"].get("methods")
    if methods:
        lines += [
            "",
            f"Methods on {methods['model']} (every step logged, so every step is a sync point in all rows; median over "
            f"{methods['measured_steps']} steps):",
            "",
            "| method | ms/step | step-time overhead vs none | peak memory | notes |",
            "|---|---|---|---|---|",
        ]
        for name, m in methods["results"].items():
            overhead = f"{m['overhead']:+.1%}" if m.get("overhead") is not None else ""
            notes = ""
            if "growth_step_s" in m:
                notes = (
                    f"small model {m['small_step_s'] * 1e3:.1f} ms/step; "
                    f"the growth step {m['growth_step_s']:.2f} s once; "
                    f"first grown steps {', '.join(f'{x:.2f} s' for x in m['first_grown_steps_s'])} "
                    "(these compile the grown model); "
                    "overhead: grown steps vs the plain run"
                )
            lines.append(f"| {name} | {m['step_s'] * 1e3:,.1f} | {overhead} | {_mem(m['peak_memory'])} | {notes} |")
    for skipped in r["skipped"]:
        lines.append(f"\nSkipped: {skipped}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the tiny CPU version, even where CUDA is available")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which remaining parts are skipped")
    parser.add_argument(
        "--out", default=None, help="output path without suffix (default benchmarks/results/gpu_check[-dry])"
    )
    args = parser.parse_args(argv)
    mode = "cuda" if torch.cuda.is_available() and not args.dry else "dry"
    if mode == "dry" and not args.dry:
        print("gpu_check: CUDA is not available; running the dry CPU version", file=sys.stderr)
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / ("gpu_check" if mode == "cuda" else "gpu_check-dry")
    )
    check = Check(mode, args.budget, out)
    check.device()
    check.models()
    check.methods()
    path = check.write()
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
