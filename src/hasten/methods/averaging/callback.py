"""LAWA / EMA / SWA inside the trainer: averaged weights are evaluated beside the raw model and
exported at the end, never fed back into training."""

from __future__ import annotations

from safetensors.torch import save_file

from hasten.distributed import is_fsdp, unsharded_copy
from hasten.methods.averaging.base import WeightAverager
from hasten.model import GPT
from hasten.trainer.callbacks import Callback


class WeightAveraging(Callback):
    def __init__(self, name: str, averager_factory):
        self.name = name
        self._factory = averager_factory
        self.averager: WeightAverager | None = None
        self._pending_state: dict | None = None
        self._mirror = None  # FSDP2 only: a plain CPU model the gathered live weights are copied into

    def on_fit_start(self, trainer) -> None:
        if self.averager is None:
            self.averager = self._factory(trainer)
        if self._pending_state is not None:
            self.averager.load_state_dict(self._pending_state)
            self._pending_state = None

    def after_step(self, trainer) -> None:
        p = trainer.state.progress
        model = trainer.state.model
        if is_fsdp(model):
            if not self.averager.is_due(p.step, tokens=p.tokens):  # step and tokens are the same on every rank
                return
            model = self._full_copy(model)
        self.averager.maybe_update(p.step, model, tokens=p.tokens)

    def _full_copy(self, model):
        """FSDP2: the live weights gathered into a plain CPU model, on every rank (a collective).

        Every rank then keeps the same averager, so the averaged model evaluates over the trainer's
        rank-split val windows and rank 0 alone writes its state into checkpoints.
        """
        self._mirror = unsharded_copy(model, "cpu", into=self._mirror)
        return self._mirror

    def on_eval(self, trainer, evaluate) -> dict[str, float]:
        if self.averager is None or not self.averager.ready:
            return {}
        live = trainer.state.model
        if is_fsdp(live):  # an unsharded averaged copy, moved to the device; evaluate() all-reduces its rank shares
            template = self._mirror if self._mirror is not None else self._full_copy(live)
            averaged = self.averager.averaged_model(template).to(trainer.device)
        else:
            averaged = self.averager.averaged_model(live)
        _copy_unit_masks(live, averaged)
        metrics = {f"{self.name}/val_loss": evaluate(averaged)}
        metrics.update({k if k.startswith(f"{self.name}/") else f"{self.name}/{k}": v for k, v in self.averager.stats().items()})
        return metrics

    def on_state_replaced(self, trainer, reason: str) -> None:
        # growth changes every tensor's shape; averaging across stages would mix two models
        self.averager.reset(f"model replaced ({reason})")
        self._mirror = None
        trainer.logger.log("event", trainer.state.progress.step, event=f"{self.name}_reset", reason=reason)

    def on_fit_end(self, trainer) -> None:
        if trainer.is_main and self.averager is not None and self.averager.ready:
            weights = {k: v.contiguous() for k, v in self.averager.averaged_state_dict().items()}
            save_file(weights, str(trainer.run_dir / f"{self.name}_weights.safetensors"))

    def state_dict(self) -> dict:
        if self.averager is None:
            return self._pending_state or {}
        return self.averager.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.averager is None:
            self._pending_state = state  # built in on_fit_start, when the trainer (and total steps) are known
        else:
            self.averager.load_state_dict(state)


def build_lawa(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("lawa", lambda trainer: cfg.build())


def build_ema(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("ema", lambda trainer: cfg.build())


def build_swa(cfg, run_cfg) -> WeightAveraging:
    return WeightAveraging("swa", lambda trainer: cfg.build(total_steps=trainer.planned_steps(trainer.cfg)))


def _copy_unit_masks(live, averaged) -> None:
    """Growth's MSG masks change every step; an averaged copy (e.g. FSDP's mirror, built from weights only)
    must be evaluated under the live ones."""
    live = getattr(live, "module", live)
    averaged = getattr(averaged, "module", averaged)
    if isinstance(live, GPT) and isinstance(averaged, GPT) and (live.has_unit_masks() or averaged.has_unit_masks()):
        averaged.set_unit_masks(**live.unit_masks())
