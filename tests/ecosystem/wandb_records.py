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


def _payloads(data: bytes) -> list[bytes]:
    assert data[: len(_HEADER)] == _HEADER, "not a W&B run file"
    pos, pending, out = len(_HEADER), b"", []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
    return out


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


def _records(path: Path, timeout: float) -> list[Any]:
    # `wandb.finish()` can return while the service process is still writing the file; the run is
    # complete once its `exit` record is there.
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        records = []
        for payload in _payloads(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


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
