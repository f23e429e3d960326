"""Sharded training on Lightning's ``ModelParallelStrategy``: FSDP2 ``fully_shard`` per decoder block.

``UnlearningModule.configure_model`` calls :func:`shard_model` on the model (and on the frozen reference
of a full-parameter NPO/KLR run) when the strategy hands it a device mesh: every decoder block becomes
one FSDP2 unit, the root another, so each rank holds ``1/world`` of every weight as a ``DTensor`` sharded
on its first dimension. :func:`local_rows` says which rows of a weight a rank holds, :func:`full_tensor`
gathers one tensor (a collective: every rank calls it in the same order), and :func:`gathered_state_dict`
assembles a state dict on rank zero one tensor at a time, for saving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "all_reduce_sums",
    "decoder_blocks",
    "full_tensor",
    "gather_rows",
    "gathered_state_dict",
    "is_sharded",
    "local_rows",
    "local_tensor",
    "shard_model",
    "sharding_mesh",
]


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter of an FSDP2-sharded module)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor``, or the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` gathered from every rank (collective), any other tensor as is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_rows(tensor: torch.Tensor) -> tuple[int, int]:
    """``(start, stop)``: the rows of dimension 0 this rank's shard of ``tensor`` holds (all of them unsharded).

    FSDP2 splits dimension 0 as ``torch.chunk`` does: ``ceil(n / world)`` rows per rank, the last ranks
    holding fewer or none.
    """
    n = tensor.shape[0]
    if not is_sharded(tensor):
        return 0, n
    from torch.distributed.tensor import Shard

    mesh = tensor.device_mesh
    placements = tensor.placements
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(
            f"A weight sharded as {placements} is not FSDP2's row sharding (Shard(0) on one mesh dimension); "
            "lit-unlearn measures weights of `fully_shard`ed models."
        )
    rank, world = mesh.get_local_rank(), mesh.size()
    per_rank = -(-n // world)
    start = min(rank * per_rank, n)
    return start, min(start + per_rank, n)


def sharding_mesh(module: Any) -> Any:
    """The data-parallel mesh a ``ModelParallelStrategy`` gave ``module`` (``None`` under any other strategy).

    Raises:
        ValueError: for a tensor-parallel mesh: lit-unlearn shards with FSDP2 only.
    """
    mesh = getattr(module, "_device_mesh", None)
    if mesh is None:
        return None
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"ModelParallelStrategy gave a tensor-parallel mesh of size {mesh['tensor_parallel'].size()}; "
            "UnlearningModule shards with FSDP2 only. Use `ModelParallelStrategy(data_parallel_size=<devices>, "
            "tensor_parallel_size=1)`."
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (or a peft model wrapping one): ``model.layers``.

    Raises:
        ValueError: if the model has no such list (the message names the module lists it has).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    blocks = getattr(inner, "layers", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        return blocks
    lists = [name for name, module in base.named_modules() if isinstance(module, nn.ModuleList)]
    raise ValueError(
        f"{type(base).__name__} has no `model.layers` list of decoder blocks to shard one by one; its module "
        f"lists are {lists[:5]}. Shard it yourself in `configure_model` or train it unsharded."
    )


def shard_model(
    model: nn.Module, mesh: Any, prepare: Callable[[nn.Module], None] | None = None, **fsdp_kwargs: Any
) -> nn.Module:
    """``fully_shard`` every decoder block of ``model``, then the model itself (its embeddings and head).

    For a peft model the root unit is the transformers model inside it: ``generate`` calls that model's
    forward, not the wrapper's, and the root's weights must be gathered either way. ``prepare(module)``
    runs on each unit just before it is sharded (on the root, for the weights no block holds): FSDP2
    moves a unit's shard to the mesh's device as it shards it, so work done there is done one block at a
    time.
    """
    from torch.distributed.fsdp import fully_shard

    for block in decoder_blocks(model):
        if prepare is not None:
            prepare(block)
        fully_shard(block, mesh=mesh, **fsdp_kwargs)
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    if prepare is not None:
        prepare(model)
    fully_shard(root, mesh=mesh, **fsdp_kwargs)
    return model


def gathered_state_dict(
    model: nn.Module, keep: Callable[[str], bool] = lambda name: True, is_zero: bool = True
) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded ``model`` on rank zero (``is_zero``), one tensor at a time, in host RAM.

    Every rank gathers each kept tensor in the same order (the gathers are collectives); only rank zero
    keeps them, so no rank ever holds more than one gathered tensor besides rank zero's result.
    """
    state: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not keep(name):
            continue
        whole = full_tensor(value)
        if is_zero:
            state[name] = whole.detach().to("cpu", copy=True)
        del whole
    return state


def gather_rows(local: torch.Tensor, rows: int, mesh: Any) -> torch.Tensor:
    """The whole tensor of ``rows`` rows from each rank's row shard ``local`` (a collective over ``mesh``).

    Shards follow :func:`local_rows` (``ceil(rows / world)`` per rank); they are padded to that size for
    the gather and the padding is cut off again.
    """
    import torch.distributed as dist

    world = mesh.size()
    per_rank = -(-rows // world)
    # NCCL gathers device tensors only: a host snapshot travels through the device and comes back.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(mesh.get_group()) == "nccl" else local.device
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=mesh.get_group())
    return torch.cat(parts)[:rows].to(local.device)


def all_reduce_sums(values: list[float], mesh: Any) -> list[float]:
    """Element-wise sums of ``values`` over the ranks of ``mesh``, in float64 (counts stay exact below 2^53)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend(mesh.get_group()) == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, group=mesh.get_group())
    return tensor.cpu().tolist()
