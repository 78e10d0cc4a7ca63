"""Token shards under real runs: the benchmark's corpus gives the tokens its committed records were trained on, a run
recorded before token shards resumes identically, and two "nodes" (torchrun --nnodes 2 on localhost, gloo) train on
shared or separately prepared shards like one process, while a node with other data is refused with one line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hasten.cli import main
from hasten.data.corpus import load_corpus
from hasten.data.tokens import prepare_tokens
from hasten.recipes import build_trainer, load_config
from hasten.trainer.method import StopAt

ROOT = Path(__file__).resolve().parents[1]
REL = 1e-5  # DDP vs one process: the same math, only the gradient summation order differs

# sha256 of the train / val token streams (uint16 little-endian) the pipeline before token shards (e1416ed) wrote for
# the stdlib of Python 3.11.7: the benchmark's settings (vocab 512, val 1 %) and the default recipe's (4096, 2 %)
BEFORE_SHARDS = {
    (512, 0.01): (
        "51f0442f63a93c461ef3d4df68f095cdbbe5cbc1fec3a085b648f592b5208bea",
        "fa31b1256181ef527c1e45cf3250a3dce15b2e947ed91e3450022ce8f76caf6e",
        14_900_867,
        150_514,
    ),
    (4096, 0.02): (
        "2f2f4e58ef7c3fc54693697071e048ca2257a54abeb994e6006384913c071517",
        "d61cff5c87da3257249f4a2643b3edd7814ae9242b4f7af9bd5d9b6dbbe44743",
        9_188_603,
        187_523,
    ),
}
WORDS = "the model reads data and learns to predict each next token from the tokens before it in order".split()


def _sha(view) -> str:
    return hashlib.sha256(np.asarray(view).astype("<u2").tobytes()).hexdigest()


@pytest.mark.slow  # tokenizes the whole stdlib twice (~1 min on 2 cores) unless cached
@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the records were made on Python 3.11.7's stdlib")
def test_the_benchmark_corpus_gives_the_tokens_of_the_committed_records():
    regime = json.loads((ROOT / "benchmarks/results/standard/results.json").read_text())["regime"]
    bench = yaml.safe_load((ROOT / "benchmarks/recipes/_bench.yaml").read_text())["data"]
    assert bench == {"source": "stdlib", "vocab_size": 512, "val_fraction": 0.01}
    for (vocab, fraction), (train_sha, val_sha, n_train, n_val) in BEFORE_SHARDS.items():
        data = prepare_tokens("stdlib", vocab_size=vocab, val_fraction=fraction, progress=False)
        assert (len(data.train), len(data.val)) == (n_train, n_val)
        assert (_sha(data.train), _sha(data.val)) == (train_sha, val_sha), (vocab, fraction)
        if vocab == 512:
            assert (len(data.train), len(data.val)) == (regime["train_tokens"], regime["val_tokens"])


def _corpus(folder: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(150 + rng.randrange(150))]
        (folder / f"doc{i:04d}.txt").write_text(" ".join(words) + ".\n")
    return folder


def _train_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.fixture
def folder_overrides(tmp_path, tiny_overrides) -> list[str]:
    corpus = _corpus(tmp_path / "corpus")
    keep = [s for s in tiny_overrides if not s.startswith(("data.max_docs", "train.max_steps", "train.log_every"))]
    return [
        *keep,
        f"data.source={corpus}",
        "data.val_fraction=0.2",
        "train.max_steps=8",
        "train.log_every=1",
        "train.device=cpu",
    ]


def test_a_run_recorded_before_token_shards_resumes_identically(tmp_path, folder_overrides, monkeypatch):
    straight = tmp_path / "straight"
    build_trainer(load_config(None, folder_overrides), straight, progress=False).fit()
    run = tmp_path / "run"
    trainer = build_trainer(load_config(None, folder_overrides), run, progress=False)
    trainer.methods.append(StopAt(4))
    trainer.fit()
    record = json.loads((run / "corpus.json").read_text())
    corpus = load_corpus(record["source"])  # what corpus.json held before token shards
    old = {
        "source": record["source"],
        "corpus": record["corpus"],
        "content_sha256": corpus.fingerprint(),
        "documents": len(corpus.documents),
        "files": corpus.files,
        "tokenizer_sha256": record["tokenizer_sha256"],
        "split_version": 2,
        "tokens": record["tokens"],
    }
    (run / "corpus.json").write_text(json.dumps(old, indent=1))
    cache = tmp_path / "fresh-cache"  # no token dir yet: the resume prepares one from the run's own files
    monkeypatch.setenv("HASTEN_CACHE", str(cache))
    (Path(record["source"]) / "zz-added.txt").write_text("a file added after the run started\n" * 20)
    resumed = build_trainer(load_config(None, folder_overrides), run, resume=True, progress=False)
    assert resumed.state.progress.step == 4 and len(resumed.data.train) == record["tokens"]["train"]
    resumed.fit()
    assert _train_losses(run) == _train_losses(straight)  # bit-identical on CPU
    (Path(record["source"]) / "doc0002.txt").write_text("edited\n")
    assert main(["train", "--resume", "--run-dir", str(run), "--set", "train.max_steps=9"]) == 2


# ---------------------------------------------------------------------------------------------- two nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(run_dir: Path, sets: list[str], homes: list[Path]) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --nproc-per-node 1` twice on localhost: each node in its own folder with its own cache."""
    port = _free_port()
    procs = []
    for rank, home in enumerate(homes):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            "hasten",
            "train",
            "--run-dir",
            str(run_dir),
        ]
        for item in sets:
            cmd += ["--set", item]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HASTEN_CACHE": str(home / "cache"),
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        procs.append(
            subprocess.Popen(cmd, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= REL * abs(y), (step, x, y)


@pytest.mark.slow  # three two-node launches (~2 min on 2 cores)
def test_two_nodes_train_like_one_process_on_shared_or_separately_prepared_shards(tmp_path, tiny_overrides):
    homes = [tmp_path / "node0", tmp_path / "node1"]
    for home in homes:
        _corpus(home / "corpus")  # the same corpus on each node, read as data.source=corpus from its own folder
    dropped = ("data.max_docs", "data.cache_dir", "train.max_steps", "train.log_every")
    keep = [s for s in tiny_overrides if not s.startswith(dropped)]
    sets = [*keep, "data.val_fraction=0.2", "train.max_steps=8", "train.log_every=1", "train.device=cpu"]
    single = tmp_path / "single"
    build_trainer(load_config(None, [*sets, f"data.source={homes[0] / 'corpus'}"]), single, progress=False).fit()

    separate = tmp_path / "separate"  # each node prepares the same shards itself
    done = _two_nodes(separate, [*sets, "data.source=corpus"], homes)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    _close(_train_losses(separate), _train_losses(single))
    assert all(list((home / "cache" / "tokens").iterdir()) for home in homes)

    shared = tmp_path / "shared-tokens"  # prepared once, read by both nodes in place
    assert (
        main(
            [
                "prepare-data",
                "--out",
                str(shared),
                *[a for s in [*sets, f"data.source={homes[0] / 'corpus'}"] for a in ("--set", s)],
            ]
        )
        == 0
    )
    for home in homes:
        shutil.rmtree(home / "cache")
    on_shared = tmp_path / "on-shared"
    done = _two_nodes(on_shared, [*sets, f"data.tokens={shared}"], homes)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    _close(_train_losses(on_shared), _train_losses(single))
    assert not any((home / "cache" / "tokens").exists() for home in homes)  # no copy per node

    with open(homes[1] / "corpus" / "doc0003.txt", "a") as f:  # node 1's corpus differs
        f.write("one more line\n")
    refused = tmp_path / "refused"
    done = _two_nodes(refused, [*sets, "data.source=corpus"], homes)
    assert all(d.returncode != 0 for d in done)
    lines = [line for d in done for line in d.stderr.splitlines() if line.startswith("hasten: error:")]
    fragments = ("rank 1 on", "has other token data than rank 0", "doc0003.txt edited", "data.tokens=DIR")
    assert lines and all(all(f in line for f in fragments) for line in lines), lines
    assert not refused.exists()
