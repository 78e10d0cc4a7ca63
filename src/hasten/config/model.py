"""The model's shape: ModelConfig, the presets and `model_config` (the schema layer; hasten.model builds the GPT)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from hasten.errors import ConfigError

FAMILIES = ("gpt2", "llama")
MAX_SIZE = 2**24  # per model dimension: keeps every weight matrix's element count far inside int64


@dataclass
class ModelConfig:
    family: str = "gpt2"
    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (no grouped-query attention)
    d_ff: int | None = None  # None = 4*d (gpt2) or SwiGLU's 8/3*d rounded to 32 (llama)
    max_seq_len: int = 256
    bias: bool | None = None  # None = family default (gpt2: True, llama: False)
    tie_embeddings: bool | None = None  # None = family default (gpt2: True, llama: False)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    dropout: float = (
        0.0  # while training: on the embeddings, attention probabilities and residual branches (GPT-2: 0.1)
    )

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.family == "gpt2" else _swiglu_hidden(self.d_model)
        if self.bias is None:
            self.bias = self.family == "gpt2"
        if self.tie_embeddings is None:
            self.tie_embeddings = self.family == "gpt2"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"model: {msg}")

        if self.family not in FAMILIES:
            bad(f"family={self.family!r} is unknown; use one of {', '.join(FAMILIES)}")
        for key in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, key)
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or not 1 <= value <= MAX_SIZE:
                bad(f"{key}={value!r} must be a whole number in [1, {MAX_SIZE:,}]")
        if self.d_model % self.n_heads:
            bad(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "pick n_heads so d_model/n_heads is whole"
            )
        if self.n_heads % self.n_kv_heads:
            bad(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; use a divisor of n_heads")
        if self.family == "llama" and self.head_dim % 2:
            bad(f"head_dim={self.head_dim} must be even for RoPE; change d_model or n_heads")
        for key in ("norm_eps", "rope_theta", "init_std"):
            if not float(getattr(self, key)) > 0:
                bad(f"{key}={getattr(self, key)} must be a positive number")
        if not 0.0 <= float(self.dropout) < 1.0:
            bad(f"dropout={self.dropout} must be in [0, 1) (0 = none; GPT-2 used 0.1)")

    def to_dict(self) -> dict:
        return asdict(self)


def _swiglu_hidden(d_model: int) -> int:
    hidden = int(8 * d_model / 3)
    return 32 * math.ceil(hidden / 32)


# Only the fields each preset sets explicitly: an override such as {preset: cpu-small, d_model: 64}
# re-derives n_kv_heads and d_ff from the new width instead of keeping the preset's derived values.
PRESETS: dict[str, dict] = {
    "tiny": dict(family="gpt2", vocab_size=512, n_layers=2, d_model=32, n_heads=2, max_seq_len=64),
    "tiny-llama": dict(family="llama", vocab_size=512, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=64),
    "cpu-small": dict(family="gpt2", vocab_size=4096, n_layers=4, d_model=128, n_heads=4, max_seq_len=256),
    "cpu-medium": dict(family="gpt2", vocab_size=4096, n_layers=6, d_model=256, n_heads=8, max_seq_len=256),
    "cpu-small-llama": dict(
        family="llama", vocab_size=4096, n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, max_seq_len=256
    ),
    # the speedup benchmark's scale ladder (benchmarks/speedup.py): small enough to train at 20 tokens per
    # non-embedding parameter on 2 CPU cores (1.0M / 2.3M / 4.0M tokens)
    "bench-d32": dict(family="gpt2", vocab_size=512, n_layers=4, d_model=32, n_heads=4, max_seq_len=128),
    "bench-d48": dict(family="gpt2", vocab_size=512, n_layers=4, d_model=48, n_heads=4, max_seq_len=128),
    "bench-d64": dict(family="gpt2", vocab_size=512, n_layers=4, d_model=64, n_heads=4, max_seq_len=128),
    "gpt2-124m": dict(family="gpt2", vocab_size=50304, n_layers=12, d_model=768, n_heads=12, max_seq_len=1024),
    "gpt2-350m": dict(family="gpt2", vocab_size=50304, n_layers=24, d_model=1024, n_heads=16, max_seq_len=1024),
    "llama-410m": dict(
        family="llama",
        vocab_size=32000,
        n_layers=24,
        d_model=1024,
        n_heads=16,
        n_kv_heads=1,
        d_ff=4096,
        max_seq_len=2048,
    ),
    "llama-1.1b": dict(
        family="llama",
        vocab_size=32000,
        n_layers=22,
        d_model=2048,
        n_heads=32,
        n_kv_heads=4,
        d_ff=5632,
        max_seq_len=2048,
    ),
}


def model_config(name_or_config: str | ModelConfig | dict, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name, a dict (optionally with a `preset` key) or a config."""
    if isinstance(name_or_config, ModelConfig):
        cfg = replace(name_or_config, **overrides)
    elif isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ConfigError(f"model preset {name_or_config!r} is unknown; use one of {', '.join(PRESETS)}")
        cfg = ModelConfig(**{**PRESETS[name_or_config], **overrides})
    else:
        fields = dict(name_or_config)
        preset = fields.pop("preset", None)
        fields.update(overrides)
        if preset is not None:
            return model_config(preset, **fields)
        cfg = ModelConfig(**fields)
    cfg.validate()
    return cfg
