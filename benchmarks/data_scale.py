"""Data preparation at scale: peak memory and throughput of `hasten prepare-data` on corpora of 0.25 / 1 / 2 GB, with
one worker and with every core, side by side with a minimal reference (one process streaming `encode_batch` into an
np.memmap).

    python benchmarks/data_scale.py               # 0.25, 1 and 2 GB, 3 interleaved repeats (hours on 2 cores)
    python benchmarks/data_scale.py --sizes 0.005 0.02 --repeats 1 --out /tmp/data_scale   # SMOKE CHECK of the script
    python benchmarks/data_scale.py --sizes 2 --variants hasten-1 hasten-all --resume      # add to the last report

Each measurement is appended to OUT.records.jsonl as it ends; --resume keeps those and runs only the missing ones, so
an interrupted run (or one size or variant added later) continues, and the report covers every record.

- Corpus: jsonl shards of up to 64 MB whose records are the texts of the stdlib's .py files, cycled until the size is
  reached; built once per size in a temporary folder (--work; never in the repo) and deleted at the end (--keep).
- Tokenizer: the default recipe's byte-level BPE (vocab 4096, trained on the stdlib, cached) given to every variant as a
  tokenizer.json, so no measurement trains one.
- hasten: `python -m hasten prepare-data --out TMP` with data.num_workers=1 and =every core (a fresh process each time).
- reference: one process reads the jsonl lines, `encode_batch` of 64 documents at a time, ids + EOS written into an
  np.memmap sized by the corpus bytes, truncated at the end. Run twice: with tokenizers' own threads on (as a user would
  run it; it then uses more than one core) and with one thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), the
  like-for-like match of one hasten worker (a single-threaded process).
- Every measurement is a fresh process tree timed from start to exit. A sampler reads /proc every 0.1 s and keeps the
  tree's peak summed RSS and peak summed PSS (proportional set size: pages that forked workers share with their parent
  counted once, so PSS is the memory the tree really holds). CPU use is the tree's user + system time (wait4) over wall.
- Repeats are interleaved (each runs every variant of every size, in an order rotated per repeat); ratios are formed
  within a repeat and reported as the median (min-max) over repeats.
- Targets (issue 22): peak memory flat within ~10 % from 0.25 to 2 GB and under the stated budget, all workers >= 1.7x
  one worker, one worker >= 0.9x the one-thread reference (the reference with all threads is shown too).

Writes benchmarks/results/data_scale.md, .json and .png (or --out PATH without suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARD_BYTES = 64 << 20
REFERENCE_BATCH = 64
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- inputs


def make_corpus(folder: Path, size: int) -> int:
    """jsonl shards of stdlib file texts (cycled) until `size` bytes; returns the bytes written."""
    from hasten.data.corpus import _stdlib_files

    texts = []
    for path in _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and "\x00" not in text:
            texts.append(json.dumps({"text": text}) + "\n")
    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == size:  # built by an earlier run (--keep): reuse it
        return sum(p.stat().st_size for p in folder.glob("*.jsonl"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    written, shard, i = 0, None, 0
    try:
        while written < size:
            if shard is None or shard.tell() >= SHARD_BYTES:
                if shard is not None:
                    shard.close()
                shard = open(folder / f"part-{len(list(folder.glob('*.jsonl'))):05d}.jsonl", "w")
            line = texts[i % len(texts)]
            shard.write(line)
            written += len(line.encode("utf-8"))
            i += 1
    finally:
        if shard is not None:
            shard.close()
    done.write_text(str(size))
    return sum(p.stat().st_size for p in folder.glob("*.jsonl"))


def default_tokenizer(work: Path) -> Path:
    """The default recipe's tokenizer (vocab 4096 on the stdlib), trained once into the cache, copied to `work`."""
    from hasten.data.corpus import resolve_source
    from hasten.data.tokenizer import load_tokenizer

    _, path = load_tokenizer("bpe", resolve_source("stdlib"), 4096, "~/.cache/hasten")
    target = work / "tokenizer.json"
    shutil.copyfile(path, target)
    return target


