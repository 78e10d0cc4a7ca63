"""Golden loss trace (torchtitan style): the first 16 train losses of a fixed tiny run must not move.

The run is fully pinned: a synthetic corpus generated here from a seed, the committed tokenizer
tests/assets/golden_tokenizer.json, the `tiny` model, fp32 on CPU with one thread, seed 0. Any change
to model numerics, init, the optimizer, the LR schedule, the sampler or the loop shows up as a
mismatch > 1e-4.

A deliberate numerics change must regenerate the trace (and say so in the commit):

    HASTEN_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_loss.py

(delete tests/assets/golden_tokenizer.json first to retrain the tokenizer as well).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hasten.recipes import build_trainer, load_config

ASSETS = Path(__file__).resolve().parent / "assets"
GOLDEN = ASSETS / "golden_tiny_loss.json"
TOKENIZER = ASSETS / "golden_tokenizer.json"
TOLERANCE = 1e-4
STEPS = 16

NOUNS = "model token layer weight gradient batch corpus sequence head loss optimizer schedule checkpoint".split()
VERBS = "reads updates predicts stores averages grows shortens measures repeats returns".split()
ADJS = "small large early late noisy stable sparse dense shared fresh".split()


def golden_corpus(folder: Path, n_docs: int = 240, seed: int = 2024) -> None:
    """Deterministic toy-grammar documents (random.Random is stable across Python versions)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sentences = []
        for _ in range(rng.randrange(3, 9)):
            words = ["the", rng.choice(ADJS), rng.choice(NOUNS), rng.choice(VERBS), "the", rng.choice(NOUNS)]
            if rng.random() < 0.3:
                words += ["after", str(rng.randrange(100)), "steps"]
            sentences.append(" ".join(words).capitalize() + ".")
        (folder / f"doc{i:04d}.txt").write_text(" ".join(sentences) + "\n")


def golden_overrides(corpus: Path, cache_dir: str) -> list[str]:
    return [
        "name=golden",
        "model=tiny",
        f"data.source={corpus}",
        f"data.tokenizer={TOKENIZER}",
        "data.vocab_size=512",
        "data.val_fraction=0.1",
        f"data.cache_dir={cache_dir}",
        "optim.lr=3e-3",
        "schedule.warmup_steps=4",
        f"train.max_steps={STEPS}",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=1000",
        "train.eval_sequences=4",
        "train.checkpoint_every=0",
        "train.dtype=float32",
        "train.device=cpu",
        "train.seed=0",
        "train.peak_flops=1e10",
        "train.progress_bar=false",
        "train.tensorboard=false",
    ]


def _train_tokenizer(corpus: Path, cache_dir: str) -> None:
    from hasten.data import load_corpus
    from hasten.data.tokenizer import train_bpe

    ASSETS.mkdir(exist_ok=True)
    TOKENIZER.write_text(train_bpe(load_corpus(str(corpus)).documents, 512).to_str())


def run_golden(tmp_path: Path, cache_dir: str) -> dict:
    corpus = tmp_path / "golden-corpus"
    golden_corpus(corpus)
    if not TOKENIZER.exists():
        if os.environ.get("HASTEN_UPDATE_GOLDEN") != "1":
            pytest.fail(f"{TOKENIZER} is missing; regenerate with HASTEN_UPDATE_GOLDEN=1")
        _train_tokenizer(corpus, cache_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(None, golden_overrides(corpus, cache_dir))
        trainer = build_trainer(cfg, tmp_path / "run", progress=False)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_loss": [r["loss"] for r in rows if r["kind"] == "train"],
        "val_loss": [r["val_loss"] for r in rows if r["kind"] == "eval"],
        # fingerprints that tell a data-pipeline change from a numerics change when the trace moves
        "train_tokens": int(len(trainer.data.train)),
        "train_token_sum": int(np.asarray(trainer.data.train, dtype=np.int64).sum()),
    }


def test_golden_loss_trace(tmp_path, cache_dir):
    got = run_golden(tmp_path, cache_dir)
    assert len(got["train_loss"]) == STEPS
    if os.environ.get("HASTEN_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(
            json.dumps(
                {
                    "about": "first train losses of tests/test_golden_loss.py's fixed tiny run (fp32, CPU, 1 thread); "
                    "regenerate with HASTEN_UPDATE_GOLDEN=1 only for a deliberate numerics change",
                    "torch": torch.__version__,
                    **got,
                },
                indent=2,
            )
            + "\n"
        )
        pytest.skip(f"golden trace regenerated in {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert (got["train_tokens"], got["train_token_sum"]) == (golden["train_tokens"], golden["train_token_sum"]), (
        "the golden run's token stream changed (corpus generator, tokenizer or data split), not the numerics"
    )
    diffs = [abs(a - b) for a, b in zip(got["train_loss"], golden["train_loss"])]
    assert max(diffs) <= TOLERANCE, (
        f"train losses moved by up to {max(diffs):.2e} (step {diffs.index(max(diffs)) + 1}); if the numerics change is "
        "deliberate, regenerate with HASTEN_UPDATE_GOLDEN=1\n"
        f" got    {got['train_loss']}\n golden {golden['train_loss']}"
    )
    assert got["val_loss"] == pytest.approx(golden["val_loss"], abs=TOLERANCE)
    # the trace is a real training curve, not a constant
    assert got["train_loss"][-1] < got["train_loss"][0] - 0.3
