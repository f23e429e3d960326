"""``ForgetRetainDataModule``: forget and retain texts, tokenized, as one combined training loader."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lit_unlearn.data.sampling import ResumableSampler, consumed_per_loader
from lit_unlearn.data.sources import TextSource, load_texts, resolve_path

__all__ = ["ForgetRetainDataModule", "TokenizedTexts", "collate", "tokenize"]

Packing = Literal["chunk", "document"]
Mode = Literal["max_size_cycle", "max_size", "min_size", "sequential"]

_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"

# The toy world in MUSE's layout; `lit-unlearn fit` prepares it on first use.
WORLD_FORGET = {"path": "world:data", "name": "raw", "split": "forget"}
WORLD_RETAIN = {"path": "world:data", "name": "raw", "split": "retain1"}

# Sources are typed `str | dict` rather than `TextSource` for the CLI's sake: jsonargparse reads a
# string given for a dataclass-typed argument as a config *file*, which would turn `forget: my.txt`
# into the file's contents. Python callers may still pass a `TextSource`.
Source = str | dict[str, Any]


class TokenizedTexts(Dataset):
    """Examples of ``input_ids`` (1-D LongTensor, unpadded) with labels equal to the ids."""

    def __init__(self, examples: list[list[int]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(self.examples[index], dtype=torch.long)


def tokenize(texts: Sequence[str], tokenizer: Any, max_length: int, packing: Packing) -> list[list[int]]:
    """Token id lists of at most ``max_length`` tokens.

    ``chunk`` (MUSE's training recipe) joins all documents with EOS between them and cuts the stream
    into ``max_length`` blocks, keeping the shorter last block. ``document`` keeps one example per
    document, truncated to ``max_length``.
    """
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    if packing == "document":
        return [seq[:max_length] for seq in ids if seq]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for seq in ids:
        stream.extend(seq)
        if eos is not None and (not seq or seq[-1] != eos):
            stream.append(eos)
    return [stream[i : i + max_length] for i in range(0, len(stream), max_length)]


def collate(examples: list[torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of 1-D id tensors into ``input_ids``, ``attention_mask``, ``labels`` (B, T).

    Labels are the ids with padding set to -100, so padding never enters a loss.
    """
    length = max(e.numel() for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : e.numel()] = e
        attention_mask[i, : e.numel()] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class _Collator:
    # A class, not a lambda, so DataLoader workers can pickle it.
    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_token_id)


def _as_source(source: Source | TextSource | None) -> TextSource | None:
    if source is None or isinstance(source, TextSource):
        return source
    if isinstance(source, dict):
        unknown = set(source) - {"path", "name", "split", "column"}
        if unknown:
            raise ValueError(
                f"Unknown text source keys {sorted(unknown)} in {source}; use path, name, split and column."
            )
        return TextSource(**source)
    return TextSource(path=source)


def _check_local(source: TextSource, arg: str) -> None:
    """Fail at construction, before any model is loaded, when a local path cannot exist."""
    path = source.path
    if path.startswith("world:"):
        return  # prepared on first use (`prepare_data`)
    if path.startswith("real:"):
        path = resolve_path(path)  # a file of the shipped benchmark; names an unknown one, or the extra
    if source.split is None and not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"`{arg}` path {path!r} does not exist. Give an existing .txt/.jsonl file or directory, or a "
            "Hugging Face dataset with `split` (and `name`), e.g. {path: muse-bench/MUSE-News, name: raw, split: forget}."
        )


