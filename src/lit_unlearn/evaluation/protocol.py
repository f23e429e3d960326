"""The MUSE evaluation protocol: ``evaluate`` gives the four MUSE numbers of one model at one precision.

Generation and scoring follow MUSE's code (Shi et al., 2024): VerbMem continues each forget excerpt
for 128 greedy tokens; KnowMem answers each question after 10 in-context ``Question:``/``Answer:``
pairs with 32 greedy tokens; PrivLeak scores forget and holdout texts with Min-40% Prob. The metric
formulas and the ``muse``/``open-unlearning`` conventions are in :mod:`lit_unlearn.metrics`.

With ``torch.distributed`` initialised, each rank evaluates every ``world_size``-th item and the
torchmetrics states are reduced across ranks, so every rank returns the numbers of the whole data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lit_unlearn._modes import eval_mode as evaluation_mode
from lit_unlearn.deployment import Deployment, Modules
from lit_unlearn.evaluation.data import QA, EvalData
from lit_unlearn.evaluation.deployment import check_precision, deployed_weights, load_bitsandbytes
from lit_unlearn.evaluation.generation import generate_greedy, min_k_scores, model_device, truncate_tokens
from lit_unlearn.metrics import (
    MIN_K,
    Convention,
    KnowMem,
    PrivLeak,
    VerbMem,
    get_convention,
    resolve_auc_retrain,
)
from lit_unlearn.sharding import is_sharded

__all__ = ["RESULT_KEYS", "TASKS", "Task", "check_tasks", "evaluate", "evaluation_mode", "knowmem_prompt"]

Task = Literal["verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak"]
TASKS: tuple[str, ...] = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak")
# What `evaluate` returns for all tasks; `knowmem_retain` is MUSE's utility, `auc` the attack's raw AUC.
RESULT_KEYS: tuple[str, ...] = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak", "auc")


def knowmem_prompt(question: str, icl: Sequence[QA]) -> str:
    """MUSE's few-shot prompt: ``"Question: q\\nAnswer: a\\n\\n"`` per in-context pair, then the question."""
    prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return f"{prefix}Question: {question}\nAnswer: "


def check_tasks(tasks: Sequence[str] | None) -> tuple[str, ...]:
    """``tasks`` in canonical order (``None``: all of :data:`TASKS`).

    Raises:
        ValueError: for an empty list or an unknown task; the message lists the valid ones.
    """
    if tasks is None:
        return TASKS
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"`tasks`={list(tasks)!r} must be a non-empty subset of {list(TASKS)}; unknown: "
            f"{unknown or 'none given'}."
        )
    return tuple(t for t in TASKS if t in tasks)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    data: EvalData | str = "world:data",
    precision: str | Deployment = "full",
    convention: str = "muse",
    auc_retrain: float | str | None = None,
    *,
    tasks: Sequence[str] | None = None,
    max_items: int | None = None,
    batch_size: int = 8,
    quantizer: str = "fake",
    block_size: int | None = None,
    filter_fn: Modules = None,
    verbmem_max_new_tokens: int = 128,
    knowmem_max_new_tokens: int = 32,
    k: float = MIN_K,
    progress: bool = True,
) -> dict[str, float]:
    """MUSE metrics of ``model`` deployed at ``precision``.

    Args:
        model: A Hugging Face causal LM, or a peft model wrapping one. A LoRA adapter is merged before
            quantization, as deployment does (see :func:`~lit_unlearn.evaluation.deployed_weights`).
            Train/eval modes and weights are restored afterwards.
        tokenizer: The model's tokenizer.
        data: An :class:`EvalData`, or a MUSE-layout source to load (hub id, local dir, ``world:data``).
        precision: ``"full"``, ``"int8"`` (LLM.int8: row-wise int8 weights and activations, outlier
            columns in 16-bit), ``"nf4"``, ``"fp4"`` or ``"int4"``
            (round-to-nearest, group 128), or a :class:`~lit_unlearn.deployment.Deployment` (precision,
            block size and layers in one; then leave ``block_size`` and ``filter_fn`` unset).
        convention: ``"muse"`` or ``"open-unlearning"`` (see :mod:`lit_unlearn.metrics.conventions`).
        auc_retrain: AUC of the retrain model for PrivLeak: a number, ``"news"``/``"books"`` (published
            values), or ``None`` (``muse``: PrivLeak is NaN; ``open-unlearning``: 0.5).
        tasks: Subset of :data:`TASKS` to run; ``None`` runs all.
        max_items: Items per evaluated set (in-context examples kept whole); ``None`` keeps all.
        batch_size: Prompts or texts per forward/generate call.
        quantizer: ``"fake"`` (pure-torch simulation with ``lit_unlearn.quantization``, any device: nf4/fp4
            weights bit-identical to bitsandbytes' CUDA decoding, int8 layers to its ``Linear8bitLt`` on CPU) or
            ``"bitsandbytes"`` (CUDA only: the merged model is reloaded with ``BitsAndBytesConfig``).
        block_size: Block (group) size of the fake quantizer; ``None`` takes the scheme's default.
        filter_fn: Which linear layers the fake quantizer quantizes (``(name, module) -> bool``, a regex or
            a list of names; see :data:`~lit_unlearn.deployment.Modules`); ``None``: all but the output head.
        verbmem_max_new_tokens: Greedy tokens per VerbMem prompt (MUSE: 128).
        knowmem_max_new_tokens: Greedy tokens per KnowMem question (MUSE: 32).
        k: Min-K% share (MUSE: 0.4).
        progress: Show tqdm progress bars (rank 0 only).

    Returns:
        ``{"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak", "auc"}`` (those of the
        requested tasks) as floats; ROUGE metrics and PrivLeak are × 100, ``auc`` is in [0, 1].

    Raises:
        ValueError: for an unknown ``precision``, ``convention``, ``quantizer`` or task, a bad
            ``auc_retrain``, or data that is not in MUSE layout.
    """
    conv = get_convention(convention)
    deployment = check_precision(Deployment.parse(precision, block_size, filter_fn), quantizer)
    selected = check_tasks(tasks)
    reference_auc = resolve_auc_retrain(auc_retrain)
    if isinstance(data, str):
        data = EvalData.load(data, max_items)
    elif max_items is not None:
        data = data.head(max_items)
    rank, world_size = _distributed()
    if world_size > 1:
        data = data.shard(rank, world_size)
    progress = progress and rank == 0

    with evaluation_mode(model), _deployed(model, deployment, quantizer) as deployed:
        return _run(
            deployed,
            tokenizer,
            data,
            selected,
            conv,
            reference_auc,
            deployment.precision,
            batch_size,
            verbmem_max_new_tokens,
            knowmem_max_new_tokens,
            k,
            progress,
        )


