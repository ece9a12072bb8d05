"""Grain pipeline for one training task: infinite, per-host sharded, resumable batches.

Shape of the graph (every batch comes from ONE bucket and one media type):

  for each bucket b, for each source s with clips in b:
      MapDataset(clips of s in b, this host's share).shuffle().repeat().random_map(load)
  per bucket: IterDataset.mix({source: stream}) -> drop bad files -> batch(B)
  IterDataset.mix({bucket: batches}) [-> mp_prefetch] [-> caption features] -> tally

Weights: within bucket b source s gets w_s * n_sb / n_s, and bucket b gets
sum_s w_s * n_sb / n_s, so overall source s is drawn with probability w_s (exactly, up
to Grain's integer proportions) and each source's clips are drawn uniformly whatever
their bucket. Buckets and weights are computed from ALL clips before the host split, so
every host (and every mp worker) walks the same bucket sequence: the global batch
has one shape at every step. Mixes are keyed by name, so a checkpoint restores after
a change of weights. Bad files (found at probe time, too short for the smallest frame
bucket, or failing to decode mid-training) are skipped with one warning each and
counted in `batch["num_skipped"]` (unique files, cumulative, part of the iterator
state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from data_pipelines import buckets as bk
from data_pipelines import encoders, manifest, shards, video

log = logging.getLogger("data_pipelines")


@dataclasses.dataclass(frozen=True)
class Source:
    """A named data source: a manifest (.jsonl), a folder of media, or a prepared folder.

    Clips whose `source` field equals `name` are used; if none has it, all clips are.
    `system_prompt` is prepended to captions on the raw path; prepared folders carry the
    prompt chosen at prepare time.
    """

    name: str
    path: str
    weight: float = 1.0
    system_prompt: str = encoders.DEFAULT_SYSTEM_PROMPT


@dataclasses.dataclass(frozen=True)
class Task:
    """One data stream of the curriculum (media type, resolution, fps, batch size, mixture)."""

    sources: tuple[Source, ...]
    media: str = "video"  # video | image (F = 1)
    resolution: int = 256  # bucket area ~ resolution**2 pixels
    fps: float = 8.0
    max_frames: int = 32
    frame_buckets: tuple[int, ...] = ()  # () -> bk.default_frame_buckets(max_frames)
    batch_size: int = 8
    multiple: int = 32  # bucket sides divisible by this (VAE 8 x patch 2 x 2)
    max_aspect: float = 4.0
    latent_encoder: str = "identity"
    caption_encoder: str = "minilm"
    caption_len: int = 0  # 0: pad each batch to its longest caption (x8); else fixed
    max_caption_len: int = 256
    caption_keep_prob: float = 0.8  # else the system prompt alone (recipe)
    motion_drop_prob: float = 0.3  # video: motion score -> -1 (recipe)
    image_motion_zero_prob: float = 0.4  # image: 0.0 with this p, else -1 (recipe)
    seed: int = 0
    num_workers: int = 0  # >0: decode in that many processes (mp_prefetch)
    read_threads: int = 2  # threads per stream reading/decoding ahead

    @property
    def frames(self) -> tuple[int, ...]:
        if self.media == "image":
            return (1,)
        return tuple(self.frame_buckets) or bk.default_frame_buckets(self.max_frames)


def task_from_dict(d: Mapping[str, Any]) -> Task:
    """Task from a plain dict/ConfigDict; `sources` is {name: {path, weight, system_prompt}}."""
    d = dict(d)
    srcs = tuple(Source(name=k, **dict(v)) for k, v in dict(d.pop("sources")).items())
    if "frame_buckets" in d:
        d["frame_buckets"] = tuple(d["frame_buckets"])
    return Task(sources=srcs, **d)


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- clips


def _select(records: list[dict], name: str) -> list[dict]:
    mine = [r for r in records if r.get("source") == name]
    return mine if mine else records


def assign_buckets(task: Task, records: list[dict], src: Source, skipped: list[str]) -> list[dict]:
    """Probed records of this task's media type -> clip dicts with their bucket key.

    Videos too short for the smallest frame bucket are skipped (one warning, counted).
    """
    res_buckets = bk.resolution_buckets(task.resolution, task.multiple, task.max_aspect)
    out = []
    for rec in records:
        if rec["media"] != task.media:
            continue
        if task.media == "video":
            avail = min(task.max_frames, video.available_frames(rec["duration"], task.fps))
            f = bk.frame_bucket(avail, task.frames)
            if f is None:
                manifest.warn_skip(
                    rec["path"],
                    f"too short ({rec['duration']:.2f}s, needs "
                    f"{min(task.frames)} frames at {task.fps:g} fps)",
                )
                skipped.append(rec["path"])
                continue
        else:
            f = 1
        h, w = bk.closest_bucket(rec["height"], rec["width"], res_buckets)
        out.append(
            {
                "kind": "raw",
                "path": rec["path"],
                "caption": rec.get("caption", ""),
                "source": src.name,
                "source_in_folder": rec.get("source", src.name),
                "system_prompt": src.system_prompt,
                "duration": float(rec.get("duration", 0.0)),
                "motion_score": float(rec.get("motion_score", -1.0)),
                "bucket": bk.bucket_key(task.media, f, h, w),
            }
        )
    return out


def _raw_clips(task: Task, src: Source, skipped: list[str], cache: dict) -> list[dict]:
    if src.path not in cache:  # sources often share one manifest: read it once
        cache[src.path] = manifest.load_input(src.path)
        skipped.extend(cache[src.path][1])
    return assign_buckets(task, _select(cache[src.path][0], src.name), src, skipped)


def _prepared_clips(task: Task, src: Source) -> tuple[list[dict], dict]:
    meta, examples = shards.read_prepared(src.path)
    for key in ("resolution", "multiple") + (("fps",) if task.media == "video" else ()):
        if float(meta[key]) != float(getattr(task, key)):
            raise ValueError(
                f"{src.path} was prepared with {key}={meta[key]}, task wants {getattr(task, key)}"
            )
    if meta["caption_encoder"] != task.caption_encoder:
        raise ValueError(
            f"{src.path} has {meta['caption_encoder']} captions, task wants {task.caption_encoder}"
        )
    folder = os.path.abspath(src.path)
    out = [
        {
            "kind": "prepared",
            "folder": folder,
            "record": ex["record"],
            "path": ex["path"],
            "source": src.name,
            "source_in_folder": ex["source"],
            "bucket": ex["bucket"],
        }
        for ex in _select(examples, src.name)
        if ex["media"] == task.media
    ]
    return out, meta


def _host_share(clips: list[dict], index: int, count: int) -> list[dict]:
    # Fewer clips than hosts: hosts wrap round (duplicates beat an empty bucket stream).
    if len(clips) >= count:
        return clips[index::count]
    return [clips[index % len(clips)]]


# ----------------------------------------------------------------------------- loading


class _Loader:
    """random_map transform: clip dict + rng -> example dict, or {'skipped': path} if bad.

    Runs in reader threads / mp workers; heavy state (latent encoder, ArrayRecord readers)
    is created lazily in the process that uses it.
    """

    def __init__(self, task: Task):
        self.task = task
        self._latent = None
        self._readers: dict[str, Any] = {}
        self._null_caps: dict[str, dict] = {}

    def __getstate__(self):
        return {"task": self.task, "_latent": None, "_readers": {}, "_null_caps": {}}

    def _motion(self, score: float, rng: np.random.Generator) -> float:
        if self.task.media == "image":
            return 0.0 if rng.random() < self.task.image_motion_zero_prob else -1.0
        return -1.0 if rng.random() < self.task.motion_drop_prob else score

    def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
        keep_caption = rng.random() < self.task.caption_keep_prob
        motion_rng = np.random.default_rng(rng.integers(2**31))
        try:
            if clip["kind"] == "prepared":
                ex = self._load_prepared(clip, keep_caption)
            else:
                ex = self._load_raw(clip, rng, keep_caption)
        except Exception as e:  # pylint: disable=broad-except
            # Any failure on one file (corrupt, truncated, codec error) must not stop training.
            return {"skipped": clip["path"], "reason": f"{type(e).__name__}: {e}"}
        ex["motion_score"] = np.float32(self._motion(ex["motion_score"], motion_rng))
        ex["source"] = clip["source"]
        ex["path"] = clip["path"]
        return ex

    def _load_raw(self, clip: dict, rng: np.random.Generator, keep_caption: bool) -> dict:
        _, f, h, w = bk.parse_bucket_key(clip["bucket"])
        if self.task.media == "image":
            if video.media_type(clip["path"]) == "image":
                frames = video.read_image(clip["path"])[None]
            else:
                frames = video.read_frames(clip["path"], 1.0, 1)
        else:
            slack = max(0.0, clip["duration"] - f / self.task.fps)
            frames = video.read_frames(
                clip["path"], self.task.fps, f, start=float(rng.uniform(0, slack))
            )
        if self._latent is None:
            self._latent = encoders.LATENT_ENCODERS[self.task.latent_encoder]()
        latents = self._latent.encode(bk.resize_crop(frames, h, w))
        text = clip["system_prompt"] + (clip["caption"] if keep_caption else "")
        return {"latents": latents, "caption": text, "motion_score": clip["motion_score"]}

    def _load_prepared(self, clip: dict, keep_caption: bool) -> dict:
        folder = clip["folder"]
        if folder not in self._readers:
            meta, _ = shards.read_prepared(folder)
            self._readers[folder] = grain.sources.ArrayRecordDataSource(
                [os.path.join(folder, s) for s in meta["shards"]]
            )
            with np.load(os.path.join(folder, shards.NULL_CAPTIONS)) as z:
                self._null_caps[folder] = {k: z[k] for k in z.files}
        ex = shards.deserialize(self._readers[folder][clip["record"]])
        if not keep_caption:  # system prompt alone, encoded at prepare time
            null, src = self._null_caps[folder], clip["source_in_folder"]
            ex["cap_feats"], ex["cap_len"] = null[src].astype(np.float32), int(null[src + "__len"])
        return ex


# ----------------------------------------------------------------------------- batching


class _DropSkippedIterDataset(grain.IterDataset):
    """Drops {'skipped': path} markers; their paths ride along on the next good example."""

    def __iter__(self):
        return _DropSkippedIterator(self._parent.__iter__())


class _DropSkippedIterator(grain.DatasetIterator):
    def __init__(self, parent):
        super().__init__(parent)
        self._pending: list[str] = []

    def __next__(self):
        while True:
            ex = next(self._parent)
            if "skipped" in ex:
                log.debug("bad file %s: %s", ex["skipped"], ex["reason"])
                self._pending.append((ex["skipped"], ex["reason"]))
                continue
            ex = dict(ex, skipped_files=self._pending)
            self._pending = []
            return ex

    def get_state(self):
        return {"parent": self._parent.get_state(), "pending": [list(p) for p in self._pending]}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._pending = [tuple(p) for p in state["pending"]]


def pad_captions(
    feats: Sequence[np.ndarray], lengths: Sequence[int], fixed: int, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-caption features and valid lengths -> `[N, L, D]` features and `[N, L]` mask;
    L = `fixed`, or the longest caption rounded up to a multiple of 8 (at most max_len)."""
    n = fixed or min(encoders.round_up(max(max(lengths), 1)), encoders.round_up(max_len))
    out = np.zeros((len(feats), n, feats[0].shape[-1]), np.float32)
    mask = np.zeros((len(feats), n), bool)
    for i, (f, k) in enumerate(zip(feats, lengths)):
        k = min(k, n)
        out[i, :k] = f[:k]
        mask[i, :k] = True
    return out, mask


