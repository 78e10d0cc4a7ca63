"""Muon for the hidden matrices, AdamW for everything else, behind one optimizer object.

Muon (Jordan et al. 2024; `torch.optim.Muon`) orthogonalizes the momentum of 2-D weight matrices
with Newton-Schulz iterations; it is meant only for hidden layers, so embeddings, the output head,
norms and biases stay on AdamW (the recipe used by modded-nanogpt and by torch's own docs).

Why one wrapper object: the trainer, the LR schedule and checkpoints all expect a single optimizer
with `param_groups`, `step`, `zero_grad`, `state_dict` and `load_state_dict`. The wrapper's
`param_groups` is the concatenation of both optimizers' group dicts (the same objects), so the LR
schedule's per-group `lr = schedule(t) * lr_ratio` reaches both halves.

LR: Muon uses `adjust_lr_fn="match_rms_adamw"` (Moonshot, "Muon is Scalable for LLM Training"),
which scales each matrix's update to AdamW's RMS, so the AdamW peak LR and weight decay are reused
as is and every Muon group keeps the `lr_ratio` of the group it came from (1 for the plain
recipe, the block's ratio with `optim.blockwise`).
"""

from __future__ import annotations

import torch

from hasten.config import OptimConfig
from hasten.optim.flops import optimizer_step_flops

MUON_BLOCKS = ("qk", "vo", "ffn")  # hidden matrices: attention q/k/v/o and the MLP
MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5
MUON_ADJUST_LR = "match_rms_adamw"


class MuonAdamW:
    """`torch.optim.Muon` on hidden 2-D matrices + `torch.optim.AdamW` on the rest, as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer | None):
        if muon is None and adamw is None:
            raise ValueError("MuonAdamW needs at least one parameter")
        self.muon, self.adamw = muon, adamw
        self.defaults = {"lr": (adamw or muon).defaults["lr"]}

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.muon, self.adamw) if opt is not None]

    @property
    def param_groups(self) -> list[dict]:
        # the same group dicts as the inner optimizers: writing group["lr"] here changes theirs
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        """Per-parameter state of both halves (a merged read-only view)."""
        merged: dict = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def step_flops(self) -> float:
        """FLOPs of one step: Muon's (Newton-Schulz included) plus AdamW's (hasten.optim.flops)."""
        return sum(optimizer_step_flops(opt) for opt in self.optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {
            "format": "hasten-muon-adamw",
            "muon": self.muon.state_dict() if self.muon is not None else None,
            "adamw": self.adamw.state_dict() if self.adamw is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "hasten-muon-adamw":
            raise ValueError(
                "optimizer state is not a Muon+AdamW state (was the checkpoint made with another optim.name?)"
            )
        for key, opt in (("muon", self.muon), ("adamw", self.adamw)):
            saved = state.get(key)
            if (saved is None) != (opt is None):
                raise ValueError(
                    f"optimizer state has {'no' if saved is None else 'a'} {key} half; this optimizer does not match"
                )
            if opt is not None:
                opt.load_state_dict(saved)

    def __repr__(self) -> str:
        n_muon = sum(len(g["params"]) for g in self.muon.param_groups) if self.muon else 0
        n_adamw = sum(len(g["params"]) for g in self.adamw.param_groups) if self.adamw else 0
        return f"MuonAdamW(muon tensors={n_muon}, adamw tensors={n_adamw})"


def _is_hidden_matrix(block: str, param: torch.Tensor) -> bool:
    return block in MUON_BLOCKS and param.dim() == 2


def split_groups(groups: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split hasten param groups into (Muon groups, AdamW groups); each keeps its block, lr_ratio and weight decay."""
    muon_groups, adamw_groups = [], []
    for group in groups:
        names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
        block = group.get("block", "")
        meta = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        picks: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
        for name, param in zip(names, group["params"]):
            params, kept_names = picks[_is_hidden_matrix(block, param)]
            params.append(param)
            kept_names.append(name)
        for is_muon, (params, kept_names) in picks.items():
            if params:
                (muon_groups if is_muon else adamw_groups).append({**meta, "params": params, "param_names": kept_names})
    return muon_groups, adamw_groups


def build_muon(groups: list[dict], cfg: OptimConfig, adamw_kwargs: dict) -> MuonAdamW:
    """The `optim.name: muon` optimizer from hasten param groups (see optim.builder.param_groups); `adamw_kwargs`
    pick the AdamW part's kernel (optim.builder.implementation_kwargs)."""
    muon_groups, adamw_groups = split_groups(groups)
    muon = adamw = None
    if muon_groups:
        muon = torch.optim.Muon(
            muon_groups,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=MUON_MOMENTUM,
            nesterov=True,
            ns_steps=MUON_NS_STEPS,
            eps=1e-7,
            adjust_lr_fn=MUON_ADJUST_LR,
        )
    if adamw_groups:
        adamw = torch.optim.AdamW(
            adamw_groups,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **adamw_kwargs,
        )
    return MuonAdamW(muon, adamw)
