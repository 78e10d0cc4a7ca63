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
    return load_model_and_checkpoint(spec, weights)[0]


def load_model_and_checkpoint(spec: str | Path, weights: str = "raw"):
    """(model, loaded checkpoint or None for hf:DIR, the run dir it belongs to or None)."""
    from hasten.checkpoint import load_checkpoint

    spec = str(spec)
    if spec.startswith("hf:"):
        from hasten.interop.hf import import_hf

        if weights != "raw":
            raise ConfigError(f"{spec} is a transformers checkpoint: it has raw weights only (drop --weights {weights})")
        return import_hf(spec[3:]), None, None
    path = Path(spec)
    ckpt = load_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    model = model_from_checkpoint(ckpt)
    run_dir = path if (path / "checkpoints").is_dir() else Path(ckpt["_path"]).parent.parent
    run_dir = run_dir if (run_dir / "config.yaml").is_file() else None
    if weights != "raw":
        from safetensors.torch import load_file

        averaged = run_dir / f"{weights}_weights.safetensors" if run_dir is not None else None
        if averaged is None or not averaged.exists():
            raise CheckpointError(f"{spec} has no {weights}_weights.safetensors; the run did not use methods.{weights}, so use --weights raw")
        try:
            model.load_state_dict(load_file(str(averaged)))
        except (RuntimeError, OSError) as err:
            raise CheckpointError(f"{averaged} does not fit the checkpoint's model ({str(err).splitlines()[0][:160]}); "
                                  "it belongs to another stage of the run") from None
    return model, ckpt, run_dir


def run_tokenizer(spec: str | Path, ckpt: dict | None, run_dir: Path | None) -> str | None:
    """The tokenizer.json that belongs with a model: its run's, an import-hf checkpoint's own, or an hf:DIR's."""
    spec = str(spec)
    candidates = [Path(spec[3:]) / "tokenizer.json"] if spec.startswith("hf:") else []
    if run_dir is not None:
        candidates.append(run_dir / "tokenizer.json")
    if ckpt is not None:
        candidates.append(Path(ckpt["_path"]) / "tokenizer.json")
    return next((str(p) for p in candidates if p.is_file()), None)


def model_from_checkpoint(ckpt: dict):
    """The GPT of a loaded checkpoint; one saved inside growth's MSG mask ramp gets the masks of its step."""
    from hasten.methods.growth.masks import checkpoint_mask_ramp
    from hasten.model import GPT, ModelConfig

    if "model_config" not in ckpt or ("model" not in ckpt and not ckpt.get("sharded")):
        raise CheckpointError(f"{ckpt.get('_path')} holds no model (format {ckpt.get('format')!r}); give a hasten run or checkpoint dir")
    model = GPT(ModelConfig(**ckpt["model_config"]))
    if ckpt.get("sharded"):
        _load_sharded_model(model, ckpt)
    else:
        model.load_state_dict(ckpt["model"])
    ramp = checkpoint_mask_ramp(ckpt)
    if ramp is not None:
        ramp.apply(model, int(ckpt["progress"]["step"]))
    return model


def _load_sharded_model(model, ckpt: dict) -> None:
    """A sharded (DCP) checkpoint read into one process: DCP reshards to a world of one."""
    from hasten.config import config_from_dict
    from hasten.distributed import load_sharded
    from hasten.optim.builder import build_optimizer

    optimizer = build_optimizer(model, config_from_dict(ckpt["config"]).optim)
    try:
        load_sharded(model, optimizer, Path(ckpt["_path"]) / ckpt["sharded"])
    except Exception as err:  # DCP raises its own CheckpointException
        raise CheckpointError(f"sharded checkpoint {ckpt['_path']} cannot be read ({str(err).splitlines()[0][:160]})") from None


def check_output_dir(out: Path, force: bool, what: str) -> None:
    """Refuse to write into a folder that already holds anything, unless --force (then only our files are replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise ConfigError(f"--out {out} is not empty (holds {shown}); give a new or empty folder, or --force to replace the {what} files in it")
    if force and ((out / "config.yaml").is_file() or (out / "metrics.jsonl").is_file()):
        raise ConfigError(f"--out {out} is a hasten run dir; even with --force, {what} goes into a folder of its own")


def cmd_export(args) -> int:
    from hasten.interop.hf import export_hf

    if args.to != "hf":
        raise ConfigError(f"--to {args.to!r} is unknown; only hf is supported")
    check_output_dir(Path(args.out), args.force, "export")
    model, ckpt, run_dir = load_model_and_checkpoint(args.source, args.weights)
    tokenizer = run_tokenizer(args.source, ckpt, run_dir)
    out = export_hf(model, args.out, tokenizer_file=tokenizer, dtype=args.dtype, overwrite=args.force)
    print(f"exported {args.weights} weights to {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def cmd_import_hf(args) -> int:
    from hasten.checkpoint import save_checkpoint
    from hasten.interop.hf import hf_tokenizer_file, import_hf

    out = Path(args.out)
    check_output_dir(out, args.force, "import-hf")
    model = import_hf(args.source)
    tokenizer = hf_tokenizer_file(args.source)
    extra = {"tokenizer.json": tokenizer.read_bytes()} if tokenizer else {}
    state = {"format": "hasten-model", "model_config": model.config.to_dict(), "model": model.state_dict()}
    try:
        path = save_checkpoint(out, 0, state, keep=1, extra_files=extra)
    except OSError as err:
        raise CheckpointError(f"writing {out} failed ({err.strerror or err}); nothing was replaced") from None
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
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces the exported files, keeps others)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("import-hf", help="import a transformers gpt2/llama checkpoint as a hasten model checkpoint")
    p.add_argument("source", help="transformers checkpoint directory (local)")
    p.add_argument("--out", required=True, help="directory for the hasten model checkpoint (new or empty)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces its checkpoint)")
    p.set_defaults(func=cmd_import_hf)
