"""Adam-mini's layout: how a parameter splits into blocks that share one second moment (Partition), the flat
plan of a param group's update, and the FSDP2 shard helpers. The optimizer itself is adam_mini.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hasten.errors import ConfigError

PARTITION_KINDS = ("adam", "head", "row", "tensor")
# devices where _foreach ops run tensor by tensor anyway (CPU), so the update broadcasts each block's denominator
# instead of spreading it over the coordinates for torch's multi-tensor kernels (same values, fewer memory passes)
BROADCAST_DEVICES = ("cpu",)


@dataclass(frozen=True)
class Partition:
    """How one parameter's coordinates are grouped: `n_blocks` equal, contiguous blocks of a `shape` tensor."""

    kind: str
    n_blocks: int
    shape: tuple[int, ...]


def partition_for(name: str, block: str, shape: tuple[int, ...], n_heads: int, n_kv_heads: int) -> Partition:
    """The Adam-mini partition of one parameter from its block type, name and shape."""
    shape = tuple(shape)
    numel = 1
    for size in shape:
        numel *= size
    if name.split(".")[-1] == "bias":
        return Partition("adam", numel, shape)
    if block in ("norm", "pos_emb"):
        return Partition("tensor", 1, shape)
    if len(shape) != 2:
        raise ConfigError(
            f"Adam-mini: {name!r} (block {block}) has shape {list(shape)}; a {block} weight must be a 2-D matrix"
        )
    if block == "qk":
        rows, in_features = shape
        if in_features % n_heads:
            raise ConfigError(
                f"Adam-mini: {name!r} has {in_features} input features, not a multiple of n_heads={n_heads}; "
                "pass the model's n_heads"
            )
        head_dim = in_features // n_heads
        heads = rows // head_dim if rows % head_dim == 0 else -1
        if heads not in (n_heads, n_kv_heads):
            raise ConfigError(
                f"Adam-mini: {name!r} with shape {list(shape)} does not split into n_heads={n_heads} "
                f"or n_kv_heads={n_kv_heads} heads of dim {head_dim}; pass the model's n_heads and n_kv_heads"
            )
        return Partition("head", heads, shape)
    if block in ("emb", "head", "vo", "ffn"):
        return Partition("row", shape[0], shape)
    raise ConfigError(f"Adam-mini: no partition rule for block {block!r} of {name!r}")


