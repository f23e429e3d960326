"""Shared fixtures: a tiny Llama and a locally trained tokenizer, built from configs (no downloads)."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def pytest_report_header(config):
    """The CPU capability and bitsandbytes' 4-bit decoders on it, so a failure on another CPU is diagnosable."""
    from lit_unlearn._logging import silence_bitsandbytes

    silence_bitsandbytes()
    from lit_unlearn.quantization.bnb_decode import describe_cpu_dispatch

    return describe_cpu_dispatch()


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first, each file's tests together and in order: under ``pytest -n 2 --dist
    loadfile --no-loadscope-reorder`` the long end-to-end files start at once and the many short ones fill in
    around them, rather than two long files ending the run on their own."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: collection order within each group


WORDS = "alpha beta gamma delta river stone north mayor harbour council bridge seven lantern orchard".split()


def make_texts(n: int, seed: int, words: list[str] = WORDS) -> list[str]:
    """Deterministic short sentences over a small vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + "." for _ in range(n)]


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models do microseconds of work per op; on a shared 2-core machine two intra-op threads
    # spin-waiting on each other make a forward pass up to ~100x slower than one thread.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A directory with a tiny random Llama and its tokenizer, as `save_pretrained` writes them."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer(make_texts(200, seed=0))
    model = build_tiny_llama(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def text_files(tmp_path_factory):
    """A forget .txt (blank-line separated) and a retain .jsonl over disjoint halves of the vocabulary."""
    import json

    path = tmp_path_factory.mktemp("texts")
    forget = path / "forget.txt"
    forget.write_text("\n\n".join(make_texts(12, seed=1, words=WORDS[:7])), encoding="utf-8")
    retain = path / "retain.jsonl"
    retain.write_text("\n".join(json.dumps({"text": t}) for t in make_texts(12, seed=2, words=WORDS[7:])), encoding="utf-8")
    return {"forget": str(forget), "retain": str(retain)}


def load_script(path, name: str):
    """A repository script (``scripts/*.py``, ``benchmarks/*.py``) imported as module ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
