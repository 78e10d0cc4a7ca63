"""Export hasten models to Hugging Face transformers checkpoints and import them back.

The two families map onto stock transformers architectures, so an exported directory loads with
`AutoModelForCausalLM.from_pretrained(dir)` and computes the same logits:

    hasten gpt2   <->  GPT2LMHeadModel   (LayerNorm, tanh GELU = "gelu_new", learned positions)
    hasten llama  <->  LlamaForCausalLM  (RMSNorm, SwiGLU, RoPE, GQA)

GPT-2 stores its projections as `Conv1D` (weight shape (in, out)) and fuses q, k and v into one
`c_attn`, so export transposes and concatenates and import splits and transposes back. Our RoPE
(`model.apply_rope`) rotates the first half of each head against the second half, which is exactly
HF LLaMA's `rotate_half` convention with `cos = cat(freqs, freqs)`; q/k weights therefore need no
permutation (the permutation in Meta-to-HF conversion scripts undoes Meta's interleaved layout,
which hasten does not use).

Only the facts HF cannot express travel in a side file, `hasten_config.json` (today: whether a
gpt2-family model was built without biases, since GPT2LMHeadModel always has them and export writes
zeros). Import works without transformers installed: configs are read as JSON and weights with
safetensors; export writes config.json by hand for the same reason, so the checkpoint does not
depend on the transformers version on the exporting machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hasten.checkpointing.files import read_state
from hasten.errors import CheckpointError, ConfigError
from hasten.interop.hf_config import (
    _check_exportable,
    hasten_config_from_hf,
    hf_config_dict_from_hasten,
)
from hasten.model import GPT, ModelConfig, model_config

HASTEN_SIDECAR = "hasten_config.json"
EOS_TOKEN = "<|endoftext|>"  # what hasten's byte-level BPE reserves as its document separator

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# ---------------------------------------------------------------------------------------------
# weights


def _gpt2_to_hf(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel state dict; Conv1D weights are (in, out), i.e. our Linear weights transposed."""

    def bias(name: str, size: int) -> torch.Tensor:
        return sd[name] if cfg.bias else torch.zeros(size, dtype=sd["embed_tokens.weight"].dtype)

    d = cfg.d_model
    out = {"transformer.wte.weight": sd["embed_tokens.weight"], "transformer.wpe.weight": sd["embed_positions.weight"]}
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        a = src + "attn."
        out[dst + "ln_1.weight"] = sd[src + "attn_norm.weight"]
        out[dst + "ln_1.bias"] = bias(src + "attn_norm.bias", d)
        out[dst + "attn.c_attn.weight"] = torch.cat([sd[a + p + "_proj.weight"] for p in "qkv"], dim=0).t()
        out[dst + "attn.c_attn.bias"] = torch.cat([bias(a + p + "_proj.bias", d) for p in "qkv"])
        out[dst + "attn.c_proj.weight"] = sd[a + "o_proj.weight"].t()
        out[dst + "attn.c_proj.bias"] = bias(a + "o_proj.bias", d)
        out[dst + "ln_2.weight"] = sd[src + "mlp_norm.weight"]
        out[dst + "ln_2.bias"] = bias(src + "mlp_norm.bias", d)
        out[dst + "mlp.c_fc.weight"] = sd[src + "mlp.up_proj.weight"].t()
        out[dst + "mlp.c_fc.bias"] = bias(src + "mlp.up_proj.bias", cfg.d_ff)
        out[dst + "mlp.c_proj.weight"] = sd[src + "mlp.down_proj.weight"].t()
        out[dst + "mlp.c_proj.bias"] = bias(src + "mlp.down_proj.bias", d)
    out["transformer.ln_f.weight"] = sd["final_norm.weight"]
    out["transformer.ln_f.bias"] = bias("final_norm.bias", d)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


_LLAMA_LAYER_NAMES = {  # hasten block-relative name -> HF layer-relative name
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    **{f"attn.{p}_proj.{t}": f"self_attn.{p}_proj.{t}" for p in "qkvo" for t in ("weight", "bias")},
    **{f"mlp.{p}_proj.{t}": f"mlp.{p}_proj.{t}" for p in ("gate", "up", "down") for t in ("weight", "bias")},
}


