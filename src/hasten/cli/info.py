"""`hasten prepare-data` and `hasten info`: a recipe's corpus and token split, the presets, one model's size and
FLOPs."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from hasten.config import checked_model_fields, suggest
from hasten.data.tokens import prepare_from_config, skipped_summary
from hasten.errors import ConfigError
from hasten.model import GPT, PRESETS, ModelInfo, count_params, flops_per_token, model_config
from hasten.recipes import load_config


def cmd_prepare_data(args) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if args.out is not None and cfg.data.tokens is not None:
        raise ConfigError("--out writes a token dir from data.source, but data.tokens reads one; give only one of them")
    data = prepare_from_config(cfg.data, progress=True, out=args.out)
    m = data.manifest
    tokens, docs = m["tokens"], m["documents"]
    share = tokens["val"] / max(1, tokens["train"] + tokens["val"])
    print(
        f"{m['corpus']}: {docs['total']:,} documents, {tokens['train']:,} train / {tokens['val']:,} val tokens "
        f"({share:.1%} val; {docs['val']:,} document(s) in val, {docs['cut']} cut), vocab {m['vocab_size']}, "
        f"skipped {skipped_summary(m)}"
    )
    print(f"token dir: {data.directory} ({m['shards']} shard(s))")
    print(f"tokenizer: {data.tokenizer_path}")
    if args.out is not None:
        print(f"train on it from any node with: --set data.tokens={data.directory}")
    return 0


def cmd_info(args) -> int:
    if args.model is None:
        rows = [("preset", "family", "layers", "d_model", "heads", "params", "non-embedding")]
        for name in PRESETS:
            cfg, counts = _info_model(name)
            rows.append(
                (
                    name,
                    cfg.family,
                    str(cfg.n_layers),
                    str(cfg.d_model),
                    f"{cfg.n_heads} ({cfg.n_kv_heads} kv)",
                    f"{counts['total']:,}",
                    f"{counts['non_embedding']:,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print(
                "  ".join(
                    cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
                ).rstrip()
            )
        print(
            "hasten info NAME | RECIPE.yaml | '{preset: NAME, d_model: ...}' shows one model with its FLOPs per token"
        )
        return 0
    cfg, seq, label = _info_target(args.model)
    with torch.device("meta"):
        model = GPT(cfg)
    seq = args.seq_len or seq
    info = ModelInfo(label, count_params(model), flops_per_token(cfg, seq))
    print("\n".join(info.lines()))
    print(
        f"  config: {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
        f"({cfg.n_kv_heads} kv), d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, context {cfg.max_seq_len} "
        f"(FLOPs at seq {seq})"
    )
    return 0


def _info_model(spec):
    cfg = model_config(spec)
    with torch.device("meta"):
        return cfg, count_params(GPT(cfg))


def _info_target(text: str):
    """(model config, sequence length, label) of a preset name, a recipe file or a model mapping."""
    if text in PRESETS:
        cfg = model_config(text)
        return cfg, cfg.max_seq_len, text
    if Path(text).is_file():
        run = load_config(text)
        return (
            run.model_config(),
            run.seq_len,
            f"{run.model if isinstance(run.model, str) else 'custom'} (recipe {text})",
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, dict):
        cfg = model_config(checked_model_fields(value))
        return cfg, cfg.max_seq_len, text
    raise ConfigError(
        f"{text!r} is not a model preset, a recipe file or a model mapping like '{{preset: tiny, d_model: 64}}'; "
        f"{suggest(text, list(PRESETS))} (hasten info lists the presets)"
    )
