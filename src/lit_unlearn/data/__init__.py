"""Forget/retain data: sources (files, JSONL, Hugging Face datasets, the toy world) and the DataModule."""

from lit_unlearn.data.datamodule import ForgetRetainDataModule, TokenizedTexts, collate, tokenize
from lit_unlearn.data.sources import TextSource, load_records, load_split, load_texts, resolve_path

__all__ = [
    "ForgetRetainDataModule",
    "TextSource",
    "TokenizedTexts",
    "collate",
    "load_records",
    "load_split",
    "load_texts",
    "resolve_path",
    "tokenize",
]
