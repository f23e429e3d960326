"""ForgetRetainDataModule: every source form, both packings, padding, and the retain loader's presence."""

from __future__ import annotations

import json

import pytest
import torch

from lit_unlearn.data import ForgetRetainDataModule, TextSource, load_texts, tokenize


class _Module:
    """Stands in for the trained module: the DataModule asks it for `needs_retain` only."""

    def __init__(self, needs_retain: bool) -> None:
        self.needs_retain = needs_retain


class _Trainer:
    def __init__(self, needs_retain: bool) -> None:
        self.lightning_module = _Module(needs_retain)


def _local_dataset(root):
    # A local Hugging Face dataset repo in MUSE's `raw` layout: the same option loads the real MUSE.
    (root / "raw").mkdir(parents=True)
    for split, texts in {"forget": ["forget one.", "forget two."], "retain1": ["retain one."]}.items():
        (root / "raw" / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: raw\n  data_files:\n"
        "  - split: forget\n    path: raw/forget.jsonl\n  - split: retain1\n    path: raw/retain1.jsonl\n---\n"
    )
    return root


def test_every_source_form_loads(tmp_path, text_files):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first document.")
    (docs / "b.txt").write_text("second document.")
    dataset = _local_dataset(tmp_path / "muse")
    assert len(load_texts(TextSource(text_files["forget"]))) == 12
    assert len(load_texts(TextSource(text_files["retain"]))) == 12
    assert load_texts(TextSource(str(docs))) == ["first document.", "second document."]
    assert load_texts(TextSource(str(dataset), name="raw", split="forget")) == ["forget one.", "forget two."]


def test_missing_split_and_column_are_named(tmp_path, text_files):
    dataset = _local_dataset(tmp_path / "muse")
    with pytest.raises(ValueError, match="retain2"):
        load_texts(TextSource(str(dataset), name="raw", split="retain2"))
    with pytest.raises(ValueError, match="'body'"):
        load_texts(TextSource(text_files["retain"], column="body"))
    with pytest.raises(ValueError, match="colum"):
        ForgetRetainDataModule(forget={"path": text_files["forget"], "colum": "text"})


def test_chunk_and_document_packing(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["alpha beta gamma delta river stone", "north mayor"]
    docs = tokenize(texts, tokenizer, max_length=3, packing="document")
    assert len(docs) == 2 and all(len(d) <= 3 for d in docs)
    chunks = tokenize(texts, tokenizer, max_length=3, packing="chunk")
    stream = [t for c in chunks for t in c]
    assert all(len(c) == 3 for c in chunks[:-1])
    assert stream.count(tokenizer.eos_token_id) == 2, "documents are joined with EOS"


def test_padding_is_masked_and_eos_pads_when_no_pad_token(tiny_model_dir, text_files, tmp_path, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    no_pad = tmp_path / "no-pad"
    tokenizer.save_pretrained(no_pad)
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=None, tokenizer=str(no_pad),
                                packing="document", batch_size=4, shuffle=False)
    dm.setup("fit")
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id
    batch = next(iter(dm.train_dataloader()))[0]["forget"]
    padding = batch["attention_mask"] == 0
    assert padding.any()
    assert torch.all(batch["labels"][padding] == -100)
    assert torch.equal(batch["labels"][~padding], batch["input_ids"][~padding])


@pytest.mark.parametrize("needs_retain", [True, False])
def test_retain_loader_only_when_the_objective_has_a_retain_term(tiny_model_dir, text_files, needs_retain):
    dm = ForgetRetainDataModule(forget=text_files["forget"], retain=text_files["retain"], tokenizer=tiny_model_dir)
    dm.trainer = _Trainer(needs_retain)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == ({"forget", "retain"} if needs_retain else {"forget"})