@contextlib.contextmanager
def _deployed(model: nn.Module, deployment: Deployment, quantizer: str) -> Iterator[nn.Module]:
    """``model`` as ``deployment`` holds it, through ``quantizer`` (checked by :func:`check_precision`)."""
    if quantizer == "bitsandbytes" and deployment.scheme is not None:
        deployed = load_bitsandbytes(model, deployment)
        try:
            yield deployed
        finally:
            # The reloaded copy is a second model on the accelerator; free it before anything else runs.
            del deployed
            torch.cuda.empty_cache()
    else:
        with deployed_weights(model, deployment) as deployed:
            yield deployed


def _run(
    model: nn.Module,
    tokenizer: Any,
    data: EvalData,
    tasks: tuple[str, ...],
    conv: Convention,
    auc_retrain: float | None,
    precision: str,
    batch_size: int,
    verbmem_max_new_tokens: int,
    knowmem_max_new_tokens: int,
    k: float,
    progress: bool,
) -> dict[str, float]:
    device = model_device(model)
    # A sharded model computes collectively: every rank runs as many forwards as the others.
    synced = any(is_sharded(p) for p in model.parameters())
    results: dict[str, float] = {}
    if "verbmem_forget" in tasks:
        metric = VerbMem(conv).to(device)
        prompts = [item.prompt for item in data.verbmem_forget]
        targets = [item.gt for item in data.verbmem_forget]
        if conv.verbmem_gt_tokens is not None:
            targets = truncate_tokens(tokenizer, targets, conv.verbmem_gt_tokens)
        outputs = generate_greedy(
            model,
            tokenizer,
            prompts,
            verbmem_max_new_tokens,
            batch_size,
            f"VerbMem forget [{precision}]",
            progress,
            synced=synced,
        )
        metric.update(outputs, targets)
        results["verbmem_forget"] = metric.compute().item()
    for task, items, icl in (
        ("knowmem_forget", data.knowmem_forget, data.knowmem_forget_icl),
        ("knowmem_retain", data.knowmem_retain, data.knowmem_retain_icl),
    ):
        if task not in tasks:
            continue
        metric = KnowMem(conv).to(device)
        prompts = [knowmem_prompt(item.question, icl) for item in items]
        label = task.replace("_", " ").replace("knowmem", "KnowMem")
        outputs = generate_greedy(
            model, tokenizer, prompts, knowmem_max_new_tokens, batch_size, f"{label} [{precision}]", progress,
            synced=synced,
        )
        metric.update(outputs, [item.answer for item in items])
        results[task] = metric.compute().item()
    if "privleak" in tasks:
        metric = PrivLeak(auc_retrain, conv).to(device)
        forget = min_k_scores(
            model,
            tokenizer,
            data.privleak_forget,
            k,
            batch_size,
            desc=f"Min-K% forget [{precision}]",
            progress=progress,
            drop_last=conv.min_k_drop_last,
            max_content_tokens=conv.min_k_max_tokens,
            synced=synced,
        )
        holdout = min_k_scores(
            model,
            tokenizer,
            data.privleak_holdout,
            k,
            batch_size,
            desc=f"Min-K% holdout [{precision}]",
            progress=progress,
            drop_last=conv.min_k_drop_last,
            max_content_tokens=conv.min_k_max_tokens,
            synced=synced,
        )
        metric.update(torch.cat([forget, holdout]), [True] * len(forget) + [False] * len(holdout))
        out = metric.compute()
        results["privleak"] = out["privleak"].item()
        results["auc"] = out["auc"].item()
    return results
