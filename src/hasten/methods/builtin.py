"""Registers every built-in method with hasten.methods.registry (imported lazily by the registry)."""

from hasten.methods.averaging import callback as averaging
from hasten.methods.averaging.ema import EMAConfig, SWAConfig
from hasten.methods.averaging.lawa import LAWAConfig
from hasten.methods.blockwise_lr import callback as sharpness
from hasten.methods.growth import callback as growth
from hasten.methods.registry import MethodSpec, register
from hasten.methods.seqlen_warmup import callback as seqlen_warmup
from hasten.methods.seqlen_warmup.schedule import SeqLenWarmupConfig

register(MethodSpec("seqlen_warmup", SeqLenWarmupConfig, seqlen_warmup.build, "sequence length warmup (arXiv 2108.06084)"))
register(MethodSpec("lawa", LAWAConfig, averaging.build_lawa, "latest weight averaging of k checkpoints (arXiv 2306.03241)"))
register(MethodSpec("ema", EMAConfig, averaging.build_ema, "exponential moving average of weights (baseline for LAWA)"))
register(MethodSpec("swa", SWAConfig, averaging.build_swa, "stochastic weight averaging (baseline for LAWA)"))
register(MethodSpec("sharpness", sharpness.SharpnessConfig, sharpness.build, "per-block sharpness probe; auto blockwise LR ratios (arXiv 2502.19002)"))
register(MethodSpec("growth", growth.GrowthConfig, growth.build, "model growth: G_stack (arXiv 2405.15319) and staged training (arXiv 2203.06211)"))
