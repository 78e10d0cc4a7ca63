"""`hasten sharpness RUN_OR_CKPT`: per-block sharpness of a trained model, against the paper's ordering.

Loads the newest good checkpoint of a run (or a given checkpoint dir), draws fixed full-context
windows from the run's validation split, estimates S(b) = Tr(H_bb)/#params(b) per block type with
sampled labels (hasten.methods.blockwise_lr.sharpness) and prints them sorted ascending beside the
order the Sharpness Disparity paper predicts, Emb < QK < FFN < VO < Norm. Writes a bar chart and a
JSON file next to the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hasten.checkpointing import TrainCheckpoint
from hasten.checkpointing.weights import RAW, WEIGHTS_HELP
from hasten.data.sampler import eval_windows
from hasten.data.tokens import prepare_from_config
from hasten.errors import CheckpointError, ConfigError
from hasten.methods.blockwise_lr.sharpness import block_sharpness, plot_sharpness, ratios_from_sharpness
from hasten.optim.blocks import classify_model

PAPER_ORDER = ("emb", "qk", "ffn", "vo", "norm")  # ascending sharpness, arXiv 2502.19002 (R-BW README)


def order_agreement(sharpness: dict[str, float]) -> tuple[list[str], bool]:
    """The measured ascending order of the paper's five block types, and whether it is the paper's."""
    measured = sorted((b for b in PAPER_ORDER if b in sharpness), key=lambda b: sharpness[b])
    expected = [b for b in PAPER_ORDER if b in sharpness]
    return measured, measured == expected


def format_table(sharpness: dict[str, float], numels: dict[str, int], ratios: dict[str, float]) -> str:
    """Blocks sorted by ascending sharpness, with the paper's predicted rank and hasten's auto ratio."""
    paper_rank = {b: i + 1 for i, b in enumerate(PAPER_ORDER)}
    lines = [f"{'rank':>4}  {'block':<8} {'params':>10}  {'sharpness':>11}  {'paper rank':>10}  {'auto ratio':>10}"]
    for rank, block in enumerate(sorted(sharpness, key=sharpness.get), start=1):
        expected = str(paper_rank.get(block, "-"))
        lines.append(
            f"{rank:>4}  {block:<8} {numels.get(block, 0):>10,}  {sharpness[block]:>11.4e}  {expected:>10}  "
            f"{ratios.get(block, 1.0):>10.2f}"
        )
    return "\n".join(lines)


def cmd_sharpness(args) -> int:
    if args.batches < 1 or (args.rows is not None and args.rows < 1):
        raise ConfigError("--batches and --rows must be >= 1")
    if args.source.startswith("hf:"):
        raise ConfigError(
            "hasten sharpness needs a hasten run dir or training checkpoint (it reads the run's data config), not hf:"
        )
    model, ckpt, _ = args.load_model(args.source, args.weights)  # as its run computed with it (hasten.recipes)
    if not isinstance(ckpt, TrainCheckpoint):
        raise CheckpointError(
            f"{ckpt.path} holds a model without a run config (import-hf?); hasten sharpness needs a "
            "run dir or a training checkpoint"
        )
    ckpt_path, cfg, step = str(ckpt.path), ckpt.run_config(), ckpt.step
    data = prepare_from_config(cfg.data, progress=False)
    rows = args.rows or cfg.train.micro_batch_size or min(cfg.train.batch_size, 16)
    windows = eval_windows(data.val, cfg.seq_len, args.batches * rows)
    batches = list(windows.split(rows))
    generator = torch.Generator().manual_seed(args.seed)
    sharpness = block_sharpness(
        model, batches, cfg.optim.block_overrides, sample_labels=not args.true_labels, generator=generator
    )

    numels: dict[str, int] = {}
    params = dict(model.named_parameters())
    for name, block in classify_model(model, cfg.optim.block_overrides).items():
        numels[block] = numels.get(block, 0) + params[name].numel()
    ratios = ratios_from_sharpness(sharpness) if "norm" in sharpness else {}
    measured, agrees = order_agreement(sharpness)

    print(
        f"{ckpt_path} (step {step}, {args.weights} weights): "
        f"{len(batches)} batches x {rows} val windows of {cfg.seq_len} tokens, "
        f"{'data' if args.true_labels else 'sampled'} labels"
    )
    print(format_table(sharpness, numels, ratios))
    print(f"measured: {' < '.join(measured)}")
    print(f"paper:    {' < '.join(b for b in PAPER_ORDER if b in sharpness)}   ({'matches' if agrees else 'differs'})")

    run_dir = Path(ckpt_path).parent.parent
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sharpness_val_step{step}" + ("" if args.weights == "raw" else f"_{args.weights}")
    chart = plot_sharpness(sharpness, out / f"{stem}.png", title=f"average sharpness per block, step {step}")
    report = {
        "checkpoint": ckpt_path,
        "step": step,
        "weights": args.weights,
        "batches": len(batches),
        "rows": rows,
        "seq_len": cfg.seq_len,
        "sample_labels": not args.true_labels,
        "seed": args.seed,
        "sharpness": sharpness,
        "params": numels,
        "measured_order": measured,
        "paper_order": list(PAPER_ORDER),
        "matches_paper": agrees,
        "auto_ratios": ratios,
    }
    report_path = out / f"{stem}.json"
    report_path.write_text(json.dumps(report, indent=2))
    print(f"wrote {chart} and {report_path}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sharpness", help="per-block sharpness of a run or checkpoint vs the blockwise-LR paper's ordering"
    )
    p.add_argument("source", help="run dir or checkpoint dir")
    p.add_argument("--batches", type=int, default=8, help="val batches to average over (10-50 recommended; default 8)")
    p.add_argument(
        "--rows", type=int, default=None, help="windows per batch (default: the run's micro-batch, at most 16)"
    )
    p.add_argument("--out", default=None, help="directory for the chart and JSON (default: the run dir)")
    p.add_argument("--weights", default=RAW, help=WEIGHTS_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled labels")
    p.add_argument(
        "--true-labels", action="store_true", help="use the data's next tokens instead of sampled labels (biased)"
    )
    p.set_defaults(func=cmd_sharpness)
