"""The method seam (hasten.trainer.method): a recording fake method sees the lifecycle in order, through
the RunContext only; its state is restored before anything runs; after_eval gets the val loss just
computed; after_step's returned metrics reach the step's row; the registry fixes the methods' order."""

from __future__ import annotations

import json

from hasten.methods.registry import build_methods, enabled_methods
from hasten.recipes import load_config
from hasten.trainer.method import Method, RunContext, StopAt
from hasten.trainer.setup import build_trainer


class Recorder(Method):
    """Records every hook call (name, completed step) and checks it only gets a RunContext."""

    name = "recorder"

    def __init__(self):
        self.calls: list[tuple[str, int | None]] = []
        self.val_losses: list[tuple[int, float]] = []
        self.loaded: dict | None = None

    def _record(self, hook: str, ctx: RunContext | None) -> None:
        assert ctx is None or type(ctx) is RunContext
        self.calls.append((hook, None if ctx is None else ctx.state.progress.step))

    def on_restore(self, ctx, reason):
        self._record(f"on_restore:{reason}", ctx)

    def on_fit_start(self, ctx):
        self._record("on_fit_start", ctx)

    def before_step(self, ctx):
        self._record("before_step", ctx)

    def after_step(self, ctx):
        self._record("after_step", ctx)
        return {"recorder/step_squared": float(ctx.state.progress.step**2)}

    def after_eval(self, ctx, val_loss):
        self._record("after_eval", ctx)
        self.val_losses.append((ctx.state.progress.step, val_loss))
        return {"recorder/seen_val_loss": val_loss}

    def on_fit_end(self, ctx):
        self._record("on_fit_end", ctx)

    def state_dict(self):
        return {"calls": len(self.calls)}

    def load_state_dict(self, state):
        self._record("load_state_dict", None)
        self.loaded = dict(state)


def _rows(run_dir, kind):
    return [
        r
        for r in (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == kind
    ]


def test_a_recording_method_sees_the_lifecycle_in_order_and_resumes_first(tmp_path, tiny_overrides):
    overrides = [
        *tiny_overrides,
        "train.max_steps=8",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.log_every=2",
    ]
    first = Recorder()
    build_trainer(load_config(None, overrides), tmp_path / "run", [first, StopAt(4)], progress=False).fit()
    hooks = [hook for hook, _ in first.calls]
    assert hooks[0] == "on_fit_start" and hooks[-1] == "on_fit_end" and "load_state_dict" not in hooks
    assert hooks[1:5] == ["after_eval", "before_step", "after_step", "before_step"]  # the step-0 evaluation comes first
    assert hooks.count("before_step") == hooks.count("after_step") == 4
    # after_eval gets the val loss the trainer just computed and logged, and its metrics join the eval row
    evals = _rows(tmp_path / "run", "eval")
    assert [(r["step"], r["val_loss"]) for r in evals] == first.val_losses
    assert all(r["recorder/seen_val_loss"] == r["val_loss"] for r in evals)
    # after_step's returned metrics are this step's: on every logged train row, with that row's step
    train = _rows(tmp_path / "run", "train")
    assert [r["step"] for r in train] == [1, 2, 4] and all(r["recorder/step_squared"] == r["step"] ** 2 for r in train)

    resumed = Recorder()
    trainer = build_trainer(load_config(None, overrides), tmp_path / "run", [resumed], resume=True, progress=False)
    assert [hook for hook, _ in resumed.calls] == ["load_state_dict", "on_restore:resume"]  # while the trainer is built
    trainer.fit()
    hooks = [hook for hook, _ in resumed.calls]
    # its state is back before anything runs, then it is told the run was restored, then the fit starts
    assert hooks[:3] == ["load_state_dict", "on_restore:resume", "on_fit_start"]
    assert resumed.loaded == {"calls": len(first.calls) - 1}  # saved at the final step-4 checkpoint, before on_fit_end
    assert resumed.calls[1][1] == 4 and hooks.count("before_step") == 4 and hooks[-1] == "on_fit_end"


def test_the_order_of_methods_is_their_specs_not_the_recipe_order(tiny_overrides):
    a = load_config(
        None,
        [
            *tiny_overrides,
            "methods.lawa={k: 2, interval: 2}",
            "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at_steps: 4}]}",
        ],
    )
    b = load_config(
        None,
        [
            *tiny_overrides,
            "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at_steps: 4}]}",
            "methods.lawa={k: 2, interval: 2}",
        ],
    )
    assert list(a.methods) == ["lawa", "growth"] and list(b.methods) == ["growth", "lawa"]
    assert enabled_methods(a) == enabled_methods(b) == ["growth", "lawa"]
    assert [m.name for m in build_methods(a)] == [m.name for m in build_methods(b)] == ["growth", "lawa"]


def test_blockwise_and_adam_mini_are_used_standalone_from_their_method_folder():
    """A newcomer finds both in methods/blockwise_lr: param groups for any optimizer, and Adam-mini over them."""
    import torch

    from hasten.methods import blockwise_lr
    from hasten.model import GPT, model_config

    torch.manual_seed(0)
    model = GPT(model_config("tiny-llama", d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, vocab_size=64))
    groups = blockwise_lr.blockwise_param_groups(model, 0.1, blockwise_lr.DEFAULT_RATIOS, base_lr=1e-3)
    ratio = {g["block"]: g["lr"] / 1e-3 for g in groups if "block" in g}
    assert ratio and all(abs(r - blockwise_lr.DEFAULT_RATIOS.get(b, 1.0)) < 1e-12 for b, r in ratio.items())
    opt = blockwise_lr.AdamMini(groups, lr=1e-3, n_heads=model.config.n_heads, n_kv_heads=model.config.n_kv_heads)
    rows = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in model.parameters()]
    model(rows[:, :-1], rows[:, 1:]).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad is not None)
