"""Build a real-knowledge benchmark: ask a model the candidate pool, keep what it answers correctly.

Keeping rules (so every kept question measures knowledge the model demonstrably has):

- a ``forget`` or ``retain`` item is kept if the model answers it correctly;
- a ``paraphrase`` is kept if it and its forget item are answered correctly;
- a ``neighbour`` is kept if it is answered correctly and its country's forget item is kept (a neighbour
  is a fact about an entity being forgotten).

The directory written (see :mod:`lit_unlearn.real.benchmark`) also holds the MUSE layout, so that
:func:`lit_unlearn.evaluation.evaluate` serves it: VerbMem continues "The capital of X is" with the
capital; KnowMem forget/retain are the kept forget/retain questions with :data:`~lit_unlearn.real.pool.ICL_EXAMPLES`
as in-context pairs; PrivLeak's members are the forget sentences and its non-members sentences about the
neighbour facts. For a pretrained model PrivLeak has no meaning (docs/real_model.md says why).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_unlearn.real.benchmark import PROBE_FILE, QUESTIONS_FILE, UTILITY_FILE, Benchmark
from lit_unlearn.real.matching import __doc__ as _MATCHING_RULES
from lit_unlearn.real.pool import ICL_EXAMPLES, SPLITS, UTILITY_PROSE, Item, candidate_pool
from lit_unlearn.real.probe import MAX_NEW_TOKENS, verdicts

__all__ = ["build_benchmark", "sha256_file"]

# (config, split) of MUSE's layout that the directory carries.
_MUSE_FILES = (
    ("verbmem", "forget"),
    ("knowmem", "forget_qa"),
    ("knowmem", "forget_qa_icl"),
    ("knowmem", "retain_qa"),
    ("knowmem", "retain_qa_icl"),
    ("privleak", "forget"),
    ("privleak", "holdout"),
)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _keep(pool: Sequence[Item], correct: dict[str, bool]) -> list[Item]:
    kept_forget = {item.entity for item in pool if item.split == "forget" and correct[item.id]}
    kept = []
    for item in pool:
        if not correct[item.id]:
            continue
        if item.split == "paraphrase" and not correct.get(item.parent, False):
            continue
        if item.split == "neighbour" and item.entity not in kept_forget:
            continue
        kept.append(item)
    return kept


def _neighbour_text(item: Item) -> str:
    noun = {"language": "official language", "currency": "currency"}.get(item.kind, item.kind)
    return f"The {noun} of {item.entity} is {item.answers[0]}."


def _muse_records(kept: Sequence[Item]) -> dict[tuple[str, str], list[dict[str, str]]]:
    forget = [item for item in kept if item.split == "forget"]
    retain = [item for item in kept if item.split == "retain"]
    icl = [{"question": q, "answer": a} for q, a in ICL_EXAMPLES]
    return {
        ("verbmem", "forget"): [
            {"prompt": item.text.removesuffix(f" {item.answers[0]}."), "gt": f"{item.answers[0]}."} for item in forget
        ],
        ("knowmem", "forget_qa"): [{"question": item.question, "answer": item.answers[0]} for item in forget],
        ("knowmem", "forget_qa_icl"): icl,
        ("knowmem", "retain_qa"): [{"question": item.question, "answer": item.answers[0]} for item in retain],
        ("knowmem", "retain_qa_icl"): icl,
        ("privleak", "forget"): [{"text": item.text} for item in forget],
        ("privleak", "holdout"): [{"text": _neighbour_text(item)} for item in kept if item.split == "neighbour"],
    }


def _readme(model_name: str) -> str:
    lines = ["---", "configs:"]
    configs: dict[str, list[str]] = {}
    for config, split in _MUSE_FILES:
        configs.setdefault(config, []).append(split)
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {config}/{split}.jsonl" for split in splits]
    lines += [
        "---",
        "",
        f"# What {model_name} really knows (lit-unlearn real-knowledge benchmark)",
        "",
        "Public facts the model answered correctly under strict matching (probe.json records every answer).",
        "questions.jsonl: the kept questions; forget.jsonl / retain.jsonl: training sentences; utility.txt:",
        "prose for the utility perplexity. The configs above give the same facts in MUSE's layout.",
        "",
    ]
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def build_benchmark(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    pool: Sequence[Item] | None = None,
    model_file: str | Path | None = None,
    utility_text: str = UTILITY_PROSE,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> Benchmark:
    """Ask ``model`` every question of ``pool``, keep those it answers correctly, write the benchmark.

    Args:
        model: The chat model whose knowledge the benchmark records (e.g. SmolLM2 loaded from ``real:smollm2``).
        tokenizer: Its tokenizer, with a chat template.
        out_dir: Directory to write (created; files of the same names are replaced).
        pool: Candidate questions; ``None`` takes :func:`~lit_unlearn.real.pool.candidate_pool`.
        model_file: The file the model was loaded from; its name, size and SHA-256 go into ``probe.json``.
        utility_text: Prose for the utility perplexity.
        max_new_tokens: Generated tokens per question.

    Returns:
        The kept :class:`Benchmark` (its ``probe`` holds the record written to ``probe.json``).

    Raises:
        ValueError: if ``pool`` has repeated ids, or the model answers no question of some split correctly
            (a benchmark without forget or retain questions measures nothing).
    """
    pool = list(candidate_pool() if pool is None else pool)
    ids = [item.id for item in pool]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"Candidate ids must be unique; repeated: {repeated}.")
    start = time.perf_counter()
    rows = verdicts(model, tokenizer, pool, max_new_tokens)
    seconds = time.perf_counter() - start
    correct = {row["id"]: row["correct"] for row in rows}
    kept = _keep(pool, correct)
    kept_ids = {item.id for item in kept}
    asked = {s: sum(item.split == s for item in pool) for s in SPLITS}
    counts = {s: sum(item.split == s for item in kept) for s in SPLITS}
    empty = [s for s in SPLITS if asked[s] and not counts[s]]
    if empty:
        raise ValueError(
            f"The model answered no question of split(s) {empty} correctly (asked: {asked}); the benchmark "
            "would measure nothing there. Probe a model that knows these facts, or give a `pool` it knows."
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / QUESTIONS_FILE, [item.to_dict() for item in kept])
    for split in ("forget", "retain"):
        _write_jsonl(out / f"{split}.jsonl", [{"text": item.text} for item in kept if item.split == split])
    (out / UTILITY_FILE).write_text(utility_text, encoding="utf-8")
    for (config, split), records in _muse_records(kept).items():
        _write_jsonl(out / config / f"{split}.jsonl", records)
    model_name = Path(model_file).name if model_file else type(model).__name__
    (out / "README.md").write_text(_readme(model_name), encoding="utf-8")

    import transformers

    probe = {
        "model": {
            "file": model_name,
            "bytes": Path(model_file).stat().st_size if model_file else None,
            "sha256": sha256_file(model_file) if model_file else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        },
        "settings": {
            "decoding": "greedy",
            "prompt": "chat template, one user turn, default system prompt",
            "max_new_tokens": max_new_tokens,
            "torch_threads": torch.get_num_threads(),
            "matching": " ".join(_MATCHING_RULES.split("The rules:")[1].split("What the rules")[0].split()),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform()},
        "seconds": round(seconds, 1),
        "asked": asked,
        "correct": {s: sum(correct[item.id] for item in pool if item.split == s) for s in SPLITS},
        "kept": counts,
        "verdicts": [{**row, "kept": row["id"] in kept_ids} for row in rows],
    }
    (out / PROBE_FILE).write_text(json.dumps(probe, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Benchmark(kept, utility_text, out, probe)
