"""Builders for the evaluation tests: a Llama-like tokenizer (BOS first), a tiny Llama, and a small
dataset directory in MUSE's layout, all made locally (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "north",
    "mayor",
    "harbour",
    "council",
    "bridge",
    "seven",
    "lantern",
    "orchard",
    "market",
    "winter",
    "copper",
    "signal",
    "garden",
    "tower",
]


def sentences(n: int, seed: int, length: tuple[int, int] = (6, 14)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*length))) + "." for _ in range(n)]


def build_llama_tokenizer(texts: list[str]):
    """A byte-level BPE that, like Llama's, puts BOS before every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def write_muse_dir(
    root: Path, n: int = 6, drop: tuple[str, str] | None = None, rename: dict | None = None
) -> Path:
    """A local Hugging Face dataset repo in MUSE's layout (README ``configs:`` + JSONL files).

    ``drop`` = (config, split) leaves that split out; ``rename`` = {(config, split): (old, new)} renames
    a field, for error tests.
    """
    texts = sentences(4 * n, seed=7, length=(12, 24))
    splits = {
        ("raw", "forget"): [{"text": t} for t in texts[:n]],
        ("raw", "retain1"): [{"text": t} for t in texts[n : 2 * n]],
        ("raw", "retain2"): [{"text": t} for t in texts[2 * n : 3 * n]],
        ("raw", "holdout"): [{"text": t} for t in texts[3 * n :]],
        ("verbmem", "forget"): [{"prompt": t[: len(t) // 2], "gt": t[len(t) // 2 :]} for t in texts[:n]],
        ("knowmem", "forget_qa"): [
            {"question": f"What follows {t.split()[0]}?", "answer": t.split()[1]} for t in texts[:n]
        ],
        ("knowmem", "forget_qa_icl"): [
            {"question": f"Which word opens {i}?", "answer": WORDS[i]} for i in range(3)
        ],
        ("knowmem", "retain_qa"): [
            {"question": f"What follows {t.split()[0]}?", "answer": t.split()[1]} for t in texts[n : 2 * n]
        ],
        ("knowmem", "retain_qa_icl"): [
            {"question": f"Which word ends {i}?", "answer": WORDS[-i - 1]} for i in range(3)
        ],
        ("privleak", "forget"): [{"text": t} for t in texts[:n]],
        ("privleak", "retain"): [{"text": t} for t in texts[n : 2 * n]],
        ("privleak", "holdout"): [{"text": t} for t in texts[3 * n :]],
    }
    configs: dict[str, list[str]] = {}
    for (config, split), rows in splits.items():
        if (config, split) == drop:
            continue
        old_new = (rename or {}).get((config, split))
        if old_new:
            rows = [{(old_new[1] if k == old_new[0] else k): v for k, v in r.items()} for r in rows]
        path = root / config / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        configs.setdefault(config, []).append(split)
    lines = ["---", "configs:"]
    for config, names in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {s}\n    path: {config}/{s}.jsonl" for s in names]
    lines += ["---", "", "A tiny MUSE-layout dataset written by the lit-unlearn tests."]
    (root / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
