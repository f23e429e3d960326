"""Read an offline W&B run back from its ``run-<id>.wandb`` file, without a server.

The file is what ``wandb sync`` uploads: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) and then
LevelDB-log records in 32 KiB blocks, each record a serialized ``wandb.proto`` ``Record``. wandb 0.31
ships no Python reader for it, so the tests carry this one.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes] | None:
    """The records' payloads, or ``None`` while the file ends inside a record (still being written)."""
    assert data[: len(_HEADER)] == _HEADER, "not a W&B run file"
    pos, pending, out = len(_HEADER), None, []
    while pos < len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        if pos + 7 > len(data):
            return None
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            return None
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            out.append(pending + chunk)
            pending = None
    return None if pending is not None else out


@dataclass
class OfflineRun:
    """What an offline run recorded: history rows, ``define_metric`` calls and logged artifacts."""

    files: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]


def _parse(data: bytes) -> list[Any] | None:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    payloads = _payloads(data)
    if payloads is None:
        return None
    records = []
    for payload in payloads:
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            return None
        records.append(record)
    return records


def _records(path: Path, timeout: float, settle: float = 0.3) -> list[Any]:
    """The run's records once it has finished writing them.

    ``wandb.finish()`` can return while the service process is still writing the file, so a read may end
    inside a record. The run counts as written when the file parses to whole records, holds the ``exit``
    record, and has not grown for ``settle`` seconds (records may follow ``exit``).
    """
    deadline = time.monotonic() + timeout
    seen, stable_since = b"", None
    while True:
        data = path.read_bytes()
        now = time.monotonic()
        if data != seen:
            seen, stable_since = data, now
        records = _parse(data)
        finished = records is not None and any(r.WhichOneof("record_type") == "exit" for r in records)
        if finished and now - stable_since >= settle:
            return records
        if now > deadline:
            state = "no exit record yet" if records is not None else "ends inside a record"
            raise AssertionError(f"W&B run file {path} is not finished after {timeout:.0f} s ({state}).")
        time.sleep(0.05)


def read_run(run_dir: str | Path, timeout: float = 30.0) -> OfflineRun:
    """Parse ``<run_dir>/run-*.wandb`` of a finished run; ``run_dir`` is the parent of its ``files``.

    History rows map each key to its decoded JSON value; nested values (tables, images) are joined into
    one dict per top-level key, e.g. ``row["eval/results"]["_type"] == "table-file"``. Waits up to
    ``timeout`` seconds for the run's last record to be written.
    """
    run_dir = Path(run_dir)
    (path,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(files=run_dir / "files")
    for record in _records(path, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                value = json.loads(item.value_json)
                if len(keys) == 1:
                    row[keys[0]] = value
                else:
                    row.setdefault(keys[0], {})["/".join(keys[1:])] = value
            run.history.append(row)
        elif kind == "metric":
            m = record.metric
            run.metrics.append({"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric})
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                  "files": [entry.path for entry in a.manifest.contents]})
    return run