def _llama_to_hf(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM state dict: same shapes and RoPE layout, only the names differ."""
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["final_norm.weight"]}
    for i in range(cfg.n_layers):
        for ours, theirs in _LLAMA_LAYER_NAMES.items():
            if f"blocks.{i}.{ours}" in sd:
                out[f"model.layers.{i}.{theirs}"] = sd[f"blocks.{i}.{ours}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


class _Weights:
    """An HF state dict with its model prefix removed, consumed key by key so leftovers can be reported."""

    IGNORED = re.compile(r"(h\.\d+\.attn\.(bias|masked_bias)|layers\.\d+\.self_attn\.rotary_emb\.inv_freq)$")

    def __init__(self, sd: Mapping[str, torch.Tensor], prefix: str):
        self.tensors = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}

    def take(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(
                f"hf: checkpoint lacks weight {name!r}; it is truncated or not a standard GPT-2/LLaMA model"
            )
        return self.tensors.pop(name)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def finish(self) -> None:
        left = sorted(k for k in self.tensors if not self.IGNORED.search(k))
        if left:
            shown = ", ".join(left[:5]) + (" ..." if len(left) > 5 else "")
            raise CheckpointError(
                f"hf: checkpoint has weights hasten's model has no place for ({shown}); "
                "it is a variant hasten cannot import"
            )


def _gpt2_from_hf(w: _Weights, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    d = cfg.d_model
    sd = {"embed_tokens.weight": w.take("wte.weight"), "embed_positions.weight": w.take("wpe.weight")}
    for i in range(cfg.n_layers):
        src, dst = f"h.{i}.", f"blocks.{i}."
        q, k, v = w.take(src + "attn.c_attn.weight").t().split(d, dim=0)
        qb, kb, vb = w.take(src + "attn.c_attn.bias").split(d)
        weights = {
            "attn_norm": (w.take(src + "ln_1.weight"), w.take(src + "ln_1.bias")),
            "attn.q_proj": (q, qb),
            "attn.k_proj": (k, kb),
            "attn.v_proj": (v, vb),
            "attn.o_proj": (w.take(src + "attn.c_proj.weight").t(), w.take(src + "attn.c_proj.bias")),
            "mlp_norm": (w.take(src + "ln_2.weight"), w.take(src + "ln_2.bias")),
            "mlp.up_proj": (w.take(src + "mlp.c_fc.weight").t(), w.take(src + "mlp.c_fc.bias")),
            "mlp.down_proj": (w.take(src + "mlp.c_proj.weight").t(), w.take(src + "mlp.c_proj.bias")),
        }
        for name, (weight, bias) in weights.items():
            sd[f"{dst}{name}.weight"] = weight
            sd[f"{dst}{name}.bias"] = bias
    sd["final_norm.weight"], sd["final_norm.bias"] = w.take("ln_f.weight"), w.take("ln_f.bias")
    _take_head(w, cfg, sd)
    if not cfg.bias:
        sd = {k: v for k, v in sd.items() if not k.endswith(".bias")}
    return sd


def _llama_from_hf(w: _Weights, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = {"embed_tokens.weight": w.take("embed_tokens.weight"), "final_norm.weight": w.take("norm.weight")}
    for i in range(cfg.n_layers):
        for ours, theirs in _LLAMA_LAYER_NAMES.items():
            if cfg.bias or not ours.endswith(".bias"):
                sd[f"blocks.{i}.{ours}"] = w.take(f"layers.{i}.{theirs}")
    _take_head(w, cfg, sd)
    return sd


def _take_head(w: _Weights, cfg: ModelConfig, sd: dict) -> None:
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = w.take("lm_head.weight")
    elif w.has("lm_head.weight"):  # some tied checkpoints also store the head: it must be the embedding
        head = w.take("lm_head.weight")
        if not torch.equal(head, sd["embed_tokens.weight"]):
            raise CheckpointError(
                "hf: config says tie_word_embeddings=true but lm_head.weight differs from the embedding; "
                "fix config.json"
            )


def _gpt2_biases_all_zero(w: _Weights, cfg: ModelConfig) -> bool:
    names = ["ln_f.bias"] + [
        f"h.{i}.{n}.bias"
        for i in range(cfg.n_layers)
        for n in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    return all(w.has(n) and not w.tensors[n].any() for n in names)


# ---------------------------------------------------------------------------------------------
# export / import


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a transformers checkpoint directory and return its path.

    Files: config.json, model.safetensors (one file, HF key names), hasten_config.json, and with a
    tokenizer also tokenizer.json + tokenizer_config.json so `AutoTokenizer.from_pretrained(dir)`
    works offline. `dtype` casts the weights (e.g. torch.bfloat16 or "bf16"); None keeps the model's.
    The directory must be new or empty unless `overwrite` (then these files are replaced, others kept);
    everything is written into a temporary folder first and moved in only when complete.
    """
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    cfg: ModelConfig = model.config
    _check_exportable(cfg)
    target_dtype = _resolve_dtype(dtype)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"hf export: {out} exists and is not a directory; pick a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"hf export: {out} is not empty; pick a new or empty directory (or overwrite=True / --force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        eos_id = _copy_tokenizer(Path(tokenizer_file), staging, cfg) if tokenizer_file is not None else None
        state = {k: v.detach() for k, v in model.state_dict().items()}
        hf_state = (_gpt2_to_hf if cfg.family == "gpt2" else _llama_to_hf)(state, cfg)
        if target_dtype is None:
            target_dtype = state["embed_tokens.weight"].dtype
        hf_state = {k: v.to(device="cpu", dtype=target_dtype).contiguous() for k, v in hf_state.items()}

        config = hf_config_dict_from_hasten(cfg, bos_token_id=eos_id, eos_token_id=eos_id)
        config["torch_dtype"] = str(target_dtype).removeprefix("torch.")
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (staging / HASTEN_SIDECAR).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        save_file(hf_state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        out.mkdir(exist_ok=True)
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
    except OSError as err:
        raise ConfigError(
            f"hf export: writing {out} failed ({err.strerror or err}); free space and export again"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def import_hf(path_or_model: str | Path | Any, dtype: torch.dtype | str | None = None) -> GPT:
    """A hasten GPT from a transformers checkpoint directory (local files only) or a loaded HF model.

    The weights are mapped exactly (transposes and splits only), so export -> import reproduces a
    hasten state dict bit for bit. `dtype` casts the result (None = float32, hasten's training dtype).
    """
    sidecar: dict = {}
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model)
        raw_config = _read_json(path / "config.json", what="config.json")
        if (path / HASTEN_SIDECAR).is_file():
            sidecar = _read_json(path / HASTEN_SIDECAR, what=HASTEN_SIDECAR)
        tensors = _load_hf_weights(path)
    elif hasattr(path_or_model, "config") and hasattr(path_or_model, "state_dict"):
        raw_config = path_or_model.config.to_dict()
        tensors = path_or_model.state_dict()
    else:
        raise ConfigError(
            f"hf import: expected a checkpoint directory or a transformers model, got {type(path_or_model).__name__}"
        )

    cfg = hasten_config_from_hf(raw_config)
    prefix = "transformer." if cfg.family == "gpt2" else "model."
    weights = _Weights({k: v.detach() for k, v in tensors.items()}, prefix)
    if cfg.family == "gpt2" and sidecar.get("bias") is False and _gpt2_biases_all_zero(weights, cfg):
        cfg = model_config(cfg, bias=False)  # exported from a bias-free hasten model: the zeros were padding
    state = (_gpt2_from_hf if cfg.family == "gpt2" else _llama_from_hf)(weights, cfg)
    weights.finish()

    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"hf import: weights do not match config.json ({first}); the checkpoint is inconsistent"
        ) from err
    target = _resolve_dtype(dtype) or torch.float32
    return model.to(target)


def hf_tokenizer_file(path: str | Path) -> Path | None:
    """The tokenizer.json inside an HF checkpoint directory, if it has one (for `hasten import-hf` to reuse)."""
    candidate = Path(path) / "tokenizer.json"
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------------------------------
# helpers


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ConfigError(f"hf: dtype {dtype!r} is unknown; use one of float32, bfloat16, float16")
    return _DTYPES[key]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"hf: {path} not found; point at a transformers checkpoint directory (with {what})")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"hf: {path} is not valid JSON ({err.msg} at line {err.lineno}); re-export the checkpoint"
        ) from None
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"hf: {path} cannot be read ({type(err).__name__}); re-export the checkpoint") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"hf: {path} is not a JSON object; re-export the checkpoint")
    return values