@dataclass(frozen=True)
class _Plan:
    """The flat layout of one param group's gradients: params ordered by block size, so every run of equal
    block sizes is a contiguous (blocks, size) matrix whose row means are one reduction."""

    order: tuple[int, ...]  # plan position -> index in the group's params-with-grad
    numels: tuple[int, ...]
    blocks: tuple[int, ...]  # blocks per parameter
    buckets: tuple[tuple[int, int, int], ...]  # (start, end, block size) in the flat buffer
    bucket_blocks: tuple[tuple[int, int], ...]  # (first, end) block of each bucket
    total_blocks: int
    _cache: dict = field(default_factory=dict, compare=False)

    @classmethod
    def build(cls, params: list[torch.Tensor], parts: list[Partition]) -> _Plan:
        sizes = [p.numel() // part.n_blocks for p, part in zip(params, parts)]
        order = sorted(range(len(params)), key=lambda i: sizes[i])
        buckets, start = [], 0
        for i in order:
            n = params[i].numel()
            if buckets and buckets[-1][2] == sizes[i]:
                buckets[-1][1] += n
            else:
                buckets.append([start, start + n, sizes[i]])
            start += n
        bucket_blocks, first = [], 0
        for a, b, size in buckets:
            bucket_blocks.append((first, first + (b - a) // size))
            first += (b - a) // size
        return cls(
            tuple(order),
            tuple(params[i].numel() for i in order),
            tuple(parts[i].n_blocks for i in order),
            tuple(tuple(b) for b in buckets),
            tuple(bucket_blocks),
            first,
        )

    def blocks_tensor(self, device: torch.device) -> torch.Tensor:
        """Blocks per parameter, on `device` (made once: a host-to-device copy would wait for the device)."""
        key = ("blocks", device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.blocks, dtype=torch.long, device=device)
        return self._cache[key]


def _skip_flag(found_inf: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """found_inf (GradScaler's float 0/1 tensor) as a 0-dim bool on `device`, or None."""
    return None if found_inf is None else (found_inf.to(device).reshape(()) != 0)


def _unless(skip: torch.Tensor | None, value: float, on_skip: float):
    """`value`, or on the device `on_skip` where the step is skipped (a 0-dim tensor: no host sync)."""
    return value if skip is None else torch.where(skip, on_skip, value)


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """Bias corrections in float64 (a few numbers per parameter): 1 - beta^t cancels, and torch AdamW computes it in
    double."""
    return torch.float64


def _step_tensor(step, param: torch.Tensor) -> torch.Tensor:
    local = param.to_local() if _is_dtensor(param) else param
    return torch.as_tensor(step, dtype=torch.float32).detach().to(local.device).reshape(())


# --------------------------------------------------------------------------- FSDP2 shards
# Parameters are sharded on dim 0 (fully_shard's default), so a rank holds whole rows [offset, offset + rows).


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


def _check_sharding(name: str, param: torch.Tensor, part: Partition) -> None:
    from torch.distributed.tensor import Shard

    if param.device_mesh.ndim != 1 or tuple(param.placements) != (Shard(0),):
        raise ConfigError(
            f"Adam-mini: {name!r} is sharded as {list(param.placements)} over a {param.device_mesh.ndim}-D mesh; "
            "it supports FSDP2's default (Shard(0) on a 1-D mesh), so use fully_shard without a shard_placement_fn"
        )
    if part.kind == "adam" and param.dim() != 1:
        raise ConfigError(
            f"Adam-mini: per-coordinate state of the {param.dim()}-D {name!r} cannot be sharded; only 1-D biases use it"
        )


def _row_offset(param: torch.Tensor) -> int:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return int(offset[0])


def _sharded_v(param: torch.Tensor, part: Partition, full: torch.Tensor) -> torch.Tensor:
    """A full (n_blocks,) second moment in its layout for a sharded param: per-row/per-coordinate
    entries sharded like the param's rows, per-head/per-tensor entries replicated."""
    from torch.distributed.tensor import DTensor, Replicate

    if part.kind in ("adam", "row"):
        start, rows = _row_offset(param), param.to_local().shape[0]
        local = full[start : start + rows].clone()
        return DTensor.from_local(
            local, param.device_mesh, param.placements, shape=torch.Size([part.n_blocks]), stride=(1,)
        )
    return DTensor.from_local(
        full.clone(), param.device_mesh, [Replicate()], shape=torch.Size([part.n_blocks]), stride=(1,)
    )


def _local_row_blocks(param: torch.Tensor, part: Partition) -> torch.Tensor | None:
    """For per-head/per-tensor blocks: the block of each local row (blocks may straddle shards). None for
    per-row/per-coordinate blocks, which are the local rows themselves."""
    if part.kind in ("adam", "row"):
        return None
    local = param.to_local()
    rows_per_block = param.shape[0] // part.n_blocks
    return (_row_offset(param) + torch.arange(local.shape[0], device=local.device)) // rows_per_block


def _local_mean_squares(grad: torch.Tensor, part: Partition, blocks: torch.Tensor | None) -> torch.Tensor:
    """Per-row/per-coordinate blocks: the local means of g^2. Per-head/per-tensor (`blocks` given): this
    rank's partial sums of g^2 per block (all n_blocks entries; all-reduced by the caller)."""
    rows = grad.shape[0]
    flat = grad.reshape(rows, -1).float() if grad.numel() else grad.new_zeros(rows, 1, dtype=torch.float32)
    if part.kind == "adam":
        return flat.reshape(-1).square()
    if blocks is None:
        return flat.square().mean(dim=1)
    return flat.new_zeros(part.n_blocks).index_add_(0, blocks, flat.square().sum(dim=1))
