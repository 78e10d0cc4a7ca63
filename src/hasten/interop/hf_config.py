"""Model configs between hasten and transformers: a ModelConfig as a GPT2/Llama config (export) and back (import)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hasten.errors import ConfigError
from hasten.model import ModelConfig, model_config

# HF writes config.json as a diff against the class defaults, so a file may omit any of these;
# reading them here keeps import independent of the transformers version (values from transformers).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    "llama": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rope_parameters": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
}
_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def hf_config_dict_from_hasten(
    cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict:
    """The full config.json content for `cfg` (every field explicit, so any transformers version reads it)."""
    _check_exportable(cfg)
    common = {
        "architectures": [_ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
    }
    if cfg.family == "gpt2":
        return common | {
            "n_positions": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "activation_function": "gelu_new",  # tanh-approximated GELU, as in hasten's MLP
            "layer_norm_epsilon": cfg.norm_eps,
            # the model's own dropout (0 unless a recipe sets model.dropout)
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    return common | {
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers >= 5 folds this into rope_parameters on load
        "rope_scaling": None,
        "attention_bias": bool(cfg.bias),
        "attention_dropout": cfg.dropout,
        "mlp_bias": bool(cfg.bias),
        "pretraining_tp": 1,
    }


def hf_config_from_hasten(cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A transformers `GPT2Config` or `LlamaConfig` equivalent to `cfg` (needs transformers installed)."""
    transformers = _require_transformers()
    fields = hf_config_dict_from_hasten(cfg, bos_token_id, eos_token_id)
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def hasten_config_from_hf(hf_config: Mapping | Any, bias: bool | None = None) -> ModelConfig:
    """The hasten ModelConfig for a transformers config (object or config.json dict).

    `bias` overrides the bias flag for gpt2, whose HF form always carries biases (None = True).
    Raises ConfigError for architectures or options hasten's model cannot reproduce exactly.
    """
    raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    model_type = raw.get("model_type")
    if model_type not in _HF_DEFAULTS:
        arch = ", ".join(raw.get("architectures") or []) or "?"
        raise ConfigError(
            f"hf: model_type={model_type!r} (architectures {arch}) is not supported; "
            "hasten imports gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM) checkpoints"
        )
    c = _HF_DEFAULTS[model_type] | {k: v for k, v in raw.items() if v is not None or k not in _HF_DEFAULTS[model_type]}
    if model_type == "gpt2":
        cfg = _gpt2_config_from_hf(c, bias)
    else:
        cfg = _llama_config_from_hf(c)
    return model_config(cfg)


def _gpt2_config_from_hf(c: dict, bias: bool | None) -> ModelConfig:
    def unsupported(what: str) -> ConfigError:
        return ConfigError(
            f"hf: gpt2 checkpoint uses {what}, which hasten's gpt2 block does not implement; export a standard GPT-2"
        )

    if c["activation_function"] not in _TANH_GELUS:
        raise unsupported(f"activation_function={c['activation_function']!r} (hasten uses the tanh GELU 'gelu_new')")
    if not c["scale_attn_weights"] or c["scale_attn_by_inverse_layer_idx"]:
        raise unsupported("non-standard attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx)")
    if c["add_cross_attention"]:
        raise unsupported("cross-attention")
    d_model = int(c["n_embd"])
    return ModelConfig(
        family="gpt2",
        vocab_size=int(c["vocab_size"]),
        n_layers=int(c["n_layer"]),
        d_model=d_model,
        n_heads=int(c["n_head"]),
        d_ff=int(c["n_inner"]) if c["n_inner"] is not None else 4 * d_model,
        max_seq_len=int(c["n_positions"]),
        bias=True if bias is None else bias,
        tie_embeddings=bool(c["tie_word_embeddings"]),
        norm_eps=float(c["layer_norm_epsilon"]),
        init_std=float(c["initializer_range"]),
    )


def _llama_config_from_hf(c: dict) -> ModelConfig:
    def unsupported(what: str) -> ConfigError:
        return ConfigError(f"hf: llama checkpoint uses {what}, which hasten's llama block does not implement")

    if c["hidden_act"] != "silu":
        raise unsupported(f"hidden_act={c['hidden_act']!r} (hasten's SwiGLU uses silu)")
    rope_theta = float(c["rope_theta"])
    rope = c.get("rope_parameters") or c.get("rope_scaling")
    if rope:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise unsupported(f"rope scaling {rope_type!r} (hasten implements plain RoPE)")
        rope_theta = float(rope.get("rope_theta", rope_theta))
    if bool(c["attention_bias"]) != bool(c["mlp_bias"]):
        raise unsupported("attention_bias != mlp_bias (hasten has one bias flag for all linear layers)")
    d_model, n_heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if c["head_dim"] is not None and int(c["head_dim"]) * n_heads != d_model:
        raise unsupported(f"head_dim={c['head_dim']} != hidden_size/num_attention_heads")
    kv = c["num_key_value_heads"]
    return ModelConfig(
        family="llama",
        vocab_size=int(c["vocab_size"]),
        n_layers=int(c["num_hidden_layers"]),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(kv) if kv is not None else n_heads,
        d_ff=int(c["intermediate_size"]),
        max_seq_len=int(c["max_position_embeddings"]),
        bias=bool(c["attention_bias"]),
        tie_embeddings=bool(c["tie_word_embeddings"]),
        norm_eps=float(c["rms_norm_eps"]),
        rope_theta=rope_theta,
        init_std=float(c["initializer_range"]),
    )


def _check_exportable(cfg: ModelConfig) -> None:
    cfg.validate()
    if cfg.family == "gpt2" and cfg.n_kv_heads != cfg.n_heads:
        raise ConfigError(
            f"hf export: gpt2 family with n_kv_heads={cfg.n_kv_heads} != n_heads={cfg.n_heads} has no GPT2LMHeadModel "
            "equivalent (HF GPT-2 has no grouped-query attention); use family llama or n_kv_heads=n_heads"
        )


def _require_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(
            "hf: this needs the transformers package; install it with `pip install transformers`"
        ) from err
    return transformers
