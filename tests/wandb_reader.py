"""Read an offline W&B run (``run-*.wandb``) back, to check what was logged.

The file is a LevelDB-style log (32 KiB blocks, 7-byte record headers) of protobuf ``Record``s,
after a 7-byte ``:W&B`` file header; wandb 0.31 ships no Python reader, so the tests carry this.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk
        elif kind == LAST:
            yield buf + chunk
            buf = b""


def read_run(run_file: Path) -> dict:
    """``{"config", "history": [{key: value}...], "summary", "artifacts"}`` of a run file.

    Each artifact is ``{"name", "type", "files"}`` (the manifest's paths).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict = {"config": {}, "history": [], "summary": {}, "artifacts": []}
    for raw in _records(Path(run_file)):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "artifact":
            out["artifacts"].append({
                "name": rec.artifact.name, "type": rec.artifact.type,
                "files": sorted(e.path for e in rec.artifact.manifest.contents)})
        elif kind == "config":
            for i in rec.config.update:
                out["config"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out
