import pytest
import torch

from lit_unlearn.evaluation import generate_greedy, min_k_scores, truncate_tokens
from lit_unlearn.metrics import min_k_percent_score

PROMPTS = ["alpha beta", "river stone north mayor harbour council bridge", "seven"]


def test_ground_truth_is_cut_to_128_tokens_counting_bos(tokenizer):
    long_text = " ".join(["harbour council bridge seven lantern"] * 60)
    ids = tokenizer(long_text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 200
    cut = truncate_tokens(tokenizer, [long_text, "alpha beta."], 128)
    # Like MUSE's `tokenizer(gt).input_ids[:, :128]`: BOS is one of the 128, so 127 text tokens remain.
    assert cut[0] == tokenizer.decode(ids[1:128])
    assert len(tokenizer(cut[0])["input_ids"]) == 128
    assert long_text.startswith(cut[0])
    assert cut[1] == "alpha beta."


def test_batched_left_padded_generation_equals_one_by_one(llama, tokenizer):
    batched = generate_greedy(llama, tokenizer, PROMPTS, max_new_tokens=4, batch_size=2, progress=False)
    single = [generate_greedy(llama, tokenizer, [p], max_new_tokens=4, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(batched)


def test_generation_returns_only_the_continuation(llama, tokenizer):
    out = generate_greedy(llama, tokenizer, PROMPTS[:1], max_new_tokens=4, progress=False)[0]
    ids = tokenizer(PROMPTS[0])["input_ids"]
    full = llama.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out == tokenizer.decode(full[0, len(ids) :], skip_special_tokens=True)


def test_min_k_scores_match_a_hand_computation(llama, tokenizer):
    texts = PROMPTS + ["lantern orchard market winter"]
    scores = min_k_scores(llama, tokenizer, texts, k=0.4, batch_size=2, progress=False)
    for text, score in zip(texts, scores):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(llama(ids).logits[0, :-1].double(), dim=-1)
        token_logp = logp.gather(-1, ids[0, 1:, None])[:, 0]
        n = token_logp.numel()
        lowest = token_logp.sort().values[: max(1, int(0.4 * n))]
        assert score.item() == pytest.approx(-lowest.mean().item(), abs=1e-5)
        assert score.item() == pytest.approx(min_k_percent_score(token_logp.float()).item(), abs=1e-5)


def test_open_unlearning_min_k_drops_the_last_token_and_cuts_to_2048(llama, tokenizer):
    """open-unlearning's attack: ``tokenwise_logprobs`` leaves the last labelled token out, and
    ``CompletionDataset`` keeps the special prefix plus 2048 tokens (here 5, to make the cut bite)."""
    texts = PROMPTS + ["lantern orchard market winter river stone north"]
    scores = min_k_scores(llama, tokenizer, texts, k=0.4, batch_size=2, progress=False, drop_last=True,
                          max_content_tokens=5)
    prefix = len(tokenizer("")["input_ids"])
    for text, score in zip(texts, scores):
        ids = torch.tensor([tokenizer(text)["input_ids"][: prefix + 5]])
        with torch.no_grad():
            logp = torch.log_softmax(llama(ids).logits[0, :-1].double(), dim=-1)
        token_logp = logp.gather(-1, ids[0, 1:, None])[:-1, 0]  # without the last token's prediction
        lowest = token_logp.sort().values[: max(1, int(0.4 * token_logp.numel()))]
        assert score.item() == pytest.approx(-lowest.mean().item(), abs=1e-5)
    whole = min_k_scores(llama, tokenizer, texts, k=0.4, batch_size=2, progress=False)
    assert not torch.allclose(scores, whole), "the two conventions score differently"
    from lit_unlearn.metrics.conventions import get_convention

    ou, muse = get_convention("open-unlearning"), get_convention("muse")
    assert (ou.min_k_drop_last, ou.min_k_max_tokens) == (True, 2048)
    assert (muse.min_k_drop_last, muse.min_k_max_tokens) == (False, None)


def test_bad_batch_size_and_empty_texts(llama, tokenizer):
    with pytest.raises(ValueError, match="`batch_size`=0 must be a positive integer"):
        generate_greedy(llama, tokenizer, PROMPTS, 2, batch_size=0)
    with pytest.raises(ValueError, match=r"Texts \[1\] encode to fewer than 2 tokens"):
        min_k_scores(llama, tokenizer, ["alpha beta", ""], progress=False)
