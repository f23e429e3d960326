"""The toy world's corpus, written as a local Hugging Face dataset repository in MUSE's layout.

``datasets.load_dataset(str(data_dir), "raw", split="forget")`` reads it exactly as it reads
``muse-bench/MUSE-News``:

=========  ==============================================  ================
config     splits                                          fields
=========  ==============================================  ================
raw        forget, retain1, retain2, holdout               text
verbmem    forget                                          prompt, gt
knowmem    forget_qa, forget_qa_icl, retain_qa,            question, answer
           retain_qa_icl
privleak   forget, retain, holdout                         text
=========  ==============================================  ================

Choices, and why:

* A raw split holds one news document per entity *and* "Question: q / Answer: a" digests of the
  split's facts. The models train on exactly this content (the QA pairs regrouped into fresh digests
  each epoch, see ``train.TrainingSet``), so ``raw/forget`` holds everything the target ever saw
  about the forget entities: unlearning it can be complete. (A model this small, trained from scratch,
  does not learn to answer questions from documents alone.)
* ``retain1`` is the unlearning regulariser's retain set (as in MUSE's scripts); KnowMem retain
  questions and PrivLeak retain texts come from ``retain2``, trained on but never shown to unlearning,
  so utility is measured on knowledge that the regulariser does not rehearse.
* PrivLeak and VerbMem use the news documents only, as MUSE does.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_unlearn.world.config import WorldSize
from lit_unlearn.world.entities import SplitEntities, build_world
from lit_unlearn.world.render import render_document, render_qa, render_qa_digest, split_continuation

__all__ = ["LAYOUT", "RAW_SPLITS", "Corpus", "build_corpus", "write_dataset"]

RAW_SPLITS = ("forget", "retain1", "retain2", "holdout")

# config → split → fields, as in muse-bench/MUSE-News.
LAYOUT: dict[str, dict[str, tuple[str, ...]]] = {
    "raw": {split: ("text",) for split in RAW_SPLITS},
    "verbmem": {"forget": ("prompt", "gt")},
    "knowmem": {
        s: ("question", "answer") for s in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")
    },
    "privleak": {split: ("text",) for split in ("forget", "retain", "holdout")},
}


@dataclass
class Corpus:
    """Everything generated for one world.

    Attributes:
        entities: Split → its entities (ground truth of every fact).
        documents: Split → one news document per entity, in entity order.
        qa: Split → (question, answer) for every fact of the split, in digest order.
        records: Config → split → rows (dicts with the MUSE field names), ready to write.
    """

    entities: dict[str, SplitEntities]
    documents: dict[str, list[str]]
    qa: dict[str, list[tuple[str, str]]]
    records: dict[str, dict[str, list[dict[str, str]]]]

    def texts(self, *splits: str) -> list[str]:
        """The raw texts of ``splits``: documents and QA digests."""
        return [row["text"] for split in splits for row in self.records["raw"][split]]

    def training_texts(self, *splits: str) -> tuple[list[str], list[tuple[str, str]]]:
        """(documents, QA pairs) of ``splits``: the content of their raw texts, for training."""
        return [d for s in splits for d in self.documents[s]], [p for s in splits for p in self.qa[s]]


def _qa_pairs(entities: SplitEntities, rng: random.Random) -> list[tuple[str, str]]:
    pairs = [pair for entity in entities.all() for pair in render_qa(entity)]
    rng.shuffle(pairs)
    return pairs


def build_corpus(size: WorldSize, seed: int) -> Corpus:
    """Generate the world of ``size`` from ``seed``: the same arguments give byte-identical records."""
    counts = {split: getattr(size, split) for split in RAW_SPLITS}
    entities = build_world(counts, seed)
    # Rendering draws from its own stream so that changing a template never reshuffles the entities.
    rng = random.Random(f"render-{seed}")
    documents: dict[str, list[str]] = {}
    qa: dict[str, list[tuple[str, str]]] = {}
    raw: dict[str, list[dict[str, str]]] = {}
    for split in RAW_SPLITS:
        documents[split] = [render_document(entity, rng) for entity in entities[split].all()]
        qa[split] = _qa_pairs(entities[split], rng)
        step = size.qa_per_digest
        digests = [render_qa_digest(qa[split][i : i + step]) for i in range(0, len(qa[split]), step)]
        raw[split] = [{"text": text} for text in documents[split] + digests]

    def knowmem(split: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        if len(qa[split]) <= size.icl:
            raise ValueError(
                f"Split {split!r} has {len(qa[split])} facts, not more than `icl`={size.icl} in-context "
                "examples. Give the split more entities or use fewer in-context examples."
            )
        rows = [{"question": q, "answer": a} for q, a in qa[split]]
        return rows[size.icl :], rows[: size.icl]

    forget_qa, forget_icl = knowmem("forget")
    retain_qa, retain_icl = knowmem("retain2")
    records = {
        "raw": raw,
        "verbmem": {
            "forget": [dict(zip(("prompt", "gt"), split_continuation(d))) for d in documents["forget"]]
        },
        "knowmem": {
            "forget_qa": forget_qa,
            "forget_qa_icl": forget_icl,
            "retain_qa": retain_qa,
            "retain_qa_icl": retain_icl,
        },
        "privleak": {
            "forget": [{"text": d} for d in documents["forget"]],
            "retain": [{"text": d} for d in documents["retain2"]],
            "holdout": [{"text": d} for d in documents["holdout"]],
        },
    }
    return Corpus(entities, documents, qa, records)


def _readme(size: WorldSize, seed: int) -> str:
    lines = ["---", "configs:"]
    for config, splits in LAYOUT.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {config}/{split}.jsonl" for split in splits]
    lines += [
        "---",
        "",
        f"# lit-unlearn toy world (size {size.name!r}, seed {seed})",
        "",
        "Fictional entities and their facts in MUSE's layout (configs raw, verbmem, knowmem, privleak).",
        "Every split holds its own entities, so no fact of the forget split appears in another split.",
        "Generated by `lit_unlearn.world`; nothing here describes real people, places or events.",
        "",
    ]
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_dataset(corpus: Corpus, size: WorldSize, seed: int, data_dir: str | Path) -> Path:
    """Write ``corpus`` as a dataset repository (README.md with ``configs:`` + one JSONL per split).

    Also writes ``entities.jsonl``: every entity with its split, kind and facts (the ground truth; not
    part of any config).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for config, splits in LAYOUT.items():
        for split in splits:
            _write_jsonl(data_dir / config / f"{split}.jsonl", corpus.records[config][split])
    (data_dir / "README.md").write_text(_readme(size, seed), encoding="utf-8")
    _write_jsonl(
        data_dir / "entities.jsonl",
        [
            {"split": split, "kind": e.kind, "name": e.name, "facts": e.facts}
            for split in RAW_SPLITS
            for e in corpus.entities[split].all()
        ],
    )
    return data_dir
