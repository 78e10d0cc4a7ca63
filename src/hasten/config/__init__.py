"""The schema layer: a run's configuration as dataclasses, the model presets, and loading them from YAML.

    schema.py   DataConfig, OptimConfig, ScheduleConfig, GuardConfig, TrainConfig, RunConfig
    model.py    ModelConfig, PRESETS, model_config (hasten.model builds the GPT from them)
    blocks.py   the block-type vocabulary and default blockwise LR ratios
    coerce.py   YAML value -> typed field, one-line errors
    loading.py  recipes (`base:`), `--set` overrides, saved configs

Loading a recipe *with* its methods' sections checked is hasten.recipes.load_config.
"""

from hasten.config.blocks import BLOCK_TYPES, DEFAULT_RATIOS, check_block_overrides, validate_ratios
from hasten.config.coerce import build_dataclass, checked_model_fields, suggest
from hasten.config.loading import (
    ListItems,
    config_from_dict,
    config_values,
    merge_layer,
    parse_override,
    recipe_dict,
    run_config,
)
from hasten.config.model import PRESETS, ModelConfig, model_config
from hasten.config.schema import DataConfig, GuardConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig

__all__ = [
    "BLOCK_TYPES",
    "DEFAULT_RATIOS",
    "PRESETS",
    "DataConfig",
    "GuardConfig",
    "ListItems",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "build_dataclass",
    "check_block_overrides",
    "checked_model_fields",
    "config_from_dict",
    "config_values",
    "merge_layer",
    "model_config",
    "parse_override",
    "recipe_dict",
    "run_config",
    "suggest",
    "validate_ratios",
]