def _load_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir: model.safetensors, its sharded index, or pytorch_model.bin (tensors only: a
    pickle that would run code is refused)."""
    if (path / "model.safetensors").is_file():
        return _read_safetensors(path / "model.safetensors")
    if (path / "model.safetensors.index.json").is_file():
        index = _read_json(path / "model.safetensors.index.json", what="model.safetensors.index.json")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            tensors.update(_read_safetensors(path / shard))
        return tensors
    if (path / "pytorch_model.bin").is_file():
        return read_state(path / "pytorch_model.bin", writer="transformers")
    raise CheckpointError(
        f"hf: no model.safetensors or pytorch_model.bin in {path}; point at a transformers checkpoint directory"
    )


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (
        Exception
    ) as err:  # safetensors raises its own SafetensorError (truncated, garbled header); OSError if missing
        raise CheckpointError(
            f"hf: {file} cannot be read ({str(err).splitlines()[0][:120]}); it is truncated or damaged, so "
            "save or download it again"
        ) from None


def _copy_tokenizer(tokenizer_file: Path, out: Path, cfg: ModelConfig) -> int | None:
    """Copy tokenizer.json and write the tokenizer_config.json AutoTokenizer needs; return the eos id."""
    from tokenizers import Tokenizer

    if not tokenizer_file.is_file():
        raise ConfigError(f"hf export: tokenizer file {tokenizer_file} not found; pass the run's tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # tokenizers raises a bare Exception on malformed files
        raise ConfigError(
            f"hf export: {tokenizer_file} is not a tokenizers JSON file ({err}); pass the run's tokenizer.json"
        ) from err
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ConfigError(
            f"hf export: tokenizer has {tok.get_vocab_size()} tokens but the model's vocab_size is {cfg.vocab_size}; "
            "pass the tokenizer the model was trained with"
        )
    eos_id = tok.token_to_id(EOS_TOKEN)
    shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    if eos_id is not None:
        tok_config |= {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return eos_id
