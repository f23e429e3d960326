"""Named sizes of the toy world: how many entities each split holds and how the models are trained.

A size fixes everything that shapes the prepared world (corpus, tokenizer, model, training schedule),
so ``(WORLD_VERSION, size, seed)`` names one world exactly and is the cache key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["SIZES", "TrainRecipe", "WorldSize", "get_size"]


@dataclass(frozen=True)
class TrainRecipe:
    """How the retrain and target models are built and trained (plain AdamW, warmup + cosine).

    The retrain model is trained on the retain splits from scratch; the target model starts from the
    retrain weights and continues on forget + retain. Both therefore saw the retain splits, only the
    target saw the forget split, and the second phase costs far less than a second run from scratch.

    Args:
        hidden_size: Llama hidden size.
        num_layers: Llama decoder layers.
        num_heads: Attention heads (head dim = hidden_size / num_heads).
        intermediate_size: MLP width.
        vocab_size: BPE vocabulary, special tokens included.
        seq_len: Tokens per packed training row; every document and QA digest is shorter than this.
        batch_size: Rows per optimizer step.
        lr: Peak learning rate, reached after warmup.
        warmup_frac: Fraction of the steps spent warming up linearly from 0.
        min_lr_frac: The cosine schedule ends at ``lr * min_lr_frac``.
        weight_decay: AdamW weight decay; 0 because the goal is memorisation.
        retrain_epochs: Passes over the retain texts for the retrain model.
        target_epochs: Passes over forget + retain texts for the target model.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    seq_len: int
    batch_size: int
    lr: float
    warmup_frac: float
    min_lr_frac: float
    weight_decay: float
    retrain_epochs: int
    target_epochs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorldSize:
    """Entity counts per split and the training recipe of one named world size.

    Every split holds its own entities (people, places, organisations, events); facts only link
    entities of the same split, so nothing said about a forget entity appears in another split.

    Args:
        name: The size's name (``default``, ``test``).
        forget: Entities in the forget split.
        retain1: Entities in retain1 (MUSE's retain set for unlearning regularisers).
        retain2: Entities in retain2 (trained on, never given to unlearning; KnowMem retain questions
            and PrivLeak retain texts come from it).
        holdout: Entities never trained on (PrivLeak non-members).
        icl: In-context QA examples per knowmem ``*_icl`` split (MUSE uses 10).
        qa_per_digest: QA pairs per "Question/Answer" digest text in the raw splits.
        recipe: How the models are trained.
    """

    name: str
    forget: int
    retain1: int
    retain2: int
    holdout: int
    icl: int
    qa_per_digest: int
    recipe: TrainRecipe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SIZES: dict[str, WorldSize] = {
    # Fits the 5-minute preparation budget on two shared CPU cores: 173 s measured on one thread at
    # load 1.8 (benchmarks/results/world.md). 32 entities per split give 134 forget and 134 retain
    # questions and 32 VerbMem prompts.
    "default": WorldSize(
        name="default",
        forget=32,
        retain1=32,
        retain2=32,
        holdout=32,
        icl=10,
        qa_per_digest=6,
        recipe=TrainRecipe(
            # seq_len 320 holds MUSE's KnowMem prompt (10 in-context pairs + question, ~255 tokens) plus
            # 32 generated tokens: positions a model never trained on are garbage to it.
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            intermediate_size=512,
            vocab_size=768,
            seq_len=320,
            batch_size=8,
            lr=3e-3,
            warmup_frac=0.05,
            min_lr_frac=0.05,
            weight_decay=0.0,
            retrain_epochs=50,
            target_epochs=30,
        ),
    ),
    # Prepares and trains in seconds; for tests.
    "test": WorldSize(
        name="test",
        forget=8,
        retain1=8,
        retain2=8,
        holdout=8,
        icl=4,
        qa_per_digest=6,
        recipe=TrainRecipe(
            # Batch 4: this world is 8 entities per split, and memorisation needs optimizer steps.
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            vocab_size=512,
            seq_len=192,
            batch_size=4,
            lr=5e-3,
            warmup_frac=0.05,
            min_lr_frac=0.05,
            weight_decay=0.0,
            retrain_epochs=40,
            target_epochs=30,
        ),
    ),
}


def _width(name: str, hidden_size: int) -> WorldSize:
    """The default world's corpus and schedule with another model width (heads of 32 dimensions, MLP 4x),
    for measuring how survival moves with model size on the same data (scripts/reversion_map.py)."""
    default = SIZES["default"]
    recipe = replace(default.recipe, hidden_size=hidden_size, num_heads=hidden_size // 32,
                     intermediate_size=4 * hidden_size)
    return replace(default, name=name, recipe=recipe)


SIZES["narrow"] = _width("narrow", 64)
SIZES["wide"] = _width("wide", 256)
SIZES["wider"] = _width("wider", 384)


def get_size(size: str) -> WorldSize:
    """The named world size.

    Raises:
        ValueError: if ``size`` is not one of :data:`SIZES`.
    """
    if size not in SIZES:
        raise ValueError(f"Unknown world `size`={size!r}. Choose one of {sorted(SIZES)}.")
    return SIZES[size]
