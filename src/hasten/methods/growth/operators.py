"""Model-growth operators: a small GPT becomes a bigger GPT, deeper (G_stack and friends) or wider (staged).

An operator is a *plan*: the grown ModelConfig plus one `TensorRecipe` per target tensor name that
says how to build that tensor from one tensor of the small model. Because the recipe works on any
tensor with the source parameter's shape, the same plan maps parameters and the optimizer's moments
(state.py), so weights and Adam state can never disagree about where a unit went.

Depth (factor g, any integer >= 2; target layer count g * L):
  stack        target layer i <- small layer i mod L (G_stack, Du et al. 2024, arXiv 2405.15319). Not FP.
  interpolate  target layer i <- small layer i // g (each layer g times in a row; Shen et al.'s "alternate").
  zero         interleaved copies; in every duplicate (i mod g != 0) o_proj and down_proj (weight and bias)
               are zero, so the duplicate block is the identity on the pre-norm residual stream: function
               preserving (G_zero).
  random       small layer j sits at target position j * g; the g - 1 layers after it are freshly
               initialised with the model's own init (G_random without a mask; see README).

Width (factor k; every width axis grows by k: d_model, heads, kv heads, d_ff; head_dim stays fixed):
  staged  Shen et al. 2022 (arXiv 2203.06211) function-preserving doubling, any integer k >= 2. With the
          hidden state h -> [h, h, ...] (k copies):
          * every Linear becomes block-diagonal diag(W, W, ...) so [x, x] -> [Wx, Wx]; biases repeat;
          * q/k/v rows are laid out as whole heads: heads 0..H-1 act on copy 0, H..2H-1 on copy 1, ...
            head_dim is unchanged, so the 1/sqrt(head_dim) scale and RoPE's per-head rotation tables are
            the same and every head computes exactly what it computed before;
          * GQA: kv heads grow by k too. Query head c*H + h uses kv head (c*H + h) // r = c*H_kv + h // r,
            which is copy c of the kv head query head h used, because H = r * H_kv and r is unchanged;
          * SwiGLU: gate, up (rows) and down (columns) are block-diagonal over d_ff copies, so
            silu(gate) * up is computed per copy and down maps it back per copy;
          * LayerNorm: mean and variance of [h, h] equal those of h, so gains/biases just repeat;
            RMSNorm: rms([h, h]) = rms(h) (eps included), so repeating the gains is exact too;
          * final norm: gains (and bias) are repeated and divided by k, giving [z/k, z/k, ...]. The head
            is repeated along its input axis, [W, W, ...], so logits = sum_c W z / k = W z. This is the
            same rule for the tied gpt2 head (embedding [E, E] serves as the head) and the untied llama
            lm_head; dividing the head instead would break tying, so the division lives in the norm.
  direct  bert2BERT / Net2Net neuron split: target unit u copies small unit u mod n on every axis; weights
          are divided by the copy count on their *input* axis (so sums over copies equal the original sum),
          embeddings and head are copied, and the final norm is divided per unit by its copy count (as in
          staged). Function preserving for integer k (every unit has the same count, so norm statistics
          are unchanged); approximately FP for fractional k (norm statistics see uneven copies).
  zero    G_zero width (prts `zero.py`): new *output* rows are zero, new *input* columns are freshly
          initialised, so new units output exactly 0 but still receive gradients. New norm gains take the
          init value 1 (not 0: a zero gain would block every gradient to the new hidden units forever).
          RMSNorm gains are scaled by sqrt(d_small / d_big) because rms([h, 0]) = rms(h) * sqrt(d_s / d_t):
          FP up to the norm eps (exact with eps = 0). LayerNorm: mean/variance of [h, 0] differ, not FP.
  random  new rows and columns freshly initialised; function preserving only under MSG's masks (masks.py), which
          the trainer ramps from 0 to 1 after growth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from hasten.errors import ConfigError
from hasten.methods.growth.unit_masks import has_unit_masks
from hasten.model import GPT, ModelConfig

DEPTH_OPS = ("stack", "interpolate", "zero", "random")
WIDTH_OPS = ("staged", "direct", "zero", "random")
DIMS = ("depth", "width")
# tensor kinds a recipe can map: parameters, first moments (m; scaled by moment_scale) and second
# moments (v; scaled by moment_scale ** 2)
KINDS = ("param", "first_moment", "second_moment")
# residual-branch output projections G_zero zeroes in duplicated layers
ZEROED_IN_DUPLICATES = ("attn.o_proj.weight", "attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


@dataclass(frozen=True, eq=False)
class AxisMap:
    """How one width axis grows: target unit index -> source unit index and copy number (0 = original)."""

    name: str
    old_size: int
    source: torch.Tensor  # long [new_size]
    copy: torch.Tensor  # long [new_size]; copy 0 are the original units, in their original order

    @property
    def new_size(self) -> int:
        return int(self.source.numel())

    @property
    def is_original(self) -> torch.Tensor:
        return self.copy == 0

    def count(self) -> torch.Tensor:
        """How many target units draw from each source unit (bert2BERT's divisor)."""
        return torch.bincount(self.source, minlength=self.old_size)


def _cyclic_axis(name: str, old_units: int, new_units: int, unit_size: int = 1) -> AxisMap:
    """Target unit u <- source unit u mod old_units; a unit is `unit_size` consecutive entries (a head)."""
    unit = torch.arange(new_units)
    offset = torch.arange(unit_size)
    source = ((unit % old_units)[:, None] * unit_size + offset).reshape(-1)
    copy = (unit // old_units).repeat_interleave(unit_size)
    return AxisMap(name, old_units * unit_size, source, copy)


@dataclass(frozen=True, eq=False)
class TensorRecipe:
    """How one target tensor is built from the small model's tensor `source`.

    rule:
      copy          every entry is the gathered source entry (depth copies, direct, embeddings...)
      block         staged width: entries linking different copies are 0 (off-diagonal blocks)
      pad_zero_out  G_zero width: entries of new output units are 0, other new entries fresh
      pad_fresh     entries touching a new unit are fresh (random width; norms of zero width)
      zero          whole tensor 0 (G_zero depth duplicates' output projections)
      fresh         whole tensor freshly initialised (random depth)
    Entries that do not come from the source always get zero optimizer moments.
    """

    source: str
    shape: tuple[int, ...]
    axes: tuple[AxisMap | None, ...] = ()
    rule: str = "copy"
    output_dim: int | None = None  # for pad_zero_out
    divide_dim: int | None = None  # parameter values divided by the source unit's copy count along this dim
    param_scale: float = 1.0  # scales parameter values taken from the source
    moment_scale: float = 1.0  # m is scaled by this, v by its square (staged width: 1/k)

    @property
    def needs_fresh(self) -> bool:
        return self.rule in ("fresh", "pad_fresh", "pad_zero_out")

    @property
    def is_new(self) -> bool:
        """No entry comes from the source: the tensor's optimizer state starts empty."""
        return self.rule in ("zero", "fresh")

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        for dim, axis in enumerate(self.axes):
            if axis is not None:
                tensor = tensor.index_select(dim, axis.source.to(tensor.device))
        return tensor

    def _along(self, vector: torch.Tensor, dim: int) -> torch.Tensor:
        shape = [1] * len(self.shape)
        shape[dim] = -1
        return vector.view(shape)

    def source_mask(self, device: torch.device | None = None) -> torch.Tensor | None:
        """Boolean mask (broadcastable to shape) of entries taken from the source; None = all of them."""
        grown = [d for d, axis in enumerate(self.axes) if axis is not None]
        if self.rule == "block":
            if len(grown) < 2:
                return None
            if len(grown) != 2:
                raise ValueError(f"block-diagonal growth needs a 2-D tensor, got shape {self.shape}")
            a, b = (self.axes[d] for d in grown)
            return (self._along(a.copy, grown[0]) == self._along(b.copy, grown[1])).to(device)
        if self.rule in ("pad_fresh", "pad_zero_out"):
            mask = None
            for d in grown:
                keep = self._along(self.axes[d].is_original, d)
                mask = keep if mask is None else mask & keep
            return None if mask is None else mask.to(device)
        return None

    def apply(self, source: torch.Tensor, kind: str = "param", fresh: torch.Tensor | None = None) -> torch.Tensor:
        """The target tensor built from `source` (a parameter or a moment with the parameter's shape)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; use one of {KINDS}")
        is_param = kind == "param"
        if self.rule == "zero" or (self.rule == "fresh" and not is_param):
            return torch.zeros(self.shape, dtype=source.dtype, device=source.device)
        if self.rule == "fresh":
            return _require_fresh(fresh, self).to(device=source.device, dtype=source.dtype).clone()
        out = self._gather(source)
        if out is source:  # nothing gathered: copy, or depth copies of one layer would share storage (and every update)
            out = source.clone()
        if is_param:
            if self.divide_dim is not None:
                axis = self.axes[self.divide_dim]
                counts = axis.count()[axis.source].to(device=out.device, dtype=out.dtype)
                out = out / self._along(counts, self.divide_dim)
            if self.param_scale != 1.0:
                out = out * self.param_scale
        else:
            scale = self.moment_scale if kind == "first_moment" else self.moment_scale**2
            if scale != 1.0:
                out = out * scale
        mask = self.source_mask(out.device)
        if mask is None:
            return out.contiguous()
        filler = torch.zeros_like(out)
        if is_param and self.rule in ("pad_fresh", "pad_zero_out"):
            filler = _require_fresh(fresh, self).to(device=out.device, dtype=out.dtype)
            if self.rule == "pad_zero_out" and self.axes[self.output_dim] is not None:
                new_out = ~self._along(self.axes[self.output_dim].is_original, self.output_dim).to(out.device)
                filler = torch.where(new_out, torch.zeros_like(filler), filler)
        return torch.where(mask, out, filler).contiguous()


def _require_fresh(fresh: torch.Tensor | None, recipe: TensorRecipe) -> torch.Tensor:
    if fresh is None:
        raise ValueError(f"recipe for {recipe.source} (rule {recipe.rule}) needs a freshly initialised tensor")
    return fresh


@dataclass(frozen=True, eq=False)
class GrowthPlan:
    """The grown config plus a recipe per target parameter name (names as in GPT.named_parameters())."""

    dim: str
    op: str
    factor: float
    source_config: ModelConfig
    config: ModelConfig
    recipes: dict[str, TensorRecipe]

    @property
    def needs_fresh(self) -> bool:
        return any(r.needs_fresh for r in self.recipes.values())

    def summary(self) -> str:
        s, t = self.source_config, self.config
        return (
            f"growth {self.dim}/{self.op} x{self.factor:g}: "
            f"{s.n_layers}L x {s.d_model}d ({s.n_heads}/{s.n_kv_heads} heads, "
            f"ffn {s.d_ff}) -> {t.n_layers}L x {t.d_model}d ({t.n_heads}/{t.n_kv_heads} heads, ffn {t.d_ff})"
        )


def _param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of GPT(cfg), built on the meta device (no memory, no RNG)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _integer_factor(factor: float, what: str, example: str) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not float(factor).is_integer() or factor < 2:
        raise ConfigError(f"growth: {what} factor={factor!r} must be an integer >= 2; {example}")
    return int(factor)


def _check_op(dim: str, op: str) -> None:
    if dim not in DIMS:
        raise ConfigError(f"growth: dim={dim!r} is unknown; use 'depth' or 'width'")
    ops = DEPTH_OPS if dim == "depth" else WIDTH_OPS
    if op not in ops:
        raise ConfigError(f"growth: {dim} operator {op!r} is unknown; use one of {', '.join(ops)}")


def depth_plan(cfg: ModelConfig, op: str, factor: int) -> GrowthPlan:
    """Plan for growing cfg.n_layers -> factor * cfg.n_layers with a depth operator."""
    _check_op("depth", op)
    g = _integer_factor(factor, "depth", "use e.g. factor=4 (the G_stack default) to grow L layers into 4L")
    small_layers = cfg.n_layers
    new_cfg = replace(cfg, n_layers=g * small_layers)
    new_cfg.validate()
    recipes: dict[str, TensorRecipe] = {}
    for name, shape in _param_shapes(new_cfg).items():
        if not name.startswith("blocks."):
            recipes[name] = TensorRecipe(source=name, shape=shape)
            continue
        _, index, rest = name.split(".", 2)
        i = int(index)
        j = i % small_layers if op == "stack" else i // g
        duplicate = op in ("zero", "random") and i % g != 0
        rule = "copy"
        if duplicate and op == "random":
            rule = "fresh"
        elif duplicate and rest in ZEROED_IN_DUPLICATES:
            rule = "zero"
        recipes[name] = TensorRecipe(source=f"blocks.{j}.{rest}", shape=shape, rule=rule)
    return GrowthPlan("depth", op, g, cfg, new_cfg, recipes)


def _width_config(cfg: ModelConfig, op: str, factor: float) -> ModelConfig:
    if op == "staged":
        factor = _integer_factor(factor, "staged width", "staged growth copies every unit k times; use factor=2")
    elif isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise ConfigError(f"growth: width factor={factor!r} must be a number > 1; use factor=2 to double the width")
    sizes = {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff}
    grown = {}
    for key, size in sizes.items():
        value = size * factor
        if abs(value - round(value)) > 1e-9:
            raise ConfigError(
                f"growth: width factor {factor:g} gives {key}={size}*{factor:g}={value:g}, not a whole number; "
                f"pick a factor that keeps d_model, n_heads, n_kv_heads and d_ff whole (factor=2 always works)"
            )
        grown[key] = int(round(value))
    new_cfg = replace(cfg, **grown)
    new_cfg.validate()
    return new_cfg


# width axes of every parameter, by name suffix: (axis per dim, output dim). None = dim does not grow.
_WIDTH_LAYOUT: dict[str, tuple[tuple[str | None, ...], int]] = {
    "embed_tokens.weight": ((None, "hidden"), 1),
    "embed_positions.weight": ((None, "hidden"), 1),
    "lm_head.weight": ((None, "hidden"), 0),
    "norm.weight": (("hidden",), 0),
    "norm.bias": (("hidden",), 0),
    "q_proj.weight": (("q", "hidden"), 0),
    "q_proj.bias": (("q",), 0),
    "k_proj.weight": (("kv", "hidden"), 0),
    "k_proj.bias": (("kv",), 0),
    "v_proj.weight": (("kv", "hidden"), 0),
    "v_proj.bias": (("kv",), 0),
    "o_proj.weight": (("hidden", "q"), 0),
    "o_proj.bias": (("hidden",), 0),
    "gate_proj.weight": (("ffn", "hidden"), 0),
    "gate_proj.bias": (("ffn",), 0),
    "up_proj.weight": (("ffn", "hidden"), 0),
    "up_proj.bias": (("ffn",), 0),
    "down_proj.weight": (("hidden", "ffn"), 0),
    "down_proj.bias": (("hidden",), 0),
}


def _width_layout(name: str) -> tuple[tuple[str | None, ...], int]:
    for suffix, layout in _WIDTH_LAYOUT.items():
        if name == suffix or name.endswith("." + suffix) or name.endswith("_" + suffix):
            return layout
    raise ValueError(f"growth: parameter {name!r} has no width layout; add it to _WIDTH_LAYOUT in growth/operators.py")


def width_plan(cfg: ModelConfig, op: str, factor: float) -> GrowthPlan:
    """Plan for growing every width axis (d_model, heads, kv heads, d_ff) by `factor`, head_dim fixed."""
    _check_op("width", op)
    new_cfg = _width_config(cfg, op, factor)
    k = new_cfg.d_model / cfg.d_model
    head_dim = cfg.head_dim
    axes = {
        "hidden": _cyclic_axis("hidden", cfg.d_model, new_cfg.d_model),
        "q": _cyclic_axis("q", cfg.n_heads, new_cfg.n_heads, head_dim),
        "kv": _cyclic_axis("kv", cfg.n_kv_heads, new_cfg.n_kv_heads, head_dim),
        "ffn": _cyclic_axis("ffn", cfg.d_ff, new_cfg.d_ff),
    }
    rms_rescale = math.sqrt(cfg.d_model / new_cfg.d_model) if cfg.family == "llama" else 1.0
    recipes: dict[str, TensorRecipe] = {}
    for name, shape in _param_shapes(new_cfg).items():
        axis_names, output_dim = _width_layout(name)
        recipe_axes = tuple(axes[a] if a is not None else None for a in axis_names)
        is_norm = "norm." in name
        is_final_norm = name.startswith("final_norm.")
        is_linear = name.startswith("blocks.") and name.endswith("proj.weight")
        fields: dict = {"source": name, "shape": shape, "axes": recipe_axes, "output_dim": output_dim}
        if op == "staged":
            fields.update(rule="block", moment_scale=1.0 if is_final_norm else 1.0 / k)
            if is_final_norm:
                fields.update(divide_dim=0)
        elif op == "direct":
            if is_linear:
                fields.update(divide_dim=1)
            elif is_final_norm:
                fields.update(divide_dim=0)
        elif op == "zero":
            fields.update(rule="pad_fresh" if is_norm else "pad_zero_out")
            if is_norm and name.endswith("weight"):
                fields.update(param_scale=rms_rescale)
        else:  # random
            fields.update(rule="pad_fresh")
        recipes[name] = TensorRecipe(**fields)
    return GrowthPlan("width", op, factor, cfg, new_cfg, recipes)


def growth_plan(cfg: ModelConfig, op: str, factor: float, dim: str = "depth") -> GrowthPlan:
    _check_op(dim, op)
    return depth_plan(cfg, op, factor) if dim == "depth" else width_plan(cfg, op, factor)


def _fresh_parameters(
    cfg: ModelConfig, like: torch.Tensor, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """Parameters of a GPT(cfg) initialised by GPT.reset_parameters (the model's own init), on like's device/dtype."""
    init_device = generator.device if generator is not None else like.device
    with torch.device("meta"):
        fresh = GPT(cfg)
    fresh = fresh.to(dtype=like.dtype).to_empty(device=init_device)
    fresh.reset_parameters(generator=generator)
    return {name: p.detach().to(like.device) for name, p in fresh.named_parameters()}


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, value)


@torch.no_grad()
def apply_plan(plan: GrowthPlan, model: GPT, generator: torch.Generator | None = None) -> GPT:
    """A new GPT(plan.config) whose parameters are built from `model` by the plan; `model` is untouched.

    `generator` seeds the fresh tensors of the random/zero operators; without it they draw from the
    global RNG, exactly like GPT.reset_parameters(). Operators that need no fresh tensors use no RNG.
    """
    if has_unit_masks(model):
        raise ConfigError(
            "growth: the model still has MSG unit masks from an earlier growth; finish the ramp "
            "(remove_unit_masks(model)) before growing again"
        )
    if model.config.to_dict() != plan.source_config.to_dict():
        raise ConfigError("growth: the plan was made for a different model config; build it from model.config")
    source = dict(model.named_parameters())
    like = next(iter(source.values()))
    fresh = _fresh_parameters(plan.config, like, generator) if plan.needs_fresh else {}
    with torch.device("meta"):
        grown = GPT(replace(plan.config))
    for name, recipe in plan.recipes.items():
        src = source[recipe.source]
        value = recipe.apply(src.detach(), "param", fresh.get(name))
        _set_tensor(grown, name, nn.Parameter(value, requires_grad=src.requires_grad))
    for name, buffer in model.named_buffers():
        _set_tensor(grown, name, buffer.clone())  # RoPE tables depend on head_dim, which growth keeps
    left = [n for n, t in [*grown.named_parameters(), *grown.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"growth plan left tensors unset: {left}")
    grown.train(model.training)
    return grown


def grow(model: GPT, op: str, factor: float, dim: str = "depth", generator: torch.Generator | None = None) -> GPT:
    """Grow `model` with one operator; a pure function (the small model is not modified).

    >>> big = grow(small, "stack", 4)                 # G_stack: 4x the layers
    >>> wide = grow(small, "staged", 2, dim="width")  # Shen et al. function-preserving doubling
    """
    return apply_plan(growth_plan(model.config, op, factor, dim), model, generator)
