"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` for sharded unlearning, with safetensors checkpoints.

``UnlearningModule`` shards itself with FSDP2 (``fully_shard`` per decoder block, see
:mod:`lit_unlearn.sharding`) under any ``ModelParallelStrategy``. This subclass fixes the two things an
unlearning run needs from it:

* data parallelism only (``tensor_parallel_size=1``): every rank holds ``1/world`` of every weight;
* checkpoints that go through the trainer's ``CheckpointIO`` both ways. By default
  (``save_distributed_checkpoint=False``) the whole state — weights, optimizer moments, RNG, data position,
  callback state — is gathered to rank zero and written by the ``CheckpointIO`` (with
  ``SafetensorsCheckpointIO``: safetensors, atomically); on resume every rank reads the file through the
  same ``CheckpointIO`` and takes its shards, so the fit continues exactly. ``ModelParallelStrategy``
  itself reads full checkpoints with ``torch.load`` only. With ``save_distributed_checkpoint=True`` each
  rank writes its own shard (torch's distributed checkpoint, no gather, no safetensors).

Launch it like ``ddp``: ``lit-unlearn fit -c configs/muse/books/npo_gdr.yaml`` starts one process per
device.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from typing_extensions import override

__all__ = ["FSDP2Strategy"]


class FSDP2Strategy(ModelParallelStrategy):
    """Sharded data parallelism (FSDP2) whose full checkpoints are read and written by the ``CheckpointIO``.

    Args:
        save_distributed_checkpoint: ``False`` (default): one file, gathered on rank zero, through the
            ``CheckpointIO`` (safetensors with ``SafetensorsCheckpointIO``); needs host RAM on rank zero
            for the whole state (12 bytes per weight: fp32 weights and two AdamW moments). ``True``: a
            directory with one shard per rank (torch's distributed checkpoint format).
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
        timeout: Timeout of collective operations.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )

    @override
    def setup_environment(self) -> None:
        # One data-parallel group over every process (ModelParallelStrategy's "auto" means one per node).
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        from lightning.fabric.strategies.model_parallel import (
            _load_raw_module_state,
            _rekey_optimizer_state_if_needed,
        )
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist; pass the path of a saved `.ckpt`.")
        checkpoint = self.checkpoint_io.load_checkpoint(path)
        assert self.model is not None and self.lightning_module is not None
        strict = self.lightning_module.strict_loading
        state = checkpoint.pop("state_dict")
        # Weights the module rebuilds itself instead of saving (UnlearningModule's frozen reference) are
        # missing on purpose; any other missing weight is an error under strict loading.
        rebuilt = tuple(getattr(self.lightning_module, "checkpoint_rebuilt_prefixes", ()))
        missing = [k for k in self.model.state_dict() if k not in state and not k.startswith(rebuilt)]
        if strict and missing:
            raise KeyError(
                f"Checkpoint {str(path)!r} has no {missing[:3]} (and {max(len(missing) - 3, 0)} more) of the model; "
                "resume from a checkpoint of this model, or set `strict_loading = False`."
            )
        _load_raw_module_state(state, self.model, world_size=self.world_size, strict=False)
        options = StateDictOptions(broadcast_from_rank0=True, full_state_dict=True, strict=strict)
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            state = _rekey_optimizer_state_if_needed(state, self.model)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state, options=options)
        return checkpoint
