"""Data-parallel training over torchrun ranks: DDP or FSDP2, chosen by `train.parallelism`.

The trainer stays single-process code; this module supplies the few places where ranks meet:
process-group setup, wrapping the model, scalar all-reduce / broadcast, and checkpoint state.

Why the checkpoint helpers exist: under FSDP2 (`fully_shard`) every parameter and optimizer state
is a DTensor shard, so `model.state_dict()` is not something a single process can load. A
consolidated checkpoint gathers full tensors to CPU on every rank (rank 0 writes them) in exactly
the format of a single-process run, so any number of ranks (one included) can resume it. A sharded
checkpoint (`train.checkpoint_format: sharded`) writes each rank's shards with
torch.distributed.checkpoint (DCP) instead, which also reshards on load to a different rank count.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.optim import Optimizer

from hasten.errors import ConfigError, HastenError

if TYPE_CHECKING:
    from hasten.config import RunConfig

T = TypeVar("T")
DCP_DIR = "dcp"  # sub-directory of a sharded checkpoint holding the DCP files


@dataclass
class Distributed:
    """This process's place among the ranks (the defaults describe a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and torch_dist.is_available() and torch_dist.is_initialized()


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun described in RANK / WORLD_SIZE / LOCAL_RANK (a no-op without it).

    NCCL carries the CUDA collectives and gloo the CPU ones (a CPU-only run uses gloo alone); on
    CUDA the process is pinned to the GPU of its local rank before anything touches the device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
    backend = "cuda:nccl,cpu:gloo" if use_cuda else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
        atexit.register(shutdown)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the only rank that writes files and logs."""
    return not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_rank() == 0


def _active() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        torch_dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum float scalars over ranks (float64, so counts and loss sums stay exact)."""
    if not _active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (the logged train loss is the global mean, not rank 0's share)."""
    if _active():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= torch_dist.get_world_size()
    return tensor


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank `src`'s value on every rank (any picklable object)."""
    if not _active():
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_tensors_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank `src`'s values (e.g. freshly initialised weights)."""
    if _active():
        for tensor in tensors:
            torch_dist.broadcast(tensor.data, src=src)


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and share its result; a user error there is raised on every rank.

    Without this, rank 0 failing a check (bad run dir, corrupt checkpoint) would leave the other
    ranks waiting forever at their next collective.
    """
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except HastenError as err:
            error = err
    shared = broadcast_object((result, None if error is None else (type(error), str(error))))
    if error is not None:
        raise error
    if shared[1] is not None:
        cls, message = shared[1]
        raise cls(message)
    return shared[0]


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter for a non-final micro-batch (DDP or FSDP2)."""
    if not skip:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# --------------------------------------------------------------------------- wrapping


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_model(model: nn.Module, cfg: RunConfig, dist: Distributed, device: torch.device) -> nn.Module:
    """The module the training step calls: compiled and/or DDP- or FSDP2-wrapped.

    DDP returns a wrapper and leaves `model` (what state dicts and methods read) untouched. FSDP2
    shards `model` in place, each Block as its own unit and then the root (embeddings, final norm,
    head), so the optimizer must be built, or re-pointed with `rebind_optimizer`, after this call.
    """
    wrapped = model
    if dist.world_size > 1 and cfg.train.parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard

        if not is_fsdp(model):
            for block in getattr(model, "blocks", []):
                fully_shard(block)
            fully_shard(model)
    if cfg.train.compile:
        from hasten.methods.registry import enabled_methods

        # sequence length warmup changes the length every few steps: one dynamic graph, not a recompile per length
        dynamic = True if "seqlen_warmup" in enabled_methods(cfg) else None
        wrapped = torch.compile(wrapped, dynamic=dynamic)
    if dist.world_size > 1 and cfg.train.parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def rebind_optimizer(model: nn.Module, optimizer: Optimizer) -> Optimizer:
    """Point an optimizer built on a model's full parameters at the FSDP2 shards that replaced them.

    Growth builds the new optimizer (with its mapped state) on the unsharded grown model, then the
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
            raise ConfigError("FSDP needs optimizer param groups with param_names to follow the model; build it with hasten.optim.build_optimizer")
        new_params = []
        for name, old in zip(names, group["params"]):
            new = live[name]
            state = optimizer.state.get(old, {})
            if isinstance(new, DTensor):
                state = {
                    key: distribute_tensor(value.detach().to(new.device), new.device_mesh, new.placements)
                    if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == old.shape and value.dim() > 0
                    else value
                    for key, value in state.items()
                }
            if state:
                new_state[new] = state
            new_params.append(new)
        group["params"] = new_params
    optimizer.state.clear()
    optimizer.state.update(new_state)
    if hasattr(optimizer, "adopt_sharded_state"):  # Adam-mini: per-block v in its sharded layout
        optimizer.adopt_sharded_state()
    return optimizer


# --------------------------------------------------------------------------- checkpoint state


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
    """The full model state dict on CPU; a collective under FSDP (every rank calls it, rank 0 gets it, the others {})."""
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


def load_full_state(model: nn.Module, optimizer: Optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load a consolidated (single-process format) model + optimizer state into a possibly sharded pair."""
    if not is_fsdp(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_state, options=_options(True))
    load_full_optimizer_state(model, optimizer, optimizer_state)


# torch optimizer group keys that say how a step runs on this device, not what it computes
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def load_full_optimizer_state(model: nn.Module, optimizer: Optimizer, optimizer_state: dict, growth: bool = False) -> None:
    """Load a full (single-process format, id-keyed) optimizer state into an optimizer over FSDP2 shards.

    Every rank passes the same full state; DCP's set_optimizer_state_dict shards each tensor like its
    parameter. growth=True keeps the live groups' fused/foreach flags (growth maps a state built on a
    CPU copy into a GPU optimizer) and allows parameters without state (new tensors; DCP then gives
    them a zero-lr step's state, which the caller drops). A collective: every rank calls it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    order = _flat_names(optimizer)
    if order is None:
        raise ConfigError("FSDP resume needs optimizer param groups with param_names; build it with hasten.optim.build_optimizer")
    n_saved = sum(len(g["params"]) for g in optimizer_state["param_groups"])
    if n_saved != len(order):
        raise ValueError(f"checkpoint optimizer has {n_saved} parameters, this one {len(order)}")
    groups = []
    for live_group, saved in zip(optimizer.param_groups, optimizer_state["param_groups"]):
        group = {k: v for k, v in saved.items() if k != "params"}
        if growth:
            group.update({k: live_group[k] for k in IMPLEMENTATION_KEYS if k in live_group})
        groups.append({**group, "params": list(live_group["param_names"])})
    state = {order[int(i)]: value for i, value in optimizer_state["state"].items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, strict=not growth)
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
    from hasten.model import GPT

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
    if hasattr(model, "unit_masks"):  # growth's MSG masks, live during a ramp
        into.set_unit_masks(**model.unit_masks())
    into.requires_grad_(True)
    return into.train(model.training)


def full_optimizer_state_by_name(optimizer: Optimizer, device: torch.device | str = "cpu") -> dict[str, dict]:
    """Every parameter's optimizer state with full tensors on `device`, keyed by parameter name, on every rank.

    DTensor shards are all-gathered (a collective under FSDP: every rank calls it, in step);
    growth maps this state onto the grown model on every rank identically.
    """
    out: dict[str, dict] = {}
    for group in optimizer.param_groups:
        names = group.get("param_names")
        if names is None:
            raise ConfigError("growth under FSDP needs optimizer param groups with param_names; build it with hasten.optim.build_optimizer")
        for name, param in zip(names, group["params"]):
            state = optimizer.state.get(param)
            if state:
                out[name] = {k: _full_tensor(v, device) if torch.is_tensor(v) else v for k, v in state.items()}
    return out


def save_sharded(model: nn.Module, optimizer: Optimizer, directory: Path) -> None:
    """Every rank writes its own shards of model + optimizer into `directory` (DCP format); a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if is_main():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options(False))
    with warnings.catch_warnings():  # one process: DCP warns that it assumes a single process, which is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory), no_dist=not _active())
    barrier()


