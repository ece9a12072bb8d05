"""ArrayRecord shards of prepared examples.

A record holds: latents [C, F, H, W] (float16, half the cache; ALL latents of the clip,
F = `frames`), cap_feats [L, D] (float16), cap_len int32, motion_score float32; as
MAGIC, a uint32 header length, a JSON header {name: [dtype, shape, offset]} and the raw
arrays, read back as zero-copy views. No pickle, and no .npy header parsing: numpy
parses those with ast.literal_eval, which on CPython 3.11 races with any other thread's
use of the ast module (SystemError "AST constructor recursion depth mismatch") while
the reader threads load examples.
A prepared folder holds `shard-XXXXX.array_record`, `examples.jsonl` (one line per record,
in global record order: source, media, caption, path, motion_score, frames (stored
latent frames), height and width (the bucket, pixels)), `null_captions.npz` (features of
each source's system prompt alone, for caption dropout) and `prepared.json` (META_KEYS:
encoders and their paths, latent shape factors, fps, max_duration, bucket settings;
plus skip counts, shards, num_examples).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.manifest import DataError

PREPARED_META = "prepared.json"
EXAMPLES = "examples.jsonl"
NULL_CAPTIONS = "null_captions.npz"
# What a training task checks against (pipeline.check_task); prepare writes them all.
META_KEYS = (
    "resolution", "fps", "max_duration", "multiple", "max_aspect",
    "latent_encoder", "latent_encoder_path", "latent_channels", "latent_temporal",
    "latent_spatial", "caption_encoder", "caption_encoder_path", "cap_feat_dim",
    "record_format",
)


MAGIC = b"LJR1"  # also prepared.json's record_format


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Any named arrays -> one record (header + 8-byte aligned raw arrays)."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.asarray(a)
        blob = np.ascontiguousarray(a).tobytes()
        blob += b"\0" * (-len(blob) % 8)  # keep every array 8-byte aligned
        header[name] = [a.dtype.str, list(a.shape), offset]
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """A record's arrays as read-only zero-copy views."""
    if data[:4] != MAGIC:
        raise ValueError("not a record of this version: re-run lumina-jax prepare")
    base = 8 + struct.unpack("<I", data[4:8])[0]
    return {
        name: np.frombuffer(data, dtype, int(np.prod(shape)), base + offset).reshape(shape)
        for name, (dtype, shape, offset) in json.loads(data[8:base]).items()
    }


def serialize(
    latents: np.ndarray, cap_feats: np.ndarray, cap_len: int, motion_score: float
) -> bytes:
    return pack({
        "latents": latents.astype(np.float16),
        "cap_feats": cap_feats.astype(np.float16),
        "cap_len": np.int32(cap_len),
        "motion_score": np.float32(motion_score),
    })


def deserialize(data: bytes) -> dict:
    """The record's arrays; latents stay a read-only float16 view (callers convert the
    part they use)."""
    z = unpack(data)
    return {
        "latents": z["latents"],
        "cap_feats": z["cap_feats"].astype(np.float32),
        "cap_len": int(z["cap_len"]),
        "motion_score": float(z["motion_score"]),
    }


def read_null_captions(folder: str) -> dict[str, np.ndarray]:
    """{source: float16 [L, D], source + '__len': int32} of a prepared folder."""
    with np.load(os.path.join(folder, NULL_CAPTIONS)) as z:
        return {k: z[k] for k in z.files}


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

    def close(self, meta: dict) -> dict:
        """Finishes the shards and writes prepared.json (`meta` plus format, shards and
        count); returns what it wrote."""
        self._close_shard()
        self._examples.close()
        meta = {**meta, "record_format": MAGIC.decode(), "shards": self.shards,
                "num_examples": self.count}
        with open(os.path.join(self.folder, PREPARED_META), "w") as f:
            json.dump(meta, f, indent=1)
        return meta


def read_meta(folder: str) -> dict:
    """prepared.json alone (cheap: no examples)."""
    with open(os.path.join(folder, PREPARED_META)) as f:
        return json.load(f)


def read_prepared(folder: str) -> tuple[dict, list[dict]]:
    """(meta, examples) of a prepared folder; example i is record i across the shards."""
    meta = read_meta(folder)
    with open(os.path.join(folder, EXAMPLES)) as f:
        lines = [line for line in f if line.strip()]
    # Counted before parsing: a folder written in place by an older prepare and cut short
    # (its last line half written) must read as incomplete, not as a JSON traceback.
    if len(lines) != meta["num_examples"]:
        raise DataError(f"{folder} is incomplete: {len(lines)} of {meta['num_examples']} "
                        f"examples (a prepare was stopped while writing it): re-run "
                        f"lumina-jax prepare")
    examples = [json.loads(line) for line in lines]
    for i, ex in enumerate(examples):
        ex["record"] = i
    return meta, examples


def is_prepared(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PREPARED_META))
