"""The method grid: recipe overrides that turn each method on for the tiny test run.

Adding a method to every train/resume test is one line here (Composer's algorithm_settings idea).
"""

METHOD_OVERRIDES: dict[str, list[str]] = {
    "baseline": [],
    "seqlen_warmup_truncate": ["methods.seqlen_warmup={min_len: 16, total_steps: 12, step: 8}", "schedule.decay_unit=tokens"],
    "seqlen_warmup_reshape": ["methods.seqlen_warmup={min_len: 16, total_steps: 12, step: 8, mode: reshape}"],
    "lawa": ["methods.lawa={k: 3, interval: 3}"],
    "ema": ["methods.ema={decay: 0.9}"],
    "swa": ["methods.swa={start_fraction: 0.25, every: 2}"],
    "blockwise": ["optim.blockwise=true"],
    "adam_mini": ["optim.name=adam_mini"],
    "adam_mini_blockwise": ["optim.name=adam_mini", "optim.blockwise=true"],
    "growth_stack": ["model={preset: tiny, n_layers: 1}", "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at_steps: 6, moments: reset, schedule: restart, lr: 1.0e-3}]}"],
    # MSG ramp steps 5-11 (ffn, hidden, heads: 2 steps each), so the resume at step 7 lands inside it
    "growth_msg": ["methods.growth={stages: [{dim: width, op: random, factor: 2, at_steps: 5, mask_ramp_steps: 2, moments: map, schedule: continue}]}"],
    "growth_staged": ["methods.growth={stages: [{dim: width, op: staged, factor: 2, at_steps: 7, moments: map, schedule: jump, rewarmup_steps: 2}]}"],
    "growth_slope_eval": ["model={preset: tiny, n_layers: 1}", "train.eval_every=2", "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at: slope, slope_loss: eval, slope_window: 3, slope_threshold: -5.0, slope_min_steps: 0}]}"],
    "growth_slope_adam_mini": ["optim.name=adam_mini", "model={preset: tiny, n_layers: 1}", "methods.growth={stages: [{dim: depth, op: stack, factor: 2, at: slope, slope_window: 3, slope_threshold: -5.0, moments: map, schedule: continue}]}"],
    "sharpness_auto": ["optim.blockwise=true", "methods.sharpness={at_fraction: 0.25, batches: 2, auto_ratios: true}"],
}
