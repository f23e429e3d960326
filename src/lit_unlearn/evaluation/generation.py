"""Batched greedy generation and token-level scoring for the MUSE evaluation.

Prompts are encoded one by one exactly as MUSE's code encodes them (with the tokenizer's special
tokens, so Llama's BOS comes first) and then padded on the LEFT, so every prompt ends at the same
position and generation continues right after its last token. Items are processed longest first, which
keeps padding small within a batch and surfaces an out-of-memory batch at the start rather than the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_unlearn.metrics.privleak import MIN_K, min_k_percent_score
from lit_unlearn.objectives.logprobs import IGNORE_INDEX, token_logprobs

__all__ = ["generate_greedy", "min_k_scores", "model_device", "truncate_tokens"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`={batch_size!r} must be a positive integer, e.g. 8.")


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has neither a pad nor an EOS token, so batches cannot be padded. "
            "Set `tokenizer.pad_token` (e.g. to the EOS token) before evaluating."
        )
    return pad


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    return [ids[:max_length] for ids in encoded] if max_length is not None else encoded


def _batches_longest_first(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _in_lockstep(batches: list[list[int]], synced: bool, device: torch.device) -> list[list[int] | None]:
    """``batches``, padded with ``None`` (a throwaway batch) to the most any rank has, when ``synced``.

    A sharded model (FSDP2) gathers each block's weights in every forward, a collective: every rank must
    run as many forwards as the others, also a rank whose share of the items is smaller or empty.
    """
    if not synced:
        return list(batches)
    import torch.distributed as dist

    count = torch.tensor([len(batches)], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return [*batches, *([None] * (int(count.item()) - len(batches)))]


def _throwaway(tokenizer: Any, tokens: int) -> list[int]:
    """A row of ``tokens`` tokens for a throwaway batch (its results are dropped)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else _pad_id(tokenizer)
    return [token] * tokens


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, left: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def truncate_tokens(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut to its first ``max_tokens`` tokens and decoded back, the way MUSE's code cuts VerbMem
    ground truths: encoded with the tokenizer's special tokens (Llama's BOS counts as one of the
    ``max_tokens``) and decoded without them. (MUSE also cleans up tokenization spaces; that only moves
    spaces next to punctuation, which ROUGE's tokenizer drops, so it cannot change a score.)"""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in _encode(tokenizer, texts, max_tokens)]


@torch.no_grad()
def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    desc: str = "generate",
    progress: bool = True,
    synced: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (without the prompt), in the order of ``prompts``.

    Args:
        model: A causal LM with ``generate`` (Hugging Face or peft), in eval mode.
        tokenizer: Its tokenizer; the pad token (else EOS) fills the left padding.
        prompts: Texts to continue.
        max_new_tokens: Tokens to generate per prompt (fewer when the model emits EOS).
        batch_size: Prompts per ``generate`` call.
        desc: Label of the progress bar.
        progress: Show a tqdm progress bar over items.
        synced: The model is sharded across ranks (FSDP2): every rank runs as many ``generate`` calls and
            decoding steps as the others (``synced_gpus``), with throwaway batches where it has fewer.
    """
    from transformers import GenerationConfig

    _check_batch_size(batch_size)
    if not prompts and not synced:
        return []
    pad_id = _pad_id(tokenizer)
    eos_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    # A fresh config: a checkpoint's own sampling defaults (temperature, top_p) must not leak into
    # greedy decoding.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos_id if eos_id is not None else tokenizer.eos_token_id,
        use_cache=True,
    )
    device = model_device(model)
    encoded = _encode(tokenizer, prompts)
    outputs: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="item", disable=not progress, leave=False) as bar:
        batches = list(_batches_longest_first([len(e) for e in encoded], batch_size))
        for batch in _in_lockstep(batches, synced, device):
            rows = [_throwaway(tokenizer, 2)] if batch is None else [encoded[i] for i in batch]
            ids, mask = _pad(rows, pad_id, left=True, device=device)
            sync = {"synced_gpus": True} if synced else {}
            generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **sync)
            if batch is None:
                continue
            texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                outputs[i] = text
            bar.update(len(batch))
    return outputs


@torch.no_grad()
def min_k_scores(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    k: float = MIN_K,
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "min-k",
    progress: bool = True,
    drop_last: bool = False,
    max_content_tokens: int | None = None,
    synced: bool = False,
) -> Tensor:
    """Min-K% Prob score of each text under ``model`` (MUSE's ``Min-40%`` for ``k=0.4``), ``(N,)``
    float32 on CPU.

    Each text is encoded with the tokenizer's special tokens, every token after the first is scored
    with its log-probability given the tokens before it, and the score is minus the mean of the lowest
    ``k`` share of those log-probabilities (:func:`lit_unlearn.metrics.min_k_percent_score`). Higher means
    less likely under the model, i.e. less memorised.

    Args:
        max_length: Cut texts to this many tokens first; ``None`` scores them whole, as MUSE does.
        drop_last: Leave each text's last token unscored, as open-unlearning's ``tokenwise_logprobs`` does.
        max_content_tokens: Cut texts to this many tokens after the tokenizer's special prefix (what
            ``tokenizer("")`` encodes to, Llama's BOS), as open-unlearning's ``CompletionDataset`` does.
        synced: The model is sharded across ranks (FSDP2): every rank runs as many forwards as the others.
    """
    _check_batch_size(batch_size)
    if not texts and not synced:
        return torch.zeros(0)
    pad_id = _pad_id(tokenizer)
    device = model_device(model)
    if max_content_tokens is not None:
        prefix = len(tokenizer("", add_special_tokens=True)["input_ids"])
        max_length = prefix + max_content_tokens if max_length is None else min(max_length, prefix + max_content_tokens)
    encoded = _encode(tokenizer, texts, max_length)
    fewest = 3 if drop_last else 2
    short = [i for i, e in enumerate(encoded) if len(e) < fewest]
    if short:
        raise ValueError(
            f"Texts {short[:5]} encode to fewer than {fewest} tokens, so no token can be scored; drop empty "
            "texts from the privleak sets."
        )
    scores = torch.zeros(len(texts))
    with tqdm(total=len(texts), desc=desc, unit="item", disable=not progress, leave=False) as bar:
        batches = list(_batches_longest_first([len(e) for e in encoded], batch_size))
        for batch in _in_lockstep(batches, synced, device):
            if batch is None:
                ids, mask = _pad([_throwaway(tokenizer, 3)], pad_id, left=False, device=device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                continue
            # Right padding: under a causal mask, trailing pads cannot change the scores of earlier tokens.
            ids, mask = _pad([encoded[i] for i in batch], pad_id, left=False, device=device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logp, scored = token_logprobs(logits, ids.masked_fill(mask == 0, IGNORE_INDEX))
            if drop_last:
                # Right padding: each row's last scored position is its count of scored tokens minus one.
                last = scored.sum(dim=1) - 1
                scored = scored.clone()
                scored[torch.arange(len(batch), device=scored.device), last] = False
            scores[batch] = min_k_percent_score(logp, scored, k).cpu()
            bar.update(len(batch))
    return scores
