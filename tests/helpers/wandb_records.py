"""Read back what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file.

wandb-core (0.19+) keeps an offline run's history, config and summary only in that file (no
``files/wandb-summary.json``) and the ``wandb`` package has no public reader for it, so this helper reads
its framing (a LevelDB log: 32 KiB blocks of CRC32 + length + type + chunk) and decodes each record with
wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = 7  # ":W&B", magic 0xBEE1, version
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7  # crc32, length (uint16), type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class RunRecords:
    """History rows, config and summary of one offline run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def metric_keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def _payloads(data: bytes) -> list[bytes]:
    records, parts, pos = [], [], _HEADER
    while pos + _CHUNK_HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            records.append(b"".join(parts))
            parts = []
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _records(path: Path, wait_s: float) -> list[Any]:
    """The file's records once it holds the run's ``exit`` record (wandb-core may still be writing the
    file when ``run.finish()`` returns); waits at most ``wait_s`` for it."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for payload in _payloads(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_offline_run(run_folder: Path, wait_s: float = 60.0) -> RunRecords:
    """The records of the finished offline run in ``run_folder`` (``.../wandb/offline-run-<time>-<id>``)."""
    (path,) = run_folder.glob("run-*.wandb")
    out = RunRecords()
    for record in _records(path, wait_s):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            out.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            out.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return out
