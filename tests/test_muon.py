"""optim.name=muon: torch.optim.Muon on hidden matrices + AdamW on the rest, as one resumable optimizer."""

from __future__ import annotations

import copy

import pytest
import torch

from hasten.model import GPT
from hasten.optim.builder import build_optimizer
from hasten.optim.muon import MuonAdamW
from hasten.recipes import load_config


def _model_and_opt(overrides=()):
    cfg = load_config(None, ["model=tiny", "data.vocab_size=512", "train.max_steps=10", "optim.name=muon", *overrides])
    torch.manual_seed(0)
    model = GPT(cfg.model_config())
    return model, build_optimizer(model, cfg.optim)


def _steps(model, opt, n: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        x = torch.randint(0, 512, (4, 33), generator=gen)
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_hidden_matrices_on_muon_rest_on_adamw():
    model, opt = _model_and_opt()
    assert isinstance(opt, MuonAdamW)
    muon_names = {n for g in opt.muon.param_groups for n in g["param_names"]}
    adamw_names = {n for g in opt.adamw.param_groups for n in g["param_names"]}
    assert muon_names and not muon_names & adamw_names
    for name, p in model.named_parameters():
        hidden = (".attn." in name or ".mlp." in name) and p.dim() == 2
        assert (name in muon_names) == hidden, name
    assert "embed_tokens.weight" in adamw_names and any("norm" in n for n in adamw_names)
    # every group carries lr_ratio, and the wrapper's param_groups are the inner dicts, so the schedule reaches both
    assert all("lr_ratio" in g for g in opt.param_groups)
    for g in opt.param_groups:
        g["lr"] = 1.234e-3
    assert all(g["lr"] == 1.234e-3 for g in opt.muon.param_groups + opt.adamw.param_groups)


def test_blockwise_ratios_reach_muon_groups():
    _, opt = _model_and_opt(["optim.blockwise=true"])
    ratios = {g["block"]: g["lr_ratio"] for g in opt.muon.param_groups}
    assert ratios["qk"] != 1.0 and ratios["ffn"] != 1.0


def test_trains():
    model, opt = _model_and_opt()
    x = torch.randint(0, 512, (8, 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(15):
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_state_round_trip_continues_bit_exactly():
    model, opt = _model_and_opt()
    _steps(model, opt, 3, seed=2)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(opt.state_dict())  # state_dict() shares the live buffers
    reference = _steps(model, opt, 3, seed=3)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2 = _model_and_opt()
    model2.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    assert _steps(model2, opt2, 3, seed=3) == reference
    for key, value in model2.state_dict().items():
        assert torch.equal(value, final[key]), key


def test_rejects_foreign_state():
    model, opt = _model_and_opt()
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="Muon"):
        opt.load_state_dict(adamw.state_dict())


def test_trainer_resume_is_bit_exact(tiny_overrides, tmp_path):
    from hasten.recipes import build_trainer

    overrides = [
        *tiny_overrides,
        "optim.name=muon",
        "train.max_steps=12",
        "train.eval_every=4",
        "train.checkpoint_every=4",
    ]
    full = build_trainer(load_config(None, overrides), tmp_path / "full", progress=False)
    full.fit()

    part = build_trainer(load_config(None, overrides), tmp_path / "part", progress=False)
    part.cfg.train.max_steps = 8  # stop early (a crash), then resume with the original config
    part.fit()
    resumed = build_trainer(load_config(None, overrides), tmp_path / "part", resume=True, progress=False)
    resumed.fit()
    for (name, a), b in zip(full.state.model.state_dict().items(), resumed.state.model.state_dict().values()):
        assert torch.equal(a, b), name
