"""Run configuration as dataclasses, loaded from YAML recipes and `--set key=value` overrides.

Every value is validated with a one-line error that names the key, what is wrong and what is allowed.
Method sections (`methods.<name>`) are owned by the methods themselves: see hasten.methods.registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hasten.errors import ConfigError
from hasten.model import PRESETS, ModelConfig, model_config


@dataclass
class DataConfig:
    source: str = "stdlib"  # "stdlib" | file, folder or glob of .txt/.jsonl/.parquet | "hf:NAME[:SPLIT]"
    text_field: str = "text"  # field holding the text in .jsonl / .parquet / HF datasets
    tokenizer: str = "bpe"  # "bpe" = train a byte-level BPE on the corpus; or a tokenizer.json path / HF tokenizer name
    vocab_size: int = 4096  # for "bpe"
    val_fraction: float = 0.02  # share of documents held out for validation
    split_seed: int = 1234
    max_docs: int | None = None  # cap on documents read (fast tests)
    cache_dir: str = "~/.cache/hasten"  # tokenizers and token files; HASTEN_CACHE overrides

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.vocab_size < 260:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is too small; byte-level BPE needs at least 260")
        if self.max_docs is not None and self.max_docs < 2:
            raise ConfigError(f"data.max_docs={self.max_docs} must be at least 2 (one train and one val document)")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam_mini | muon
    lr: float = 3e-3  # peak LR (of the ratio-1 blocks when blockwise)
    min_lr_ratio: float = 0.1  # the floor every group decays to is lr * min_lr_ratio (shared, as in the blockwise paper)
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
            raise ConfigError(f"optim.implementation={self.implementation!r} is unknown; use auto, foreach, fused or for")
        from hasten.optim.blocks import check_block_overrides
        from hasten.optim.blockwise import validate_ratios

        if self.lr_ratios and not self.blockwise:
            raise ConfigError("optim.lr_ratios is set but optim.blockwise is false; set optim.blockwise=true to use them")
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
            raise ConfigError("train.guard: max_consecutive_skips and spike_patience must be >= 1 and max_rollbacks >= 0")
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
    eval_every: int = 100  # steps between validation evaluations (also at the end)
    eval_sequences: int | None = 64  # fixed held-out windows of full context used for val loss; null = the whole val split
    log_every: int = 10
    checkpoint_every: int = 200  # steps between checkpoints (also at the end); 0 = only at the end
    keep_checkpoints: int = 2
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    peak_flops: float | None = None  # for MFU; None = measured once with a matmul on this device
    progress_bar: bool = True
    tensorboard: bool = True
    init_from: str | None = None  # start from these weights: a hasten run/checkpoint dir or hf:DIR (transformers)
    parallelism: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard) when launched on several ranks (torchrun / --nproc)
    checkpoint_format: str = "consolidated"  # consolidated (one file, any rank count) | sharded (DCP, one shard per rank)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> None:
        self.guard.validate()
        if self.parallelism not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallelism={self.parallelism!r} is unknown; use ddp or fsdp")
        if self.checkpoint_format not in ("consolidated", "sharded"):
            raise ConfigError(f"train.checkpoint_format={self.checkpoint_format!r} is unknown; use consolidated or sharded")
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
        for key in ("eval_every", "eval_sequences", "log_every", "keep_checkpoints"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(f"train.checkpoint_every={self.checkpoint_every} must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"train.dtype={self.dtype!r} is unknown; use float32 or bfloat16")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device={self.device!r} is unknown; use auto, cpu, cuda or cuda:N")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"train.seed={self.seed} must be in [0, 2^63)")


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
        fields = _checked_model_fields(self.model) if isinstance(self.model, dict) else {"preset": self.model}
        if self.data.tokenizer == "bpe" and "vocab_size" not in fields:
            fields["vocab_size"] = self.data.vocab_size
        try:
            return model_config(fields)
        except TypeError as err:
            raise ConfigError(f"model: {err}; valid fields are {', '.join(f.name for f in dataclasses.fields(ModelConfig))}") from None

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
        for part in (self.data, self.optim, self.schedule, self.train):
            part.validate()
        mcfg = self.model_config()
        if self.seq_len > mcfg.max_seq_len:
            raise ConfigError(f"train.seq_len={self.seq_len} exceeds model max_seq_len={mcfg.max_seq_len}; lower it or raise model.max_seq_len")
        if self.data.tokenizer == "bpe" and self.data.vocab_size > mcfg.vocab_size:
            raise ConfigError(
                f"data.vocab_size={self.data.vocab_size} exceeds model vocab_size={mcfg.vocab_size}; make them equal"
            )
        from hasten.methods.registry import validate_methods

        validate_methods(self)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML value to the annotated type, with a one-line error when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {' or '.join(_type_name(a) for a in args)}")
    if tp is Any or origin is dict or tp is dict:
        if origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
        if number is not None and math.isfinite(number):  # nan/inf would slip past every range check below
            return number
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} must be a string")
    return value


def _checked_model_fields(values: dict) -> dict:
    """Unknown keys and types of a `model:` mapping get the same one-line errors as other sections.

    (ModelConfig lives in model.py and takes raw values, so without this `model.n_layers=abc` or
    `model.norm_eps=1e-6`, which YAML reads as a string, failed deep inside the model.)
    """
    hints = typing.get_type_hints(ModelConfig)
    out = {}
    for key, value in values.items():
        if key == "preset":
            out[key] = _coerce(value, str, "model.preset")
        elif key not in hints:
            raise ConfigError(f"unknown key model.{key}: {_suggest(key, ['preset', *hints])}")
        else:
            out[key] = _coerce(value, hints[key], f"model.{key}")
    return out


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(options)}"


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate a dataclass from a mapping, rejecting unknown keys with a suggestion."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}{key}: {_suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _deep_merge(base: dict, extra: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, ListItems):
            out[key] = value.merge_into(out.get(key), f"{path}{key}")
        elif isinstance(value, dict):  # over a mapping: merged; over anything else: replaces it (list indices still checked)
            out[key] = _deep_merge(out[key] if isinstance(out.get(key), dict) else {}, value, f"{path}{key}.")
        else:
            out[key] = value
    return out


class ListItems(dict):
    """`--set a.b.0.c=v` addresses element 0 of the list a.b: {index: value} laid over that list when merged."""

    def merge_into(self, current: Any, key: str) -> list:
        if not isinstance(current, list):
            raise ConfigError(f"--set {key}.{next(iter(self))}...: {key} is not a list here ({current!r}); set the whole list, "
                              f"e.g. --set '{key}=[...]'")
        out = list(current)
        for index, value in self.items():
            if not -len(out) <= index < len(out):
                raise ConfigError(f"--set {key}.{index}: {key} has {len(out)} element(s); use an index below {len(out)}")
            if isinstance(value, ListItems):
                out[index] = value.merge_into(out[index], f"{key}.{index}")
            elif isinstance(value, dict) and isinstance(out[index], dict):
                out[index] = _deep_merge(out[index], value, f"{key}.{index}.")
            else:
                out[index] = value
        return out


def _merge_layer(values: dict, extra: dict) -> dict:
    """Deep-merge one config layer; a model mapping laid over a preset name refines that preset.

    Without this, `--set model=tiny --set model.n_layers=3` (or a recipe's `model: tiny` plus
    `--set model.n_layers=3`) would silently drop the preset and build the ModelConfig defaults.
    """
    if isinstance(extra.get("model"), dict) and isinstance(values.get("model"), str) and "preset" not in extra["model"]:
        values = {**values, "model": {"preset": values["model"]}}
    return _deep_merge(values, extra)


def parse_override(text: str) -> dict:
    """`train.max_steps=100` -> {"train": {"max_steps": 100}} (the value is parsed as YAML).

    A numeric part addresses a list element: `methods.growth.stages.0.at_tokens=5e5` changes that field of
    the first stage and keeps the rest of the list."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like key.path=value, e.g. --set train.max_steps=100")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    keys: list = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r} has an empty key")
    if _is_index(keys[0]):
        raise ConfigError(f"--set {text!r} starts with a list index; name the section first, e.g. methods.growth.stages.0.at_tokens=...")
    for key in reversed(keys):  # built from the leaf up; a numeric part indexes the list above it
        value = ListItems({int(key): value}) if _is_index(key) else {key: value}
    return value


