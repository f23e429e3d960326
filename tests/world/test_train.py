"""Training data for the world's models: digests, packing, schedule."""

from __future__ import annotations

import itertools
import random

import pytest

from lit_unlearn.world.config import get_size
from lit_unlearn.world.corpus import RAW_SPLITS, build_corpus
from lit_unlearn.world.tokenizer import train_tokenizer
from lit_unlearn.world.train import TrainingSet, _schedule, pack_rows


@pytest.fixture(scope="module")
def setup():
    size = get_size("test")
    corpus = build_corpus(size, seed=0)
    tokenizer = train_tokenizer(corpus.texts(*RAW_SPLITS), size.recipe.vocab_size)
    documents, pairs = corpus.training_texts("forget", "retain1")
    return tokenizer, pairs, TrainingSet.from_texts(documents, pairs, tokenizer, max_pairs=7, max_tokens=192)


def test_digests_regroup_every_pair_once_and_tokenize_like_their_text(setup):
    tokenizer, pairs, data = setup
    rng = random.Random(0)
    sizes = []
    for _ in range(5):
        units = data.epoch(rng)
        digests = units[len(data.documents) :]
        texts = [tokenizer.decode(d, skip_special_tokens=True) for d in digests]
        seen = sorted(block for text in texts for block in text.split("\n\n"))
        assert seen == sorted(f"Question: {q}\nAnswer: {a}" for q, a in pairs)
        for digest, text in zip(digests, texts):
            # Exactly what tokenizing the digest as one text gives: the model trains on MUSE's prompt format.
            assert digest == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
            assert len(digest) <= 192
        sizes += [text.count("Question: ") for text in texts]
    assert max(sizes) == 7 and min(sizes) == 1


def test_text_longer_than_a_row_is_refused(setup):
    tokenizer, pairs, _ = setup
    with pytest.raises(ValueError, match="`seq_len`=16"):
        TrainingSet.from_texts(["a long document " * 20], pairs, tokenizer, max_pairs=3, max_tokens=16)


def test_pack_rows_keeps_units_whole_with_trailing_padding():
    units = [[1, 5, 5, 2], [1, 6, 2], [1, 7, 7, 7, 7, 2], [1, 8, 2]]
    rows = pack_rows(units, seq_len=8, pad_id=0, rng=random.Random(0))
    assert rows.shape[1] == 8
    tokens = [t for row in rows.tolist() for t in row if t]
    assert sorted(tokens) == sorted(t for u in units for t in u)
    for row in rows.tolist():
        real = [t for t in row if t]
        assert row[: len(real)] == real  # padding only trails


def test_schedule_warms_up_then_decays_to_the_floor():
    values = [_schedule(s, total=100, warmup=10, min_frac=0.05) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.05, abs=2e-3)
