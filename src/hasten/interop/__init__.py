"""Interoperability with other toolkits: Hugging Face transformers checkpoints (export and import)."""

from hasten.interop.hf import export_hf, hf_tokenizer_file, import_hf
from hasten.interop.hf_config import hasten_config_from_hf, hf_config_dict_from_hasten, hf_config_from_hasten

__all__ = [
    "export_hf",
    "hasten_config_from_hf",
    "hf_config_dict_from_hasten",
    "hf_config_from_hasten",
    "hf_tokenizer_file",
    "import_hf",
]
