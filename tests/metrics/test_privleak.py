import math
import os
import socket
import warnings

import pytest
import torch

from lit_unlearn.metrics import (
    PUBLISHED_AUC_RETRAIN,
    PrivLeak,
    membership_auc,
    min_k_percent_score,
    privleak_from_auc,
    resolve_auc_retrain,
)


def mann_whitney_auc(scores, is_member):
    """MUSE's AUC by hand: labels forget 0 / holdout 1, ranked by -score; P(holdout ranked above forget),
    ties counting one half."""
    holdout = [-s for s, m in zip(scores, is_member) if not m]
    forget = [-s for s, m in zip(scores, is_member) if m]
    wins = sum((h > f) + 0.5 * (h == f) for h in holdout for f in forget)
    return wins / (len(holdout) * len(forget))


def test_min_k_on_hand_computed_logprobs():
    logp = torch.tensor([[-0.1, -2.0, -0.5, -3.0, -1.0], [-0.2, -0.4, -9.0, -9.0, -9.0]])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    # Row 0: floor(0.4 * 5) = 2 lowest of five: -3.0, -2.0 -> 2.5.
    # Row 1: two scored tokens, floor(0.8) = 0 raised to 1: the lowest, -0.4 -> 0.4 (padding never counts).
    assert torch.allclose(min_k_percent_score(logp, mask, k=0.4), torch.tensor([2.5, 0.4]))
    # K = 100% is minus the mean log-prob; 1-D input gives a scalar.
    assert min_k_percent_score(logp[0], k=1.0).item() == pytest.approx(6.6 / 5)
    # Ten tokens, K = 40%: the four lowest.
    ten = -torch.arange(1.0, 11.0)
    assert min_k_percent_score(ten).item() == pytest.approx((10 + 9 + 8 + 7) / 4)


def test_min_k_errors():
    with pytest.raises(ValueError, match="`k`=0.0 must be a share in \\(0, 1\\]"):
        min_k_percent_score(torch.zeros(1, 3), k=0.0)
    with pytest.raises(ValueError, match="Sequences \\[1\\] have no scored token"):
        min_k_percent_score(torch.zeros(2, 3), torch.tensor([[True, True, True], [False, False, False]]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_hand_computation_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (30,), generator=g).double()  # many ties
    is_member = torch.rand(30, generator=g) < 0.5
    is_member[0], is_member[1] = True, False
    assert membership_auc(scores, is_member) == pytest.approx(
        mann_whitney_auc(scores.tolist(), is_member.tolist())
    )


def test_auc_orientation_follows_muse():
    # A model that memorises its forget texts finds them likely: low Min-K% scores. MUSE's AUC -> 0.
    members, holdout = [0.5, 0.7, 0.9], [2.0, 2.5, 3.0]
    flags = [True] * 3 + [False] * 3
    assert membership_auc(members + holdout, flags) == 0.0
    assert membership_auc(holdout + members, flags) == 1.0


def test_privleak_formula_and_references():
    assert privleak_from_auc(0.0, 0.5) == -100.0
    assert privleak_from_auc(0.4772, PUBLISHED_AUC_RETRAIN["news"]) == 0.0
    assert math.isnan(privleak_from_auc(0.3, None))
    metric = PrivLeak(auc_retrain="books")
    metric.update([1.0, 2.0, 1.5, 2.5], [True, False, True, False])
    out = metric.compute()
    assert out["auc"].item() == 0.0  # both forget texts are likelier (lower score) than both holdout texts
    assert out["privleak"].item() == pytest.approx((out["auc"].item() - 0.5393) / 0.5393 * 100)


def test_privleak_conventions_fallback():
    scores, flags = [0.5, 0.7, 2.0, 3.0], [True, True, False, False]
    ou = PrivLeak(convention="open-unlearning")
    ou.update(scores, flags)
    assert ou.compute()["privleak"].item() == pytest.approx(-100.0)  # AUC 0 against the 0.5 fallback
    muse = PrivLeak()
    muse.update(scores, flags)
    with pytest.warns(UserWarning, match="PrivLeak is NaN.*0.4772"):
        out = muse.compute()
    assert math.isnan(out["privleak"].item()) and out["auc"].item() == 0.0
    muse.auc_retrain = 0.25  # set later, from a scored retrain model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert muse.compute()["privleak"].item() == pytest.approx(-100.0)


def test_privleak_errors():
    metric = PrivLeak(auc_retrain=0.5)
    metric.update([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="needs both members .* got 2 members out of 2"):
        metric.compute()
    with pytest.raises(ValueError, match="`scores` has 2 items but `is_member` has 1"):
        PrivLeak().update([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="`auc_retrain`='tofu' is not a known corpus.*'books', 'news'"):
        resolve_auc_retrain("tofu")
    with pytest.raises(ValueError, match="must be an AUC in \\(0, 1\\]"):
        PrivLeak(auc_retrain=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world_size: int, port: int, queue) -> None:
    import torch.distributed as dist

    from lit_unlearn.metrics import KnowMem, PrivLeak

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        scores = [[0.5, 2.0, 3.0], [0.7, 2.5]][rank]
        flags = [[True, False, False], [True, True]][rank]
        privleak = PrivLeak(auc_retrain=0.5)
        privleak.update(scores, flags)
        knowmem = KnowMem()
        knowmem.update(
            [["Paris"], ["Rome\n\nQuestion:", "Oslo"]][rank], [["Paris"], ["Rome", "Bergen"]][rank]
        )
        queue.put((rank, privleak.compute()["auc"].item(), knowmem.compute().item()))
    finally:
        dist.destroy_process_group()


def test_metrics_sync_across_processes():
    import torch.multiprocessing as mp

    # fork shares the already imported modules, so the workers start in well under a second.
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_sync_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0], "a worker failed; its traceback is in the captured stderr"
    results = [queue.get(timeout=10) for _ in procs]
    expected_auc = mann_whitney_auc([0.5, 2.0, 3.0, 0.7, 2.5], [True, False, False, True, True])
    for _, auc, knowmem in results:
        assert auc == pytest.approx(expected_auc)
        assert knowmem == pytest.approx(100 * 2 / 3)
