"""EMA and SWA baselines for LAWA, on top of `torch.optim.swa_utils.AveragedModel`.

    EMA:  w_ema <- decay * w_ema + (1 - decay) * w         (get_ema_multi_avg_fn, a foreach lerp)
    SWA:  w_swa <- w_swa + (w - w_swa) / (n + 1)           (get_swa_multi_avg_fn, the running mean)

Both copy the weights on their first update. The averaged copy is kept in fp32 (an EMA with decay
0.999 summed in bf16 would lose almost every update) on `device` (None = the live model's device,
since EMA updates every step). Like LAWA they only read the live weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn

from hasten.errors import CheckpointError, ConfigError
from hasten.methods.averaging.base import StateDictFn, build_averaged_model, clean_state_dict, unwrap_model

log = logging.getLogger(__name__)

_AVERAGED_PREFIX = "module."  # AveragedModel stores the copy as `.module`


class _Float32Source:
    """Shows a low-precision model to `AveragedModel.update_parameters` as fp32.

    update_parameters reads only `.parameters()` and `.buffers()`, and torch's foreach lerp refuses
    to mix an fp32 average with bf16/fp16 weights, so the weights are upcast one tensor at a time.
    """

    def __init__(self, model: nn.Module):
        self._model = model

    def parameters(self) -> Iterator[Tensor]:
        return (p.detach().float() for p in self._model.parameters())

    def buffers(self) -> Iterator[Tensor]:
        return self._model.buffers()


def _check_every_start(name: str, every: int, start_step: int) -> None:
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"{name}: every={every!r} must be a positive integer (update spacing in steps)")
    if not isinstance(start_step, int) or start_step < 0:
        raise ConfigError(f"{name}: start_step={start_step!r} must be a non-negative integer")


def _to_device(name: str, device: str | torch.device | None) -> torch.device | None:
    try:
        return None if device is None else torch.device(device)
    except RuntimeError as err:
        raise ConfigError(
            f"{name}: device={device!r} is not a torch device; use null (the model's device), 'cpu' or 'cuda'"
        ) from err


class _RunningAverager:
    """An AveragedModel updated every `every` steps from `start_step` on, with resumable state.

    The AveragedModel is built lazily from the first model seen, because building it deep-copies
    the model and a checkpoint restore (`load_state_dict`) has no model to copy; restored state
    waits in `_pending` until then.
    """

    name = "average"

    def __init__(self, every: int, start_step: int, device: str | torch.device | None):
        _check_every_start(self.name, every, start_step)
        self.every, self.start_step = every, start_step
        self.device = _to_device(self.name, device)
        self.last_step: int | None = None
        self.last_reset_reason: str | None = None
        self._avg: AveragedModel | None = None
        self._count = 0  # n_averaged on the host (the AveragedModel's own counter is a device tensor)
        self._pending: dict[str, Tensor] | None = None

    def _multi_avg_fn(self) -> Callable:
        raise NotImplementedError

    def _config(self) -> dict:
        return {"every": self.every, "start_step": self.start_step}

    # ---- updates -------------------------------------------------------------------------------

    def is_due(self, step: int, tokens: int | None = None) -> bool:
        """Whether `maybe_update` would fold the weights in now (`tokens` is unused; LAWA's signature)."""
        if step <= 0 or step < self.start_step or step % self.every:
            return False
        return self.last_step is None or step > self.last_step

    def maybe_update(self, step: int, model: nn.Module, tokens: int | None = None) -> bool:
        """Fold in the live weights if `step` (completed optimizer steps) is due; True when it did."""
        if not self.is_due(step):
            return False
        self.update(step, model)
        return True

    def update(self, step: int, model: nn.Module) -> None:
        """AveragedModel.update_parameters' update (a copy first, then torch's multi_avg_fn), minus its two host reads
        of the device counter per call (`n_averaged == 0`, `n_averaged > 0`: a device sync each on a GPU); the host
        count says whether this is the first update."""
        raw = unwrap_model(model)
        averaged = self._bind(raw)
        low_precision = any(p.is_floating_point() and p.dtype != torch.float32 for p in raw.parameters())
        source = _Float32Source(raw) if low_precision else raw
        avg = [p.detach() for p in averaged.parameters()]
        live = [p.detach().to(a.device) for p, a in zip(source.parameters(), avg, strict=True)]
        if self._count == 0:
            for a, p in zip(avg, live):
                a.copy_(p)
        else:
            self._multi_avg_fn()(avg, live, averaged.n_averaged)
        averaged.n_averaged += 1
        self._count += 1
        self.last_step = int(step)

    def _bind(self, raw: nn.Module) -> AveragedModel:
        if self._avg is None:
            averaged = AveragedModel(raw, device=self.device, multi_avg_fn=self._multi_avg_fn())
            averaged.module.float()
            averaged.requires_grad_(False)
            # the counter next to the weights (AveragedModel leaves it on the CPU when device is None), so updates stay
            # on the device
            averaged.n_averaged = averaged.n_averaged.to(next(averaged.module.parameters()).device)
            self._count = 0
            if self._pending is not None:
                averaged.load_state_dict(self._pending, strict=True)
                self._count = int(self._pending["n_averaged"])
                self._pending = None
            self._avg = averaged
        return self._avg

    # ---- average ---------------------------------------------------------------------------------

    @property
    def n_averaged(self) -> int:
        """How many weight sets the average holds (read without a device sync)."""
        if self._avg is not None:
            return self._count
        if self._pending is not None:
            return int(self._pending["n_averaged"])
        return 0

    @property
    def ready(self) -> bool:
        return self.n_averaged > 0

    def averaged_state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, fp32, raw keys (also available straight after a checkpoint restore)."""
        if not self.ready:
            raise RuntimeError(f"{self.name}: nothing averaged yet; check .ready before evaluating the average")
        if self._avg is not None:
            return {key: value.detach().clone() for key, value in self._avg.module.state_dict().items()}
        assert self._pending is not None
        return {
            key[len(_AVERAGED_PREFIX) :]: value.clone()
            for key, value in self._pending.items()
            if key.startswith(_AVERAGED_PREFIX)
        }

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A separate copy of `model` carrying the averaged weights (eval mode, no grads)."""
        return build_averaged_model(model, self.averaged_state_dict())

    def stats(self) -> dict[str, float]:
        out = {f"{self.name}/n_averaged": float(self.n_averaged)}
        if self.last_step is not None:
            out[f"{self.name}/last_step"] = float(self.last_step)
        return out

    # ---- lifecycle ---------------------------------------------------------------------------------

    def reset(self, reason: str) -> None:
        log.info("%s: reset (%s), dropping an average of %d updates", self.name, reason, self.n_averaged)
        self._avg, self._pending, self.last_step = None, None, None
        self.last_reset_reason = reason

    def transform(self, fn: StateDictFn, model: nn.Module | None = None) -> None:
        """Map the averaged weights with `fn` (e.g. growth) onto a copy of the new live `model`, keeping n_averaged."""
        if not self.ready:
            self._avg, self._pending = None, None  # nothing averaged; rebuild from the new model later
            return
        if model is None:
            raise ValueError(f"{self.name}.transform needs the new live model to rebuild its averaged copy")
        count, new_state = self.n_averaged, clean_state_dict(fn(self.averaged_state_dict()))
        self._avg, self._pending = None, None
        averaged = self._bind(unwrap_model(model))
        averaged.module.load_state_dict(new_state, strict=True)
        averaged.n_averaged.fill_(count)
        self._count = count

    def state_dict(self) -> dict:
        """Config, last update step and AveragedModel's own state (`module.*` weights and `n_averaged`)."""
        if self._avg is not None:
            averaged = {key: value.detach().clone() for key, value in self._avg.state_dict().items()}
        else:
            averaged = self._pending
        return {
            "kind": self.name,
            **self._config(),
            "last_step": self.last_step,
            "n_averaged": self.n_averaged,
            "averaged": averaged,
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("kind") != self.name:
            raise CheckpointError(
                f"{self.name}: checkpoint averager state is {state.get('kind')!r}, not {self.name!r}; "
                "resume with the same methods"
            )
        averaged = state.get("averaged")
        if averaged is not None and "n_averaged" not in averaged:
            raise CheckpointError(f"{self.name}: checkpoint average lacks n_averaged; the checkpoint is corrupt")
        saved = {key: state.get(key) for key in self._config()}
        if saved != self._config():
            log.warning("%s: checkpoint settings %s differ from the configured %s", self.name, saved, self._config())
        self.last_step = state.get("last_step")
        if averaged is None:
            self._avg, self._pending = None, None
        elif self._avg is not None:
            self._avg.load_state_dict(averaged, strict=True)
            self._count = int(averaged["n_averaged"])
        else:
            self._pending = {key: value.clone() for key, value in averaged.items()}


class EMA(_RunningAverager):
    """Exponential moving average of the weights: w_ema <- decay * w_ema + (1 - decay) * w.

    The decay applies per update, so with every > 1 the effective horizon is every / (1 - decay) steps.
    The LAWA repo's baseline is effectively decay 0.9 per step.
    """

    name = "ema"

    def __init__(
        self, decay: float = 0.999, every: int = 1, start_step: int = 0, device: str | torch.device | None = None
    ):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema: decay={decay!r} must be in [0, 1); typical values are 0.99-0.9999")
        self.decay = float(decay)
        super().__init__(every, start_step, device)

    @classmethod
    def from_half_life(
        cls, half_life: float, every: int = 1, start_step: int = 0, device: str | torch.device | None = None
    ) -> EMA:
        """Composer's parametrisation: decay = 2^(-every / half_life), half_life in steps."""
        return cls(decay=ema_decay_from_half_life(half_life, every), every=every, start_step=start_step, device=device)

    def _multi_avg_fn(self) -> Callable:
        return get_ema_multi_avg_fn(self.decay)

    def _config(self) -> dict:
        return {"decay": self.decay, **super()._config()}


class SWA(_RunningAverager):
    """Stochastic weight averaging: the uniform mean of the weights at every `every`-th step from `start_step` on."""

    name = "swa"

    def __init__(self, start_step: int, every: int = 1, device: str | torch.device | None = None):
        super().__init__(every, start_step, device)

    @classmethod
    def from_fraction(
        cls, start_fraction: float, total_steps: int, every: int = 1, device: str | torch.device | None = None
    ) -> SWA:
        """Start after `start_fraction` of training (the LAWA repo's baseline: 0.75 of 70K = step 52,500)."""
        return cls(start_step=swa_start_step(start_fraction, total_steps), every=every, device=device)

    def _multi_avg_fn(self) -> Callable:
        return get_swa_multi_avg_fn()


def ema_decay_from_half_life(half_life: float, every: int = 1) -> float:
    """Per-update decay whose weights halve every `half_life` steps."""
    if not half_life > 0:
        raise ConfigError(f"ema: half_life={half_life!r} must be a positive number of steps")
    return math.pow(2.0, -every / half_life)


def swa_start_step(start_fraction: float, total_steps: int) -> int:
    if not 0.0 <= start_fraction < 1.0:
        raise ConfigError(
            f"swa: start_fraction={start_fraction!r} must be in [0, 1); the LAWA paper's baseline uses 0.75"
        )
    if total_steps < 1:
        raise ConfigError(f"swa: total_steps={total_steps!r} must be positive to turn start_fraction into a step")
    return int(start_fraction * total_steps)
