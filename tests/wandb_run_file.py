"""Tests only: reading W&B run files (``run-<id>.wandb``) without a server, to compare what ``lth-run`` left in W&B
with ``metrics.jsonl``. The sink itself never reads W&B's files (their format is W&B's private business).

The file is a LevelDB-style log (W&B's transaction log: a 7-byte header, then 32 KiB blocks of checksummed chunks)
of ``wandb.proto.wandb_internal_pb2.Record`` messages. wandb 0.31 ships no Python reader for it (the old
``wandb.sdk.internal.datastore`` is gone), so this small one decodes the chunks and lets wandb's protobuf classes
parse the records.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")  # checksum, length, type
_FILE_HEADER = struct.Struct("<4sHB")  # ":W&B", magic, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _crc(kind: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


def read_run_file(path: str | os.PathLike) -> Iterator[Any]:
    """The records (``wandb.proto.wandb_internal_pb2.Record``) of a ``run-<id>.wandb`` file, in order.

    The file is a LevelDB-style log (W&B's transaction log: a 7-byte header, then 32 KiB blocks of checksummed
    chunks); reading stops at the first incomplete or corrupt chunk, which is where a killed process stopped
    writing. wandb 0.31 ships no Python reader for it (the old ``wandb.sdk.internal.datastore`` is gone).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        return
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B run file this reader knows (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, b""
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        if pos + _HEADER.size > len(data):
            return
        checksum, length, kind = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or len(payload) < length or _crc(kind, payload) != checksum:
            return
        pos += _HEADER.size + length
        if kind in (_FULL, _FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The history rows of a run file, as dicts (``_step`` included), in order."""
    rows = []
    for record in read_run_file(path):
        if record.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            row["_step"] = record.history.step.num
            rows.append(row)
    return rows


def run_files(output_dir: str | os.PathLike, run_id: str) -> list[Path]:
    """The run files of every attempt (online or offline) of W&B run ``run_id`` in ``output_dir``, oldest first."""
    wandb_dir = Path(output_dir) / "wandb"
    found = list(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    found += wandb_dir.glob(f"run-*-{run_id}/run-{run_id}.wandb")
    return sorted(found, key=lambda p: p.parent.name.split("-")[-2])  # ...-run-YYYYMMDD_HHMMSS-<id>
