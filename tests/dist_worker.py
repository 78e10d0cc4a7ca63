"""Run by tests/test_distributed.py under torchrun: several tiny runs in one process group.

argv: a JSON list of jobs, each {"run_dir", "overrides", "stop_at" (optional), "resume" (optional)}.
"""

from __future__ import annotations

import json
import sys

import torch

from hasten.parallel import init_distributed
from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import StopAt


def _replace_with_unsharded_copy(trainer) -> None:
    """What growth does: hand the trainer a new plain model + optimizer (with state) to wrap and adopt."""
    from hasten.model import GPT
    from hasten.optim.builder import build_optimizer

    model = GPT(trainer.state.model.config)
    optimizer = build_optimizer(model, trainer.cfg.optim)
    rows = trainer.state.sampler.rows([0, 1])
    model(rows[:, :-1], rows[:, 1:]).backward()
    optimizer.step()  # populate full-size Adam state that must follow the parameters into their shards
    optimizer.zero_grad(set_to_none=True)
    trainer.replace_state(model, optimizer, reason="test")
    live = {id(p) for p in trainer.state.model.parameters()}
    held = [p for group in trainer.state.optimizer.param_groups for p in group["params"]]
    assert all(id(p) in live for p in held), "the optimizer must hold the sharded parameters"
    assert all(type(s["exp_avg"]).__name__ == "DTensor" for s in trainer.state.optimizer.state.values())


def main() -> None:
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    for job in json.loads(sys.argv[1]):
        cfg = load_config(None, job["overrides"])
        trainer = build_trainer(cfg, job["run_dir"], resume=job.get("resume", False), dist=dist, progress=False)
        if job.get("replace"):
            _replace_with_unsharded_copy(trainer)
        if job.get("stop_at"):
            trainer.methods.append(StopAt(job["stop_at"]))
        trainer.fit()


if __name__ == "__main__":
    main()
