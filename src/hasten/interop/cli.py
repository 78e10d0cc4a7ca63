"""`hasten export RUN_OR_CKPT --to hf DIR` and `hasten import-hf DIR --out CKPT_DIR`."""

from __future__ import annotations

from pathlib import Path

import yaml

from hasten.errors import CheckpointError, ConfigError


def load_model_from(spec: str | Path, weights: str = "raw"):
    """A GPT from a run dir, a checkpoint dir, a model checkpoint written by import-hf, or `hf:DIR`.

    `weights` picks the raw weights or a weight average the run exported (lawa, ema, swa). A training
    checkpoint saved inside growth's MSG mask ramp gets the masks of its step (see GPT.set_unit_masks).
    """
    from hasten.checkpoint import load_checkpoint

    spec = str(spec)
    if spec.startswith("hf:"):
        from hasten.interop.hf import import_hf

        return import_hf(spec[3:])
    path = Path(spec)
    ckpt = load_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    model = model_from_checkpoint(ckpt)
    if weights != "raw":
        from safetensors.torch import load_file

        run_dir = path if (path / "checkpoints").is_dir() else Path(ckpt["_path"]).parent.parent
        averaged = run_dir / f"{weights}_weights.safetensors"
        if not averaged.exists():
            raise CheckpointError(f"{run_dir} has no {averaged.name}; the run did not use methods.{weights}, so export --weights raw")
        model.load_state_dict(load_file(str(averaged)))
    return model


def model_from_checkpoint(ckpt: dict):
    """The GPT of a loaded checkpoint; one saved inside growth's MSG mask ramp gets the masks of its step."""
    from hasten.methods.growth.masks import checkpoint_mask_ramp
    from hasten.model import GPT, ModelConfig

    model = GPT(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    ramp = checkpoint_mask_ramp(ckpt)
    if ramp is not None:
        ramp.apply(model, int(ckpt["progress"]["step"]))
    return model


def cmd_export(args) -> int:
    from hasten.interop.hf import export_hf

    if args.to != "hf":
        raise ConfigError(f"--to {args.to!r} is unknown; only hf is supported")
    model = load_model_from(args.source, args.weights)
    source = Path(args.source)
    tokenizer = next((p for p in (source / "tokenizer.json", source.parent.parent / "tokenizer.json") if p.is_file()), None)
    out = export_hf(model, args.out, tokenizer_file=tokenizer, dtype=args.dtype)
    print(f"exported {args.weights} weights to {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def cmd_import_hf(args) -> int:
    from hasten.checkpoint import save_checkpoint
    from hasten.interop.hf import hf_tokenizer_file, import_hf

    model = import_hf(args.source)
    out = Path(args.out)
    tokenizer = hf_tokenizer_file(args.source)
    extra = {"tokenizer.json": tokenizer.read_bytes()} if tokenizer else {}
    state = {"format": "hasten-model", "model_config": model.config.to_dict(), "model": model.state_dict()}
    path = save_checkpoint(out, 0, state, keep=1, extra_files=extra)
    print(f"wrote {path}; train from it with --set train.init_from={path} and this model section:")
    print(yaml.safe_dump({"model": model.config.to_dict()}, sort_keys=False).rstrip())
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run or checkpoint as a transformers model")
    p.add_argument("source", help="run dir, checkpoint dir")
    p.add_argument("--to", default="hf", help="target format (hf)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", default="raw", choices=["raw", "lawa", "ema", "swa"], help="raw weights or a weight average")
    p.add_argument("--dtype", default=None, help="cast weights, e.g. bfloat16")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("import-hf", help="import a transformers gpt2/llama checkpoint as a hasten model checkpoint")
    p.add_argument("source", help="transformers checkpoint directory (local)")
    p.add_argument("--out", required=True, help="directory for the hasten model checkpoint")
    p.set_defaults(func=cmd_import_hf)
