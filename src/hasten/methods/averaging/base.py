"""What LAWA, EMA and SWA share: the protocol the trainer sees, state-dict key cleaning, safe evaluation.

Every averager here is evaluation-only: it reads the live weights and never writes them, so the
training trajectory (weights, optimizer state, RNG, losses) is bitwise the same with it on or off.
Averaged weights reach a model only through `averaged_model` (a separate copy) or `swapped_in`
(temporary, restored and checked bitwise).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# torch.compile wraps the module as `_orig_mod`, DDP / DataParallel as `module`; either may wrap the other.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

StateDictFn = Callable[[dict[str, Tensor]], Mapping[str, Tensor]]


def strip_wrapper_prefixes(key: str) -> str:
    """`module._orig_mod.blocks.0.attn.q_proj.weight` -> `blocks.0.attn.q_proj.weight`."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with wrapper prefixes removed, so its keys match the raw (unwrapped) model."""
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        raw = strip_wrapper_prefixes(key)
        if raw in cleaned:
            raise ValueError(
                f"state-dict keys {key!r} and another key both map to {raw!r} after stripping wrapper prefixes"
            )
        cleaned[raw] = value
    return cleaned


def unwrap_model(model: nn.Module) -> nn.Module:
    """The raw module under torch.compile (`_orig_mod`) and DDP/DataParallel (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def live_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with raw keys; the tensors alias the live weights, so copy before keeping them."""
    return clean_state_dict(unwrap_model(model).state_dict())


def build_averaged_model(model: nn.Module, averaged: Mapping[str, Tensor]) -> nn.Module:
    """A separate copy of `model` (unwrapped) holding `averaged`, in eval mode and without grads.

    The copy keeps the live model's dtype and device: the fp32 average is cast on load, which the
    LAWA paper's practice allows (sum in fp32, cast the mean back).
    """
    averaged_copy = copy.deepcopy(unwrap_model(model))
    averaged_copy.load_state_dict(averaged, strict=True)
    averaged_copy.requires_grad_(False)
    return averaged_copy.eval()


def weight_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """L2 distance over the floating-point tensors both state dicts share (for logging ||theta - theta_bar||)."""
    total = 0.0
    for key, tensor in a.items():
        other = b.get(key)
        if other is None or not tensor.is_floating_point():
            continue
        diff = tensor.detach().double().cpu() - other.detach().double().cpu()
        total += float(diff.square().sum())
    return total**0.5


@runtime_checkable
class WeightAverager(Protocol):
    """The small interface the trainer uses for LAWA, EMA and SWA alike.

    `step` is the number of completed optimizer steps (call after `optimizer.step()`); `tokens` is
    the cumulative number of training tokens (only LAWA with `unit="tokens"` needs it).
    """

    name: str

    @property
    def ready(self) -> bool:
        """True once there is something to evaluate."""
        ...

    def is_due(self, step: int, tokens: int | None = None) -> bool:
        """Whether `maybe_update` would fold the weights in now (FSDP gathers the weights only then)."""
        ...

    def maybe_update(self, step: int, model: nn.Module, tokens: int | None = None) -> bool:
        """Fold the live weights in if `step` is due; True when it did."""
        ...

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (fp32 for float tensors) with raw, unwrapped keys."""
        ...

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A separate copy of `model` carrying the averaged weights; the live model is untouched."""
        ...

    def reset(self, reason: str) -> None:
        """Forget everything averaged so far (e.g. after a change the average cannot follow)."""
        ...

    def transform(self, fn: StateDictFn, model: nn.Module | None = None) -> None:
        """Map the stored weights with `fn` (e.g. model growth); `model` is the new live model."""
        ...

    def stats(self) -> dict[str, float]:
        """Cheap numbers to log (members, steps covered, memory)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


@contextmanager
def swapped_in(averager: WeightAverager, model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily load the average into `model` in place, for evaluation when a second copy does not fit.

    On exit the live weights are restored and checked bitwise (raises RuntimeError on a mismatch),
    so a swap can never leak the average into training. Parameter objects are copied into, not
    replaced, so optimizer references stay valid.
    """
    target = unwrap_model(model)
    backup = {key: value.detach().clone() for key, value in target.state_dict().items()}
    averaged = averager.averaged_state_dict()
    try:
        target.load_state_dict(averaged, strict=True)
        yield model
    finally:
        target.load_state_dict(backup, strict=True)
        for key, value in target.state_dict().items():
            if not torch.equal(value, backup[key]):
                raise RuntimeError(f"{averager.name}: live weight {key!r} differs after swapping the average out")
