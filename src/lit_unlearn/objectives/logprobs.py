"""Token and sequence log-likelihoods of a causal LM, in the Hugging Face label convention.

``logits`` are ``(B, T, V)``; ``labels`` are ``(B, T)`` and position ``t`` of the logits predicts
``labels[:, t + 1]``; label ``-100`` marks a position that is not scored (padding, prompt). Every helper
works in float32 whatever the dtype of the logits, because a bf16 log-softmax over a 32k vocabulary
loses about three significant digits, which is as large as the per-step changes unlearning makes.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    """Raise a ``ValueError`` unless ``logits`` is ``(B, T, V)`` and ``labels`` is ``(B, T)``."""
    if logits.dim() != 3:
        raise ValueError(
            f"`logits` must have shape (batch, seq_len, vocab), got {tuple(logits.shape)}; "
            "pass the `.logits` of a causal LM output."
        )
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"`labels` must have shape (batch, seq_len) = {tuple(logits.shape[:2])} to match `logits`, got "
            f"{tuple(labels.shape)}; pass the unshifted labels (the helpers shift them by one)."
        )


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Log-probability of each next token.

    Args:
        logits: ``(B, T, V)`` logits of any float dtype.
        labels: ``(B, T)`` token ids; ``ignore_index`` marks positions that are not scored.
        ignore_index: label value that is not scored.

    Returns:
        ``(logp, mask)``: ``logp`` is ``(B, T - 1)`` float32 with ``log p(labels[:, t + 1] | x_{<=t})`` and
        exactly 0 where the label is ignored; ``mask`` is ``(B, T - 1)`` bool, true where scored.
    """
    check_logits_labels(logits, labels)
    # `.float()` is a no-op for fp32 logits, so in that case nothing of size (B, T, V) is copied: the
    # logsumexp form only needs the picked logit and one reduction, unlike log_softmax + gather, which
    # would write a second (B, T, V) tensor and keep it for the backward pass.
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    # Ignored labels (-100) are not valid indices; gather a harmless index 0 there and zero it after.
    safe_labels = shift_labels.masked_fill(~mask, 0)
    picked = shift_logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logp = (picked - torch.logsumexp(shift_logits, dim=-1)).masked_fill(~mask, 0.0)
    return logp, mask


def sequence_logprob(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Summed log-likelihood ``log π(x) = Σ_t log π(x_{t+1} | x_{<=t})`` of each sequence, ``(B,)`` float32.

    A sequence with no scored token gets 0.
    """
    logp, _ = token_logprobs(logits, labels, ignore_index)
    return logp.sum(dim=-1)


def sequence_mean_logprob(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Length-normalised log-likelihood ``log π(x) / |x|`` of each sequence, ``(B,)`` float32.

    ``|x|`` counts scored tokens only. A sequence with no scored token gets 0.
    """
    logp, mask = token_logprobs(logits, labels, ignore_index)
    return logp.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)


def mean_token_nll(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean next-token cross-entropy over all scored tokens of the batch, a float32 scalar.

    This equals the ``loss`` a Hugging Face causal LM returns for the same ``labels`` (tokens are pooled
    over the batch, so long sequences weigh more than short ones). A batch with no scored token gives 0
    rather than the NaN of ``0 / 0``: a NaN would reach the weights through the optimizer and end the run.
    """
    logp, mask = token_logprobs(logits, labels, ignore_index)
    return -logp.sum() / mask.sum().clamp_min(1)


def scored_positions(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``(B, T)`` bool, true at positions whose own label is scored (unshifted).

    This is the set of positions the MUSE code's raw-logit losses average over: MUSE collates plain text
    with ``labels == input_ids`` and no padding, so every position counts, the last one included. Masking
    by the unshifted label reproduces that exactly and keeps padding (label ``-100``) out of the average.
    """
    return labels != ignore_index
