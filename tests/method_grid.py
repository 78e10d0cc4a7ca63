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
}
