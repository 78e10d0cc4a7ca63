"""`hasten export RUN_OR_CKPT --to hf DIR` and `hasten import-hf DIR --out CKPT_DIR`."""

from __future__ import annotations

from pathlib import Path

import yaml

from hasten.checkpointing import ModelCheckpoint, TrainCheckpoint, open_checkpoint, save_checkpoint
from hasten.checkpointing.dirs import enclosing_run_dir
from hasten.checkpointing.weights import RAW, WEIGHTS_HELP, load_model
from hasten.errors import CheckpointError, ConfigError
from hasten.interop.hf import export_hf, hf_tokenizer_file, import_hf
from hasten.model import GPT


def load_model_from(spec: str | Path, weights: str = RAW) -> GPT:
    """A GPT from a run dir, a checkpoint dir, a model checkpoint written by import-hf, or `hf:DIR`.

    `weights` picks the raw weights or a weight average the run exported, by its name. The weights only: what a
    method changed in the model's forward comes back through hasten.recipes.load_checkpoint_model.
    """
    return load_model_and_checkpoint(spec, weights)[0]


def load_model_and_checkpoint(
    spec: str | Path, weights: str = RAW
) -> tuple[GPT, TrainCheckpoint | ModelCheckpoint | None, Path | None]:
    """(model, its checkpoint or None for hf:DIR, the run dir it belongs to or None)."""
    spec = str(spec)
    if spec.startswith("hf:"):
        if weights != RAW:
            raise ConfigError(
                f"{spec} is a transformers checkpoint: it has raw weights only (drop --weights {weights})"
            )
        return import_hf(spec[3:]), None, None
    ckpt = open_checkpoint(spec)
    return load_model(ckpt, weights), ckpt, ckpt.run_dir


def run_tokenizer(spec: str | Path, ckpt: TrainCheckpoint | ModelCheckpoint | None, run_dir: Path | None) -> str | None:
    """The tokenizer.json that belongs with a model: its run's, an import-hf checkpoint's own, or an hf:DIR's."""
    spec = str(spec)
    candidates = [Path(spec[3:]) / "tokenizer.json"] if spec.startswith("hf:") else []
    if run_dir is not None:
        candidates.append(run_dir / "tokenizer.json")
    if ckpt is not None and ckpt.path is not None:
        candidates.append(ckpt.path / "tokenizer.json")
    return next((str(p) for p in candidates if p.is_file()), None)


def check_output_dir(out: Path, force: bool, what: str) -> None:
    """Refuse to write into a folder that already holds anything, unless --force (then only our files are replaced),
    and into any folder inside a run dir (retention and --resume rewrite a run's files), --force or not."""
    run = enclosing_run_dir(out)
    if run is not None:
        where = "is a hasten run dir" if run == out.expanduser().absolute() else f"is inside the hasten run dir {run}"
        raise ConfigError(
            f"--out {out} {where}; even with --force, {what} goes into a folder of its own outside any run"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise ConfigError(
            f"--out {out} is not empty (holds {shown}); "
            f"give a new or empty folder, or --force to replace the {what} files in it"
        )


def cmd_export(args) -> int:
    if args.to != "hf":
        raise ConfigError(f"--to {args.to!r} is unknown; only hf is supported")
    check_output_dir(Path(args.out), args.force, "export")
    # plain: a method's change to the model's forward that the weights cannot hold is refused
    model, ckpt, run_dir = args.load_model(args.source, args.weights, plain=True)
    tokenizer = run_tokenizer(args.source, ckpt, run_dir)
    out = export_hf(model, args.out, tokenizer_file=tokenizer, dtype=args.dtype, overwrite=args.force)
    print(
        f"exported {args.weights} weights to {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))"
    )
    return 0


def cmd_import_hf(args) -> int:
    out = Path(args.out)
    check_output_dir(out, args.force, "import-hf")
    model = import_hf(args.source)
    tokenizer = hf_tokenizer_file(args.source)
    extra = {"tokenizer.json": tokenizer.read_bytes()} if tokenizer else {}
    state = ModelCheckpoint(model.config.to_dict(), model.state_dict())
    try:
        path = save_checkpoint(out, 0, state.to_dict(), keep=1, extra_files=extra)
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
    p.add_argument("--weights", default=RAW, help=WEIGHTS_HELP)
    p.add_argument("--dtype", default=None, help="cast weights, e.g. bfloat16")
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty --out (replaces the exported files, keeps others)"
    )
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "import-hf", help="import a transformers gpt2/llama checkpoint as a hasten model checkpoint"
    )
    p.add_argument("source", help="transformers checkpoint directory (local)")
    p.add_argument("--out", required=True, help="directory for the hasten model checkpoint (new or empty)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces its checkpoint)")
    p.set_defaults(func=cmd_import_hf)
