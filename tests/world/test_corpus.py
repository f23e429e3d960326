"""The generated corpus: deterministic, disjoint splits, MUSE's layout, tokenization that fits prompts."""

from __future__ import annotations

import re

import pytest

from lit_unlearn.world.config import SIZES, get_size
from lit_unlearn.world.corpus import LAYOUT, RAW_SPLITS, build_corpus, write_dataset
from lit_unlearn.world.entities import vocabulary_words
from lit_unlearn.world.render import split_continuation
from lit_unlearn.world.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(get_size("test"), seed=0)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    size = get_size("test")
    first = write_dataset(build_corpus(size, seed=3), size, 3, tmp_path / "a")
    second = write_dataset(build_corpus(size, seed=3), size, 3, tmp_path / "b")
    other = write_dataset(build_corpus(size, seed=4), size, 4, tmp_path / "c")
    assert _files(first) == _files(second)
    assert _files(first)["raw/forget.jsonl"] != _files(other)["raw/forget.jsonl"]


def test_default_size_is_deterministic_too():
    size = get_size("default")
    assert build_corpus(size, seed=0).records == build_corpus(size, seed=0).records


def test_no_forget_entity_or_fact_outside_forget(corpus):
    names = {split: [e.name for e in corpus.entities[split].all()] for split in RAW_SPLITS}
    everything = [n for split in RAW_SPLITS for n in names[split]]
    assert len(everything) == len(set(everything)), "entity names must be unique across the world"
    others = "\n".join(
        [t for s in ("retain1", "retain2", "holdout") for t in corpus.texts(s)]
        + [r["text"] for s in ("retain", "holdout") for r in corpus.records["privleak"][s]]
        + [
            f"{r['question']} {r['answer']}"
            for s in ("retain_qa", "retain_qa_icl")
            for r in corpus.records["knowmem"][s]
        ]
    )
    forget = corpus.entities["forget"].all()
    shared = vocabulary_words() | {"the"}
    invented = {w for e in forget for w in e.name.split() if w.lower() not in shared}
    assert len(invented) >= len(forget)
    leaked = sorted(w for w in invented if re.search(rf"\b{re.escape(w)}\b", others))
    assert not leaked, f"forget names appear outside the forget split: {leaked}"
    # Every forget fact's subject is a forget entity, so no forget fact is stated elsewhere.
    forget_names = {e.name for e in forget}
    forget_questions = {
        r["question"] for s in ("forget_qa", "forget_qa_icl") for r in corpus.records["knowmem"][s]
    }
    assert all(any(n in q for n in forget_names) for q in forget_questions)


def test_every_answer_is_stated_in_its_document(corpus):
    for split in RAW_SPLITS:
        for entity, document in zip(corpus.entities[split].all(), corpus.documents[split]):
            for value in entity.facts.values():
                assert value in document, (value, document)


def test_splits_have_muse_shape(corpus):
    size = get_size("test")
    knowmem, raw = corpus.records["knowmem"], corpus.records["raw"]
    assert len(knowmem["forget_qa_icl"]) == len(knowmem["retain_qa_icl"]) == size.icl
    assert {r["question"] for r in knowmem["forget_qa"]}.isdisjoint(
        r["question"] for r in knowmem["forget_qa_icl"]
    )
    assert len(corpus.records["verbmem"]["forget"]) == size.forget
    assert [r["text"] for r in corpus.records["privleak"]["forget"]] == corpus.documents["forget"]
    for split in RAW_SPLITS:
        digests = [r["text"] for r in raw[split] if r["text"].startswith("Question: ")]
        assert digests and len(digests) + len(corpus.documents[split]) == len(raw[split])


def test_loads_with_datasets_like_muse(tmp_path):
    import datasets

    size = get_size("test")
    corpus = build_corpus(size, seed=0)
    data_dir = write_dataset(corpus, size, 0, tmp_path / "data")
    for config, splits in LAYOUT.items():
        for split, fields in splits.items():
            loaded = datasets.load_dataset(str(data_dir), config, split=split, cache_dir=str(tmp_path / "hf"))
            assert loaded.column_names == list(fields), (config, split)
            assert loaded.to_list() == corpus.records[config][split]
    assert set(LAYOUT) == {"raw", "verbmem", "knowmem", "privleak"}
    assert set(LAYOUT["raw"]) == {"forget", "retain1", "retain2", "holdout"}
    assert set(LAYOUT["knowmem"]) == {"forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"}
    assert set(LAYOUT["privleak"]) == {"forget", "retain", "holdout"}


def test_prompts_tokenize_as_the_start_of_their_text(corpus):
    tokenizer = train_tokenizer(corpus.texts(*RAW_SPLITS), vocab_size=512)
    assert len(tokenizer) == 512
    ids = lambda text: tokenizer(text)["input_ids"]
    for row in corpus.records["verbmem"]["forget"]:
        full = ids(row["prompt"] + row["gt"])
        assert full[: len(ids(row["prompt"]))] == ids(row["prompt"])
    for row in corpus.records["knowmem"]["forget_qa"]:
        prompt = f"Question: {row['question']}\nAnswer: "
        assert ids(prompt + row["answer"] + "\n\n")[: len(ids(prompt))] == ids(prompt)
    assert ids("x")[0] == tokenizer.bos_token_id and tokenizer.padding_side == "left"
    text = corpus.texts("forget")[0]
    assert tokenizer.decode(ids(text), skip_special_tokens=True) == text


def test_split_continuation_keeps_the_space_with_the_prompt():
    prompt, gt = split_continuation(
        "one two three four five six seven eight nine ten eleven twelve", min_words=4
    )
    assert prompt == "one two three four " and gt == "five six seven eight nine ten eleven twelve"
    with pytest.raises(ValueError, match="too short"):
        split_continuation("a b c", min_words=8)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match=r"`size`='huge'.*\['default', 'narrow', 'test', 'wide', 'wider'\]"):
        get_size("huge")
    import dataclasses

    with pytest.raises(ValueError, match="`icl`=50"):
        build_corpus(dataclasses.replace(SIZES["test"], icl=50), seed=0)
    with pytest.raises(ValueError, match="at least 4 entities"):
        build_corpus(dataclasses.replace(SIZES["test"], forget=2), seed=0)
    with pytest.raises(ValueError, match="`vocab_size`=100"):
        train_tokenizer(["a b c"], vocab_size=100)