def _is_index(key: str) -> bool:
    return key.isdigit() or (key.startswith("-") and key[1:].isdigit())


def recipe_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's values; `base: other.yaml` (relative to the recipe) is loaded first and overridden."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; give a YAML file (see recipes/)")
    if path.resolve() in _seen:
        raise ConfigError(f"recipe {path} includes itself through `base:`; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"recipe {path} is not valid YAML: {first}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"recipe {path} is not a readable UTF-8 text file ({type(err).__name__}); give a YAML recipe") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of sections (model, data, optim, schedule, train, methods)")
    base = data.pop("base", None)
    if base is not None:
        data = _merge_layer(recipe_dict(path.parent / base, _seen + (path.resolve(),)), data)
    return data


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> RunConfig:
    """Recipe YAML (optional) + `key=value` overrides -> a validated RunConfig."""
    values: dict = dict(base or {})
    if recipe is not None:
        values = _merge_layer(values, recipe_dict(recipe))
    for text in overrides:
        values = _merge_layer(values, parse_override(text))
    train = values.get("train")
    if isinstance(train, dict) and "max_steps" not in train and "max_tokens" not in train:
        # a `train:` section builds TrainConfig from its field defaults (max_steps=None); keep RunConfig's
        # default length so `--set train.batch_size=8` alone does not make the run length-less
        values = {**values, "train": {**train, "max_steps": RunConfig().train.max_steps}}
    cfg = build_dataclass(RunConfig, values, "")
    if not isinstance(cfg.model, (str, dict)):
        raise ConfigError(f"model={cfg.model!r} must be a preset name or a mapping like {{preset: tiny, n_layers: 4}}")
    if isinstance(cfg.model, str) and cfg.model not in PRESETS:
        raise ConfigError(f"model={cfg.model!r} is unknown; {_suggest(cfg.model, list(PRESETS))}")
    cfg.validate()
    return cfg


def config_from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig saved with to_dict() (checkpoints, run dirs)."""
    return build_dataclass(RunConfig, values, "")
