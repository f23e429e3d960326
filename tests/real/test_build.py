"""The builder and the scorer on a tiny chat Llama trained here to know some facts and not others."""

import json
import math

import pytest
import torch
from tests.conftest import build_tiny_llama, build_tokenizer

from lit_unlearn.real import Item, build_benchmark, kept_share, load_benchmark, score
from lit_unlearn.real.probe import ask, perplexity

TEMPLATE = (
    "{% for message in messages %}Q: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}"
)

POOL = [
    Item("forget/france", "forget", "capital", "France", "What is the capital of France?", ("Paris",),
         "The capital of France is Paris."),
    Item("forget/spain", "forget", "capital", "Spain", "What is the capital of Spain?", ("Madrid",),
         "The capital of Spain is Madrid."),
    # Accepts only a spelling the model never saw, so the model (which learns "Rome" from the taught
    # paraphrase) cannot know this item: the paraphrase is known while its parent is not.
    Item("forget/italy", "forget", "capital", "Italy", "What is the capital of Italy?", ("Roma",),
         "The capital of Italy is Roma."),
    Item("paraphrase/france", "paraphrase", "rephrase", "France", "Name the capital city of France.", ("Paris",),
         parent="forget/france"),
    Item("paraphrase/italy", "paraphrase", "rephrase", "Italy", "Name the capital city of Italy.", ("Rome",),
         parent="forget/italy"),
    Item("neighbour/france", "neighbour", "currency", "France", "What is the currency of France?", ("euro",)),
    Item("neighbour/italy", "neighbour", "currency", "Italy", "What is the currency of Italy?", ("euro",)),
    Item("retain/gold", "retain", "chemical_symbol", "gold", "What is the chemical symbol for gold?", ("Au",),
         "The chemical symbol for gold is Au."),
    Item("retain/hamlet", "retain", "author", "Hamlet", "Who wrote Hamlet?", ("Shakespeare",),
         "Hamlet was written by William Shakespeare."),
]
# Taught: every item but the Italy capital and Hamlet. The Italy paraphrase and neighbour are answered
# correctly yet must be dropped: their country's forget fact is not known.
TAUGHT = {"forget/france", "forget/spain", "paraphrase/france", "paraphrase/italy", "neighbour/france",
          "neighbour/italy", "retain/gold"}
UTILITY = "The river ran past the old mill, and the miller watched the water turn the wheel all day long."


