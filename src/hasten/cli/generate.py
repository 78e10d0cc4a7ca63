"""`hasten generate RUN --prompt TEXT --max-new-tokens N`: sample text from a trained model.

Greedy by default (temperature 0); `--temperature T` samples from softmax(logits / T), restricted to
the `--top-k` most likely tokens if given, with a seeded generator so a seed gives the same text.
`--weights NAME` uses a weight average the run wrote. Like nanoGPT's sampler, the full context is
recomputed every token (no KV cache), cropped to the model's context length.
"""

from __future__ import annotations

import math

import torch
from tokenizers import Tokenizer

from hasten.checkpointing.weights import RAW, WEIGHTS_HELP
from hasten.data.tokenizer import EOS
from hasten.errors import ConfigError, DataError
from hasten.interop.cli import run_tokenizer
from hasten.trainer.setup import resolve_device


@torch.no_grad()
def generate(
    model,
    ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_id: int | None = None,
) -> list[int]:
    """The new token ids after `ids` (stops early after `stop_id`, which is included)."""
    device = next(model.parameters()).device
    context = torch.tensor([ids], dtype=torch.long, device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(context[:, -model.config.max_seq_len :])[0, -1].float()
        if temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=generator))
        out.append(token)
        context = torch.cat([context, torch.tensor([[token]], device=device)], dim=1)
        if token == stop_id:
            break
    return out


def cmd_generate(args) -> int:
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ConfigError(f"--temperature={args.temperature} must be a number >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k} must be >= 1")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples={args.num_samples} must be >= 1")
    model, ckpt, run_dir = args.load_model(args.source, args.weights)
    path = args.tokenizer or run_tokenizer(args.source, ckpt, run_dir)
    if path is None:
        raise ConfigError(
            f"{args.source} has no tokenizer.json beside it; pass the model's tokenizer with --tokenizer FILE"
        )
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exceptions
        raise DataError(f"{path} is not a valid tokenizer.json ({str(err).splitlines()[0][:120]})") from None
    if tok.get_vocab_size() > model.config.vocab_size:
        raise ConfigError(
            f"{path} has {tok.get_vocab_size()} tokens but the model only {model.config.vocab_size}; "
            "pass its own tokenizer"
        )
    eos = tok.token_to_id(EOS)
    ids = tok.encode(args.prompt).ids if args.prompt else []
    if not ids:
        if eos is None:
            raise ConfigError(
                "--prompt is empty and the tokenizer has no end-of-text token to start from; give a prompt"
            )
        ids = [eos]  # an empty prompt starts a new document
    model.to(resolve_device(args.device)).eval()
    generator = torch.Generator().manual_seed(args.seed)
    for i in range(args.num_samples):
        new = generate(
            model, ids, args.max_new_tokens, args.temperature, args.top_k, generator, eos if args.stop_at_eos else None
        )
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tok.decode([t for t in new if t != eos]), flush=True)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="sample text from a run or checkpoint (greedy, or temperature / top-k with a seed)"
    )
    p.add_argument("source", help="run dir, checkpoint dir, model checkpoint (import-hf) or hf:DIR")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed gives the same text)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--weights", default=RAW, help=WEIGHTS_HELP)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run's or the checkpoint's own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--no-stop-at-eos", dest="stop_at_eos", action="store_false", help="keep going past the end-of-text token"
    )
    p.set_defaults(func=cmd_generate)
