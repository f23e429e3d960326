"""The MUSE evaluation sets, loaded from any source in MUSE's layout.

MUSE's Hugging Face datasets (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``), a local copy of
them, and the embedded toy world (``world:data``) share one layout; the evaluation reads:

==========  ===========================================  =====================
config      splits                                       fields
==========  ===========================================  =====================
verbmem     forget                                       prompt, gt
knowmem     forget_qa, forget_qa_icl,                    question, answer
            retain_qa, retain_qa_icl
privleak    forget, holdout                              text
==========  ===========================================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from lit_unlearn.data.sources import load_split

__all__ = ["MUSE_LAYOUT", "QA", "Continuation", "EvalData"]

# (config, split) → fields the evaluation reads.
MUSE_LAYOUT: dict[tuple[str, str], tuple[str, ...]] = {
    ("verbmem", "forget"): ("prompt", "gt"),
    ("knowmem", "forget_qa"): ("question", "answer"),
    ("knowmem", "forget_qa_icl"): ("question", "answer"),
    ("knowmem", "retain_qa"): ("question", "answer"),
    ("knowmem", "retain_qa_icl"): ("question", "answer"),
    ("privleak", "forget"): ("text",),
    ("privleak", "holdout"): ("text",),
}


class Continuation(NamedTuple):
    """A VerbMem item: a forget-set excerpt and its true continuation."""

    prompt: str
    gt: str


class QA(NamedTuple):
    """A KnowMem item (or in-context example): a question and its reference answer."""

    question: str
    answer: str


def _layout_help() -> str:
    return "; ".join(f"{c}/{s}: {', '.join(f)}" for (c, s), f in MUSE_LAYOUT.items())


def _read(path: str, config: str, split: str) -> list[dict[str, Any]]:
    expected = MUSE_LAYOUT[(config, split)]
    try:
        dataset = load_split(path, config, split)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(
            f"Evaluation data {path!r} has no split {split!r} in config {config!r} ({err}). MUSE evaluation "
            f"expects the MUSE layout (config/split: fields): {_layout_help()}. Point `data` at a "
            "MUSE-layout dataset: a hub id such as 'muse-bench/MUSE-News', a local copy of one, or "
            "'world:data'."
        ) from err
    missing = [f for f in expected if f not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Evaluation data {path!r} config {config!r} split {split!r} lacks field(s) {missing}; it has "
            f"{sorted(dataset.column_names)}, and MUSE evaluation expects {list(expected)} there. Rename the "
            "columns of that split to the MUSE names."
        )
    return [{f: str(row[f]) for f in expected} for row in dataset]


@dataclass
class EvalData:
    """Everything the MUSE evaluation reads, as plain Python lists.

    Attributes:
        verbmem_forget: VerbMem items (prompt, true continuation) from the forget set.
        knowmem_forget: KnowMem questions about the forget set.
        knowmem_forget_icl: In-context examples prefixed to every forget question.
        knowmem_retain: KnowMem questions about the retain set (MUSE's utility).
        knowmem_retain_icl: In-context examples prefixed to every retain question.
        privleak_forget: Forget-set texts (members) for the Min-K% attack.
        privleak_holdout: Texts never trained on (non-members) for the Min-K% attack.
        source: Where the data came from, for messages.
    """

    verbmem_forget: list[Continuation]
    knowmem_forget: list[QA]
    knowmem_forget_icl: list[QA]
    knowmem_retain: list[QA]
    knowmem_retain_icl: list[QA]
    privleak_forget: list[str]
    privleak_holdout: list[str]
    source: str = field(default="", compare=False)

    # In-context examples are the same prompt prefix for every item: never capped or sharded.
    _ITEM_SETS = ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget", "privleak_holdout")

    @classmethod
    def load(cls, path: str = "world:data", max_items: int | None = None) -> EvalData:
        """Read the MUSE evaluation sets from ``path``.

        Args:
            path: A Hugging Face dataset id (``muse-bench/MUSE-News``), a local dataset directory in MUSE
                layout, or ``world:data`` for the embedded toy world.
            max_items: Keep only the first ``max_items`` items of each evaluated set (in-context examples
                are kept whole); ``None`` keeps everything.

        Raises:
            ValueError: if a config, split or field is missing (the message names it and the expected
                layout), a set is empty, or ``max_items`` is not a positive integer.
        """
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
        ):
            raise ValueError(
                f"`max_items`={max_items!r} must be a positive integer, or None to keep every item."
            )
        verbmem = _read(path, "verbmem", "forget")
        qa = {
            s: _read(path, "knowmem", s) for s in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")
        }
        privleak = {s: _read(path, "privleak", s) for s in ("forget", "holdout")}
        data = cls(
            verbmem_forget=[Continuation(r["prompt"], r["gt"]) for r in verbmem],
            knowmem_forget=[QA(r["question"], r["answer"]) for r in qa["forget_qa"]],
            knowmem_forget_icl=[QA(r["question"], r["answer"]) for r in qa["forget_qa_icl"]],
            knowmem_retain=[QA(r["question"], r["answer"]) for r in qa["retain_qa"]],
            knowmem_retain_icl=[QA(r["question"], r["answer"]) for r in qa["retain_qa_icl"]],
            privleak_forget=[r["text"] for r in privleak["forget"]],
            privleak_holdout=[r["text"] for r in privleak["holdout"]],
            source=path,
        )
        for name in cls._ITEM_SETS:
            if not getattr(data, name):
                raise ValueError(
                    f"Evaluation set {name!r} of {path!r} is empty; MUSE evaluation needs items in it."
                )
        return data.head(max_items) if max_items is not None else data

    def head(self, max_items: int) -> EvalData:
        """The first ``max_items`` items of each evaluated set (in-context examples unchanged)."""
        return self._map(lambda items: items[:max_items])

    def shard(self, rank: int, world_size: int) -> EvalData:
        """Every ``world_size``-th item of each evaluated set, starting at ``rank`` (in-context examples
        unchanged), so ``world_size`` shards partition the data."""
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank`={rank} must be in [0, world_size={world_size}).")
        return self._map(lambda items: items[rank::world_size])

    def sizes(self) -> dict[str, int]:
        """Number of items per set."""
        return {f.name: len(getattr(self, f.name)) for f in fields(self) if f.name != "source"}

    def _map(self, fn) -> EvalData:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({name: fn(values[name]) for name in self._ITEM_SETS})
        return EvalData(**values)