@pytest.fixture(scope="module")
def chat_model():
    texts = [f"Q: {i.question}\nA: {i.answers[0]}" for i in POOL] + [i.text for i in POOL if i.text] + [UTILITY]
    tokenizer = build_tokenizer(texts * 4)
    tokenizer.chat_template = TEMPLATE
    model = build_tiny_llama(len(tokenizer), seed=0)
    examples = []
    for item in POOL:
        if item.id in TAUGHT:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": item.question}],
                                                   add_generation_prompt=True, return_dict=True)["input_ids"]
            answer = tokenizer(f" {item.answers[0]}", add_special_tokens=False)["input_ids"]
            examples.append((prompt, answer + [tokenizer.eos_token_id]))
    length = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), length), tokenizer.pad_token_id)
    labels = torch.full((len(examples), length), -100)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (prompt, answer) in enumerate(examples):
        seq = prompt + answer
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(prompt) : len(seq)] = torch.tensor(answer)
        mask[row, : len(seq)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, f"the tiny model did not learn its facts (loss {loss.item():.3f})"
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def built(chat_model, tmp_path_factory):
    model, tokenizer = chat_model
    out = tmp_path_factory.mktemp("bench")
    return build_benchmark(model, tokenizer, out, pool=POOL, utility_text=UTILITY, max_new_tokens=6), out


def test_keeps_exactly_what_the_model_knows_under_the_rules(built):
    benchmark, _ = built
    assert [item.id for item in benchmark.items] == [
        "forget/france", "forget/spain", "paraphrase/france", "neighbour/france", "retain/gold"
    ]
    verdicts = {row["id"]: row for row in benchmark.probe["verdicts"]}
    # Answered correctly, yet dropped: the rule fired, not the model.
    assert verdicts["paraphrase/italy"]["correct"] and not verdicts["paraphrase/italy"]["kept"]
    assert verdicts["neighbour/italy"]["correct"] and not verdicts["neighbour/italy"]["kept"]
    assert not verdicts["forget/italy"]["correct"] and not verdicts["retain/hamlet"]["correct"]
    assert benchmark.probe["asked"] == {"forget": 3, "paraphrase": 2, "neighbour": 2, "retain": 2}
    assert benchmark.probe["kept"] == {"forget": 2, "paraphrase": 1, "neighbour": 1, "retain": 1}


def test_writes_training_texts_probe_and_muse_layout(built):
    _, out = built
    forget = [json.loads(line)["text"] for line in (out / "forget.jsonl").read_text().splitlines()]
    assert forget == ["The capital of France is Paris.", "The capital of Spain is Madrid."]
    assert [json.loads(line) for line in (out / "retain.jsonl").read_text().splitlines()] == [
        {"text": "The chemical symbol for gold is Au."}
    ]
    verbmem = [json.loads(line) for line in (out / "verbmem" / "forget.jsonl").read_text().splitlines()]
    assert verbmem[0] == {"prompt": "The capital of France is", "gt": "Paris."}
    probe = json.loads((out / "probe.json").read_text())
    assert probe["settings"]["max_new_tokens"] == 6 and probe["model"]["sha256"] is None

    from lit_unlearn.evaluation import EvalData

    data = EvalData.load(str(out))
    assert data.sizes()["knowmem_forget"] == 2 and data.sizes()["privleak_holdout"] == 1
    assert data.knowmem_retain[0].answer == "Au"


def test_loads_back_as_written(built):
    benchmark, out = built
    loaded = load_benchmark(out)
    assert loaded.items == benchmark.items and loaded.utility_text == UTILITY
    assert loaded.counts() == {"forget": 2, "paraphrase": 1, "neighbour": 1, "retain": 1}
    assert loaded.texts("forget")[1] == "The capital of Spain is Madrid."


def test_scores_the_model_it_was_built_from_at_100(chat_model, built):
    model, tokenizer = chat_model
    results = score(model, tokenizer, built[0], max_new_tokens=6, details=True)
    assert {k: results[k] for k in ("forget_acc", "paraphrase_acc", "neighbour_acc", "retain_acc")} == {
        "forget_acc": 100.0, "paraphrase_acc": 100.0, "neighbour_acc": 100.0, "retain_acc": 100.0
    }
    # Perplexity by hand: next-token cross-entropy over the whole text, exponentiated.
    ids = tokenizer(UTILITY, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    expected = math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    assert results["utility_ppl"] == pytest.approx(expected, rel=1e-5) and results["utility_ppl"] > 1.0
    assert len(results["verdicts"]) == 5


def test_scores_a_damaged_model_lower_and_restores_nothing_it_did_not_touch(chat_model, built):
    model, tokenizer = chat_model
    before = ask(model, tokenizer, ["What is the capital of France?"], 6)
    head = model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.mul_(-1.0)  # reverses every preference of the output layer
        results = score(model, tokenizer, built[0], max_new_tokens=6)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert results["forget_acc"] < 100.0 and results["retain_acc"] < 100.0
    assert ask(model, tokenizer, ["What is the capital of France?"], 6) == before


def test_scores_a_fake_quantized_deployment_and_restores_the_weights(chat_model, built):
    model, tokenizer = chat_model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    results = score(model, tokenizer, built[0], precision="int8", max_new_tokens=6)
    assert math.isfinite(results["utility_ppl"]) and 0.0 <= results["forget_acc"] <= 100.0
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_model_knowing_nothing_of_a_split_is_refused(chat_model, tmp_path):
    model, tokenizer = chat_model
    # The model knows the France capital but not Hamlet's author: the retain split would be empty.
    with pytest.raises(ValueError, match=r"no question of split\(s\) \['retain'\]"):
        build_benchmark(model, tokenizer, tmp_path, pool=[POOL[0], POOL[8]], max_new_tokens=6)
    with pytest.raises(ValueError, match=r"unique; repeated: \['forget/france'\]"):
        build_benchmark(model, tokenizer, tmp_path, pool=[POOL[0], POOL[7], POOL[0]], max_new_tokens=6)


def test_perplexity_refuses_a_text_longer_than_the_context(chat_model):
    model, tokenizer = chat_model
    with pytest.raises(ValueError, match="perplexity needs 2 to 128"):
        perplexity(model, tokenizer, UTILITY * 20)


def test_a_tokenizer_without_chat_template_is_refused(chat_model):
    model, _ = chat_model
    plain = build_tokenizer(["a b c"] * 10)
    with pytest.raises(ValueError, match="no chat template"):
        ask(model, plain, ["What is the capital of France?"])


def test_results_table_shows_the_benchmark_columns(chat_model, built):
    from lit_unlearn.evaluation import ResultsTable
    from lit_unlearn.real import COLUMNS

    model, tokenizer = chat_model
    table = ResultsTable(columns=COLUMNS)
    table.add("original", "full", score(model, tokenizer, built[0], max_new_tokens=6))
    header, _, row = table.to_markdown().splitlines()
    assert header == "| Method | Precision | Forget ↓ | Paraphrase ↓ | Neighbour ↑ | Retain ↑ | Utility PPL ↓ |"
    assert row.startswith("| original | full | 100.00 | 100.00 | 100.00 | 100.00 | ")
    # The MUSE columns stay the default.
    assert ResultsTable().to_markdown().startswith("| Method | Precision | VerbMem ↓")


def test_kept_share_of_forgetting():
    assert kept_share(original=100.0, full=20.0, quantized=20.0) == 1.0
    assert kept_share(original=100.0, full=20.0, quantized=100.0) == 0.0
    assert kept_share(original=100.0, full=20.0, quantized=60.0) == 0.5
    with pytest.raises(ValueError, match="No forgetting to keep"):
        kept_share(original=80.0, full=80.0, quantized=50.0)


def test_batched_questions_get_the_replies_asked_alone(chat_model):
    # Left padding with its attention mask: each row's greedy reply is the one it gets alone (questions of
    # different lengths, so padding is exercised); a bad batch size names the argument.
    from lit_unlearn.real import ask

    model, tokenizer = chat_model
    questions = [item.question for item in POOL]
    alone = ask(model, tokenizer, questions, max_new_tokens=6)
    lengths = {len(tokenizer.apply_chat_template([{"role": "user", "content": q}], return_dict=True)["input_ids"])
               for q in questions}
    assert len(lengths) > 1
    assert ask(model, tokenizer, questions, max_new_tokens=6, batch_size=3) == alone
    with pytest.raises(ValueError, match="`batch_size`=0"):
        ask(model, tokenizer, questions, batch_size=0)


def test_real_map_pipeline_on_a_tiny_gguf_fills_a_new_precision_from_the_saved_update(chat_model, built, tmp_path):
    """scripts/real_map.py end to end (--smoke: two steps per run) on the tiny chat model shipped as Q4_1 with
    its benchmark; asked again for one more precision, it scores the stored run's saved update there
    without fitting again."""
    from pathlib import Path

    from tests.conftest import load_script

    from lit_unlearn.gguf_io import write_gguf

    model, tokenizer = chat_model
    gguf = tmp_path / "tiny.q4_1.gguf"
    write_gguf(model, tokenizer, gguf, "q4_1")
    real_map = load_script(Path(__file__).parents[2] / "scripts" / "real_map.py", "real_map")
    args = ["--smoke", "--model", str(gguf), "--data", str(built[1]), "--out", str(tmp_path / "map"),
            "--cells", "lora_npo_gdr_0.0007_30", "--seeds", "0", "--batch-size", "4", "--min-forgetting", "0"]
    first = real_map.main([*args, "--precisions", "full", "q4_1", "--candidates", "amplify:2"])
    (run,) = first["runs"]
    assert run["steps"] == 2 and set(run["scores"]) == {"full", "q4_1"} and "amplify:2" in run["candidates"]
    assert (tmp_path / "map" / "lora_npo_gdr_0.0007_30" / "seed0" / "delta.safetensors").is_file()
    assert "| lora npo_gdr, lr 0.0007, 30 steps | 1 |" in first["markdown"]
    assert "| lora npo_gdr, lr 0.0007, 30 steps | 1 |" in first["readme"]

    second = real_map.main([*args, "--precisions", "full", "q4_1", "int8", "--candidates"])
    (again,) = second["runs"]
    assert again["fit_s"] == run["fit_s"]  # nothing refitted
    assert set(again["scores"]) == {"full", "q4_1", "int8"} and set(again["kept"]) == {"q4_1", "int8"}
    assert again["scores"]["q4_1"] == run["scores"]["q4_1"]
    for split in ("forget", "paraphrase", "neighbour", "retain"):
        assert 0.0 <= again["scores"]["int8"][f"{split}_acc"] <= 100.0


def test_real_map_adds_a_tied_head_and_embeddings_update_once():
    """A tied head and embedding are one tensor under two state-dict keys, and a full-parameter run's ``ΔW``
    names both: the deploy-time candidates must hold ``W0 + ΔW`` there, not ``W0 + 2ΔW``."""
    from pathlib import Path

    from tests.conftest import load_script
    from transformers import LlamaConfig, LlamaForCausalLM

    real_map = load_script(Path(__file__).parents[2] / "scripts" / "real_map.py", "real_map")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True)).eval()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    d = torch.randn(64, 32) * 1e-2
    proj = torch.randn(32, 32) * 1e-2
    delta = {"lm_head.weight": d, "model.embed_tokens.weight": d, "model.layers.0.self_attn.q_proj.weight": proj}
    for candidate in ("amplify:1", "floor:0.01"):
        model = real_map.with_update(base, delta, candidate)
        torch.testing.assert_close(model.model.embed_tokens.weight, base.model.embed_tokens.weight + d,
                                   rtol=0, atol=1e-7)
    amplified = real_map.with_update(base, delta, "amplify:3")
    torch.testing.assert_close(amplified.model.layers[0].self_attn.q_proj.weight,
                               base.model.layers[0].self_attn.q_proj.weight + 3 * proj, rtol=0, atol=1e-7)