class _Collate:
    """Stacks examples of one bucket into the batch dict (captions padded if present)."""

    def __init__(self, task: Task, bucket: str):
        self.task, self.bucket = task, bucket

    def __call__(self, exs: Sequence[dict]) -> dict:
        batch = {
            "latents": np.stack([e["latents"] for e in exs]),
            "motion_score": np.asarray([e["motion_score"] for e in exs], np.float32),
            "source": np.asarray([e["source"] for e in exs]),
            "path": np.asarray([e["path"] for e in exs]),
            "media": self.task.media,
            "bucket": self.bucket,
            "skipped_files": [p for e in exs for p in e["skipped_files"]],
        }
        if "cap_feats" in exs[0]:
            batch["cap_feats"], batch["cap_mask"] = pad_captions(
                [e["cap_feats"] for e in exs],
                [e["cap_len"] for e in exs],
                self.task.caption_len,
                self.task.max_caption_len,
            )
        else:
            batch["caption"] = [e["caption"] for e in exs]
        return batch


class _EncodeCaptions:
    """Raw path, main process: caption texts -> features (cached per text)."""

    def __init__(self, task: Task):
        self.task = task

    def __call__(self, batch: dict) -> dict:
        enc = encoders.get_caption_encoder(
            self.task.caption_encoder, max_len=self.task.max_caption_len
        )
        out = enc.encode(batch.pop("caption"))
        batch["cap_feats"], batch["cap_mask"] = pad_captions(
            [f for f, _ in out],
            [n for _, n in out],
            self.task.caption_len,
            self.task.max_caption_len,
        )
        return batch


