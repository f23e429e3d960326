"""How much of the world a model knows, at full precision and fake-quantized: a quick recall check.

Not MUSE's metrics (``lit_unlearn.metrics`` has those) but the same probes, kept fast for the world's
manifest and tests:

* QA, on MUSE's KnowMem prompt (the split's in-context pairs, then "Question: q\\nAnswer: "):
  ``qa_exact`` = share of questions whose greedy answer is exactly the reference, then a line break
  or ``</s>``; ``qa_token_acc`` = share of answer tokens that are the greedy choice given the true answer so
  far (partial credit).
* Verbatim, on MUSE's VerbMem prompt (the start of a document): the greedy continuation, as long as the
  true one; ``verbatim_token_acc`` = share of positions holding the true token, ``verbatim_rougeL`` =
  word-level ROUGE-L F1 against the true continuation.

Forget = ``knowmem/forget_qa`` and ``verbmem/forget``; retain = ``knowmem/retain_qa`` and the retain
documents of ``privleak/retain`` cut like VerbMem's. The in-context prefix is run once per batch and
its key/value cache shared, which makes the probe several times faster than ``generate``.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_unlearn.world._threads import on_idle_threads
from lit_unlearn.world.render import split_continuation

__all__ = ["PRECISIONS", "knowledge_report", "rouge_l_f1", "world_report"]

# "fp32" = no quantization; the rest are lit_unlearn.quantization scheme names.
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "nf4", "fp4", "int4")
_WORD = re.compile(r"\w+")


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Word-level ROUGE-L F1 (lower-cased ``\\w+`` tokens, no stemming)."""
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    prev = [0] * (len(ref) + 1)
    for p in pred:
        cur = [0]
        for j, r in enumerate(ref):
            cur.append(prev[j] + 1 if p == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _read(data_dir: Path, config: str, split: str) -> list[dict[str, str]]:
    path = data_dir / config / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"World data file {path} is missing; prepare the world again (prepare_world)."
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _forward(model: Any, cache: Any = None, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """Logits and key/value cache; transformers 5 names the cache ``cache``, 4.x ``past_key_values``."""
    new_name = "cache" in inspect.signature(model.forward).parameters
    if cache is not None:
        inputs["cache" if new_name else "past_key_values"] = cache
    out = model(**inputs, use_cache=True)
    return out["logits"], out["cache"] if "cache" in out else out["past_key_values"]


def _after_prefix(model: Any, prefix: list[int], batch: int) -> Any:
    """The key/value cache of ``prefix`` (run once), repeated for ``batch`` sequences."""
    _, cache = _forward(model, input_ids=torch.tensor([prefix]))
    cache.batch_repeat_interleave(batch)
    return cache


def _left_padded(prefix_len: int, prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Prompts left-padded *after* a shared prefix: ids, attention mask over prefix + prompts, positions.

    The padding is masked out and the position ids skip it, so each sequence is computed as if it
    stood alone after the prefix.
    """
    batch, width = len(prompts), max(map(len, prompts))
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.ones((batch, prefix_len + width), dtype=torch.long)
    positions = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        pad = width - len(prompt)
        ids[row, pad:] = torch.tensor(prompt)
        mask[row, prefix_len : prefix_len + pad] = 0
        positions[row, pad:] = torch.arange(prefix_len, prefix_len + len(prompt))
    return ids, mask, positions


@torch.no_grad()
def _greedy(
    model: Any, prefix: list[int], prompts: Sequence[list[int]], steps: int, pad_id: int
) -> list[list[int]]:
    """Greedy continuations (``steps`` new token ids each) of ``prefix + prompt`` for every prompt."""
    cache = _after_prefix(model, prefix, len(prompts))
    ids, mask, positions = _left_padded(len(prefix), prompts, pad_id)
    out = []
    for _ in range(steps):
        logits, cache = _forward(model, cache, input_ids=ids, attention_mask=mask, position_ids=positions)
        ids = logits[:, -1].argmax(-1, keepdim=True)
        out.append(ids)
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
    return torch.cat(out, dim=1).tolist()


@torch.no_grad()
def _argmax_next(model: Any, prefix: list[int], texts: Sequence[list[int]], pad_id: int) -> list[list[int]]:
    """For each ``prefix + text``, the greedy prediction of every token of ``text`` after its first."""
    cache = _after_prefix(model, prefix, len(texts))
    ids, mask, positions = _left_padded(len(prefix), texts, pad_id)
    logits, _ = _forward(model, cache, input_ids=ids, attention_mask=mask, position_ids=positions)
    predicted = logits.argmax(-1)
    return [predicted[row, ids.shape[1] - len(text) : -1].tolist() for row, text in enumerate(texts)]


def _batched(
    fn: Any, model: Any, prefix: list[int], items: Sequence[list[int]], batch_size: int, *args: Any
) -> list:
    return [
        row
        for i in range(0, len(items), batch_size)
        for row in fn(model, prefix, items[i : i + batch_size], *args)
    ]


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _qa(
    model: Any, tokenizer: Any, qa: list[dict[str, str]], icl: list[dict[str, str]], batch_size: int
) -> dict[str, float]:
    """Greedy recall of each answer, read off one teacher-forced pass.

    Greedy decoding reproduces the answer exactly when, at every answer token, the most likely next
    token is that token: so one forward pass over prompt + answer + blank line decides exact match,
    with no decoding loop. An answer counts if its tokens and then a line break or ``</s>`` are argmax.
    """
    # The world's tokenizer splits after "\n\n", so tokens(prefix + question) = tokens(prefix) + tokens(question).
    prefix = [tokenizer.bos_token_id] + (
        _ids(tokenizer, ["".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)])[0]
        if icl
        else []
    )
    prompts = _ids(tokenizer, [f"Question: {r['question']}\nAnswer: " for r in qa])
    answers = _ids(tokenizer, [r["answer"] for r in qa])
    newline = _ids(tokenizer, ["\n\n"])[0]
    # An answer ends at a line break (the next pair follows) or at </s> (the digest ends).
    ends = {i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith("\n")} | {
        tokenizer.eos_token_id
    }
    texts = [p + a + newline for p, a in zip(prompts, answers)]
    predicted = _batched(_argmax_next, model, prefix, texts, batch_size, tokenizer.pad_token_id)
    exact, token_acc = [], []
    for prompt, answer, pred in zip(prompts, answers, predicted):
        # pred[k] predicts token k + 1 of the text; the answer starts at token len(prompt).
        hits = [pred[len(prompt) - 1 + k] == t for k, t in enumerate(answer)]
        exact.append(all(hits) and pred[len(prompt) - 1 + len(answer)] in ends)
        token_acc.append(sum(hits) / len(answer))
    return {"qa_exact": sum(exact) / len(qa), "qa_token_acc": sum(token_acc) / len(qa)}


def _verbatim(model: Any, tokenizer: Any, items: list[tuple[str, str]], batch_size: int) -> dict[str, float]:
    truths = _ids(tokenizer, [gt for _, gt in items])
    prompts = _ids(tokenizer, [p for p, _ in items])
    generated = _batched(
        _greedy,
        model,
        [tokenizer.bos_token_id],
        prompts,
        batch_size,
        max(map(len, truths)),
        tokenizer.pad_token_id,
    )
    token_acc = [
        sum(g == t for g, t in zip(gen, truth)) / len(truth) for gen, truth in zip(generated, truths)
    ]
    rouge = [
        rouge_l_f1(tokenizer.decode(gen[: len(truth)], skip_special_tokens=True), gt)
        for gen, truth, (_, gt) in zip(generated, truths, items)
    ]
    return {"verbatim_token_acc": sum(token_acc) / len(items), "verbatim_rougeL": sum(rouge) / len(items)}


def _data_dir(world: Any) -> Path:
    return Path(getattr(world, "data", world))


def _quantized(model: Any, deployment: Any) -> Any:
    """A copy of ``model`` with ``deployment``'s weights (``model`` itself at full precision). Weight-only:
    the manifest's ``int8`` is LLM.int8's int8 weights without its activation quantization, as the world
    has recorded it since its first version."""
    if deployment.scheme is None:
        return model
    from lit_unlearn.deployment import quantize_model_

    clone = copy.deepcopy(model)
    quantize_model_(clone, deployment)
    return clone


def knowledge_report(
    model: Any,
    tokenizer: Any,
    world: Any,
    schemes: Sequence[str] = PRECISIONS,
    max_items: int | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, dict[str, float]]]:
    """Recall of the world's forget and retain facts by ``model``, at each precision in ``schemes``.

    Args:
        model: A causal LM (the world's target or retrain model, or an unlearned one). Not modified:
            each quantized precision is measured on a copy.
        tokenizer: The world's tokenizer.
        world: A :class:`~lit_unlearn.world.WorldPaths` or the path of the world's dataset directory.
        schemes: ``"fp32"`` or ``"full"`` (as is) and/or precisions of :meth:`lit_unlearn.deployment.Deployment.parse`
            (``"int8"``, ``"nf4"``, ``"fp4"``, ``"int4"``, ...): each ``nn.Linear`` but the output head
            is fake-quantized.
        max_items: Use only the first ``max_items`` questions / documents of each set (None: all).
        batch_size: Prompts per generation batch.

    Returns:
        ``{scheme: {"forget" | "retain": {"qa_exact", "qa_token_acc", "verbatim_token_acc",
        "verbatim_rougeL"}}}``, every value in [0, 1].

    Raises:
        ValueError: for an empty ``schemes`` or an unknown scheme name (before any generation).
    """
    if not schemes:
        raise ValueError(f"`schemes` is empty; give some of {list(PRECISIONS)}.")
    from lit_unlearn.deployment import FULL, Deployment

    # Parsed once, before any generation, and passed whole. "fp32" is the world's name for full precision
    # (the manifest's key), mapped here alone.
    deployments = {scheme: Deployment.parse(FULL if scheme == "fp32" else scheme, what="schemes") for scheme in schemes}
    data_dir = _data_dir(world)
    cap = slice(None, max_items)
    sets = {
        "forget": (
            _read(data_dir, "knowmem", "forget_qa")[cap],
            _read(data_dir, "knowmem", "forget_qa_icl"),
            [(r["prompt"], r["gt"]) for r in _read(data_dir, "verbmem", "forget")[cap]],
        ),
        "retain": (
            _read(data_dir, "knowmem", "retain_qa")[cap],
            _read(data_dir, "knowmem", "retain_qa_icl"),
            [split_continuation(r["text"]) for r in _read(data_dir, "privleak", "retain")[cap]],
        ),
    }
    was_training = model.training
    model.eval()
    report: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with on_idle_threads():
            for scheme in schemes:
                quantized = _quantized(model, deployments[scheme])
                report[scheme] = {
                    name: {
                        **_qa(quantized, tokenizer, qa, icl, batch_size),
                        **_verbatim(quantized, tokenizer, docs, batch_size),
                    }
                    for name, (qa, icl, docs) in sets.items()
                }
    finally:
        model.train(was_training)
    return {s: {k: {m: round(v, 4) for m, v in d.items()} for k, d in r.items()} for s, r in report.items()}


def world_report(
    world: Any, schemes: Sequence[str] = PRECISIONS, max_items: int | None = None
) -> dict[str, Any]:
    """:func:`knowledge_report` of the world's target and retrain models: ``{"target": ..., "retrain": ...}``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer)
    return {
        name: knowledge_report(
            AutoModelForCausalLM.from_pretrained(getattr(world, name), dtype=torch.float32),
            tokenizer,
            world,
            schemes,
            max_items,
        )
        for name in ("target", "retrain")
    }
