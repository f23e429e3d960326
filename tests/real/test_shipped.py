"""The benchmark shipped as `real:smollm2-data` is consistent with its probe and readable by the package."""

import json

import pytest

from lit_unlearn.data.sources import TextSource, load_texts
from lit_unlearn.real import DATA_DIR, SPLITS, is_correct, load_benchmark
from lit_unlearn.real.pool import candidate_pool


@pytest.fixture(scope="module")
def shipped():
    return load_benchmark("real:smollm2-data")


def test_every_kept_question_was_answered_correctly_by_the_probe(shipped):
    stored = {row["id"]: row for row in shipped.probe["verdicts"]}
    pool = {item.id: item for item in candidate_pool()}
    assert set(stored) == set(pool), "probe.json must record every candidate question"
    for item in shipped.items:
        row = stored[item.id]
        assert row["kept"] and row["correct"]
        assert item == pool[item.id], "questions.jsonl must match the candidate pool; rebuild the benchmark"
    # Every stored verdict follows from the stored reply under today's matching rules, rivals included.
    for row in stored.values():
        item = pool[row["id"]]
        assert row["correct"] == is_correct(item.question, row["reply"], item.answers, item.rivals), row["id"]
    dropped = [row for row in stored.values() if not row["kept"]]
    assert dropped and all(not r["correct"] or r["split"] in ("paraphrase", "neighbour") for r in dropped)


def test_paraphrases_and_neighbours_belong_to_kept_forget_facts(shipped):
    forget_ids = {item.id for item in shipped.split("forget")}
    forget_entities = {item.entity for item in shipped.split("forget")}
    assert all(item.parent in forget_ids for item in shipped.split("paraphrase"))
    assert all(item.entity in forget_entities for item in shipped.split("neighbour"))
    # Paraphrases are asked in words the training texts never use.
    texts = " ".join(shipped.texts("forget")).lower()
    assert all(item.question.lower().rstrip("?.") not in texts for item in shipped.split("paraphrase"))


def test_counts_match_the_probe_and_the_brief(shipped):
    counts = shipped.counts()
    assert counts == shipped.probe["kept"]
    assert 20 <= counts["forget"] <= 37 and all(counts[s] > 0 for s in SPLITS)
    assert 150 <= sum(counts.values()) <= 274


def test_training_texts_load_through_the_data_sources(shipped):
    forget = load_texts(TextSource("real:smollm2-data/forget.jsonl"))
    retain = load_texts(TextSource("real:smollm2-data/retain.jsonl"))
    assert forget == shipped.texts("forget") and retain == shipped.texts("retain")
    assert not set(forget) & set(retain)


def test_muse_layout_serves_the_evaluation(shipped):
    from lit_unlearn.evaluation import EvalData

    data = EvalData.load("real:smollm2-data")
    assert [qa.question for qa in data.knowmem_forget] == [i.question for i in shipped.split("forget")]
    assert [qa.question for qa in data.knowmem_retain] == [i.question for i in shipped.split("retain")]
    assert len(data.verbmem_forget) == len(shipped.split("forget"))


def test_probe_records_the_model_file_and_settings(shipped):
    probe = json.loads((DATA_DIR / "probe.json").read_text(encoding="utf-8"))
    assert probe["model"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(probe["model"]["sha256"]) == 64
    assert probe["settings"]["decoding"] == "greedy" and probe["settings"]["torch_threads"] == 1