class _TallyIterDataset(grain.IterDataset):
    """Warns once per bad file and keeps the set of skipped files in the iterator state."""

    def __init__(self, parent, initial: Sequence[str]):
        super().__init__(parent)
        self._initial = list(initial)

    def __iter__(self):
        return _TallyIterator(self._parent.__iter__(), self._initial)


class _TallyIterator(grain.DatasetIterator):
    def __init__(self, parent, initial):
        super().__init__(parent)
        self._skipped = set(initial)

    def __next__(self):
        batch = next(self._parent)
        for path, reason in batch.pop("skipped_files"):
            manifest.warn_skip(path, reason)
            self._skipped.add(path)
        batch["num_skipped"] = len(self._skipped)
        return batch

    def get_state(self):
        return {"parent": self._parent.get_state(), "skipped": sorted(self._skipped)}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._skipped = set(state["skipped"])


# ----------------------------------------------------------------------------- build


@dataclasses.dataclass
class TaskPlan:
    """What the pipeline will draw: bucket -> source -> clips, and the mixing weights."""

    groups: dict[str, dict[str, list[dict]]]
    bucket_weights: dict[str, float]
    source_weights: dict[str, dict[str, float]]
    skipped: list[str]


def plan_task(task: Task) -> TaskPlan:
    """Loads every source's clip list, assigns buckets and computes mixing weights."""
    skipped: list[str] = []
    per_source: dict[str, list[dict]] = {}
    loaded: dict[str, tuple] = {}
    if len({shards.is_prepared(s.path) for s in task.sources}) > 1:
        raise ValueError("a task's sources must be all prepared folders or all raw media")
    for src in task.sources:
        if src.weight <= 0:  # weight 0 switches a source off (Grain's mix rejects it)
            continue
        if shards.is_prepared(src.path):
            clips, _ = _prepared_clips(task, src)
        else:
            clips = _raw_clips(task, src, skipped, loaded)
        if clips:
            per_source[src.name] = clips
        else:
            log.warning("source %s has no %s clips in %s", src.name, task.media, src.path)
    if not per_source:
        raise ValueError(f"no usable {task.media} clips in any source of {task}")
    weight = {s.name: s.weight for s in task.sources}
    groups: dict[str, dict[str, list[dict]]] = {}
    for name, clips in per_source.items():
        for c in clips:
            groups.setdefault(c["bucket"], {}).setdefault(name, []).append(c)
    source_weights = {
        b: {s: weight[s] * len(cs) / len(per_source[s]) for s, cs in g.items()}
        for b, g in sorted(groups.items())
    }
    bucket_weights = {b: sum(w.values()) for b, w in source_weights.items()}
    return TaskPlan(groups, bucket_weights, source_weights, skipped)


