"""MSG's unit masks, put on a GPT from outside by forward hooks: the model itself knows no masks.

    set_unit_masks(model, hidden=..., heads=..., ffn=...)   # per-unit factors in [0, 1] on the width axes
    unit_masks(model)                                       # the masks in force (None where unset)
    set_unit_masks(model)                                   # none: the hooks are removed, the forward is plain again

hidden (d_model) multiplies the first block's input (the embedding output), every residual-branch output
(attention and MLP) and every norm's output, and weights the norms' statistics; heads (n_heads) multiplies each
head's attention output before o_proj (o_proj's input, head_dim entries per head); ffn (d_ff) multiplies the MLP
activation before down_proj. With new units at 0 a grown model computes exactly what the small one did.

Each hooked module carries its mask as a non-persistent buffer (MASK), which its hook reads: state dicts never
contain it, `.to()` moves it, and a deep copy of the model (a weight average's copy) keeps hooks and masks
together. The hooks are removed when the masks are; a copy's hooks, whose handles belong to its original, stay
as no-ops (buffer None).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hasten.errors import ConfigError
from hasten.model import GPT, MLP, Attention, Norm

MASK = "msg_unit_mask"  # the buffer each hooked module reads its mask from
_HANDLES: weakref.WeakKeyDictionary[nn.Module, list[RemovableHandle]] = weakref.WeakKeyDictionary()


def _scale_input(module: nn.Module, args: tuple):
    mask = getattr(module, MASK)
    if mask is None:
        return None
    x, *rest = args
    return (x * mask.to(x.dtype), *rest)


def _scale_output(module: nn.Module, args: tuple, output: torch.Tensor):
    mask = getattr(module, MASK)
    return None if mask is None else output * mask.to(output.dtype)


def _masked_norm(module: Norm, args: tuple, output: torch.Tensor):
    """The norm over the live units only, weighted by the mask m, times m: mean = sum(m x) / sum(m) and
    var = sum(m (x - mean)^2) / sum(m) (LayerNorm), mean square = sum(m x^2) / sum(m) (RMSNorm). With a 0/1 mask
    this is exactly the small model's norm; for RMSNorm it is MSG's rescaling by sqrt(mask.sum() / dim)."""
    mask = getattr(module, MASK)
    if mask is None:
        return None
    x = args[0]
    mask = mask.to(x.dtype)
    count = mask.sum()
    if module.kind == "layernorm":
        x = x - (x * mask).sum(-1, keepdim=True) / count
    y = x * torch.rsqrt((x.square() * mask).sum(-1, keepdim=True) / count + module.eps) * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y * mask


def _hooked(model: GPT) -> list[tuple[nn.Module, str]]:
    """Every module that gets a mask, with the axis it reads ("heads" is o_proj's input, head_dim entries per head)."""
    out: list[tuple[nn.Module, str]] = [(model.blocks[0], "hidden")]
    for module in model.modules():
        if isinstance(module, (Norm, Attention, MLP)):
            out.append((module, "hidden"))
        if isinstance(module, Attention):
            out.append((module.o_proj, "heads"))
        elif isinstance(module, MLP):
            out.append((module.down_proj, "ffn"))
    return out


def _install(model: GPT) -> None:
    handles = []
    for module, _ in _hooked(model):
        module.register_buffer(MASK, None, persistent=False)
        if isinstance(module, Norm):
            handles.append(module.register_forward_hook(_masked_norm))
        elif isinstance(module, (Attention, MLP)):
            handles.append(module.register_forward_hook(_scale_output))
        else:  # the first block and the output projections: their input
            handles.append(module.register_forward_pre_hook(_scale_input))
    _HANDLES[model] = handles


def set_unit_masks(
    model: GPT, hidden: torch.Tensor | None = None, heads: torch.Tensor | None = None, ffn: torch.Tensor | None = None
) -> None:
    """Put MSG's masks on `model` (moved to its device), or take them off when all are None (the plain forward again).

    Masks are copied between models on any devices with `set_unit_masks(other, **unit_masks(model))`.
    """
    cfg = model.config
    for name, mask, size in (("hidden", hidden, cfg.d_model), ("heads", heads, cfg.n_heads), ("ffn", ffn, cfg.d_ff)):
        if mask is not None and tuple(mask.shape) != (size,):
            raise ConfigError(f"unit mask {name!r} has shape {tuple(mask.shape)}; this model needs ({size},)")
    if hidden is None and heads is None and ffn is None:
        remove_unit_masks(model)
        return
    if not hasattr(model.blocks[0], MASK):
        _install(model)
    device = model.embed_tokens.weight.device
    masks = {
        axis: None if mask is None else mask.detach().to(device) for axis, mask in (("hidden", hidden), ("ffn", ffn))
    }
    masks["heads"] = None if heads is None else heads.detach().to(device).repeat_interleave(cfg.head_dim)
    for module, axis in _hooked(model):
        setattr(module, MASK, masks[axis])


def remove_unit_masks(model: GPT) -> None:
    """Take the masks and their hooks off `model` (a copy's hooks stay, as no-ops)."""
    handles = _HANDLES.pop(model, None)
    for module, _ in _hooked(model):
        if not hasattr(module, MASK):
            continue
        if handles is None:
            setattr(module, MASK, None)
        else:
            delattr(module, MASK)
    for handle in handles or []:
        handle.remove()


def unit_masks(model: GPT) -> dict[str, torch.Tensor | None]:
    """The masks in force on `model` (None where unset)."""
    first = model.blocks[0]
    if not hasattr(first, MASK):
        return {"hidden": None, "heads": None, "ffn": None}
    heads = getattr(first.attn.o_proj, MASK)
    return {
        "hidden": getattr(first, MASK),
        "heads": None if heads is None else heads[:: model.config.head_dim],
        "ffn": getattr(first.mlp.down_proj, MASK),
    }


def has_unit_masks(model: GPT) -> bool:
    return any(mask is not None for mask in unit_masks(model).values())
