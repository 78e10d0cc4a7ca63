"""Running over ranks: the strategy object (single process, DDP, FSDP2), the collectives, the `--nproc` launcher."""

from hasten.parallel.ranks import (
    Distributed,
    all_reduce_mean_,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    is_main,
    run_on_main,
)
from hasten.parallel.strategy import DataParallel, FullyShardedParallel, ParallelStrategy, SingleProcess, make_strategy

__all__ = [
    "DataParallel",
    "Distributed",
    "FullyShardedParallel",
    "ParallelStrategy",
    "SingleProcess",
    "all_reduce_mean_",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "is_main",
    "make_strategy",
    "run_on_main",
]
