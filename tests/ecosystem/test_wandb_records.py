"""The offline-run reader waits for a finished file: a read that ends inside a record is not a run."""

import struct
import threading
import time

import pytest

from .wandb_records import _BLOCK, _FIRST, _FULL, _HEADER, _LAST, _payloads, _records


def _record(kind: int, payload: bytes) -> bytes:
    return struct.pack("<IHB", 0, len(payload), kind) + payload


def _exit_record() -> bytes:
    from wandb.proto import wandb_internal_pb2 as pb

    record = pb.Record()
    record.exit.exit_code = 0
    return record.SerializeToString()


def test_whole_records_are_read_and_a_cut_one_is_not():
    data = _HEADER + _record(_FULL, b"abc") + _record(_FIRST, b"de") + _record(_LAST, b"f")
    assert _payloads(data) == [b"abc", b"def"]
    for cut in range(len(_HEADER) + 1, len(data)):
        payloads = _payloads(data[:cut])
        assert payloads is None or payloads == [b"abc"], cut  # never a partial payload
    assert _payloads(data[: len(data) - 1]) is None
    assert _payloads(_HEADER + _record(_FIRST, b"de")) is None, "a record split across blocks, unfinished"


def test_block_padding_is_skipped():
    first = _record(_FULL, b"x" * (_BLOCK - len(_HEADER) - 7 - 3))  # leaves 3 bytes of padding
    data = _HEADER + first + b"\0" * 3 + _record(_FULL, b"y")
    assert _payloads(data) == [b"x" * (_BLOCK - len(_HEADER) - 10), b"y"]


def test_reader_waits_for_the_writer(tmp_path):
    path = tmp_path / "run-x.wandb"
    whole = _HEADER + _record(_FULL, _exit_record())
    path.write_bytes(whole[:-3])  # the service is still writing

    def finish():
        time.sleep(0.3)
        path.write_bytes(whole)

    writer = threading.Thread(target=finish)
    writer.start()
    records = _records(path, timeout=10)
    writer.join()
    assert [r.WhichOneof("record_type") for r in records] == ["exit"]


def test_reader_says_when_the_run_never_finishes(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(_HEADER + _record(_FULL, _exit_record())[:-2])
    with pytest.raises(AssertionError, match="not finished.*ends inside a record"):
        _records(path, timeout=0.3)