class ForgetRetainDataModule(LightningDataModule):
    """Forget and retain texts for unlearning, served as one ``CombinedLoader``.

    Training batches are ``{"forget": batch, "retain": batch}`` where each batch holds ``input_ids``,
    ``attention_mask`` and ``labels`` of shape (B, T). The retain loader is left out when the module
    being trained has no retain term (``needs_retain = False``). Validation and test use one loader per
    set (``dataloader_idx`` 0 = forget, 1 = retain) so the module can report forget/retain NLL.

    Args:
        forget: The forget set: a path (``.txt``, ``.jsonl``, directory of ``.txt``) or a mapping with the
            fields of ``TextSource`` (Hugging Face dataset ``path``, ``name``, ``split``, ``column``), or a
            ``TextSource``. Default: the toy world's forget split.
        retain: The retain set, same forms; ``None`` for forget-only objectives. Default: the toy world's
            ``retain1`` split.
        heldout_forget: Forget texts kept out of training, same forms; ``None`` (default) for none. Its
            batches, in order, are the held-out probe of ``QuantizationSurvival``
            (:meth:`quantization_probe_batches`, logged as ``survival/<scheme>/effect_retained_heldout``).
            Every probe batch runs once per scheme and check, so a few batches' worth of text is enough.
        tokenizer: Tokenizer path or hub id. ``None`` uses the trained module's ``model_name_or_path``.
        max_length: Tokens per example.
        packing: ``chunk`` cuts the joined token stream into ``max_length`` blocks (MUSE); ``document``
            keeps one (truncated) example per document.
        batch_size: Examples per forget batch and per retain batch.
        mode: How forget and retain loaders are combined (``CombinedLoader`` mode). ``max_size_cycle``
            runs through the longer set once per epoch and cycles the shorter.
        num_workers: DataLoader workers.
        shuffle: Shuffle training examples.
        seed: Seed of the training order. ``None`` takes the run's ``seed_everything`` seed (0 without
            one). The order depends on nothing else (not on the global RNG), and a checkpoint records how
            far into the epoch training got, so a resumed fit sees exactly the batches an uninterrupted
            one would (see ``ResumableSampler``).

    Raises:
        FileNotFoundError: if a local path does not exist.
        ValueError: for a non-positive ``max_length``/``batch_size``.

    Example::

        dm = ForgetRetainDataModule(forget="forget.txt", retain="retain.jsonl", tokenizer="gpt2")
    """

    def __init__(
        self,
        forget: Source = WORLD_FORGET,
        retain: Source | None = WORLD_RETAIN,
        heldout_forget: Source | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        packing: Packing = "chunk",
        batch_size: int = 8,
        mode: Mode = "max_size_cycle",
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"`max_length` must be at least 2 tokens, got {max_length}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
        self.forget = _as_source(forget)
        self.retain = _as_source(retain)
        self.heldout_forget = _as_source(heldout_forget)
        _check_local(self.forget, "forget")
        for name, source in (("retain", self.retain), ("heldout_forget", self.heldout_forget)):
            if source is not None:
                _check_local(source, name)
        self.tokenizer_name_or_path = tokenizer
        self.max_length = max_length
        self.packing = packing
        self.batch_size = batch_size
        self.mode = mode
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.tokenizer: Any = None
        self.datasets: dict[str, TokenizedTexts] = {}
        # Not in `datasets`, whose every entry is a training loader.
        self.heldout: TokenizedTexts | None = None
        self._resume: dict[str, int] | None = None  # {"epoch", "batches"} from a checkpoint

    @override
    def prepare_data(self) -> None:
        # Runs on one process per node before `setup`: builds the toy world once (it is locked and
        # cached, so a second node or a rerun only reads it).
        for source in (self.forget, self.retain, self.heldout_forget):
            if source is not None:
                resolve_path(source.path)

    def _tokenizer_path(self) -> str:
        if self.tokenizer_name_or_path is not None:
            return self.tokenizer_name_or_path
        module = self.trainer.lightning_module if self.trainer is not None else None
        path = getattr(module, "tokenizer_name_or_path", None) or getattr(module, "model_name_or_path", None)
        if path is None:
            raise ValueError(
                "`tokenizer` is not set and the module being trained names no `model_name_or_path`. "
                "Pass `tokenizer=` (a path or hub id) to ForgetRetainDataModule."
            )
        return path

    def load_tokenizer(self) -> Any:
        """Load the tokenizer; one without a pad token pads with EOS (said once in the log)."""
        if self.tokenizer is None:
            from lit_unlearn.gguf_io import load_tokenizer

            # A `.gguf` path gives the tokenizer stored in the file.
            tokenizer = load_tokenizer(resolve_path(self._tokenizer_path()))
            if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
                raise ValueError(
                    f"Tokenizer {self._tokenizer_path()!r} has neither a pad nor an eos token, so batches "
                    "cannot be padded. Give it one (`tokenizer.pad_token = ...` and save it), or point "
                    "`data.tokenizer` at a tokenizer that has one."
                )
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
                rank_zero_info(f"Tokenizer has no pad token; padding with EOS ({tokenizer.eos_token!r}).")
            self.tokenizer = tokenizer
        return self.tokenizer

    @property
    def wants_retain(self) -> bool:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return self.retain is not None and getattr(module, "needs_retain", True)

    @override
    def setup(self, stage: str) -> None:
        self.load_tokenizer()
        sets = {"forget": self.forget, "retain": self.retain if self.wants_retain else None}
        for name, source in sets.items():
            if source is None or name in self.datasets:
                continue
            self.datasets[name] = self._tokenized(name, source)
        if self.heldout_forget is not None and self.heldout is None:
            self.heldout = self._tokenized("heldout_forget", self.heldout_forget)

    def _tokenized(self, name: str, source: TextSource) -> TokenizedTexts:
        examples = tokenize(load_texts(source), self.tokenizer, self.max_length, self.packing)
        if not examples:
            raise ValueError(f"The {name} set {source} yields no tokens; check its `column` and contents.")
        return TokenizedTexts(examples)

    def quantization_probe_batches(self) -> list[dict[str, torch.Tensor]] | None:
        """The held-out forget batches, in the set's order, for ``QuantizationSurvival``'s held-out probe;
        ``None`` without ``heldout_forget``. Built from the data each time (cheap), so a resumed fit probes
        the same batches without storing them in the checkpoint."""
        if self.heldout is None:
            return None
        return list(self._loader(self.heldout))

    def _loader(self, name: str | TokenizedTexts, sampler: ResumableSampler | None = None) -> DataLoader:
        """A loader over one set: in ``sampler``'s order for training, in the set's order otherwise."""
        return DataLoader(
            self.datasets[name] if isinstance(name, str) else name,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_Collator(self.tokenizer.pad_token_id),
            # Workers' base seed from the loader's own generator, not from the global RNG.
            generator=None if sampler is None else torch.Generator().manual_seed(sampler.seed),
        )

    def _train_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))  # set by `seed_everything`

    @override
    def train_dataloader(self) -> CombinedLoader:
        trainer = self.trainer
        replicas, rank = getattr(trainer, "world_size", 1), getattr(trainer, "global_rank", 0)
        samplers = {
            name: ResumableSampler(dataset, shuffle=self.shuffle, seed=self._train_seed(), num_replicas=replicas,
                                   rank=rank)
            for name, dataset in self.datasets.items()
        }
        if self._resume is not None:
            lengths = {name: math.ceil(len(s) / self.batch_size) for name, s in samplers.items()}
            done = consumed_per_loader(self.mode, self._resume["batches"], lengths)
            for name, sampler in samplers.items():
                sampler.resume(self._resume["epoch"], done[name], self.batch_size, cycle=self.mode == "max_size_cycle")
            self._resume = None
        loaders = {name: self._loader(name, sampler) for name, sampler in samplers.items()}
        # Lightning warns on a mid-epoch resume unless each loader has a `state_dict`; this DataModule
        # keeps the position itself (`state_dict` below), so the warning does not apply to its loaders.
        warnings.filterwarnings("ignore", message=_NOT_RESUMABLE, category=PossibleUserWarning)
        return CombinedLoader(loaders, mode=self.mode)

    @override
    def state_dict(self) -> dict[str, Any]:
        """How far into the current epoch training got: ``{"epoch", "batches"}`` (empty outside a fit).

        Lightning stores this in every checkpoint; ``load_state_dict`` makes the resumed epoch start after
        those batches. It is the loop's count of batches handed to ``training_step``, not the loaders'
        position, which Lightning's prefetching keeps one batch ahead.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])} if state_dict else None

    def _eval_loaders(self) -> list[DataLoader]:
        return [self._loader(name) for name in ("forget", "retain") if name in self.datasets]

    @override
    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    @override
    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()
