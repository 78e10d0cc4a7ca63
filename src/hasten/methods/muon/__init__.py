"""Muon (Jordan et al. 2024; torch.optim.Muon) on the hidden matrices, AdamW on the rest: the method's room.

Switched on by `optim.name: muon`, not by a methods section: the optimizer's param groups carry it, so the
optimizer itself lives in hasten.optim.muon (below the trainer; the optimizer builder makes it) and has no hooks
in the trainer. Use it standalone from here: `MuonAdamW`, `split_groups` (which tensors go to Muon) and
`build_muon`. The method card is README.md here.
"""

from pathlib import Path

from hasten.methods.spec import MethodSpec, TinyRun
from hasten.optim.muon import (
    MUON_ADJUST_LR,
    MUON_BLOCKS,
    MUON_MOMENTUM,
    MUON_NS_STEPS,
    MuonAdamW,
    build_muon,
    split_groups,
)

SPECS = (
    MethodSpec(
        "muon",
        "Muon: orthogonalised momentum for the hidden matrices, AdamW for the rest",
        "Jordan et al. 2024 (modded-nanogpt); arXiv 2502.16982",
        Path(__file__).with_name("README.md"),
        switch=("optim.name", "muon"),
        test_runs={
            "default": TinyRun(("optim.name=muon",), tests=("grid", "faults")),
            # torch.optim.Muon takes no device-side skip flag (found_inf), so the guard's non-finite skip reads the flag
            # on the host every step, as torch's GradScaler does for such optimizers; without the skip Muon's step must
            # not sync
            "no_skip": TinyRun(("optim.name=muon", "train.guard.skip_nonfinite=false"), tests=("host_syncs",)),
        },
        step_cost=("optim.name=muon",),
    ),
)

__all__ = [
    "MUON_ADJUST_LR",
    "MUON_BLOCKS",
    "MUON_MOMENTUM",
    "MUON_NS_STEPS",
    "SPECS",
    "MuonAdamW",
    "build_muon",
    "split_groups",
]
