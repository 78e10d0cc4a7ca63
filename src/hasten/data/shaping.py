"""Batch shapes pushed into the data stream (sequence length warmup): truncate or reshape rows."""

from hasten.methods.seqlen_warmup.shaping import BatchShape, reshape_rows, shape_rows, truncate_rows

__all__ = ["BatchShape", "reshape_rows", "shape_rows", "truncate_rows"]
