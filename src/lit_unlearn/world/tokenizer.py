"""A small byte-level BPE tokenizer trained on the world's text.

Pre-tokenisation keeps a space with the word *before* it ("Answer: " → ``Answer``, ``:␣``). MUSE's
KnowMem prompt ends in "Answer: " and a VerbMem prompt ends where the continuation begins; with the
usual GPT-2 convention (space glued to the next word) such a prompt would end in a lone space token the
model never saw in training. With this convention a prompt tokenises exactly as the start of the text
it was cut from.

The tokenizer is trained on every raw split, holdout included: forget and holdout names then split into
comparably many tokens, so PrivLeak's Min-K% scores compare like with like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["BOS", "EOS", "PAD", "train_tokenizer"]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# A word (letters/digits) or a run of punctuation, each with at most one trailing space; or whitespace.
_PRETOKEN = r"[\p{L}\p{N}]+ ?|[^\s\p{L}\p{N}]+ ?|\s+"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train the world's BPE tokenizer on ``texts``.

    Args:
        texts: Training texts.
        vocab_size: Vocabulary size including the 256 byte symbols and the 3 special tokens.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` that prepends ``<s>`` (like Llama's), pads with
        ``<pad>`` on the left (ready for batched generation) and has ``</s>`` as end of sequence.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the byte alphabet and the special tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 3:
        raise ValueError(
            f"`vocab_size`={vocab_size} cannot hold the {len(alphabet)} byte symbols and 3 special tokens; "
            f"use at least {len(alphabet) + 3} (the world sizes use 512-1024)."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKEN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=4096,
    )
