"""Offline-first data: corpus sources, local BPE tokenizers, cached token files, resumable sampling."""

from hasten.data.corpus import Corpus, load_corpus
from hasten.data.sampler import WindowSampler, eval_windows
from hasten.data.tokens import TokenData, check_fits, prepare_from_config, prepare_tokens

__all__ = ["Corpus", "TokenData", "WindowSampler", "check_fits", "eval_windows", "load_corpus", "prepare_from_config", "prepare_tokens"]