# --------------------------------------------------------------------------- the reference


def reference(corpus: Path, tokenizer: Path, out: Path) -> int:
    """One process: encode_batch of 64 documents at a time, ids + EOS into an np.memmap; returns the tokens written."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    eos = tok.token_to_id("<|endoftext|>")
    files = sorted(corpus.glob("*.jsonl"))
    tokens = np.memmap(out, dtype=np.uint16, mode="w+", shape=(sum(f.stat().st_size for f in files),))  # ids <= bytes
    pos, batch = 0, []
    for path in files:
        with open(path) as f:
            for line in f:
                batch.append(json.loads(line)["text"])
                if len(batch) == REFERENCE_BATCH:
                    pos = _write_batch(tok, batch, tokens, pos, eos)
    pos = _write_batch(tok, batch, tokens, pos, eos)
    tokens.flush()
    del tokens
    os.truncate(out, pos * 2)
    return pos


def _write_batch(tok, batch: list[str], tokens, pos: int, eos: int) -> int:
    for encoding in tok.encode_batch(batch):
        ids = encoding.ids
        tokens[pos : pos + len(ids)] = ids
        tokens[pos + len(ids)] = eos
        pos += len(ids) + 1
    batch.clear()
    return pos


# --------------------------------------------------------------------------- measuring a process tree


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _memory(pids: list[int]) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of these processes."""
    rss = pss = 0
    for pid in pids:
        try:
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            continue
    return rss, pss


