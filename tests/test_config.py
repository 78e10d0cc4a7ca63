"""Run configuration: recipes + --set overrides, coercion, one-line errors with suggestions, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hasten.config import RunConfig, config_from_dict, parse_override
from hasten.errors import ConfigError
from hasten.recipes import load_config

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model=tiny", "data.vocab_size=512"]


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _error(overrides: list[str], recipe: Path | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(recipe, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.model == "cpu-small" and cfg.train.max_steps == 300
    assert cfg.seq_len == cfg.model_config().max_seq_len
    # setting another train key keeps the default length; giving a token budget replaces it
    assert load_config(None, ["train.batch_size=8"]).train.max_steps == 300
    by_tokens = load_config(None, ["train.max_tokens=50000"]).train
    assert (by_tokens.max_steps, by_tokens.max_tokens) == (None, 50000)


def test_recipe_and_overrides_merge(tmp_path):
    recipe = _recipe(
        tmp_path,
        """
name: mine
model: tiny
data: {vocab_size: 512, max_docs: 40}
optim: {lr: 1.0e-3, beta2: 0.99}
train: {batch_size: 8, max_steps: 50}
""",
    )
    cfg = load_config(recipe, ["optim.lr=2e-3", "train.max_steps=7", "schedule.name=wsd"])
    assert cfg.name == "mine"
    assert cfg.optim.lr == 2e-3  # override wins
    assert cfg.optim.beta2 == 0.99  # sibling key of the recipe survives the deep merge
    assert cfg.train.batch_size == 8 and cfg.train.max_steps == 7
    assert cfg.data.max_docs == 40 and cfg.data.vocab_size == 512
    assert cfg.schedule.name == "wsd"
    assert cfg.optim.weight_decay == 0.1  # untouched defaults remain
    # later overrides win over earlier ones
    assert load_config(recipe, ["train.max_steps=3", "train.max_steps=9"]).train.max_steps == 9


def test_model_mapping_refines_a_preset(tmp_path):
    cfg = load_config(None, [*SMALL, "model.n_layers=3"])
    mcfg = cfg.model_config()
    assert (mcfg.n_layers, mcfg.d_model, mcfg.vocab_size) == (3, 32, 512)  # tiny's other fields kept
    recipe = _recipe(tmp_path, "model: {preset: tiny-llama, n_kv_heads: 1}\ndata: {vocab_size: 512}\n")
    mcfg = load_config(recipe, ["model.d_model=64"]).model_config()
    assert (mcfg.family, mcfg.n_kv_heads, mcfg.d_model) == ("llama", 1, 64)
    # a preset string over a mapping replaces it
    assert load_config(recipe, ["model=tiny"]).model == "tiny"


def test_type_coercion():
    cfg = load_config(
        None,
        [
            *SMALL,
            "optim.lr=3e-3",  # YAML 1.1 reads 3e-3 as a string
            "train.max_steps=1e2",  # integral float -> int
            "train.max_tokens=20000",
            "train.compile=false",
            "data.max_docs=null",
            "schedule.warmup_steps=5.0",
            "model.norm_eps=1e-6",
        ],
    )
    assert cfg.optim.lr == 3e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 100 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.max_tokens == 20000
    assert cfg.train.compile is False
    assert cfg.data.max_docs is None
    assert cfg.schedule.warmup_steps == 5 and isinstance(cfg.schedule.warmup_steps, int)
    assert cfg.model_config().norm_eps == 1e-6
    assert parse_override("optim.lr_ratios={embed: 10, norm: 2}") == {"optim": {"lr_ratios": {"embed": 10, "norm": 2}}}
    assert parse_override("name=a=b") == {"name": "a=b"}


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("train.max_step=10", "did you mean 'max_steps'?"),
        ("trian.max_steps=10", "did you mean 'train'?"),
        ("optim.weight_decy=0.1", "did you mean 'weight_decay'?"),
        ("model=tinny", "did you mean 'tiny'?"),
        ("model.n_layer=3", "did you mean 'n_layers'?"),
    ],
)
def test_unknown_key_suggests_the_closest(override, suggestion):
    message = _error([*SMALL, override] if not override.startswith("model=") else [override])
    assert suggestion in message


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.batch_size=abc", "train.batch_size='abc' must be an integer"),
        ("train.batch_size=2.5", "must be an integer"),
        ("train.compile=1", "must be true or false"),
        ("optim.lr=fast", "optim.lr='fast' must be a finite number"),
        ("optim.name=7", "must be a string"),
        ("train=5", "must be a mapping"),
        ("optim.lr_ratios=3", "optim.lr_ratios=3 has the wrong type"),
        ("model.n_layers=abc", "model.n_layers='abc' must be an integer"),
        ("model=5", "preset name or a mapping"),
        ("train.max_steps", "must look like key.path=value"),
    ],
)
def test_wrong_types_are_one_line_errors(override, fragment):
    assert fragment in _error([*SMALL, override])


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.seq_len=128"], "exceeds model max_seq_len=64"),
        (["model.vocab_size=512", "data.vocab_size=4096"], "exceeds model vocab_size=512"),
        (["train.batch_size=8", "train.micro_batch_size=3"], "must divide train.batch_size=8"),
        (["train.max_steps=null"], "set train.max_steps or train.max_tokens"),
        (["optim.lr=-1"], "optim.lr=-1"),
        (["optim.beta2=1.0"], "optim.beta2"),
        (["data.val_fraction=0.7"], "data.val_fraction"),
        (["schedule.name=step"], "schedule.name='step' is unknown"),
        (["schedule.decay_unit=epochs"], "decay_unit"),
        (["train.dtype=float16"], "train.dtype"),
        (["model.n_heads=3"], "does not divide d_model"),
    ],
)
def test_invalid_and_contradictory_values(overrides, fragment):
    assert fragment in _error([*SMALL, *overrides])


def test_recipe_file_errors(tmp_path):
    assert "does not exist" in _error([], tmp_path / "missing.yaml")
    assert "not valid YAML" in _error([], _recipe(tmp_path, "model: [tiny\n"))
    assert "must be a YAML mapping" in _error([], _recipe(tmp_path, "- a\n- b\n"))


def test_round_trip_to_dict_and_yaml():
    cfg = load_config(None, [*SMALL, "model.n_layers=3", "optim.lr=2e-3", "train.max_tokens=10000", "name=rt"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    # what the run dir stores (config.yaml) loads back to the same config
    from_yaml = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    assert from_yaml == cfg
    assert from_yaml.model_config() == cfg.model_config()


def test_every_recipe_loads():
    """Each shipped recipe is valid (passes trivially while recipes/ is empty)."""
    failures = []
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        try:
            cfg = load_config(path)
            assert config_from_dict(cfg.to_dict()) == cfg
        except Exception as err:  # collect all, report every broken recipe at once
            failures.append(f"{path.name}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_the_model_vocabulary_follows_the_data_unless_the_model_names_one():
    assert load_config(None, ["model=tiny"]).model_config().vocab_size == 4096  # once refused: tiny's preset has 512
    assert load_config(None, ["model=cpu-small", "data.vocab_size=512"]).model_config().vocab_size == 512
    assert load_config(None, ["model.vocab_size=8192", "data.vocab_size=512"]).model_config().vocab_size == 8192
    assert (
        load_config(None, ["model=gpt2-124m", "data.tokenizer=gpt2"]).model_config().vocab_size == 50304
    )  # a named tokenizer: the preset's


def test_eval_sequences_null_means_the_whole_validation_split():
    import numpy as np

    from hasten.data.sampler import eval_windows

    assert load_config(None, ["train.eval_sequences=null"]).train.eval_sequences is None
    tokens = np.arange(1001)
    assert len(eval_windows(tokens, 100, None)) == 10
    assert len(eval_windows(tokens, 100, 4)) == 4
