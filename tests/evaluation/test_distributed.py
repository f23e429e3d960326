import os
import socket

import pytest
import torch.multiprocessing as mp

from lit_unlearn.evaluation import EvalData, evaluate

FAST = {
    "tasks": ["knowmem_forget", "privleak"],
    "knowmem_max_new_tokens": 3,
    "batch_size": 2,
    "auc_retrain": 0.5,
    "progress": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_forked(worker, args: tuple, world_size: int = 2, timeout: float = 300) -> dict:
    """``worker(rank, world_size, port, *args, queue)`` in ``world_size`` forked processes; their results
    by rank (each worker puts ``(rank, result)`` on the queue). Forked workers share the parent's model and
    imported modules, so they start at once."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, world_size, port, *args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    assert [p.exitcode for p in procs] == [0] * world_size, "a worker failed; its traceback is in the captured stderr"
    return dict(queue.get(timeout=10) for _ in procs)


def _worker(rank, world_size, port, model, tokenizer, data, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queue.put((rank, evaluate(model, tokenizer, data, precision="nf4", **FAST)))
    finally:
        dist.destroy_process_group()


def test_ranks_evaluate_shards_and_agree_with_one_process(llama, tokenizer, muse_dir):
    data = EvalData.load(muse_dir, max_items=3)  # 3 items over 2 ranks: uneven shards
    expected = evaluate(llama, tokenizer, data, precision="nf4", **FAST)
    results = run_forked(_worker, (llama, tokenizer, data), timeout=120)
    for rank in (0, 1):
        assert results[rank].keys() == expected.keys()
        for key, value in expected.items():
            assert results[rank][key] == pytest.approx(value, abs=1e-9), key