def load_sharded(model: nn.Module, optimizer: Optimizer, directory: Path) -> None:
    """Read a DCP checkpoint into model + optimizer, resharding to this run's ranks (one rank included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options(False))
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(directory), no_dist=not _active())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_options(False))


# ------------------------------------------------------------------------------------- `--nproc N` launcher
#
# `hasten train --nproc N` runs torch.distributed.run's agent in this process (no torchrun child), so
# its SIGTERM/SIGINT handling covers the workers directly: they get the signal and stop at the next
# step boundary with a checkpoint. Each worker dies with its launcher (PR_SET_PDEATHSIG), so not even a
# SIGKILL of the launcher leaves orphans. Workers report errors through files in REPORT_ENV instead of
# printing them, and the launcher prints the first user error once, without torchrun's traceback.

REPORT_ENV = "HASTEN_LAUNCH_REPORTS"  # folder where each worker writes rank<R>.json when it fails or stops
LAUNCHER_ENV = "HASTEN_LAUNCHER_PID"


def launched_worker() -> bool:
    """True in a worker of `hasten train --nproc` (not under a plain torchrun)."""
    return REPORT_ENV in os.environ and "RANK" in os.environ


def die_with_launcher() -> None:
    """In a launched worker: ask Linux to send SIGTERM when the launcher (our parent) dies."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher is None or not launched_worker() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def report_to_launcher(kind: str, message: str, code: int) -> None:
    """A worker's outcome for the launcher: kind error (a user error, one line), crash (a traceback) or stopped."""
    path = Path(os.environ[REPORT_ENV]) / f"rank{os.environ.get('RANK', '0')}.json"
    record = {"kind": kind, "message": message, "code": code, "time": time.time(), "rank": int(os.environ.get("RANK", "0"))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def launch(nproc: int, argv: list[str]) -> int:
    """`hasten train --nproc N ...`: re-run the same command on N local ranks; returns the exit code.

    2 with the workers' first user error printed once; 128+signal when stopped by SIGTERM/SIGINT (after the
    workers checkpointed); 1 with the first traceback when a worker crashed.
    """
    import logging
    import tempfile

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if nproc < 1:
        raise ConfigError(f"--nproc={nproc} must be >= 1")
    for name in list(logging.root.manager.loggerDict):  # the outcome is reported below, once (torch sets levels per logger)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    saved_env = {key: os.environ.get(key) for key in (REPORT_ENV, LAUNCHER_ENV, "OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="hasten-launch-") as reports:
        os.environ[REPORT_ENV] = reports
        os.environ[LAUNCHER_ENV] = str(os.getpid())
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks, without its warning
        args = torchrun.get_args_parser().parse_args(
            ["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.1", "-m", "hasten", *argv])
        code = 0
        try:
            torchrun.run(args)
        except ChildFailedError as err:
            code = max((f.exitcode for f in err.failures.values()), default=1) or 1
        except SignalException as err:
            code = 128 + int(err.sigval)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return _launch_outcome(Path(reports), code)


def _launch_outcome(reports: Path, code: int) -> int:
    records = []
    for path in reports.glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (r["time"], r["rank"]))
    for kind in ("error", "crash"):
        first = next((r for r in records if r["kind"] == kind), None)
        if first is not None:
            if kind == "crash":
                print(first["message"].rstrip(), file=sys.stderr)
                print(f"hasten: error: rank {first['rank']} crashed (traceback above)", file=sys.stderr)
                return 1
            print(f"hasten: error: {first['message']}", file=sys.stderr)
            return first["code"]
    stopped = next((r for r in records if r["kind"] == "stopped"), None)
    if stopped is not None:
        return stopped["code"]
    if code > 128:
        return code
    if code:
        print(f"hasten: error: a worker exited with code {code} without a report (killed?)", file=sys.stderr)
    return code
