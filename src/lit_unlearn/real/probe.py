"""Ask a chat model the benchmark's questions and score it: ``score(model, tokenizer, benchmark)``.

The probe is deterministic: one question per ``generate`` call (no padding, so no batch-dependent
numerics), greedy decoding, the tokenizer's chat template with its default system prompt, generation
stopped at the end-of-turn token. Verdicts follow :func:`~lit_unlearn.real.matching.is_correct`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lit_unlearn.real.benchmark import Benchmark
from lit_unlearn.real.matching import is_correct
from lit_unlearn.real.pool import SPLITS, Item

__all__ = ["COLUMNS", "MAX_NEW_TOKENS", "ask", "kept_share", "perplexity", "score", "verdicts"]

#: (key of :func:`score`'s result, column title) for ``ResultsTable(columns=COLUMNS)``.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("forget_acc", "Forget ↓"),
    ("paraphrase_acc", "Paraphrase ↓"),
    ("neighbour_acc", "Neighbour ↑"),
    ("retain_acc", "Retain ↑"),
    ("utility_ppl", "Utility PPL ↓"),
)

# Every answer of SmolLM2 to the pool's questions names the fact within its first sentence (~12 tokens);
# 24 leaves room for a short preamble without paying for rambling (about 90 ms a token on one CPU thread).
MAX_NEW_TOKENS = 24


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _prompt_ids(tokenizer: Any, question: str) -> torch.Tensor:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no chat template; the probe asks questions as a chat "
            "user turn. Use the model's own tokenizer (a GGUF chat model carries its template) or set "
            "`tokenizer.chat_template`."
        )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    return ids["input_ids"]


def ask(
    model: nn.Module, tokenizer: Any, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 1,
) -> list[str]:
    """The model's greedy reply to each question, asked alone as a chat user turn.

    Args:
        model: A causal LM (Hugging Face or peft-wrapped), in any mode; run in eval mode without gradients.
        tokenizer: Its tokenizer, with a chat template.
        questions: The questions.
        max_new_tokens: Generated tokens per question at most; generation stops at the end-of-turn token.
        batch_size: Questions generated together, left-padded (about 10x faster on a CPU at 32). ``1``
            (the default, and how the shipped verdicts were made) asks each alone, with no padding; a batch
            computes each row with other matrix shapes, which may flip a near-tied greedy token.

    Returns:
        The replies, special tokens removed and whitespace stripped.
    """
    from lit_unlearn._modes import eval_mode

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens`={max_new_tokens!r} must be a positive integer (default {MAX_NEW_TOKENS}).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`={batch_size!r} must be a positive integer (1: each question alone).")
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies = []
    with eval_mode(model):
        for start in range(0, len(questions), batch_size):
            prompts = [_prompt_ids(tokenizer, q)[0] for q in questions[start : start + batch_size]]
            width = max(len(p) for p in prompts)
            # Left padding: every row's next token sits in the last column.
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for row, prompt in enumerate(prompts):
                ids[row, width - len(prompt) :] = prompt
                mask[row, width - len(prompt) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
            )
            replies += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return replies


def verdicts(
    model: nn.Module, tokenizer: Any, items: Sequence[Item], max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """``{"id", "split", "question", "reply", "correct"}`` for each item, in order (see :func:`ask`)."""
    replies = ask(model, tokenizer, [item.question for item in items], max_new_tokens, batch_size)
    return [
        {
            "id": item.id,
            "split": item.split,
            "question": item.question,
            "reply": reply,
            "correct": is_correct(item.question, reply, item.answers, item.rivals),
        }
        for item, reply in zip(items, replies, strict=True)
    ]


def perplexity(model: nn.Module, tokenizer: Any, text: str) -> float:
    """exp(mean token cross-entropy) of ``text`` as one sequence (BOS added as the tokenizer does).

    Raises:
        ValueError: if ``text`` has fewer than two tokens or is longer than the model's context.
    """
    from lit_unlearn._modes import eval_mode

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if ids.shape[1] < 2 or (limit is not None and ids.shape[1] > limit):
        raise ValueError(
            f"The utility text has {ids.shape[1]} tokens; perplexity needs 2 to {limit} (the model's context). "
            "Shorten or lengthen `utility_text`."
        )
    with eval_mode(model):
        loss = model(input_ids=ids.to(_device(model)), labels=ids.to(_device(model))).loss
    return math.exp(loss.item())


def score(
    model: nn.Module,
    tokenizer: Any,
    benchmark: Benchmark | str = "real:smollm2-data",
    *,
    precision: str = "full",
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 1,
    details: bool = False,
) -> dict[str, Any]:
    """What ``model`` knows of the benchmark: strict-match accuracy per split and utility perplexity.

    Args:
        model: A causal LM (a peft model is merged before quantizing, as in deployment).
        tokenizer: Its tokenizer, with a chat template.
        benchmark: A :class:`Benchmark`, or a benchmark directory (default: SmolLM2's).
        precision: ``"full"``, or a fake-quantized deployment (``"int8"``, ``"nf4"``, ``"fp4"``, ``"int4"``;
            see :func:`~lit_unlearn.deployment.deployed_weights`); the weights are restored afterwards.
        max_new_tokens: Generated tokens per question.
        batch_size: Questions generated together (see :func:`ask`).
        details: Also return ``"verdicts"``: each question's reply and verdict.

    Returns:
        ``forget_acc``, ``paraphrase_acc``, ``neighbour_acc``, ``retain_acc`` (% of the split's questions
        answered correctly, 0–100) and ``utility_ppl`` (perplexity of the utility prose, ≥ 1); with
        ``details``, ``verdicts`` too. On the model the benchmark was built from, every accuracy is 100.
    """
    from lit_unlearn.deployment import deployed_weights
    from lit_unlearn.real.benchmark import load_benchmark

    if not isinstance(benchmark, Benchmark):
        benchmark = load_benchmark(benchmark)
    with deployed_weights(model, precision) as deployed:
        rows = verdicts(deployed, tokenizer, benchmark.items, max_new_tokens, batch_size)
        ppl = perplexity(deployed, tokenizer, benchmark.utility_text)
    results: dict[str, Any] = {}
    for split in SPLITS:
        marks = [row["correct"] for row in rows if row["split"] == split]
        results[f"{split}_acc"] = 100.0 * sum(marks) / len(marks) if marks else float("nan")
    results["utility_ppl"] = ppl
    if details:
        results["verdicts"] = rows
    return results


def kept_share(original: float, full: float, quantized: float) -> float:
    """Share of the forgetting that survives quantization: (acc_orig − acc_quantized)/(acc_orig − acc_full).

    With no retrain model (a real model was never trained without the forget facts), the original model's
    accuracy is the reference: 1 means the quantized model forgot as much as the full-precision one, 0
    that quantization gave every forgotten fact back, below 0 that it knows more than the original.

    Raises:
        ValueError: if the full-precision model forgot nothing (``full >= original``): no share is defined.
    """
    if full >= original:
        raise ValueError(
            f"No forgetting to keep: full-precision accuracy {full} is not below the original's {original}."
        )
    return (original - quantized) / (original - full)