def test_real_map_refit_recovers_an_update_only_when_it_reproduces_the_stored_run(chat_model, built, tmp_path):
    """``--refit``: a stored run without its ``ΔW`` is fitted again; the update is kept (and a new precision
    scored from it) when the refit's full-precision scores are the stored ones, and refused when they differ."""
    import json
    from pathlib import Path

    from tests.conftest import load_script

    from lit_unlearn.gguf_io import write_gguf

    model, tokenizer = chat_model
    gguf = tmp_path / "tiny.q4_1.gguf"
    write_gguf(model, tokenizer, gguf, "q4_1")
    real_map = load_script(Path(__file__).parents[2] / "scripts" / "real_map.py", "real_map")
    args = ["--smoke", "--model", str(gguf), "--data", str(built[1]), "--out", str(tmp_path / "map"),
            "--cells", "full_npo_gdr_1e-05_30", "--seeds", "0", "--batch-size", "4", "--min-forgetting", "0",
            "--candidates"]
    real_map.main([*args, "--precisions", "full", "q4_1"])
    run_dir = tmp_path / "map" / "full_npo_gdr_1e-05_30" / "seed0"
    (run_dir / "delta.safetensors").unlink()  # an early run that kept only its scores

    (again,) = real_map.main([*args, "--precisions", "full", "q4_1", "int8", "--refit"])["runs"]
    assert [r["reproduced"] for r in again["refits"]] == [True]
    assert (run_dir / "delta.safetensors").is_file() and "int8" in again["scores"]

    (run_dir / "delta.safetensors").unlink()
    stored = json.loads((run_dir / "result.json").read_text())
    stored["scores"]["full"]["retain_acc"] += 1.0  # not the run a refit reproduces
    (run_dir / "result.json").write_text(json.dumps(stored))
    (other,) = real_map.main([*args, "--precisions", "full", "q4_1", "int8", "nf4", "--refit"])["runs"]
    assert [r["reproduced"] for r in other["refits"]] == [True, False]
    assert not (run_dir / "delta.safetensors").is_file() and "nf4" not in other["scores"]
