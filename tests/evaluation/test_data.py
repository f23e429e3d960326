import pytest

from lit_unlearn.evaluation import QA, EvalData

from .muse_fixtures import write_muse_dir


def test_loads_every_set_from_a_local_muse_directory(muse_dir):
    data = EvalData.load(muse_dir)
    assert data.sizes() == {
        "verbmem_forget": 6,
        "knowmem_forget": 6,
        "knowmem_forget_icl": 3,
        "knowmem_retain": 6,
        "knowmem_retain_icl": 3,
        "privleak_forget": 6,
        "privleak_holdout": 6,
    }
    assert isinstance(data.knowmem_forget[0], QA)
    assert data.verbmem_forget[0].prompt and data.verbmem_forget[0].gt


def test_max_items_caps_evaluated_sets_but_keeps_in_context_examples(muse_dir):
    data = EvalData.load(muse_dir, max_items=2)
    assert data.sizes()["knowmem_forget"] == 2 and data.sizes()["privleak_holdout"] == 2
    assert data.sizes()["knowmem_forget_icl"] == 3


def test_shards_partition_the_items(muse_dir):
    data = EvalData.load(muse_dir)
    shards = [data.shard(r, 4) for r in range(4)]
    for name in ("verbmem_forget", "knowmem_retain", "privleak_forget"):
        merged = sorted(item for s in shards for item in getattr(s, name))
        assert merged == sorted(getattr(data, name))
    assert all(s.knowmem_forget_icl == data.knowmem_forget_icl for s in shards)
    with pytest.raises(ValueError, match="`rank`=4 must be in \\[0, world_size=4\\)"):
        data.shard(4, 4)


def test_missing_split_names_it_and_the_layout(tmp_path):
    path = str(write_muse_dir(tmp_path, drop=("privleak", "holdout")))
    with pytest.raises(ValueError) as err:
        EvalData.load(path)
    message = str(err.value)
    assert "no split 'holdout' in config 'privleak'" in message
    assert "privleak/holdout: text" in message and "muse-bench/MUSE-News" in message


def test_missing_field_names_it_and_what_exists(tmp_path):
    path = str(write_muse_dir(tmp_path, rename={("verbmem", "forget"): ("gt", "continuation")}))
    with pytest.raises(
        ValueError,
        match=r"config 'verbmem' split 'forget' lacks field\(s\) \['gt'\]; it has "
        r"\['continuation', 'prompt'\]",
    ):
        EvalData.load(path)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_items_must_be_positive(muse_dir, bad):
    with pytest.raises(ValueError, match="`max_items`=.* must be a positive integer"):
        EvalData.load(muse_dir, max_items=bad)


def test_two_local_directories_with_the_same_name_do_not_share_rows(tmp_path):
    # datasets keys its cache of a local dataset directory by folder name; every toy world is `data/`.
    small = write_muse_dir((tmp_path / "a" / "data"), n=3)
    large = write_muse_dir((tmp_path / "b" / "data"), n=5)
    assert EvalData.load(str(small)).sizes()["verbmem_forget"] == 3
    assert EvalData.load(str(large)).sizes()["verbmem_forget"] == 5
