"""``Benchmark``: the built questions, training texts and utility prose, read from a benchmark directory.

A benchmark directory (``real:smollm2-data``, written by :func:`~lit_unlearn.real.build_benchmark`) holds:

=====================  ==========================================================================
file                   content
=====================  ==========================================================================
questions.jsonl        every kept question: id, split, kind, entity, question, answers, text, parent
forget.jsonl           ``{"text"}`` training sentences of the forget facts (for the forget loss)
retain.jsonl           ``{"text"}`` training sentences of the retain facts (for the retain loss)
utility.txt            plain prose for the utility perplexity
probe.json             the probe: model file and SHA-256, settings, every asked question's answer/verdict
README.md + configs    MUSE layout (verbmem, knowmem, privleak) so ``evaluate`` reads it as well
=====================  ==========================================================================
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_unlearn.real.pool import SPLITS, Item

__all__ = ["Benchmark", "load_benchmark"]

QUESTIONS_FILE = "questions.jsonl"
UTILITY_FILE = "utility.txt"
PROBE_FILE = "probe.json"


@dataclass
class Benchmark:
    """Kept questions of a real-knowledge benchmark, with the utility prose.

    Attributes:
        items: The kept questions, in order (forget, paraphrase, neighbour, retain).
        utility_text: Plain prose about none of the facts; its perplexity is the utility measure.
        root: The directory it was read from (``None`` for one built in memory).
        probe: The probe record (``probe.json``), if present.
    """

    items: list[Item]
    utility_text: str
    root: Path | None = None
    probe: dict[str, Any] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[Item]:
        """The items of split ``name`` (one of :data:`~lit_unlearn.real.pool.SPLITS`).

        Raises:
            ValueError: for an unknown split name.
        """
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}. Choose one of {list(SPLITS)}.")
        return [item for item in self.items if item.split == name]

    def counts(self) -> dict[str, int]:
        """Number of kept items per split."""
        counter = Counter(item.split for item in self.items)
        return {name: counter.get(name, 0) for name in SPLITS}

    def texts(self, split: str) -> list[str]:
        """Training sentences of the ``forget`` or ``retain`` split."""
        if split not in ("forget", "retain"):
            raise ValueError(f"Only the forget and retain splits have training texts, not {split!r}.")
        return [item.text for item in self.split(split)]


def load_benchmark(path: str | Path = "real:smollm2-data") -> Benchmark:
    """Read a benchmark directory (default: SmolLM2's, shipped in the package).

    Raises:
        FileNotFoundError: if the directory or its ``questions.jsonl`` / ``utility.txt`` is missing.
        ValueError: if a split has no questions.
    """
    from lit_unlearn.data.sources import resolve_path

    root = Path(resolve_path(str(path))).expanduser()
    questions = root / QUESTIONS_FILE
    if not questions.is_file() or not (root / UTILITY_FILE).is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not a benchmark directory: it lacks {QUESTIONS_FILE} or {UTILITY_FILE}. Give "
            "'real:smollm2-data' or a directory written by scripts/build_real_benchmark.py."
        )
    items = [Item.from_dict(json.loads(line)) for line in questions.read_text(encoding="utf-8").splitlines() if line]
    probe_path = root / PROBE_FILE
    probe = json.loads(probe_path.read_text(encoding="utf-8")) if probe_path.is_file() else {}
    benchmark = Benchmark(items, (root / UTILITY_FILE).read_text(encoding="utf-8"), root, probe)
    empty = [name for name, n in benchmark.counts().items() if n == 0]
    if empty:
        raise ValueError(f"Benchmark {str(root)!r} has no questions in split(s) {empty}; rebuild it.")
    return benchmark
