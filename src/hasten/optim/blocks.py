"""Which transformer block type each parameter belongs to, by explicit name rules.

Blockwise LR (arXiv 2502.19002) gives each block type its own learning-rate multiplier and
Adam-mini (arXiv 2406.16793) partitions its second moment by block, so both need to know what a
parameter *is*. The reference code matches substrings and silently skips (never optimizes) or
mis-files anything unmatched; here every rule is a full-name regular expression and a name that
matches none of them is an error that names the parameter and the fix.

Block types:

    emb      token embedding (also the tied output head)
    pos_emb  learned positional embedding (gpt2)
    head     untied output head (lm_head)
    qk       attention query and key projections
    vo       attention value and output projections
    ffn      MLP projections (gate/up/down, c_fc/c_proj)
    norm     LayerNorm / RMSNorm scales and shifts

Biases follow the matrix they belong to (q_proj.bias is qk). Three naming schemes are known:
hasten's own (see hasten.model), HF GPT-2 (`transformer.h.N...`) and HF LLaMA
(`model.layers.N...`). HF GPT-2's fused `attn.c_attn` holds Q, K and V in one tensor, so it cannot
be given QK's and V's different learning rates; it raises unless an override files it explicitly.
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from hasten.config.blocks import BLOCK_TYPES, check_block_overrides

__all__ = ["BLOCK_TYPES", "check_block_overrides", "classify_model", "classify_param", "normalize_name"]
from hasten.errors import ConfigError

_WB = r"(weight|bias)"  # a matrix and its bias go to the same block

# (regex that must match the whole normalized name, block). Order does not matter: the patterns are
# anchored on the parent module, so e.g. `attn.c_proj` and `mlp.c_proj` cannot both match.
_RULES: tuple[tuple[str, str], ...] = (
    # hasten (hasten.model)
    (r"embed_tokens\.weight", "emb"),
    (r"embed_positions\.weight", "pos_emb"),
    (rf"blocks\.\d+\.(attn_norm|mlp_norm)\.{_WB}", "norm"),
    (rf"final_norm\.{_WB}", "norm"),
    (rf"blocks\.\d+\.attn\.(q_proj|k_proj)\.{_WB}", "qk"),
    (rf"blocks\.\d+\.attn\.(v_proj|o_proj)\.{_WB}", "vo"),
    (rf"blocks\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.{_WB}", "ffn"),
    (rf"lm_head\.{_WB}", "head"),
    # HF GPT-2 (GPT2LMHeadModel; `transformer.` absent on a bare GPT2Model). The q_attn/k_attn/v_attn
    # split is the BlockwiseLearningRate repo's nanoGPT variant.
    (r"(transformer\.)?wte\.weight", "emb"),
    (r"(transformer\.)?wpe\.weight", "pos_emb"),
    (rf"(transformer\.)?h\.\d+\.(ln_1|ln_2)\.{_WB}", "norm"),
    (rf"(transformer\.)?ln_f\.{_WB}", "norm"),
    (rf"(transformer\.)?h\.\d+\.attn\.(q_attn|k_attn)\.{_WB}", "qk"),
    (rf"(transformer\.)?h\.\d+\.attn\.(v_attn|c_proj)\.{_WB}", "vo"),
    (rf"(transformer\.)?h\.\d+\.mlp\.(c_fc|c_proj)\.{_WB}", "ffn"),
    # HF LLaMA (LlamaForCausalLM; `model.` absent on a bare LlamaModel); Qwen-style q/k/v biases follow.
    (r"(model\.)?embed_tokens\.weight", "emb"),
    (rf"(model\.)?layers\.\d+\.(input_layernorm|post_attention_layernorm)\.{_WB}", "norm"),
    (rf"(model\.)?norm\.{_WB}", "norm"),
    (rf"(model\.)?layers\.\d+\.self_attn\.(q_proj|k_proj)\.{_WB}", "qk"),
    (rf"(model\.)?layers\.\d+\.self_attn\.(v_proj|o_proj)\.{_WB}", "vo"),
    (rf"(model\.)?layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)\.{_WB}", "ffn"),
)
_COMPILED = tuple((re.compile(pattern), block) for pattern, block in _RULES)
_FUSED_QKV = re.compile(rf"(transformer\.)?h\.\d+\.attn\.c_attn\.{_WB}")


def normalize_name(name: str) -> str:
    """Drop wrapper prefixes: `_orig_mod.` (torch.compile, at any depth) and a leading `module.` (DDP/FSDP)."""
    parts = [part for part in name.split(".") if part != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _classify(name: str, overrides: dict[str, str]) -> str | None:
    name = normalize_name(name)
    for pattern, block in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return block
    if _FUSED_QKV.fullmatch(name):
        raise ConfigError(
            f"parameter {name!r} is a fused Q/K/V projection (HF GPT-2 c_attn), "
            "which cannot be split into the qk and vo blocks; split it into q/k/v Linears (hasten's gpt2 does), "
            "or file it whole with overrides={'*.attn.c_attn.*': 'qk'}"
        )
    for regex, block in _COMPILED:
        if regex.fullmatch(name):
            return block
    return None


def classify_param(name: str, overrides: dict[str, str] | None = None) -> str:
    """The block type of one parameter name.

    `overrides` maps fnmatch globs (matched against the normalized name) to block types and is
    checked before the built-in rules, so it can both add names and re-file known ones.
    """
    block = _classify(name, check_block_overrides(overrides))
    if block is None:
        raise ConfigError(_unclassified_message([normalize_name(name)]))
    return block


def classify_model(
    model: nn.Module, overrides: dict[str, str] | None = None, *, trainable_only: bool = True
) -> dict[str, str]:
    """{normalized parameter name: block type} for every (trainable) parameter; a tied weight appears once.

    Every parameter must be classified: unknown names raise one ConfigError listing them all, since
    a parameter silently left out of the optimizer (the reference code's failure mode) is never trained.
    """
    overrides = check_block_overrides(overrides)
    blocks: dict[str, str] = {}
    unknown: list[str] = []
    for raw_name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        name = normalize_name(raw_name)
        block = _classify(name, overrides)
        if block is None:
            unknown.append(name)
        else:
            blocks[name] = block
    if unknown:
        raise ConfigError(_unclassified_message(unknown))
    return blocks


def _unclassified_message(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"cannot tell the block type of parameter(s) {shown}; name them with overrides "
        f"(recipe: optim.block_overrides), e.g. {{{names[0]!r}: 'ffn'}}, using one of {', '.join(BLOCK_TYPES)}"
    )
