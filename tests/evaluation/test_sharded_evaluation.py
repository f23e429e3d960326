"""MUSE evaluation of an FSDP2-sharded model (2 CPU processes, gloo): each rank scores its share of the
items, every rank runs as many forwards as the others (uneven shards get throwaway batches, generation
runs ``synced_gpus``), each weight is deployed while its block runs, and the numbers are those of one
process evaluating the whole model."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.deployment import deployed_weights
from lit_unlearn.evaluation import EvalData, evaluate, generate_greedy, min_k_scores
from lit_unlearn.sharding import shard_model

from .test_distributed import run_forked

FAST = {
    "tasks": ["verbmem_forget", "knowmem_forget", "privleak"],
    "verbmem_max_new_tokens": 6,
    "knowmem_max_new_tokens": 3,
    "batch_size": 2,
    "auc_retrain": 0.5,
    "progress": False,
}
PRECISIONS = ["full", "nf4", "int8"]


def _worker(rank, world_size, port, model, tokenizer, data, queue):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (world_size,))
        sharded = shard_model(copy.deepcopy(model), mesh, reshard_after_forward=True)
        assert all(type(p).__name__ == "DTensor" for p in sharded.parameters())
        results = {p: evaluate(sharded, tokenizer, data, precision=p, **FAST) for p in PRECISIONS}
        # Uneven work on purpose: rank 0 scores and continues 3 texts, rank 1 one.
        texts = _texts(data)[: 3 if rank == 0 else 1]
        raw = {}
        for precision in PRECISIONS:
            with deployed_weights(sharded, precision) as deployed:
                # Plain lists: a tensor in the queue would be shared memory of a process that has exited.
                raw[precision] = (min_k_scores(deployed, tokenizer, texts, batch_size=1, progress=False,
                                               synced=True).tolist(),
                                  generate_greedy(deployed, tokenizer, texts, 5, batch_size=1, progress=False,
                                                  synced=True))
        queue.put((rank, (results, raw)))
    finally:
        dist.destroy_process_group()


def _texts(data):
    return [item for item in data.privleak_forget]


def _raw(model, tokenizer, texts):
    out = {}
    for precision in PRECISIONS:
        with deployed_weights(model, precision) as deployed:
            out[precision] = (min_k_scores(deployed, tokenizer, texts, batch_size=1, progress=False),
                              generate_greedy(deployed, tokenizer, texts, 5, batch_size=1, progress=False))
    return out


def _lora(llama):
    model = apply_lora(llama, LoRA(r=4, alpha=8.0, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    return model.eval()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sharded_evaluation_equals_one_process(llama, tokenizer, muse_dir, kind):
    model = llama if kind == "full" else _lora(llama)
    data = EvalData.load(muse_dir, max_items=3)  # 3 items over 2 ranks: one rank runs a throwaway batch
    expected = {p: evaluate(model, tokenizer, data, precision=p, **FAST) for p in PRECISIONS}
    raw = {rank: _raw(model, tokenizer, _texts(data)[: 3 if rank == 0 else 1]) for rank in (0, 1)}
    assert not torch.equal(raw[0]["nf4"][0], raw[0]["full"][0]), "nf4 changes the scores: the comparison can fail"
    results = run_forked(_worker, (model, tokenizer, data))
    for rank in (0, 1):
        metrics, outputs = results[rank]
        for precision in PRECISIONS:
            scores, texts = outputs[precision]
            torch.testing.assert_close(torch.tensor(scores), raw[rank][precision][0], rtol=0, atol=1e-5)
            assert texts == raw[rank][precision][1], (rank, precision)
            got, want = metrics[precision], expected[precision]
            assert got.keys() == want.keys()
            for key, value in want.items():
                assert got[key] == pytest.approx(value, abs=1e-6), (rank, precision, key)
