"""Decoder-only transformer in one file: GPT-2 and LLaMA families chosen by config.

Parameter names make the block type evident, because the optimizer's param groups and the training
methods classify parameters by name (the model itself knows no training method):

    embed_tokens.weight                      token embedding (tied to the output head for gpt2)
    embed_positions.weight                   learned positions (gpt2 only)
    blocks.{i}.attn_norm.{weight,bias}       pre-attention norm
    blocks.{i}.attn.{q,k,v,o}_proj.{weight,bias}
    blocks.{i}.mlp_norm.{weight,bias}        pre-MLP norm
    blocks.{i}.mlp.{gate,up,down}_proj.{weight,bias}   (gate only for llama / SwiGLU)
    final_norm.{weight,bias}
    lm_head.weight                           untied head (llama by default)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hasten.config.model import FAMILIES, MAX_SIZE, PRESETS, ModelConfig, model_config
from hasten.errors import ConfigError

__all__ = [
    "FAMILIES",
    "MAX_SIZE",
    "PRESETS",
    "GPT",
    "ModelConfig",
    "ModelInfo",
    "count_params",
    "flops_per_token",
    "model_config",
]


class Norm(nn.Module):
    """LayerNorm (gpt2) or RMSNorm (llama), one class so code that maps parameters sees one layout."""

    def __init__(self, dim: int, kind: str, eps: float, bias: bool):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if (bias and kind == "layernorm") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, seq_len: int, theta: float, device=None, dtype=torch.float32):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, Dh); rotate the first half of each head against the second half (HF LLaMA rotate_half layout)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout only where it acts: at p = 0 no kernel runs and no random numbers are drawn (exact resume, golden
    traces)."""
    return F.dropout(x, p, training=True) if p and training else x


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=cfg.bias)
        self.k_proj = nn.Linear(d, kv, bias=cfg.bias)
        self.v_proj = nn.Linear(d, kv, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return _dropout(self.o_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.family == "llama"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            act = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            act = F.gelu(self.up_proj(x), approximate="tanh")
        return _dropout(self.down_proj(act), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kind = "layernorm" if cfg.family == "gpt2" else "rmsnorm"
        self.attn_norm = Norm(cfg.d_model, kind, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg)
        self.mlp_norm = Norm(cfg.d_model, kind, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        try:
            self._build(cfg)
        except (MemoryError, RuntimeError) as err:  # the allocator's failure, worded for the one who chose the shape
            if (
                not isinstance(err, MemoryError)
                and "alloc" not in str(err).lower()
                and "out of memory" not in str(err).lower()
            ):
                raise
            with torch.device("meta"):
                n = count_params(GPT(cfg))["total"]
            raise ConfigError(
                f"model ({cfg.n_layers} layers x {cfg.d_model} wide, vocab {cfg.vocab_size:,}) has {n:,} parameters, "
                f"{n * 4 / 2**30:,.1f} GiB in float32: more than this machine can allocate; pick a smaller model"
            ) from None

    def _build(self, cfg: ModelConfig) -> None:
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.family == "gpt2":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        kind = "layernorm" if cfg.family == "gpt2" else "rmsnorm"
        self.final_norm = Norm(cfg.d_model, kind, cfg.norm_eps, cfg.bias)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.family == "llama":
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
            # not persistent: derived from config, so checkpoints and HF exports stay pure weights
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            else:
                scale = (
                    1 / math.sqrt(2 * self.config.n_layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 1.0
                )
                with torch.no_grad():
                    p.normal_(0.0, std * scale, generator=generator)

    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, V), or the mean cross-entropy when targets are given."""
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model max_seq_len {self.config.max_seq_len}")
        x = self.embed_tokens(idx)
        rope = None
        if self.config.family == "gpt2":
            x = x + self.embed_positions(torch.arange(T, device=idx.device))
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])
        x = _dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope)
        logits = F.linear(self.final_norm(x), self.output_weight())
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def count_params(model: GPT) -> dict[str, int]:
    """Total and non-embedding parameter counts (a tied head is counted once)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.embed_tokens.weight.numel()
    if hasattr(model, "embed_positions"):
        emb += model.embed_positions.weight.numel()
    return {"total": total, "non_embedding": total - emb}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 x matmul params + attention (PaLM appendix B).

    Matmul params are the non-embedding weights plus the output head (a tied head still costs a
    matmul); attention scores and values add 12 * n_layers * d_model * seq_len per token.
    """
    d, L = cfg.d_model, cfg.n_layers
    kv = cfg.n_kv_heads * cfg.head_dim
    attn = d * d * 2 + d * kv * 2
    mlp = d * cfg.d_ff * (3 if cfg.family == "llama" else 2)
    matmul_params = L * (attn + mlp) + d * cfg.vocab_size
    return 6.0 * matmul_params + 12.0 * L * d * seq_len


@dataclass
class ModelInfo:
    name: str
    params: dict = field(default_factory=dict)
    flops_per_token: float = 0.0

    def lines(self) -> list[str]:
        p = self.params
        return [
            f"model {self.name}",
            f"  params total        {p['total']:,} ({p['total'] / 1e6:.2f}M)",
            f"  params non-embedding {p['non_embedding']:,} ({p['non_embedding'] / 1e6:.2f}M)",
            f"  training FLOPs/token {self.flops_per_token:,.0f} ({self.flops_per_token / 1e6:.2f} MFLOP)",
        ]
