"""Sequence length warmup (Li, Zhang, He, NeurIPS 2022, arXiv 2108.06084): train on short sequences
first and grow them to the full context, which stabilises large-batch, high-LR pre-training."""

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
from hasten.methods.seqlen_warmup.schedule import SeqLenSchedule, steps_for_tokens, tokens_for_steps, warmup_iters_for_tokens
from hasten.methods.spec import MethodSpec

SPECS = (MethodSpec("seqlen_warmup", SeqLenWarmupConfig, hooks.build, order=10, summary="sequence length warmup (arXiv 2108.06084)",
                    varies_seq_len=True),)

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
