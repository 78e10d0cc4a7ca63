"""`hasten eval`: the loss of a run's checkpoint (raw or averaged weights) on its val split, or on other data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hasten.checkpointing import TrainCheckpoint
from hasten.config import DataConfig
from hasten.data.sampler import eval_windows
from hasten.data.tokens import prepare_from_config
from hasten.errors import ConfigError, DataError
from hasten.interop.cli import run_tokenizer
from hasten.trainer.evaluation import autocast_for, mean_loss
from hasten.trainer.rundir import read_corpus_record
from hasten.trainer.setup import resolve_device


def cmd_eval(args) -> int:
    if args.sequences is not None and args.sequences < 1:
        raise ConfigError(f"--sequences={args.sequences} must be >= 1")
    model, ckpt, run_dir = args.load_model(args.checkpoint, args.weights)
    cfg = ckpt.run_config() if isinstance(ckpt, TrainCheckpoint) else None
    if cfg is None and args.data is None:
        raise ConfigError(
            f"{args.checkpoint} holds a model without a training config; say what to evaluate on with --data SOURCE"
        )
    tokenizer = args.tokenizer or run_tokenizer(args.checkpoint, ckpt, run_dir)
    if tokenizer is None and (cfg is None or cfg.data.tokenizer == "bpe"):
        raise ConfigError(
            f"{args.checkpoint} has no tokenizer.json beside it; pass the model's tokenizer with --tokenizer FILE"
        )
    data_cfg = cfg.data if cfg is not None else DataConfig()
    record = read_corpus_record(run_dir) if run_dir is not None else None
    split_version = _run_split_version(run_dir, record)
    if args.data is not None:
        data_cfg = DataConfig(**{**vars(data_cfg), "source": args.data, "max_docs": None, "tokens": None})
        split_version = None  # other data: the windows are spread over all of it, so its split does not matter
    kwargs = {"split_version": split_version} if split_version is not None else {}
    if args.data is None and record is not None:
        kwargs["expect"] = record  # its own val split, or one line
    try:
        data = prepare_from_config(data_cfg, progress=False, tokenizer=tokenizer, **kwargs)
    except DataError as err:
        if "expect" not in kwargs:
            raise
        raise DataError(
            f"{str(err).split(';')[0]}; so its val split is not the run's: evaluate on it with --data {data_cfg.source}"
        ) from None
    if data.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {data.vocab_size} tokens but the model only {model.config.vocab_size}; "
            "pass the model's own tokenizer with --tokenizer"
        )
    seq_len = cfg.seq_len if cfg is not None else model.config.max_seq_len
    wanted = args.sequences or (cfg.train.eval_sequences if cfg is not None else 64)
    if args.data is None:
        rows, split = eval_windows(data.val, seq_len, wanted), "val"
    else:  # the whole of other data: windows spread over both of its streams in proportion
        streams = [s for s in (data.train, data.val) if (len(s) - 1) // seq_len >= 1]
        total = sum((len(s) - 1) // seq_len for s in streams)
        if not streams:
            raise ConfigError(f"--data {args.data} has fewer than {seq_len + 1} tokens; give more text")
        wanted = wanted or total
        counts = [max(1, round(wanted * ((len(s) - 1) // seq_len) / total)) for s in streams]
        rows, split = torch.cat([eval_windows(s, seq_len, n) for s, n in zip(streams, counts)]), "all"
    device = resolve_device("auto")
    model.to(device)
    # the trainer's own evaluation: its micro-batches and dtype, so a checkpoint's loss is the one the run logged
    micro_rows = cfg.train.micro_batch_size or cfg.train.batch_size if cfg is not None else 8
    autocast = autocast_for(cfg.train.dtype if cfg is not None else "float32", device)
    loss = mean_loss(model, rows, micro_rows, device, autocast=autocast)
    result = {
        "checkpoint": str(ckpt.path) if ckpt is not None else str(args.checkpoint),
        "step": ckpt.step if ckpt is not None else None,
        "weights": args.weights,
        "data": data_cfg.source,
        "split": split,
        "loss": loss,
        "sequences": len(rows),
    }
    if split == "val":
        result["val_loss"] = loss
    print(json.dumps(result))
    return 0


def _run_split_version(run_dir: Path | None, record: dict | None) -> int | None:
    """How the run split its corpus (its corpus.json); runs from before corpus.json used split version 1."""
    if record is not None:
        return int(record.get("split_version", 1))
    return 1 if run_dir is not None and (run_dir / "config.yaml").is_file() else None
