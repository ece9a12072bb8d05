"""ArrayRecord shards of prepared examples.

A record is an .npz (no pickle) of: latents float32 [C, F, H, W] (stored as float16 to
halve the cache), cap_feats float32 [L, D], cap_len int, motion_score float32.
A prepared folder holds `shard-XXXXX.array_record`, `examples.jsonl` (one line per record,
in global record order: source, media, bucket, caption, path, motion_score),
`null_captions.npz` (features of each source's system prompt alone, for caption
dropout) and `prepared.json` (encoders, fps, resolution, buckets).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

PREPARED_META = "prepared.json"
EXAMPLES = "examples.jsonl"
NULL_CAPTIONS = "null_captions.npz"


def serialize(
    latents: np.ndarray, cap_feats: np.ndarray, cap_len: int, motion_score: float
) -> bytes:
    buf = io.BytesIO()
    np.savez(
        buf,
        latents=latents.astype(np.float16),
        cap_feats=cap_feats.astype(np.float16),
        cap_len=np.int32(cap_len),
        motion_score=np.float32(motion_score),
    )
    return buf.getvalue()


def deserialize(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {
            "latents": z["latents"].astype(np.float32),
            "cap_feats": z["cap_feats"].astype(np.float32),
            "cap_len": int(z["cap_len"]),
            "motion_score": float(z["motion_score"]),
        }


class ShardWriter:
    """Writes records round the shards in order; `examples.jsonl` lines match record ids."""

    def __init__(self, folder: str, records_per_shard: int = 1024):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.per_shard = folder, records_per_shard
        self.count, self._writer, self.shards = 0, None, []
        self._examples = open(os.path.join(folder, EXAMPLES), "w")

    def write(self, data: bytes, example: dict) -> None:
        if self.count % self.per_shard == 0:
            self._close_shard()
            name = f"shard-{len(self.shards):05d}.array_record"
            self.shards.append(name)
            # group_size:1 gives fast random access, which shuffled training reads need.
            self._writer = ArrayRecordWriter(os.path.join(self.folder, name), "group_size:1")
        self._writer.write(data)
        self._examples.write(json.dumps(example) + "\n")
        self.count += 1

    def _close_shard(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self, meta: dict) -> None:
        self._close_shard()
        self._examples.close()
        with open(os.path.join(self.folder, PREPARED_META), "w") as f:
            json.dump({**meta, "shards": self.shards, "num_examples": self.count}, f, indent=1)


def read_prepared(folder: str) -> tuple[dict, list[dict]]:
    """(meta, examples) of a prepared folder; example i is record i across the shards."""
    with open(os.path.join(folder, PREPARED_META)) as f:
        meta = json.load(f)
    with open(os.path.join(folder, EXAMPLES)) as f:
        examples = [json.loads(line) for line in f if line.strip()]
    for i, ex in enumerate(examples):
        ex["record"] = i
    return meta, examples


def is_prepared(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PREPARED_META))
