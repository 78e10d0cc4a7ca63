"""Run configuration as dataclasses: one section per part of a run, each owning its checks.

Every value is validated with a one-line error that names the key, what is wrong and what is allowed.
Method sections (`methods.<name>`) are plain mappings here; the methods own their configs and
hasten.recipes checks them (the schema layer knows no method).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hasten.config.blocks import check_block_overrides, validate_ratios
from hasten.config.coerce import checked_model_fields
from hasten.config.model import ModelConfig, model_config
from hasten.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "stdlib"  # "stdlib" | file, folder or glob of .txt/.jsonl/.parquet | "hf:NAME[:SPLIT]" (streamed)
    text_field: str = "text"  # field holding the text in .jsonl / .parquet / HF datasets
    tokenizer: str = "bpe"  # "bpe" = a byte-level BPE trained on the corpus; or a tokenizer.json / HF tokenizer name
    vocab_size: int = 4096  # for "bpe"
    val_fraction: float = 0.02  # share of all tokens held out for validation
    split_seed: int = 1234
    max_docs: int | None = None  # cap on documents read (fast tests)
    cache_dir: str = "~/.cache/hasten"  # tokenizers and token files; HASTEN_CACHE overrides
    val_tokens: int | None = None  # exact validation tokens instead of val_fraction
    tokens: str | None = None  # a token dir made by `hasten prepare-data --out DIR`: read it (not data.source)
    num_workers: int | None = None  # processes encoding the corpus; None = every core
    tokenizer_sample_bytes: int = 128 * 2**20  # "bpe" trains on the corpus's first this many bytes
    shard_tokens: int = 2**26  # tokens per token shard (a killed preparation continues from its last complete shard)
    rehash: bool = False  # re-hash every corpus file and token shard instead of trusting unchanged size and mtime

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.vocab_size < 260:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is too small; byte-level BPE needs at least 260")
        if self.max_docs is not None and self.max_docs < 2:
            raise ConfigError(f"data.max_docs={self.max_docs} must be at least 2 (one train and one val document)")
        minimum = {"val_tokens": 1, "num_workers": 1, "tokenizer_sample_bytes": 1 << 10, "shard_tokens": 1 << 10}
        for key, low in minimum.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"data.{key}={value} must be at least {low}")
        if self.tokens is not None and not str(self.tokens).strip():
            raise ConfigError(
                "data.tokens is empty; give the folder `hasten prepare-data --out DIR` wrote, or leave it unset"
            )


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam_mini | muon
    lr: float = 3e-3  # peak LR (of the ratio-1 blocks when blockwise)
    min_lr_ratio: float = (
        0.1  # the floor every group decays to is lr * min_lr_ratio (shared, as in the blockwise paper)
    )
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_policy: str = "matrices"  # matrices: decay >=2-D tensors only (nanoGPT) | all
    grad_clip: float = 1.0  # 0 disables clipping
    implementation: str = "auto"  # auto | foreach | fused | for
    blockwise: bool = False  # per-block LR multipliers (Sharpness Disparity Principle)
    lr_ratios: dict[str, float] | None = None  # overrides of the blockwise ratios by block type
    block_overrides: dict[str, str] | None = None  # glob of parameter name -> block type

    def validate(self) -> None:
        if self.name not in ("adamw", "adam_mini", "muon"):
            raise ConfigError(f"optim.name={self.name!r} is unknown; use adamw, adam_mini or muon")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be positive")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"optim.{key}={getattr(self, key)} must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.eps <= 0:
            raise ConfigError("optim.weight_decay and optim.grad_clip must be >= 0 and optim.eps > 0")
        if self.decay_policy not in ("matrices", "all"):
            raise ConfigError(f"optim.decay_policy={self.decay_policy!r} is unknown; use matrices or all")
        if self.implementation not in ("auto", "foreach", "fused", "for"):
            raise ConfigError(
                f"optim.implementation={self.implementation!r} is unknown; use auto, foreach, fused or for"
            )
        if self.lr_ratios and not self.blockwise:
            raise ConfigError(
                "optim.lr_ratios is set but optim.blockwise is false; set optim.blockwise=true to use them"
            )
        validate_ratios(self.lr_ratios)
        check_block_overrides(self.block_overrides)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | linear | constant
    warmup_steps: int = 50  # warmup is always counted in steps (SLW paper: token warmup is harmful)
    decay_unit: str = "steps"  # steps | tokens (token-based decay for sequence length warmup)
    wsd_decay_fraction: float = 0.2  # wsd: share of training spent decaying

    def validate(self) -> None:
        if self.name not in ("cosine", "wsd", "linear", "constant"):
            raise ConfigError(f"schedule.name={self.name!r} is unknown; use cosine, wsd, linear or constant")
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay_unit not in ("steps", "tokens"):
            raise ConfigError(f"schedule.decay_unit={self.decay_unit!r} is unknown; use steps or tokens")
        if not 0.0 < self.wsd_decay_fraction <= 1.0:
            raise ConfigError(f"schedule.wsd_decay_fraction={self.wsd_decay_fraction} must be in (0, 1]")


@dataclass
class GuardConfig:
    """Loss-spike / non-finite guard (hasten.trainer.guard): skip poisoned steps, roll back on repeated spikes."""

    skip_nonfinite: bool = True  # a NaN/Inf loss or gradient norm skips the update (step and schedule do not advance)
    max_consecutive_skips: int = 10  # this many non-finite steps in a row stop the run with one line
    spike_ratio: float | None = None  # loss / lowest loss so far above this counts as a spike; None disables
    spike_patience: int = 3  # consecutive spike steps that trigger a rollback to the last good checkpoint
    rollback_lr_factor: float = 1.0  # LR multiplier applied at each rollback (e.g. 0.5); 1 keeps the LR
    rollback_skip_data: bool = True  # after a rollback, continue with fresh batches instead of replaying the spiky ones
    max_rollbacks: int = 3  # more rollbacks than this stop the run with one line

    def validate(self) -> None:
        if self.max_consecutive_skips < 1 or self.spike_patience < 1 or self.max_rollbacks < 0:
            raise ConfigError(
                "train.guard: max_consecutive_skips and spike_patience must be >= 1 and max_rollbacks >= 0"
            )
        if self.spike_ratio is not None and not self.spike_ratio > 1.0:
            raise ConfigError(f"train.guard.spike_ratio={self.spike_ratio} must be > 1 (or null to disable)")
        if not 0.0 < self.rollback_lr_factor <= 1.0:
            raise ConfigError(f"train.guard.rollback_lr_factor={self.rollback_lr_factor} must be in (0, 1]")


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per optimizer step, over all ranks and micro-batches
    micro_batch_size: int | None = None  # sequences per forward on one rank; None = batch_size / world size
    seq_len: int | None = None  # training context; None = the model's max_seq_len
    max_steps: int | None = None  # stop after this many optimizer steps ...
    max_tokens: int | None = None  # ... or after this many training tokens (whichever comes first)
    eval_every: int = 100  # steps between validation evaluations (also at the end) ...
    eval_every_tokens: int | None = None  # ... or, when set, each time the training tokens pass a multiple of this
    eval_sequences: int | None = (
        64  # fixed held-out windows of full context used for val loss; null = the whole val split
    )
    log_every: int = 10
    checkpoint_every: int = 200  # steps between checkpoints (also at the end); 0 = only at the end
    keep_checkpoints: int = 2
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # initial weights and every other random draw; also the data order unless data_seed is set
    data_seed: int | None = (
        None  # order of the training windows; None = seed (set it apart to tell init noise from data-order noise)
    )
    peak_flops: float | None = None  # for MFU; None = measured once with a matmul on this device
    progress_bar: bool = True
    tensorboard: bool = True
    init_from: str | None = None  # start from these weights: a hasten run/checkpoint dir or hf:DIR (transformers)
    parallelism: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard) when launched on several ranks (torchrun / --nproc)
    checkpoint_format: str = (
        "consolidated"  # consolidated (one file, any rank count) | sharded (DCP, one shard per rank)
    )
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> None:
        self.guard.validate()
        if self.parallelism not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallelism={self.parallelism!r} is unknown; use ddp or fsdp")
        if self.checkpoint_format not in ("consolidated", "sharded"):
            raise ConfigError(
                f"train.checkpoint_format={self.checkpoint_format!r} is unknown; use consolidated or sharded"
            )
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size={self.batch_size} must be >= 1")
        if self.micro_batch_size is not None and (self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size):
            raise ConfigError(
                f"train.micro_batch_size={self.micro_batch_size} must divide train.batch_size={self.batch_size}"
            )
        if self.max_steps is None and self.max_tokens is None:
            raise ConfigError("train: set train.max_steps or train.max_tokens so the run has a length")
        for key in ("max_steps", "max_tokens", "seq_len"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"train.{key}={value} must be >= 1")
        for key in ("eval_every", "eval_every_tokens", "eval_sequences", "log_every", "keep_checkpoints"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(f"train.checkpoint_every={self.checkpoint_every} must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"train.dtype={self.dtype!r} is unknown; use float32 or bfloat16")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device={self.device!r} is unknown; use auto, cpu, cuda or cuda:N")
        for key in ("seed", "data_seed"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < 2**63:
                raise ConfigError(f"train.{key}={value} must be in [0, 2^63)")

    @property
    def data_order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


@dataclass
class RunConfig:
    name: str = "run"
    model: Any = "cpu-small"  # a preset name, or a mapping with `preset:` plus ModelConfig field overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=300))
    methods: dict[str, Any] = field(default_factory=dict)  # method name -> its own config mapping

    def model_config(self) -> ModelConfig:
        """The model of this run. Its vocabulary is the data's (`data.vocab_size` for a trained BPE) unless the
        `model:` mapping names one, so a preset of another vocabulary (`--set model=tiny`) just works."""
        fields = checked_model_fields(self.model) if isinstance(self.model, dict) else {"preset": self.model}
        if self.data.tokenizer == "bpe" and "vocab_size" not in fields:
            fields["vocab_size"] = self.data.vocab_size
        try:
            return model_config(fields)
        except TypeError as err:
            raise ConfigError(
                f"model: {err}; valid fields are {', '.join(f.name for f in dataclasses.fields(ModelConfig))}"
            ) from None

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model_config().max_seq_len

    def planned_steps(self) -> int:
        """Planned optimizer steps at full length (the schedule's length when decay is step-based)."""
        t = self.train
        candidates = [t.max_steps] if t.max_steps else []
        if t.max_tokens:
            candidates.append(math.ceil(t.max_tokens / (t.batch_size * self.seq_len)))
        return min(candidates)

    def planned_tokens(self) -> int:
        """Training tokens the run plans to see: the token-decay length and G_stack's D."""
        return self.train.max_tokens or self.planned_steps() * self.train.batch_size * self.seq_len

    def validate(self) -> None:
        if (
            not isinstance(self.name, str)
            or not self.name
            or self.name in (".", "..")
            or any(c in self.name for c in "/\\\0")
        ):
            raise ConfigError(
                f"name={self.name!r} must be a plain name (no '/', not '.' or '..'): "
                "a new run goes to runs/NAME-TIMESTAMP; give --run-dir to put it elsewhere"
            )
        for part in (self.data, self.optim, self.schedule, self.train):
            part.validate()
        mcfg = self.model_config()
        if self.seq_len > mcfg.max_seq_len:
            raise ConfigError(
                f"train.seq_len={self.seq_len} exceeds model max_seq_len={mcfg.max_seq_len}; "
                "lower it or raise model.max_seq_len"
            )
        if self.data.tokenizer == "bpe" and self.data.vocab_size > mcfg.vocab_size:
            raise ConfigError(
                f"data.vocab_size={self.data.vocab_size} exceeds model vocab_size={mcfg.vocab_size}; make them equal"
            )

    def to_dict(self) -> dict:
        return asdict(self)
