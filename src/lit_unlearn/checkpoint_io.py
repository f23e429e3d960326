"""``SafetensorsCheckpointIO``: Lightning checkpoints as one safetensors file, with nothing pickled.

A Lightning checkpoint is a nested dict of tensors (``state_dict``, optimizer moments, ...) and plain
Python (``epoch``, ``global_step``, loop progress, callback states, ``hyper_parameters``, optimizer
``param_groups``). This plugin writes every tensor into one ``.safetensors`` file under its flattened
path (``state_dict/model.lm_head.weight``, ``optimizer_states/0/state/3/exp_avg``) and the rest of the
dict, with a reference in place of each tensor, as JSON in the file's own header metadata
(``__metadata__["lightning_checkpoint"]``). One file, so a checkpoint is written atomically and
``ModelCheckpoint``'s bookkeeping (top-k deletion, ``last``) sees one path, exactly as with
``torch.save``. Loading reads JSON and raw tensor bytes: no code runs, whatever the file holds.

Values JSON lacks are tagged so they come back with their type: ``{"$tuple": [...]}`` for tuples (Adam's
``betas``), ``{"$dict": [[key, value], ...]}`` for dicts with non-string keys (optimizer ``state`` is
keyed by int), ``{"$odict": ...}`` for an ``OrderedDict`` (with the ``_metadata`` that
``Module.state_dict`` attaches), ``{"$float": "nan"}`` for non-finite floats and ``{"$tensor": key}``
for tensors. A tensor that appears twice (tied weights) is stored once and both places get the same
tensor back. Anything else (dataclasses, enums, paths, numpy scalars) raises a ``TypeError`` that
names where in the checkpoint it sits.

File name: ``ModelCheckpoint`` keeps naming files ``*.ckpt``; only the content is safetensors. That keeps
``ckpt_path="last"``/``"best"``, resuming and top-k cleanup working unchanged. Such a file is not a
``torch.save`` file, so read it back with this plugin (``Trainer(plugins=[SafetensorsCheckpointIO()])`` or
``SafetensorsCheckpointIO().load_checkpoint(path)``), not with ``torch.load`` or
``LightningModule.load_from_checkpoint``; ``safetensors.safe_open`` reads its tensors directly.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

__all__ = ["FORMAT_VERSION", "SKELETON_KEY", "SafetensorsCheckpointIO"]

# Header metadata keys. "format": "pt" is the convention transformers and safetensors tools expect.
SKELETON_KEY = "lightning_checkpoint"
VERSION_KEY = "lightning_checkpoint_version"
FORMAT_VERSION = "1"

_TENSOR, _TUPLE, _DICT, _ODICT, _FLOAT = "$tensor", "$tuple", "$dict", "$odict", "$float"
_TAGS = frozenset({_TENSOR, _TUPLE, _DICT, _ODICT, _FLOAT})
_KEY_TYPES = (str, int, float, bool, type(None), tuple)


class SafetensorsCheckpointIO(CheckpointIO):
    """Save Lightning checkpoints as safetensors: tensors in the file, the rest as JSON in its header.

    Nothing is pickled, so loading a checkpoint cannot run code; ``load_checkpoint`` returns a dict equal
    to the one saved (same nesting, key types, tuples, ``OrderedDict``\\ s, tensor dtypes and values). The
    files keep ``ModelCheckpoint``'s ``.ckpt`` name; see the module docstring.

    Raises:
        TypeError: on save, for a value with no faithful JSON form (dataclass, enum, ``Path``, numpy scalar,
            sparse tensor, ...); the message names its place in the checkpoint, e.g.
            ``checkpoint['hyper_parameters']['lora']``. Also if ``storage_options`` is given.
        ValueError: on load, for a file that is not a checkpoint written by this plugin (e.g. a ``torch.save``
            checkpoint of the default ``TorchCheckpointIO``).

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lit_unlearn.checkpoint_io import SafetensorsCheckpointIO

        trainer = Trainer(plugins=[SafetensorsCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
        trainer.fit(module, datamodule)
        trainer.fit(module, datamodule, ckpt_path="last")  # resume

    From YAML (``lit-unlearn fit -c config.yaml``)::

        trainer:
          plugins:
            - class_path: lit_unlearn.checkpoint_io.SafetensorsCheckpointIO
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` (local or any fsspec URL), atomically for local paths."""
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by {type(self).__name__}; save without it."
            )
        from safetensors.torch import save, save_file

        encoder = _Encoder()
        skeleton = encoder.encode(checkpoint, ())
        metadata = {
            "format": "pt",
            VERSION_KEY: FORMAT_VERSION,
            SKELETON_KEY: json.dumps(skeleton, allow_nan=False),
        }
        path = str(path)
        fs = get_filesystem(path)
        fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if _is_local(fs):
            # Written beside the target and renamed, so a crash never leaves a truncated checkpoint.
            tmp = f"{path}.tmp"
            try:
                save_file(encoder.tensors, tmp, metadata=metadata)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with fs.open(path, "wb") as f:
                f.write(save(encoder.tensors, metadata=metadata))

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read the checkpoint at ``path``.

        Args:
            path: Local path or fsspec URL.
            map_location: Device for the tensors (``"cpu"``, ``"cuda:0"``, a ``torch.device``); ``None`` loads
                them on the CPU, as Lightning's default does before it moves states to their modules.
            weights_only: Accepted for Lightning's interface and ignored: nothing in the file is executable,
                so every load is as safe as ``torch.load(weights_only=True)``.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a checkpoint written by this plugin.
            TypeError: for a ``map_location`` that is not a device.
        """
        from safetensors import safe_open
        from safetensors.torch import load

        device = _device(map_location)
        path = str(path)
        fs = get_filesystem(path)
        if not fs.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        with fs.open(path, "rb") as f:
            head = f.read(9)
        _check_safetensors(head, path)
        if _is_local(fs):
            with safe_open(path, framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        else:
            data = fs.cat_file(path)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
            tensors = {key: value.to(device) for key, value in load(data).items()}
        if SKELETON_KEY not in metadata:
            raise ValueError(
                f"{path!r} is a safetensors file but not a Lightning checkpoint written by "
                f"{type(self).__name__} (its header has no {SKELETON_KEY!r} metadata). Load model weights "
                "from it with `safetensors.torch.load_file`."
            )
        if metadata.get(VERSION_KEY) != FORMAT_VERSION:
            raise ValueError(
                f"{path!r} has checkpoint format version {metadata.get(VERSION_KEY)!r}; this lit-unlearn "
                f"reads version {FORMAT_VERSION!r}. Load it with the lit-unlearn version that wrote it."
            )
        return _decode(json.loads(metadata[SKELETON_KEY]), tensors)

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _device(map_location: Any) -> torch.device:
    if map_location is None or callable(map_location):
        # Lightning's default `map_location` is a callable that keeps storages on the CPU.
        return torch.device("cpu")
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    raise TypeError(
        f"`map_location`={map_location!r} is not supported by SafetensorsCheckpointIO; pass a device such as "
        "'cpu' or 'cuda:0', or None for the CPU."
    )


def _check_safetensors(head: bytes, path: str) -> None:
    # A safetensors file opens with the little-endian length of its JSON header, then the header's "{".
    if len(head) == 9 and head[8:9] == b"{":
        return
    hint = ""
    if head[:2] == b"PK":
        hint = " It looks like a torch.save zip archive (Lightning's default TorchCheckpointIO)."
    raise ValueError(
        f"{path!r} is not a safetensors checkpoint.{hint} Load it without SafetensorsCheckpointIO (drop the "
        "plugin), or point `ckpt_path` at a checkpoint this plugin wrote."
    )


def _where(path: tuple) -> str:
    return "checkpoint" + "".join(f"[{part!r}]" for part in path)


class _Encoder:
    """Turns a checkpoint into a JSON skeleton, collecting its tensors under flattened names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        # (storage pointer, offset, shape, stride, dtype, device) → name: exact aliases are stored once.
        self._aliases: dict[tuple, str] = {}
        self._storages: set[tuple[int, torch.device]] = set()

    def encode(self, value: Any, path: tuple) -> Any:
        kind = type(value)
        # Exact types: a bool is not an int here, and subclasses (IntEnum, namedtuple) would not come back.
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, torch.Tensor):
            return {_TENSOR: self._tensor(value, path)}
        if kind is list:
            return [self.encode(v, (*path, i)) for i, v in enumerate(value)]
        if kind is tuple:
            return {_TUPLE: [self.encode(v, (*path, i)) for i, v in enumerate(value)]}
        if kind is dict or kind is OrderedDict:
            return self._dict(value, path)
        raise TypeError(
            f"Cannot store {_where(path)} without pickling: it is a {kind.__module__}.{kind.__qualname__} "
            f"({_short(value)}). SafetensorsCheckpointIO keeps tensors and plain Python (None, bool, int, "
            "float, str, list, tuple, dict); convert the value before it reaches the checkpoint (e.g. "
            "`dataclasses.asdict`, `enum.value`, `str(path)`), or use Lightning's default TorchCheckpointIO."
        )

    def _dict(self, value: dict, path: tuple) -> Any:
        plain = all(type(k) is str for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS)
        if type(value) is dict and plain:
            return {k: self.encode(v, (*path, k)) for k, v in value.items()}
        pairs = [[self._key(k, path), self.encode(v, (*path, k))] for k, v in value.items()]
        if type(value) is dict:
            return {_DICT: pairs}
        body: dict[str, Any] = {"items": pairs}
        if hasattr(value, "_metadata"):
            body["metadata"] = self.encode(value._metadata, (*path, "_metadata"))
        return {_ODICT: body}

    def _key(self, key: Any, path: tuple) -> Any:
        if type(key) not in _KEY_TYPES:
            raise TypeError(
                f"Cannot store the key {_short(key)} of {_where(path)} without pickling: keys must be str, "
                f"int, float, bool, None or tuples of these, not {type(key).__qualname__}."
            )
        return self.encode(key, path)

    def _tensor(self, tensor: torch.Tensor, path: tuple) -> str:
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            kind = "quantized" if tensor.is_quantized else str(tensor.layout)
            raise TypeError(
                f"Cannot store {_where(path)}: a {kind} tensor on {tensor.device} has no safetensors form. "
                "Store it dense and with data (`.to_dense()`, `.dequantize()`, a real device)."
            )
        tensor = tensor.detach()
        storage = (tensor.untyped_storage().data_ptr(), tensor.device)
        alias = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        shares_memory = tensor.numel() > 0
        if shares_memory and alias in self._aliases:
            return self._aliases[alias]
        if not tensor.is_contiguous() or (shares_memory and storage in self._storages):
            # safetensors stores contiguous tensors with their own memory; a view of a stored tensor's
            # memory (e.g. a slice) gets a copy.
            tensor = tensor.contiguous().clone()
        name = self._name(path)
        self.tensors[name] = tensor
        if shares_memory:
            self._aliases[alias] = name
            self._storages.add(storage)
        return name

    def _name(self, path: tuple) -> str:
        base = "/".join(map(str, path)) or "tensor"
        name, n = base, 1
        while name in self.tensors:
            name, n = f"{base}#{n}", n + 1
        return name


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((tag, body),) = node.items()
        if tag == _TENSOR:
            return tensors[body]
        if tag == _TUPLE:
            return tuple(_decode(v, tensors) for v in body)
        if tag == _FLOAT:
            return float(body)
        if tag == _DICT:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
        if tag == _ODICT:
            restored = OrderedDict((_decode(k, tensors), _decode(v, tensors)) for k, v in body["items"])
            if "metadata" in body:
                restored._metadata = _decode(body["metadata"], tensors)
            return restored
    return {k: _decode(v, tensors) for k, v in node.items()}
