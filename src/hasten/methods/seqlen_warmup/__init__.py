"""Sequence length warmup (Li, Zhang, He, NeurIPS 2022, arXiv 2108.06084): train on short sequences
first and grow them to the full context, which stabilises large-batch, high-LR pre-training."""

from pathlib import Path

from hasten.data.shaping import (
    MODES,
    BatchShape,
    reshape_rows,
    rows_after_shaping,
    shape_rows,
    target_tokens_per_row,
    truncate_rows,
)
from hasten.methods.seqlen_warmup import hooks
from hasten.methods.seqlen_warmup.config import KINDS, SeqLenWarmupConfig
from hasten.methods.seqlen_warmup.schedule import (
    SeqLenSchedule,
    steps_for_tokens,
    tokens_for_steps,
    warmup_iters_for_tokens,
)
from hasten.methods.spec import MethodSpec, PlotMarker, TinyRun

SPECS = (
    MethodSpec(
        "seqlen_warmup",
        "sequence length warmup",
        "arXiv 2108.06084",
        Path(__file__).with_name("README.md"),
        SeqLenWarmupConfig,
        hooks.build,
        order=10,
        varies_seq_len=True,
        test_runs={
            "truncate": TinyRun(
                ("methods.seqlen_warmup={min_len: 16, total_steps: 12, step: 8}", "schedule.decay_unit=tokens"),
                tests=("grid", "host_syncs"),
            ),
            "reshape": TinyRun(
                ("methods.seqlen_warmup={min_len: 16, total_steps: 12, step: 8, mode: reshape}",), tests=("grid",)
            ),
            # lengths 8 -> 64 over 8 steps: killed right after a length change, and mid-save during the ramp
            "8_to_64": TinyRun(
                ("methods.seqlen_warmup={min_len: 8, total_steps: 8}",), tests=("faults",), kill_at=("step:5", "save:8")
            ),
        },
        markers=(PlotMarker("seq_len_full", "seq-len warmup end", ":", settles="seq_len"),),
        # past its one-step warmup: the full length, with the method's per-step shaping still on
        step_cost=(
            "methods.seqlen_warmup.total_steps=1",
            "methods.seqlen_warmup.min_len=8",
            "methods.seqlen_warmup.step=8",
        ),
    ),
)

__all__ = [
    "KINDS",
    "SPECS",
    "MODES",
    "BatchShape",
    "SeqLenSchedule",
    "SeqLenWarmupConfig",
    "reshape_rows",
    "rows_after_shaping",
    "shape_rows",
    "steps_for_tokens",
    "target_tokens_per_row",
    "tokens_for_steps",
    "truncate_rows",
    "warmup_iters_for_tokens",
]
