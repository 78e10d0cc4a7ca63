"""Model and optimizer state across ranks: full (consolidated) copies from FSDP2 shards and back.

Under FSDP2 (`fully_shard`) every parameter and optimizer state is a DTensor shard, so
`model.state_dict()` is not something a single process can load. A consolidated checkpoint gathers
full tensors to CPU (rank 0 writes them) in exactly the format of a single-process run, so any number
of ranks (one included) can resume it. A change of the model's shape mid-run gathers the same way, changes one
plain copy on every rank and shards the result again. hasten.parallel.strategy picks these for FSDP and the plain
state dicts otherwise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from hasten.errors import ConfigError
from hasten.model import GPT


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(full: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _flat_names(optimizer: Optimizer) -> list[str] | None:
    names: list[str] = []
    for group in optimizer.param_groups:
        if group.get("param_names") is None:
            return None
        names.extend(group["param_names"])
    return names


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full model state dict on CPU; a collective under FSDP (every rank calls it, rank 0 gets it, the others
    {})."""
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def full_optimizer_state(model: nn.Module, optimizer: Optimizer) -> dict:
    """The full optimizer state in torch's ordinary id-keyed form, so a single process can load it.

    DCP returns it keyed by parameter name; ids are re-assigned in the optimizer's own group order
    (the order `Optimizer.state_dict` numbers them), so the result equals a single-process save.
    """
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_options(True))
    if not named:  # with cpu_offload only rank 0 receives the gathered state
        return {}
    order = _flat_names(optimizer) or [name for group in named["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = []
    for live_group, saved in zip(optimizer.param_groups, named["param_groups"]):
        group = {k: v for k, v in saved.items() if k != "params"}
        names = live_group.get("param_names", saved["params"])
        group["params"] = [index[n] for n in names]
        groups.append(group)
    return {"state": {index[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def load_full_model_state(model: nn.Module, model_state: dict) -> None:
    """Load a consolidated (single-process format) model state into a possibly sharded model (a collective under
    FSDP)."""
    if not is_fsdp(model):
        model.load_state_dict(model_state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_state, options=_options(True))


# torch optimizer group keys that say how a step runs on this device, not what it computes
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def load_full_optimizer_state(
    model: nn.Module, optimizer: Optimizer, optimizer_state: dict, mapped: bool = False
) -> None:
    """Load a full (single-process format, id-keyed) optimizer state into an optimizer over FSDP2 shards.

    Every rank passes the same full state; DCP's set_optimizer_state_dict shards each tensor like its
    parameter. mapped=True (a state mapped onto a model of a new shape, built on a CPU copy, into a GPU
    optimizer) keeps the live groups' fused/foreach flags and allows parameters without state (new tensors;
    DCP then gives them a zero-lr step's state, which the caller drops). A collective: every rank calls it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    order = _flat_names(optimizer)
    if order is None:
        raise ConfigError(
            "FSDP resume needs optimizer param groups with param_names; build it with hasten.optim.build_optimizer"
        )
    n_saved = sum(len(g["params"]) for g in optimizer_state["param_groups"])
    if n_saved != len(order):
        raise ValueError(f"checkpoint optimizer has {n_saved} parameters, this one {len(order)}")
    groups = []
    for live_group, saved in zip(optimizer.param_groups, optimizer_state["param_groups"]):
        group = {k: v for k, v in saved.items() if k != "params"}
        if mapped:
            group.update({k: live_group[k] for k in IMPLEMENTATION_KEYS if k in live_group})
        groups.append({**group, "params": list(live_group["param_names"])})
    state = {order[int(i)]: value for i, value in optimizer_state["state"].items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, strict=not mapped)
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)


def _full_tensor(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A DTensor shard gathered whole (a collective), or a plain tensor copied, on `device`."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach().to(device, copy=True)


@torch.no_grad()
def unsharded_copy(model: nn.Module, device: torch.device | str = "cpu", into: nn.Module | None = None) -> nn.Module:
    """A plain (unsharded) GPT holding `model`'s full weights on `device`, identical on every rank.

    Under FSDP2 each parameter is all-gathered one at a time (every rank must call this, in step), so
    the accelerator holds at most one full tensor beyond its shards. `into` (a plain model of the
    same config, e.g. the previous copy) is refilled in place instead of building a new one.
    Without FSDP the copy is a plain deep copy of the weights.
    """
    if into is None or into.config.to_dict() != model.config.to_dict():
        with torch.device("meta"):
            into = GPT(model.config)
        into = into.to_empty(device=device)
    target = dict(into.named_parameters())
    for name, param in model.named_parameters():
        target[name].copy_(_full_tensor(param, target[name].device))
    target_buffers = dict(into.named_buffers())
    for name, buffer in model.named_buffers():  # RoPE tables: not sharded, not persistent (to_empty left them garbage)
        if name in target_buffers:
            target_buffers[name].copy_(buffer.detach())
    into.requires_grad_(True)
    return into.train(model.training)


def full_optimizer_state_by_name(optimizer: Optimizer, device: torch.device | str = "cpu") -> dict[str, dict]:
    """Every parameter's optimizer state with full tensors on `device`, keyed by parameter name, on every rank.

    DTensor shards are all-gathered (a collective under FSDP: every rank calls it, in step);
    a change of the model's shape maps this state onto the new model on every rank identically.
    """
    out: dict[str, dict] = {}
    for group in optimizer.param_groups:
        names = group.get("param_names")
        if names is None:
            raise ConfigError(
                "a new model shape under FSDP needs optimizer param groups with param_names; build it "
                "with hasten.optim.build_optimizer"
            )
        for name, param in zip(names, group["params"]):
            state = optimizer.state.get(param)
            if state:
                out[name] = {k: _full_tensor(v, device) if torch.is_tensor(v) else v for k, v in state.items()}
    return out


def rebind_optimizer(model: nn.Module, optimizer: Optimizer) -> Optimizer:
    """Point an optimizer built on a model's full parameters at the FSDP2 shards that replaced them.

    A new model shape gets its optimizer (with its mapped state) built on the unsharded model, then the
    trainer wraps it; `fully_shard` swaps every parameter for a DTensor, so the optimizer's params
    and state are re-keyed by the names in its groups (`param_names`) and the state is sharded the
    same way as each parameter. A no-op when the optimizer already holds the model's parameters.
    """
    live = dict(model.named_parameters())
    live_ids = {id(p) for p in live.values()}
    if all(id(p) in live_ids for group in optimizer.param_groups for p in group["params"]):
        return optimizer
    from torch.distributed.tensor import DTensor, distribute_tensor

    new_state: dict = {}
    for group in optimizer.param_groups:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ConfigError(
                "FSDP needs optimizer param groups with param_names to follow the model; "
                "build it with hasten.optim.build_optimizer"
            )
        new_params = []
        for name, old in zip(names, group["params"]):
            new = live[name]
            state = optimizer.state.get(old, {})
            if isinstance(new, DTensor):
                state = {
                    key: distribute_tensor(value.detach().to(new.device), new.device_mesh, new.placements)
                    if torch.is_tensor(value)
                    and not isinstance(value, DTensor)
                    and value.shape == old.shape
                    and value.dim() > 0
                    else value
                    for key, value in state.items()
                }
            if state:
                new_state[new] = state
            new_params.append(new)
        group["params"] = new_params
    optimizer.state.clear()
    optimizer.state.update(new_state)
    if hasattr(optimizer, "adopt_sharded_state"):  # state that is not elementwise is re-laid for the shards
        optimizer.adopt_sharded_state()
    return optimizer
