"""Train the world's small Llama until it has memorised its texts: a plain torch loop, no Lightning.

Why this recipe: a model this small trains fastest in fp32 on CPU (bf16 autocast was ~20x slower on the
AVX2-only CPUs measured, which lack native bf16 matmul); short packed rows keep every step dense; a high
peak learning rate with warmup and a cosine decay reaches memorisation in tens of epochs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_unlearn.world.config import TrainRecipe
from lit_unlearn.world.render import render_qa_digest

__all__ = ["TrainingSet", "build_model", "pack_rows", "train"]


def build_model(recipe: TrainRecipe, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` shaped by ``recipe`` for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if recipe.hidden_size % recipe.num_heads:
        raise ValueError(
            f"`hidden_size`={recipe.hidden_size} is not divisible by `num_heads`={recipe.num_heads}; "
            "pick a head count that divides the hidden size."
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        # Room for MUSE prompts (10 in-context QA pairs, or a VerbMem excerpt) plus 128 generated tokens.
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@dataclass
class TrainingSet:
    """What a model trains on: fixed documents plus QA pairs regrouped into new digests every epoch.

    On disk, a raw split's QA pairs sit in fixed digests. Trained on fixed digests, a small model learns
    each answer from the digest's earlier pairs (a memorised chain) rather than from its question, and
    fails MUSE's prompt, which puts the question after unrelated in-context pairs. Regrouping the same
    pairs every epoch leaves the question as the only cue for its answer. Digest lengths are drawn from
    1 to ``max_pairs`` pairs: a model that only ever saw short digests expects one to end after a few
    pairs and breaks down on MUSE's prompt of 10 in-context pairs plus the question, so ``max_pairs``
    must exceed the in-context examples + 1.

    Attributes:
        documents: Token ids of each document, ``<s> ... </s>``.
        qa_pairs: Token ids of each "Question: q\nAnswer: a" (no special tokens).
        separator: Token ids of the blank line between pairs of a digest.
        max_pairs: Most pairs per digest.
        max_tokens: Most tokens per digest (a training row), special tokens included.
        bos_id: Id of ``<s>``.
        eos_id: Id of ``</s>``.
    """

    documents: list[list[int]]
    qa_pairs: list[list[int]]
    separator: list[int]
    max_pairs: int
    max_tokens: int
    bos_id: int
    eos_id: int

    @classmethod
    def from_texts(
        cls,
        documents: Sequence[str],
        qa_pairs: Sequence[tuple[str, str]],
        tokenizer: Any,
        max_pairs: int,
        max_tokens: int,
    ) -> TrainingSet:
        """Tokenize ``documents`` and ``(question, answer)`` pairs with the world's tokenizer.

        Raises:
            ValueError: if a document or a single QA pair does not fit in ``max_tokens``.
        """
        docs = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(documents))["input_ids"]]
        pairs = tokenizer([render_qa_digest([pair]) for pair in qa_pairs], add_special_tokens=False)[
            "input_ids"
        ]
        longest = max([*map(len, docs), *(len(p) + 2 for p in pairs)])
        if longest > max_tokens:
            raise ValueError(
                f"A world text is {longest} tokens, longer than the training row `seq_len`={max_tokens}. "
                "Raise `seq_len` in the size's recipe."
            )
        separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
        return cls(
            docs, pairs, separator, max_pairs, max_tokens, tokenizer.bos_token_id, tokenizer.eos_token_id
        )

    def epoch(self, rng: random.Random) -> list[list[int]]:
        """This epoch's units: the documents and fresh digests ``<s> pair \n\n pair ... </s>``."""
        order = list(range(len(self.qa_pairs)))
        rng.shuffle(order)
        digests: list[list[int]] = []
        while order:
            want = rng.randint(1, self.max_pairs)
            digest = [self.bos_id, *self.qa_pairs[order.pop()]]
            for _ in range(want - 1):
                if (
                    not order
                    or len(digest) + len(self.separator) + len(self.qa_pairs[order[-1]]) + 1 > self.max_tokens
                ):
                    break
                digest += self.separator + self.qa_pairs[order.pop()]
            digests.append(digest + [self.eos_id])
        return self.documents + digests

    def tokens_per_epoch(self) -> int:
        """Tokens in one epoch (they vary a little with the digest draw; this is the first epoch's)."""
        return sum(map(len, self.epoch(random.Random(0))))


def pack_rows(units: Sequence[list[int]], seq_len: int, pad_id: int, rng: random.Random) -> torch.Tensor:
    """Shuffle ``units`` and pack them whole, first come first served, into rows of ``seq_len`` tokens.

    Returns:
        Token ids, shape ``(rows, seq_len)``; the tail of each row is ``pad_id``.
    """
    order = list(range(len(units)))
    rng.shuffle(order)
    rows: list[list[int]] = [[]]
    for i in order:
        if len(rows[-1]) + len(units[i]) > seq_len:
            rows.append([])
        rows[-1].extend(units[i])
    return torch.tensor([row + [pad_id] * (seq_len - len(row)) for row in rows], dtype=torch.long)


def _schedule(step: int, total: int, warmup: int, min_frac: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: Any,
    data: TrainingSet,
    recipe: TrainRecipe,
    epochs: int,
    pad_id: int,
    seed: int,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """Train ``model`` in place on ``data`` for ``epochs`` passes (AdamW, warmup + cosine).

    Returns:
        ``steps``, ``epochs``, ``tokens`` (non-padding tokens seen), ``seconds``, ``final_loss`` (mean
        over the last epoch).
    """
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    # Packing every epoch up front fixes the number of steps, which the schedule needs.
    batches = []
    for _ in range(epochs):
        rows = pack_rows(data.epoch(rng), recipe.seq_len, pad_id, rng)
        batches += list(rows.split(recipe.batch_size))
    total = len(batches)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay
    )
    warmup = max(1, int(total * recipe.warmup_frac))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, total, warmup, recipe.min_lr_frac)
    )
    model.train()
    steps_per_epoch = total / epochs
    last_epoch_losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, disable=not progress, unit="step", leave=True, mininterval=1.0)
    for step, ids in enumerate(bar):
        mask = ids != pad_id
        labels = ids.masked_fill(~mask, -100)
        # Padding only ever trails a row, so causal attention never lets a real token see it: no
        # attention mask is needed, and without one SDPA takes its fast causal path.
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        value = loss.item()
        if step >= total - steps_per_epoch:
            last_epoch_losses.append(value)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.3f}", epoch=f"{int(step // steps_per_epoch) + 1}/{epochs}")
    bar.close()
    model.eval()
    return {
        "steps": total,
        "epochs": epochs,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - start, 2),
        "final_loss": round(sum(last_epoch_losses) / max(1, len(last_epoch_losses)), 4),
    }