def measure(argv: list[str], env: dict[str, str], scratch: Path) -> dict:
    """Run argv to its end: wall time, CPU time of the tree (wait4), peak summed RSS and PSS of the tree, its stdout."""
    began = time.perf_counter()
    with open(scratch / "stdout", "w") as out, open(scratch / "stderr", "w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _memory(_tree(proc.pid))
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's rusage includes the workers it reaped
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        stderr = (scratch / "stderr").read_text()[-3000:]
        raise SystemExit(f"data_scale: {' '.join(argv[:6])} ... failed ({proc.returncode}):\n{stderr}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss": peak["rss"],
        "peak_pss": peak["pss"],
        "stdout": (scratch / "stdout").read_text(),
    }


# --------------------------------------------------------------------------- the benchmark


ONE_THREAD = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
REFERENCE, REFERENCE_1, ONE_WORKER = "reference", "reference, 1 thread", "hasten, 1 worker"


VARIANT_KEYS = ("reference", "reference-1", "hasten-1", "hasten-all")  # --variants, in the order of variants()


def variants(workers_all: int) -> list[tuple[str, int | None, dict[str, str]]]:
    """(name, data.num_workers or None for the reference, extra environment)."""
    return [
        (REFERENCE, None, {}),
        (REFERENCE_1, None, ONE_THREAD),
        (ONE_WORKER, 1, {}),
        (f"hasten, {workers_all} workers", workers_all, {}),
    ]


def run_one(name: str, workers: int | None, corpus: Path, tokenizer: Path, scratch: Path, env: dict[str, str]) -> dict:
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    if workers is None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--reference", str(corpus), str(tokenizer), str(out)]
    else:
        argv = [
            sys.executable,
            "-m",
            "hasten",
            "prepare-data",
            "--set",
            f"data.source={corpus}",
            "--set",
            f"data.tokenizer={tokenizer}",
            "--set",
            f"data.num_workers={workers}",
            "--out",
            str(out),
        ]
    result = measure(argv, env, scratch)
    stdout = result.pop("stdout")
    if workers is None:
        tokens = int(stdout.split()[-1])
        out.unlink()
    else:
        tokens = sum(s["tokens"] for s in json.loads((out / "hasten-tokens.json").read_text())["shards"])
        shutil.rmtree(out)
    return {"variant": name, "workers": workers, "tokens": tokens, **result}


def summarize(records: list[dict], sizes: dict[float, int], names: list[str]) -> dict:
    table = {}
    for gb, size in sizes.items():
        for name in names:
            rows = [r for r in records if r["gb"] == gb and r["variant"] == name]
            if not rows:
                continue
            wall = statistics.median(r["wall_s"] for r in rows)
            table[(gb, name)] = {
                "gb": gb,
                "variant": name,
                "bytes": size,
                "repeats": len(rows),
                "wall_s": wall,
                "mb_s": size / 1e6 / wall,
                "tokens": rows[0]["tokens"],
                "tokens_s": rows[0]["tokens"] / wall,
                "cores": statistics.median(r["cpu_s"] / r["wall_s"] for r in rows),
                "peak_rss_mb": max(r["peak_rss"] for r in rows) / 2**20,
                "peak_pss_mb": max(r["peak_pss"] for r in rows) / 2**20,
            }
    ratios = {}
    for gb in sizes:
        for label, top, bottom in (
            ("all workers / 1 worker", names[3], ONE_WORKER),
            ("1 worker / reference, 1 thread (like for like)", ONE_WORKER, REFERENCE_1),
            ("1 worker / reference, all threads", ONE_WORKER, REFERENCE),
        ):
            pairs = [
                (a["wall_s"], b["wall_s"])
                for a in records
                for b in records
                if a["gb"] == b["gb"] == gb
                and a["repeat"] == b["repeat"]
                and a["variant"] == bottom
                and b["variant"] == top
            ]
            if pairs:
                values = [x / y for x, y in pairs]  # speed ratio = time of the slower-by-design over time of the other
                ratios[(gb, label)] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
    flat = {}
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for name in names:
            if (small, name) in table and (large, name) in table:
                flat[name] = table[(large, name)]["peak_pss_mb"] / table[(small, name)]["peak_pss_mb"]
    return {
        "table": list(table.values()),
        "memory_growth": flat,
        "ratios": [{"gb": gb, "ratio": label, **v} for (gb, label), v in ratios.items()],
    }


def render(summary: dict, meta: dict) -> str:
    lines = [
        "# Data preparation at scale",
        "",
        f"Produced by `{'` then `'.join(meta.get('commands') or [meta['command']])}` on {meta['machine']} "
        f"({meta['cores']} cores), {meta['date']}; load "
        f"average at start {meta['load_at_start']}. See the docstring of benchmarks/data_scale.py for what each "
        "number is.",
        "",
    ]
    if meta["smoke"]:
        lines += ["**Smoke check of the script (sizes below 0.25 GB): these numbers say nothing about scale.**", ""]
    lines += [
        "| corpus | variant | wall s | MB/s | tokens/s | cores used | peak RSS (tree) MB | peak PSS (tree) MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        lines.append(
            f"| {row['gb']:g} GB | {row['variant']} | {row['wall_s']:,.1f} | {row['mb_s']:,.2f} | "
            f"{row['tokens_s']:,.0f} | {row['cores']:.2f} | {row['peak_rss_mb']:,.0f} | "
            f"{row['peak_pss_mb']:,.0f} |"
        )
    lines += [
        "",
        "Speed ratios within a repeat (median, min-max over repeats; targets: all workers >= 1.7x one worker, "
        "one worker >= 0.9x the one-thread reference):",
        "",
    ]
    for r in summary["ratios"]:
        lines.append(
            f"- {r['gb']:g} GB, {r['ratio']}: **{r['median']:.2f}x** ({r['min']:.2f}-{r['max']:.2f}, {r['n']} repeats)"
        )
    if summary["memory_growth"]:
        lines += ["", "Peak PSS at the largest size over the smallest (target: within ~1.10 for hasten):", ""]
        lines += [f"- {name}: {value:.2f}x" for name, value in summary["memory_growth"].items()]
    lines += [
        "",
        "RSS counts pages a forked worker shares with its parent once per process; PSS counts them once. "
        "Medians of wall time; memory is the peak over repeats.",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dict.fromkeys(r["variant"] for r in summary["table"]))
    for name in names:
        rows = sorted((r for r in summary["table"] if r["variant"] == name), key=lambda r: r["gb"])
        axes[0].plot([r["gb"] for r in rows], [r["mb_s"] for r in rows], marker="o", label=name)
        axes[1].plot([r["gb"] for r in rows], [r["peak_pss_mb"] for r in rows], marker="o", label=name)
    axes[0].set(xlabel="corpus (GB)", ylabel="MB/s", title="throughput")
    axes[1].set(xlabel="corpus (GB)", ylabel="peak PSS of the process tree (MB)", title="memory")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 2.0], help="corpus sizes in GB")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (ratios are medians over them)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="the 'every core' variant's data.num_workers"
    )
    parser.add_argument("--work", default=None, help="folder for the corpora (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "data_scale"), help="output path without suffix"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANT_KEYS,
        default=list(VARIANT_KEYS),
        help="which variants to run (default: all four)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the measurements in OUT.records.jsonl and run only the missing ones (the report covers them all)",
    )
    parser.add_argument("--reference", nargs=3, metavar=("CORPUS", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        print(reference(*map(Path, args.reference)))
        return 0
    if args.repeats < 1 or args.workers < 1 or any(s <= 0 for s in args.sizes):
        parser.error("--repeats and --workers must be >= 1 and --sizes positive")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hasten-data-scale-"))
    if args.work and work.resolve().is_relative_to(ROOT):
        parser.error(f"--work {work} is inside the repository; give a folder outside it (corpora are gigabytes)")
    out = Path(args.out)
    log = out.with_name(out.name + ".records.jsonl")  # one line per measurement, written as each ends
    command = "python benchmarks/data_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if args.resume and log.is_file()
        else []
    )
    meta = {
        "command": command,
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_at_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "smoke": min(args.sizes) < 0.25,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HASTEN_CACHE": str(work / "cache")}
    work.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = default_tokenizer(work)
        sizes = {}
        for gb in args.sizes:
            sizes[gb] = make_corpus(work / f"corpus-{gb:g}GB", int(gb * 1e9))
            print(f"corpus {gb:g} GB: {sizes[gb] / 1e6:,.1f} MB in {work / f'corpus-{gb:g}GB'}", file=sys.stderr)
        chosen = [v for key, v in zip(VARIANT_KEYS, variants(args.workers)) if key in args.variants]
        names = [name for name, _, _ in variants(args.workers)]
        plan = [(gb, name, workers, extra) for gb in args.sizes for name, workers, extra in chosen]
        out.parent.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            log.unlink(missing_ok=True)
        done = {(r["gb"], r["repeat"], r["variant"]) for r in records}
        for repeat in range(args.repeats):
            shift = repeat % len(plan)
            for gb, name, workers, extra in plan[shift:] + plan[:shift]:
                if (gb, repeat, name) in done:
                    continue
                record = run_one(name, workers, work / f"corpus-{gb:g}GB", tokenizer, work, {**env, **extra})
                records.append({"gb": gb, "repeat": repeat, "bytes": sizes[gb], "command": command, **record})
                with open(log, "a") as f:
                    f.write(json.dumps(records[-1]) + "\n")
                print(
                    f"repeat {repeat + 1}/{args.repeats}  {gb:g} GB  {name}: {record['wall_s']:.1f} s, "
                    f"{sizes[gb] / 1e6 / record['wall_s']:.2f} MB/s, peak PSS {record['peak_pss'] / 2**20:,.0f} MB",
                    file=sys.stderr,
                )
        all_sizes = {r["gb"]: r["bytes"] for r in sorted(records, key=lambda r: r["gb"])}
        meta["commands"] = list(dict.fromkeys(r["command"] for r in records))
        summary = summarize(records, all_sizes, names)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records, **summary}, indent=1))
        out.with_suffix(".md").write_text(render(summary, meta))
        plot(summary, out.with_suffix(".png"))
        print(out.with_suffix(".md").read_text())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
