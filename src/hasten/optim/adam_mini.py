"""Adam-mini (Zhang et al., ICLR 2025, arXiv 2406.16793): AdamW with one second moment per block.

Every parameter keeps AdamW's full first moment m, but the second moment v is a single scalar per
*block* of coordinates, so optimizer state shrinks to about half of AdamW's:

    m   <- b1 * m + (1 - b1) * g                      (elementwise)
    v_b <- b2 * v_b + (1 - b2) * mean_{i in b}(g_i^2)  (one scalar per block b)
    p   <- p * (1 - lr * wd)                          (decoupled decay, first, as torch AdamW)
    p   <- p - lr / (1 - b1^t) * m / (sqrt(v_b) / sqrt(1 - b2^t) + eps)

The bias corrections and the eps placement are torch AdamW's, so a partition of one coordinate per
block reproduces torch.optim.AdamW.

Partition (Zhang et al. 2024, arXiv 2406.16793; the same as the adam-mini 1.1.1 package for LLaMA-style names), decided
from hasten's block classification (hasten.optim.blocks) plus the tensor's shape, never from
substring guesses, so an unknown parameter is a ConfigError instead of a silent one-scalar fallback:

    bias (any block)          full Adam: one v per coordinate
    qk weight                 one v per attention head: Q has n_heads, K has n_kv_heads (GQA)
    emb / head / vo / ffn     one v per output row (token for embeddings/head, neuron otherwise)
    norm, pos_emb             one v for the whole tensor

State per parameter: `step` (a 0-dim float32 tensor on the parameter's device, like torch AdamW's
fused/capturable step), `exp_avg` (the parameter's shape) and `exp_avg_sq` (1-D, one entry per block,
so its length is the number of blocks). The state is ordinary tensors, so torch's
state_dict/load_state_dict round-trips it.

The update runs as batched kernels with no host sync, for all param groups at once (they differ only
in lr and weight decay): the gradients are gathered into one flat buffer ordered by block size, so the
block means of g^2 are one reduction per distinct block size (not one per tensor); m, v, the steps
and the parameters are updated with torch's `_foreach_*` ops; bias corrections are computed on the
device from the step tensors. The optimizer
takes the `found_inf` (and `grad_scale`) attributes of torch's GradScaler protocol, like torch's fused
AdamW: a step with `found_inf` = 1 leaves every parameter and state tensor as it was, decided on the
device (hasten's guard uses this to skip non-finite steps without a host sync).

Under FSDP2 (parameters are DTensors sharded on dim 0 over a 1-D mesh) the state lives per shard:
m is sharded like its parameter; per-row and per-coordinate v are sharded the same way (whole rows
are local, so their means need no communication); per-head and per-tensor v are tiny and replicated,
and their mean squares are summed over the ranks with one all-reduce per param group, so heads may
straddle shard boundaries. Every v is a DTensor, so DCP saves, reshards and restores it like AdamW's
state, and the update equals the single-process one up to the summation order.

After model growth: the partition is computed per parameter when a param group is added (at
construction or by `add_param_group`) from its name and shape. New parameter tensors (a grown model
and its new optimizer, or a new param group) start from fresh state (step 0, zero moments). If a
parameter is resized *in place*, `step` raises until `rebuild_partition()` is called; that method
recomputes every partition from the current shapes (optionally with new head counts) and drops the
state of any parameter whose state no longer fits, so that parameter restarts fresh.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hasten.errors import CheckpointError, ConfigError
from hasten.optim.adam_mini_layout import (
    BROADCAST_DEVICES,
    PARTITION_KINDS,
    Partition,
    _check_sharding,
    _is_dtensor,
    _local_mean_squares,
    _local_row_blocks,
    _math_dtype,
    _Plan,
    _sharded_v,
    _skip_flag,
    _step_tensor,
    _unless,
    partition_for,
)
from hasten.optim.blocks import classify_param
from hasten.optim.flops import adam_mini_step_flops


class AdamMini(torch.optim.Optimizer):
    """Adam-mini over param groups that carry `param_names` (parallel to `params`).

    Groups may carry extra keys (block, lr_ratio, ...) that pass through untouched, so the output of
    `hasten.optim.blockwise.blockwise_param_groups` plugs in directly (Adam-mini + Blockwise LR).
    `block_overrides` are the same fnmatch overrides given to the block classifier.
    """

    def __init__(
        self,
        param_groups: list[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        n_heads: int,
        n_kv_heads: int | None = None,
        block_overrides: dict[str, str] | None = None,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(
                f"Adam-mini: invalid hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}"
            )
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ConfigError(f"Adam-mini: n_heads={n_heads} must be a positive multiple of n_kv_heads={n_kv_heads}")
        # set before super().__init__, which calls add_param_group for every group
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.block_overrides = dict(block_overrides or {})
        self._partitions: dict[torch.Tensor, Partition] = {}
        self._plans: dict[
            tuple, tuple[tuple, _Plan]
        ] = {}  # per (device, dtype, betas, eps): the flat layout of the gradients
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(param_groups, defaults)
        self._step_supports_amp_scaling = True  # honours `found_inf` / `grad_scale` (see the module docstring)

    # -- partition -----------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)  # also turns (name, tensor) pairs into param_names
        try:
            self._partition_group(self.param_groups[-1])
        except ConfigError:
            self.param_groups.pop()  # leave the optimizer as it was
            raise

    def _partition_group(self, group: dict) -> None:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ConfigError(
                "Adam-mini: every param group needs `param_names` parallel to `params` (use blockwise_param_groups)"
            )
        for name, param in zip(names, group["params"]):
            block = classify_param(name, self.block_overrides)
            if group.get("block", block) != block:
                raise ConfigError(
                    f"Adam-mini: {name!r} is in a group for block {group['block']!r} but classifies as {block!r}; "
                    "pass the same block_overrides to the optimizer as to blockwise_param_groups"
                )
            part = partition_for(name, block, tuple(param.shape), self.n_heads, self.n_kv_heads)
            if _is_dtensor(param):
                _check_sharding(name, param, part)
            self._partitions[param] = part

    def partition(self, param: torch.Tensor) -> Partition:
        part = self._partitions[param]
        if tuple(param.shape) != part.shape:
            raise ConfigError(
                f"Adam-mini: a parameter changed shape from {list(part.shape)} to {list(param.shape)}; "
                "call optimizer.rebuild_partition()"
            )
        return part

    def partition_summary(self) -> dict[str, int]:
        """Tensors per partition kind and the total number of second-moment entries, for the run log."""
        summary = dict.fromkeys(PARTITION_KINDS, 0)
        summary["v_entries"] = 0
        for part in self._partitions.values():
            summary[part.kind] += 1
            summary["v_entries"] += part.n_blocks
        return summary

    def rebuild_partition(self, n_heads: int | None = None, n_kv_heads: int | None = None) -> list[str]:
        """Recompute every partition from current names and shapes; returns the names whose state was reset."""
        if n_heads is not None:
            self.n_heads = n_heads
            self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        elif n_kv_heads is not None:
            self.n_kv_heads = n_kv_heads
        self._partitions, self._plans = {}, {}
        reset = []
        for group in self.param_groups:
            self._partition_group(group)
            for name, param in zip(group["param_names"], group["params"]):
                if param in self.state and not self._state_fits(param):
                    del self.state[param]
                    reset.append(name)
        return reset

    def adopt_sharded_state(self) -> None:
        """After params were swapped for FSDP2 shards (distributed.rebind_optimizer): re-key the partition and
        put every full per-block v into its sharded layout."""
        self._partitions, self._plans = {}, {}
        for group in self.param_groups:
            self._partition_group(group)
            for param in group["params"]:
                state = self.state.get(param)
                if state and _is_dtensor(param) and not _is_dtensor(state["exp_avg_sq"]):
                    state["exp_avg_sq"] = _sharded_v(
                        param, self._partitions[param], state["exp_avg_sq"].to(param.to_local().device)
                    )

    def _state_fits(self, param: torch.Tensor) -> bool:
        state = self.state[param]
        part = self._partitions[param]
        return state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == (part.n_blocks,)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # saved param_names replace the current ones, so re-derive the partition and check the state fits it
        self._partitions, self._plans = {}, {}
        for group in self.param_groups:
            self._partition_group(group)
            for name, param in zip(group["param_names"], group["params"]):
                if param in self.state and not self._state_fits(param):
                    raise CheckpointError(
                        f"Adam-mini checkpoint state for {name!r} does not fit the model's parameter; "
                        "load a matching checkpoint"
                    )
                if (
                    param in self.state
                ):  # a step saved elsewhere (or as an int by older versions) lives on the param's device
                    self.state[param]["step"] = _step_tensor(self.state[param]["step"], param)

    # -- update --------------------------------------------------------------------------------

    def step_flops(self) -> float:
        """FLOPs of one step (hasten.optim.flops)."""
        return adam_mini_step_flops([p for group in self.param_groups for p in group["params"] if p.requires_grad])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # check every partition first, so a stale one cannot leave a half-applied step
            for param in group["params"]:
                if param.grad is not None:
                    self.partition(param)
        found_inf, grad_scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        batches: dict[tuple, list[tuple[torch.Tensor, dict, dict]]] = {}
        for group in self.param_groups:
            if any(_is_dtensor(p) for p in group["params"]):
                self._step_group_sharded(group, found_inf, grad_scale)
                continue
            for param, state in self._with_state(group):  # every group at once: the per-group part is only lr and decay
                batches.setdefault((param.device, param.dtype, tuple(group["betas"]), group["eps"]), []).append(
                    (param, state, group)
                )
        for key, items in batches.items():
            self._update(key, items, found_inf, grad_scale)
        return loss

    def _with_state(self, group: dict) -> list[tuple[torch.Tensor, dict]]:
        """(param, state) of the group's params that have a gradient; state is created on first use."""
        out = []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("Adam-mini does not support sparse gradients")
            state = self.state[param]
            if not state:
                part = self._partitions[param]
                local = param.to_local() if _is_dtensor(param) else param
                state["step"] = torch.zeros((), dtype=torch.float32, device=local.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = (
                    _sharded_v(param, part, local.new_zeros(part.n_blocks))
                    if _is_dtensor(param)
                    else param.new_zeros(part.n_blocks)
                )
            out.append((param, state))
        return out

    def _plan(self, key: tuple, params: list[torch.Tensor]) -> _Plan:
        ident = tuple((id(p), p.shape) for p in params)
        cached = self._plans.get(key)
        if cached is None or cached[0] != ident:
            cached = (ident, _Plan.build(params, [self._partitions[p] for p in params]))
            self._plans[key] = cached
        return cached[1]

    def _update(self, key: tuple, items: list, found_inf: torch.Tensor | None, grad_scale: torch.Tensor | None) -> None:
        """One batched update of params that share device, dtype, betas and eps (normally all of them)."""
        device, _, (beta1, beta2), eps = key
        plan = self._plan(key, [param for param, _, _ in items])
        params = [items[i][0] for i in plan.order]
        states = [items[i][1] for i in plan.order]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        by_group: dict[int, tuple[dict, list[int]]] = {}  # param groups differ only in lr and weight decay
        for position, i in enumerate(plan.order):
            by_group.setdefault(id(items[i][2]), (items[i][2], []))[1].append(position)
        skip = _skip_flag(found_inf, device)

        for group, positions in by_group.values():  # decoupled decay first, as torch AdamW
            if group["weight_decay"] != 0:
                torch._foreach_mul_(
                    [params[j] for j in positions], _unless(skip, 1 - group["lr"] * group["weight_decay"], 1.0)
                )
        # the gradients as one flat buffer in the plan's order (fp32 for low precision), zero on a skipped step
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # a low-precision mean of squares loses the small entries
        if grad_scale is not None:
            flat.div_(grad_scale.to(device))
        if skip is not None:  # a skipped step's gradients may be NaN/Inf: zero them (x 0, then NaN -> 0)
            flat.mul_(~skip).nan_to_num_(0.0, 0.0, 0.0)
        grads = [g.view_as(p) for g, p in zip(flat.split(plan.numels), params)]

        torch._foreach_mul_(exp_avgs, _unless(skip, beta1, 1.0))  # m <- b1 m + (1 - b1) g
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        # v_b <- b2 v_b + (1 - b2) mean_b(g^2): one reduction per block size, mean_b(g^2) = |g_b|^2 / size
        means = torch.cat(
            [
                torch.linalg.vector_norm(flat[a:b].view(-1, size), dim=1).square_().div_(size)
                for a, b, size in plan.buckets
            ]
        )
        torch._foreach_mul_(exp_avg_sqs, _unless(skip, beta2, 1.0))
        torch._foreach_add_(exp_avg_sqs, list(means.split(plan.blocks)), alpha=1 - beta2)

        steps = [
            s["step"] for s in states
        ]  # (a list of 0-dim tensors: the single-tensor overload reads it on the host)
        torch._foreach_add_(steps, 1.0 if skip is None else [(~skip).float()] * len(steps))
        # bias corrections per parameter on the device, in float64 (1 - beta^t cancels); a skipped first step keeps
        # t = 0
        t = torch.stack(steps).double().clamp_min(1)
        correction1 = 1 - torch.pow(beta1, t)
        if skip is not None:
            correction1 = correction1 / (~skip)  # inf on a skipped step: the update below adds m / inf = 0
        per_param = torch.stack([(1 - torch.pow(beta2, t)).sqrt(), correction1])
        v = torch.cat(exp_avg_sqs)
        per_block = per_param.to(v.dtype).repeat_interleave(
            plan.blocks_tensor(device), dim=1, output_size=plan.total_blocks
        )
        # p -= lr / bias_correction1 * m / (sqrt(v_b) / sqrt(bias_correction2) + eps): bias_correction1 goes into the
        # denominator
        denom = v.sqrt().div_(per_block[0]).add_(eps).mul_(per_block[1])
        if (
            device.type in BROADCAST_DEVICES
        ):  # foreach runs tensor by tensor here: broadcast each block's denominator over its row
            rows = [d.unsqueeze(1) for d in denom.split(plan.blocks)]
            targets = [
                (params[j].view(plan.blocks[j], -1), exp_avgs[j].view(plan.blocks[j], -1), rows[j])
                for j in range(len(params))
            ]
        else:  # torch's multi-tensor kernels need equal shapes: spread the denominators over the coordinates
            # (one extra pass)
            spread = torch.empty_like(flat, dtype=denom.dtype)
            for (a, b, size), (c, d) in zip(plan.buckets, plan.bucket_blocks):
                spread[a:b].view(-1, size).copy_(denom[c:d].unsqueeze(1))
            targets = [(p, m, x.view_as(p)) for p, m, x in zip(params, exp_avgs, spread.split(plan.numels))]
        for group, positions in by_group.values():
            torch._foreach_addcdiv_(*([targets[j][k] for j in positions] for k in range(3)), value=-group["lr"])

    def _step_group_sharded(self, group: dict, found_inf: torch.Tensor | None, grad_scale: torch.Tensor | None) -> None:
        """The same update on FSDP2 shards: local math, one all-reduce for the per-head/per-tensor blocks."""
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        items = []  # (param, local param, local grad, state, partition, block of each local row or None)
        for param, state in self._with_state(group):
            part = self.partition(param)
            grad = param.grad.to_local()
            if grad_scale is not None:
                grad = grad / grad_scale.to(grad.device)
            skip = _skip_flag(found_inf, grad.device)
            if skip is not None:
                grad = torch.where(skip, 0.0, grad)
            items.append((param, param.to_local(), grad, state, part, _local_row_blocks(param, part)))
        if not items:
            return
        skip = _skip_flag(found_inf, items[0][1].device)
        if weight_decay != 0:
            torch._foreach_mul_([local for _, local, *_ in items], _unless(skip, 1 - lr * weight_decay, 1.0))
        exp_avgs = [state["exp_avg"].to_local() for _, _, _, state, _, _ in items]
        torch._foreach_mul_(exp_avgs, _unless(skip, beta1, 1.0))
        torch._foreach_add_(exp_avgs, [grad for _, _, grad, *_ in items], alpha=1 - beta1)

        mean_squares = [_local_mean_squares(grad, part, blocks) for _, _, grad, _, part, blocks in items]
        replicated = [i for i, (*_, blocks) in enumerate(items) if blocks is not None]
        if replicated:  # per-rank partial sums of g^2 per block -> one all-reduce -> block means
            sums = torch.cat([mean_squares[i] for i in replicated])
            torch.distributed.all_reduce(sums, group=items[0][0].device_mesh.get_group())
            for i, block_sums in zip(replicated, sums.split([items[i][4].n_blocks for i in replicated])):
                param, part = items[i][0], items[i][4]
                mean_squares[i] = block_sums / (param.numel() // part.n_blocks)

        keep = 1.0 if skip is None else (~skip).float()
        for (_, local, _, state, _, blocks), exp_avg, mean_square in zip(items, exp_avgs, mean_squares):
            state["step"] += keep
            exp_avg_sq = state["exp_avg_sq"].to_local()
            exp_avg_sq.mul_(_unless(skip, beta2, 1.0)).add_(mean_square.to(exp_avg_sq.dtype), alpha=1 - beta2)
            if local.numel() == 0:  # an uneven split can leave a rank no rows of this tensor
                continue
            t = state["step"].to(_math_dtype(exp_avg_sq.dtype)).clamp_min(1)
            step_size = -lr / (1 - torch.pow(beta1, t)) * keep
            v = exp_avg_sq if blocks is None else exp_avg_sq[blocks]  # per-head/per-tensor v: each local row's block
            denom = (
                (v.sqrt() / (1 - torch.pow(beta2, t)).sqrt().to(v.dtype))
                .add_(eps)
                .div_(step_size.to(v.dtype))
                .unsqueeze(1)
            )
            rows = denom.shape[0]
            local.view(rows, -1).addcdiv_(exp_avg.view(rows, -1), denom)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state tensors (moments and tensor step counters) on this rank; works for any
    torch optimizer (FSDP2 shards count their local part).

    State is created lazily, so call it after the first step.
    """
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if _is_dtensor(value) else value
                total += local.numel() * local.element_size()
    return total