def make_dataset(
    task: Task, shard_index: int | None = None, shard_count: int | None = None
) -> grain.IterDataset:
    """The task's infinite IterDataset of batches for this host (defaults: jax process)."""
    if shard_index is None or shard_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        shard_index, shard_count = jax.process_index(), jax.process_count()
    plan = plan_task(task)
    loader = _Loader(task)
    read = grain.ReadOptions(
        num_threads=task.read_threads, prefetch_buffer_size=max(task.read_threads, task.batch_size)
    )
    per_bucket = {}
    for b, group in plan.groups.items():
        streams = {}
        for s, clips in sorted(group.items()):
            ds = grain.MapDataset.source(_host_share(clips, shard_index, shard_count))
            # Grain's index shuffle costs ~ms per element on tiny lists: shuffle >= 1024.
            ds = ds.repeat(-(-1024 // len(ds)))
            ds = ds.shuffle(seed=_seed(task.seed, b, s, "shuffle")).repeat()
            ds = ds.random_map(loader, seed=_seed(task.seed, b, s, "load"))
            streams[s] = ds.to_iter_dataset(read)
        mixed = (
            grain.IterDataset.mix(streams, plan.source_weights[b])
            if len(streams) > 1
            else next(iter(streams.values()))
        )
        per_bucket[b] = _DropSkippedIterDataset(mixed).batch(
            task.batch_size, drop_remainder=True, batch_fn=_Collate(task, b)
        )
    ds = (
        grain.IterDataset.mix(per_bucket, plan.bucket_weights)
        if len(per_bucket) > 1
        else next(iter(per_bucket.values()))
    )
    if task.num_workers > 0:
        from absl import flags  # pylint: disable=import-outside-toplevel

        if not flags.FLAGS.is_parsed():  # Grain's worker code reads absl flags
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=task.num_workers, per_worker_buffer_size=2)
        )
    if not any(shards.is_prepared(s.path) for s in task.sources):
        ds = ds.map(_EncodeCaptions(task))
    return _TallyIterDataset(ds, plan.skipped)


def make_iterator(
    task: Task, shard_index: int | None = None, shard_count: int | None = None
) -> grain.DatasetIterator:
    """Infinite iterator of batches; `get_state()`/`set_state()` resume the exact stream."""
    return iter(make_dataset(task, shard_index, shard_count))
