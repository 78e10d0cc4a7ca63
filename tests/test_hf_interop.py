"""HF transformers interop: exported checkpoints load in transformers and compute hasten's logits."""

import json

import pytest
import torch

from hasten.errors import CheckpointError, ConfigError
from hasten.interop import export_hf, hasten_config_from_hf, hf_config_from_hasten, hf_tokenizer_file, import_hf
from hasten.model import GPT, model_config

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _random_model(cfg, seed: int = 0) -> GPT:
    """Random non-trivial weights everywhere (norm gains and biases too), so every mapping is exercised."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def _load_hf(path):
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    return hf.float().eval()


def _assert_same_logits(model: GPT, hf, seq_len: int) -> None:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=g)
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(input_ids=idx).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def _assert_state_bitwise_equal(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


CASES = {
    "gpt2-tied": model_config("tiny"),
    "gpt2-untied": model_config("tiny", tie_embeddings=False),
    "gpt2-nobias": model_config("tiny", bias=False),
    "llama-gqa-untied": model_config("tiny-llama"),
    "llama-mha-tied": model_config("tiny-llama", n_kv_heads=4, tie_embeddings=True, rope_theta=500.0),
    "llama-mqa-bias": model_config("tiny-llama", n_kv_heads=1, bias=True, d_ff=48),
}


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_in_transformers_with_equal_logits_and_imports_back_exactly(tmp_path, name):
    cfg = CASES[name]
    model = _random_model(cfg)
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel" if cfg.family == "gpt2" else "LlamaForCausalLM"]

    hf = _load_hf(out)
    assert type(hf).__name__ == config["architectures"][0]
    _assert_same_logits(model, hf, seq_len=cfg.max_seq_len)  # full length: every position/rope angle

    back = import_hf(out)
    assert back.config == cfg
    _assert_state_bitwise_equal(model, back)

    from_object = import_hf(hf)  # an already-loaded transformers model imports the same way
    _assert_same_logits(from_object, hf, seq_len=16)


def test_gpt2_without_bias_exports_zero_biases_that_transformers_uses(tmp_path):
    model = _random_model(model_config("tiny", bias=False))
    out = export_hf(model, tmp_path / "hf")
    hf = _load_hf(out)
    biases = [p for n, p in hf.named_parameters() if n.endswith("bias")]
    assert biases and all(not b.any() for b in biases)
    # without the hasten side file the zero biases are kept as real (trainable) biases
    (out / "hasten_config.json").unlink()
    back = import_hf(out)
    assert back.config.bias is True
    _assert_same_logits(back, hf, seq_len=16)


def test_hf_native_model_imports_with_equal_logits(tmp_path):
    """A model made by transformers itself (not by export_hf) imports and matches."""
    torch.manual_seed(3)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=1000.0,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "native")
    model = import_hf(tmp_path / "native").eval()
    assert model.config.rope_theta == 1000.0 and model.config.n_kv_heads == 2 and model.config.norm_eps == 1e-6
    _assert_same_logits(model, hf, seq_len=32)

    torch.manual_seed(4)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=96, n_positions=24, n_embd=32, n_layer=2, n_head=4)
    ).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    model = import_hf(tmp_path / "gpt2").eval()
    assert model.config.d_ff == 128 and model.config.tie_embeddings
    _assert_same_logits(model, gpt2, seq_len=24)


def test_config_conversion_round_trips():
    for cfg in CASES.values():
        hf_cfg = hf_config_from_hasten(cfg)
        assert type(hf_cfg).__name__ == ("GPT2Config" if cfg.family == "gpt2" else "LlamaConfig")
        bias = cfg.bias if cfg.family == "gpt2" else None
        assert hasten_config_from_hf(hf_cfg, bias=bias) == cfg


def test_bf16_export_casts_weights(tmp_path):
    model = _random_model(model_config("tiny-llama"))
    out = export_hf(model, tmp_path / "hf", dtype="bf16")
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    back = import_hf(out)
    expected = model.state_dict()["blocks.0.attn.q_proj.weight"].to(torch.bfloat16).float()
    assert torch.equal(back.state_dict()["blocks.0.attn.q_proj.weight"], expected)


def test_tokenizer_round_trip_through_auto_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer=trainer)
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))

    out = export_hf(_random_model(model_config("tiny")), tmp_path / "hf", tokenizer_file=tok_path)
    assert hf_tokenizer_file(out) == out / "tokenizer.json"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "the lazy fox jumps"
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert hf_tok.decode(tok.encode(text).ids) == text
    eos = tok.token_to_id("<|endoftext|>")
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == eos
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos


def test_tokenizer_larger_than_vocab_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models

    tok_path = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(600)}, unk_token="w0")).save(str(tok_path))
    with pytest.raises(ConfigError, match="vocab_size"):
        export_hf(GPT(model_config("tiny")), tmp_path / "hf", tokenizer_file=tok_path)


def test_unrepresentable_and_unsupported_configs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="grouped-query"):
        export_hf(GPT(model_config("tiny", n_heads=2, n_kv_heads=1)), tmp_path / "x")
    with pytest.raises(ConfigError, match="not supported"):
        hasten_config_from_hf({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    with pytest.raises(ConfigError, match="activation_function"):
        hasten_config_from_hf({"model_type": "gpt2", "activation_function": "relu"})
    with pytest.raises(ConfigError, match="rope scaling"):
        hasten_config_from_hf({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0}})


def test_broken_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        import_hf(tmp_path / "missing")
    out = export_hf(GPT(model_config("tiny-llama")), tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="up_proj"):
        import_hf(out)


def test_unprefixed_gpt2_keys_and_mask_buffers_import(tmp_path):
    """Original GPT-2 checkpoints store `h.0...` without the `transformer.` prefix plus causal-mask buffers."""
    from safetensors.torch import load_file, save_file

    model = _random_model(model_config("tiny"))
    out = export_hf(model, tmp_path / "hf")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(out / "model.safetensors")).items()}
    tensors["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    save_file(tensors, str(out / "model.safetensors"))
    _assert_state_bitwise_equal(model, import_hf(out))

    tensors["h.0.attn.extra_gate.weight"] = torch.ones(2)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="extra_gate"):
        import_hf(out)
