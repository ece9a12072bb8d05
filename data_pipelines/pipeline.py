"""Grain pipeline for one training task: infinite, per-host sharded, resumable batches.

Shape of the graph (every batch comes from ONE bucket and one media type):

  for each bucket b, for each source s with clips in b:
      MapDataset(clips of s in b, this host's share).shuffle().repeat().random_map(load)
  per bucket: IterDataset.mix({source: stream}) -> drop bad files -> batch(B)
  IterDataset.mix({bucket: batches}) [-> mp_prefetch] [-> caption features] -> tally

With `Task.packing` the buckets are mixed per clip instead, with the same weights, and
clips of every bucket are packed into rows of one token budget (data_pipelines/packing.py):
  per bucket: IterDataset.mix({source: stream}) -> drop bad files
  random mix({bucket: clips}) -> patchify [-> mp_prefetch] [-> caption features]
  -> first-fit packing into batch_size rows -> tally

Weights: within bucket b source s gets w_s * n_sb / n_s, and bucket b gets
sum_s w_s * n_sb / n_s, so overall source s is drawn with probability w_s (exactly, up
to Grain's integer proportions) and each source's clips are drawn uniformly whatever
their bucket. Buckets and weights are computed from ALL clips before the host split, so
every host (and every mp worker) walks the same bucket sequence: the global batch
has one shape at every step. Mixes are keyed by name, so a checkpoint restores after
a change of weights.

A clip's bucket is (media, window length in latent frames, height, width); each draw
takes a fresh random window (see `Task`). Skipped with one warning each and counted in
`batch["num_skipped"]` (unique files, cumulative, part of the iterator state): files
unreadable at probe time, too small or too low fps (raw path, same rules as prepare),
too short for any window, or failing to load twice in a row mid-training. A stream that
meets `Task.max_consecutive_failures` bad examples in a row raises DataError.
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
from data_pipelines import encoders, manifest, packing, shards, video
from data_pipelines.manifest import DataError  # re-exported: a stream that cannot produce batches

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


MEDIA = ("video", "image")


@dataclasses.dataclass(frozen=True)
class Task:
    """One data stream of the curriculum (media type, resolution, fps, batch size, mixture).

    Frames: each draw of a video takes a window at a random start. Its length in latent
    frames is max_frames // T (T: the latent encoder's temporal compression; latent 0 of
    a T > 1 clip is dropped first), cut to what the clip has and to a multiple of
    `temporal_multiple`; with `frame_buckets`, the largest bucket that fits instead.
    """

    sources: tuple[Source, ...]
    media: str = "video"  # video | image (F = 1)
    resolution: int = 256  # bucket area ~ resolution**2 pixels; smaller items are skipped
    fps: float = 8.0
    max_frames: int = 32  # pixel frames per window
    frame_buckets: tuple[int, ...] = ()  # allowed window lengths (latent frames); () any
    temporal_multiple: int = 1  # window lengths are multiples of this (the model's pF)
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
    max_consecutive_failures: int = 64  # this many bad examples in a row: DataError
    # Sequence packing (data_pipelines/packing.py): clips of every bucket patchified and
    # packed whole, first-fit, into batch_size rows of pack_tokens tokens, at most
    # pack_clips clips and pack_caption_tokens caption tokens (0: pack_clips x the caption
    # length) per row: one batch shape for the task. patch_size (p, pF) is the task's
    # (set by the trainer's config).
    packing: bool = False
    pack_tokens: int = 0
    pack_clips: int = 8
    pack_caption_tokens: int = 0
    patch_size: tuple[int, int] = (2, 1)


def _check_fields(d: Mapping[str, Any], cls, where: str = "") -> None:
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where}unknown field(s) {unknown}; allowed: {allowed}")


def task_from_dict(d: Mapping[str, Any]) -> Task:
    """Task from a plain dict/ConfigDict; `sources` is {name: {path, weight, system_prompt}}.
    media="audio" gives a V2A task (data_pipelines/v2a.py)."""
    d = dict(d)
    if d.get("media") == "audio":
        from data_pipelines.v2a import audio_task_from_dict

        return audio_task_from_dict(d)
    _check_fields(d, Task)
    srcs = []
    for name, fields in dict(d.pop("sources", {})).items():
        fields = dict(fields)
        _check_fields(fields, Source, f"sources.{name}: ")
        srcs.append(Source(**{**fields, "name": name}))
    for field in ("frame_buckets", "patch_size"):
        if field in d:
            d[field] = tuple(d[field])
    return Task(sources=tuple(srcs), **d)


def _need(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"{field}: {problem}")


def check_task(task: Task) -> None:
    """Raises ValueError('<field>: <problem>') before any compute if the task cannot run.

    Cheap: reads each prepared folder's prepared.json, never its examples or shards.
    """
    if not isinstance(task, Task):  # a V2A task (task_from_dict with media="audio")
        from data_pipelines.v2a import check_audio_task

        return check_audio_task(task)
    _need(task.media in MEDIA, "media", f"must be one of {list(MEDIA)} (got {task.media!r})")
    for field in ("resolution", "fps", "max_frames", "batch_size", "multiple",
                  "max_consecutive_failures"):
        value = getattr(task, field)
        _need(value > 0, field, f"must be > 0 (got {value})")
    _need(task.resolution >= task.multiple, "resolution",
          f"must be >= multiple={task.multiple} (got {task.resolution})")
    _need(task.temporal_multiple >= 1, "temporal_multiple",
          f"must be >= 1 (got {task.temporal_multiple})")
    _need(all(b > 0 and b % task.temporal_multiple == 0 for b in task.frame_buckets),
          "frame_buckets", f"must be positive multiples of temporal_multiple="
          f"{task.temporal_multiple} (got {list(task.frame_buckets)})")
    for field, known in (("latent_encoder", encoders.LATENT_ENCODERS),
                         ("caption_encoder", encoders.CAPTION_ENCODERS)):
        name = getattr(task, field)
        _need(name in known, field, f"unknown encoder {name!r}; choose one of {sorted(known)}")
    _need(bool(task.sources), "sources", "a task needs at least one source")
    for src in task.sources:
        _need(src.weight >= 0, "sources", f"{src.name!r} has weight {src.weight}; must be >= 0")
        _need(os.path.exists(src.path), "sources",
              f"{src.name!r} path {src.path!r} does not exist")
    _need(any(s.weight > 0 for s in task.sources), "sources", "all weights are 0")
    if task.packing:
        packing.check_packing(task)
    prepared = {s.path: shards.is_prepared(s.path) for s in task.sources}
    _need(len(set(prepared.values())) == 1, "sources",
          "a task's sources must be all prepared folders or all raw media")
    temporal = encoders.LATENT_ENCODERS[task.latent_encoder].temporal
    _need(any(prepared.values()) or temporal == 1, "latent_encoder",
          f"{task.latent_encoder} compresses time ({temporal}x); raw media are encoded on the "
          f"fly in pixel space only: prepare the data first (lumina-jax prepare "
          f"--latent-encoder {task.latent_encoder} ...)")
    for path in sorted(p for p, is_prep in prepared.items() if is_prep):
        _check_prepared(task, path, shards.read_meta(path))


def _check_prepared(task: Task, path: str, meta: dict) -> None:
    missing = [k for k in shards.META_KEYS if k not in meta]
    stale = meta.get("record_format") != shards.MAGIC.decode()
    _need(not missing and not stale, "sources", f"{path} was prepared by an older version "
          f"({missing or 'other record format'}): re-run lumina-jax prepare")
    for key in ("resolution", "multiple") + (("fps",) if task.media == "video" else ()):
        _need(float(meta[key]) == float(getattr(task, key)), key,
              f"task has {getattr(task, key)} but {path} was prepared with {meta[key]}")
    for key in ("latent_encoder", "caption_encoder"):
        _need(meta[key] == getattr(task, key), key,
              f"task has {getattr(task, key)!r} but {path} was prepared with {meta[key]!r}")
    if task.media == "video":
        stored = video.available_frames(meta["max_duration"], meta["fps"])
        _need(stored >= task.max_frames, "max_frames",
              f"{task.max_frames} frames at {task.fps:g} fps need "
              f"{task.max_frames / task.fps:g} s, but {path} keeps at most "
              f"{meta['max_duration']:g} s ({stored} frames): lower max_frames or re-run "
              f"`lumina-jax prepare ... --max-duration {task.max_frames / task.fps:g}`")


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- clips


def _select(records: list[dict], name: str) -> list[dict]:
    mine = [r for r in records if r.get("source") == name]
    return mine if mine else records


def _windowed(task: Task, clip: dict, stored: int, temporal: int, skipped: dict) -> dict | None:
    """The clip with its window bookkeeping and bucket; None (skipped) if no window fits.

    `first`: index of the first usable latent; `usable`: latents from there on.
    """
    if task.media == "image":
        first, usable, f = 0, 1, 1
    else:
        usable = bk.usable_latents(stored, temporal)
        first = stored - usable
        f = bk.window_length(usable, task.max_frames, temporal, task.temporal_multiple,
                             task.frame_buckets)
    if f == 0:
        shortest = min(task.frame_buckets or (task.temporal_multiple,))
        manifest.skip(skipped, clip["path"], "too_short",
                      f"{usable} usable latent frames, a window needs {shortest}")
        return None
    bucket = bk.bucket_key(task.media, f, clip["height"], clip["width"])
    return {**clip, "first": first, "usable": usable, "bucket": bucket}


def _raw_clips(task: Task, src: Source, skipped: dict, cache: dict) -> list[dict]:
    if src.path not in cache:  # sources often share one manifest: read it once
        cache[src.path] = manifest.load_input(src.path)
        skipped.update(cache[src.path][1])
    res_buckets = bk.resolution_buckets(task.resolution, task.multiple, task.max_aspect)
    out = []
    for rec in _select(cache[src.path][0], src.name):
        if rec["media"] != task.media:
            continue
        why = bk.skip_reason(rec, task.resolution, task.fps)
        if why:
            manifest.skip(skipped, rec["path"], *why)
            continue
        h, w = bk.closest_bucket(rec["height"], rec["width"], res_buckets)
        stored = video.available_frames(rec["duration"], task.fps) if task.media == "video" else 1
        clip = {
            "kind": "raw",
            "path": rec["path"],
            "caption": rec.get("caption", ""),
            "source": src.name,
            "system_prompt": src.system_prompt,
            "motion_score": float(rec.get("motion_score", -1.0)),
            "height": h,
            "width": w,
        }
        clip = _windowed(task, clip, stored, 1, skipped)
        if clip:
            out.append(clip)
    return out


def _prepared_clips(task: Task, src: Source, skipped: dict) -> list[dict]:
    meta, examples = shards.read_prepared(src.path)
    folder = os.path.abspath(src.path)
    out = []
    for ex in _select(examples, src.name):
        if ex["media"] != task.media:
            continue
        clip = {
            "kind": "prepared",
            "folder": folder,
            "record": ex["record"],
            "path": ex["path"],
            "source": src.name,
            "source_in_folder": ex["source"],
            "height": ex["height"],
            "width": ex["width"],
        }
        clip = _windowed(task, clip, ex["frames"], meta["latent_temporal"], skipped)
        if clip:
            out.append(clip)
    return out


def _host_share(clips: list[dict], index: int, count: int) -> list[dict]:
    # Fewer clips than hosts: hosts wrap round (duplicates beat an empty bucket stream).
    if len(clips) >= count:
        return clips[index::count]
    return [clips[index % len(clips)]]


# ----------------------------------------------------------------------------- loading


class _Loader:
    """random_map transform: clip dict + rng -> example dict, or {'skipped': path} if bad.

    The rng (from Grain: seeded by the element's position) picks caption dropout, motion
    dropout and the window start, so a restored iterator redraws the same windows. Runs in
    reader threads / mp workers; ArrayRecord readers are opened lazily where used.
    """

    def __init__(self, task: Task):
        self.task = task
        self._readers: dict[str, Any] = {}
        # Read here, in the main thread: np.load parses headers with the ast module,
        # which is not thread-safe on CPython 3.11 (see shards.py).
        self._null_caps = {
            os.path.abspath(s.path): shards.read_null_captions(s.path)
            for s in task.sources
            if shards.is_prepared(s.path)
        }

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def _motion(self, score: float, rng: np.random.Generator) -> float:
        if self.task.media == "image":
            return 0.0 if rng.random() < self.task.image_motion_zero_prob else -1.0
        return -1.0 if rng.random() < self.task.motion_drop_prob else score

    def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
        keep_caption = rng.random() < self.task.caption_keep_prob
        motion_rng = np.random.default_rng(rng.integers(2**31))
        f = bk.parse_bucket_key(clip["bucket"])[1]
        start = int(rng.integers(0, clip["usable"] - f + 1))
        load = self._load_prepared if clip["kind"] == "prepared" else self._load_raw
        error = None
        for _ in range(2):  # one retry: a transient read error is not a bad file
            try:
                ex = load(clip, start, f, keep_caption)
                break
            except Exception as e:  # pylint: disable=broad-except
                error = e  # corrupt, truncated, codec error: never stop training
        else:
            return {"skipped": clip["path"], "source": clip["source"],
                    "reason": f"{type(error).__name__}: {error}"}
        ex["motion_score"] = np.float32(self._motion(ex["motion_score"], motion_rng))
        ex["source"] = clip["source"]
        ex["path"] = clip["path"]
        ex["bucket"] = clip["bucket"]
        return ex

    def _load_raw(self, clip: dict, start: int, f: int, keep_caption: bool) -> dict:
        _, _, h, w = bk.parse_bucket_key(clip["bucket"])
        if self.task.media == "image":
            frames = video.read_image(clip["path"])[None]
        else:
            frames = video.read_frames(clip["path"], self.task.fps, f, start=start / self.task.fps)
        latent = encoders.get_latent_encoder(self.task.latent_encoder)
        text = clip["system_prompt"] + (clip["caption"] if keep_caption else "")
        return {"latents": latent.encode(bk.resize_crop(frames, h, w)), "caption": text,
                "motion_score": clip["motion_score"]}

    def _load_prepared(self, clip: dict, start: int, f: int, keep_caption: bool) -> dict:
        folder = clip["folder"]
        if folder not in self._readers:
            meta = shards.read_meta(folder)
            self._readers[folder] = grain.sources.ArrayRecordDataSource(
                [os.path.join(folder, s) for s in meta["shards"]]
            )
        ex = shards.deserialize(self._readers[folder][clip["record"]])
        lat, i = ex["latents"], clip["first"] + start
        if lat.shape[1] != clip["first"] + clip["usable"]:
            raise ValueError(f"record has {lat.shape[1]} latent frames, examples.jsonl says "
                             f"{clip['first'] + clip['usable']}")
        ex["latents"] = lat[:, i : i + f]  # float16: _Collate converts while it stacks
        if not keep_caption:  # system prompt alone, encoded at prepare time
            null, src = self._null_caps[folder], clip["source_in_folder"]
            ex["cap_feats"], ex["cap_len"] = null[src].astype(np.float32), int(null[src + "__len"])
        return ex


# ----------------------------------------------------------------------------- batching


class _DropSkippedIterDataset(grain.IterDataset):
    """Drops {'skipped': path} markers; their paths ride along on the next good example.

    `limit` markers in a row raise DataError: a stream of only bad files must not spin.
    """

    def __init__(self, parent, limit: int, where: str, folders: Mapping[str, str]):
        super().__init__(parent)
        self._args = (limit, where, dict(folders))

    def __iter__(self):
        return _DropSkippedIterator(self._parent.__iter__(), *self._args)


class _DropSkippedIterator(grain.DatasetIterator):
    def __init__(self, parent, limit: int, where: str, folders: dict[str, str]):
        super().__init__(parent)
        self._limit, self._where, self._folders = limit, where, folders
        self._pending: list[tuple[str, str]] = []

    def __next__(self):
        for _ in range(self._limit):
            ex = next(self._parent)
            if "skipped" not in ex:
                ex = dict(ex, skipped_files=self._pending)
                self._pending = []
                return ex
            # Warn now (once per file), not when the next batch is out: a bad streak may
            # take a while, and it should not look like a silent hang.
            manifest.warn_skip(ex["skipped"], ex["reason"])
            self._pending.append((ex["skipped"], ex["reason"]))
        raise DataError(
            f"{self._where}: {self._limit} examples in a row failed to load from source "
            f"{ex['source']!r} ({self._folders[ex['source']]}); last: {ex['skipped']}: "
            f"{ex['reason']} (fix or remove the bad files, re-run lumina-jax prepare for a "
            f"prepared folder, or raise max_consecutive_failures)"
        )

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
        # One pass: float16 windows are converted as they are copied into the batch.
        latents = np.empty((len(exs),) + exs[0]["latents"].shape, np.float32)
        for i, e in enumerate(exs):
            latents[i] = e["latents"]
        batch = {
            "latents": latents,
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
    skipped: dict[str, str]  # path -> reason (unreadable, too_small, low_fps, too_short)


def plan_task(task: Task) -> TaskPlan:
    """Checks the task, loads every source's clip list, assigns buckets and weights."""
    check_task(task)
    skipped: dict[str, str] = {}
    per_source: dict[str, list[dict]] = {}
    loaded: dict[str, tuple] = {}
    for src in task.sources:
        if src.weight == 0:  # weight 0 switches a source off (Grain's mix rejects it)
            continue
        if shards.is_prepared(src.path):
            clips = _prepared_clips(task, src, skipped)
        else:
            clips = _raw_clips(task, src, skipped, loaded)
        if clips:
            per_source[src.name] = clips
        else:
            log.warning("source %s has no %s clips in %s", src.name, task.media, src.path)
    if not per_source:
        paths = sorted({s.path for s in task.sources if s.weight > 0})
        raise DataError(f"no usable {task.media} clips in {', '.join(paths)} (skipped: "
                        f"{manifest.skip_counts(skipped) or 'none'}; see the warnings above): "
                        f"add {task.media}s of at least {task.resolution}^2 pixels or fix the "
                        f"task's sources")
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
    log.info("%s task: %d clips in %d buckets; skipped %s", task.media,
             sum(map(len, per_source.values())), len(groups), manifest.skip_counts(skipped))
    return TaskPlan(groups, bucket_weights, source_weights, skipped)


def make_dataset(
    task: Task, shard_index: int | None = None, shard_count: int | None = None
) -> grain.IterDataset:
    """The task's infinite IterDataset of batches for this host (defaults: jax process)."""
    if not isinstance(task, Task):  # a V2A task
        from data_pipelines.v2a import make_audio_dataset

        return make_audio_dataset(task, shard_index, shard_count)
    if shard_index is None or shard_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        shard_index, shard_count = jax.process_index(), jax.process_count()
    plan = plan_task(task)
    loader = _Loader(task)
    read = grain.ReadOptions(
        num_threads=task.read_threads, prefetch_buffer_size=max(task.read_threads, task.batch_size)
    )
    per_bucket = {}
    folders = {src.name: src.path for src in task.sources}
    prepared = any(shards.is_prepared(s.path) for s in task.sources)
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
        per_bucket[b] = _DropSkippedIterDataset(
            mixed, task.max_consecutive_failures, f"{task.media} task, bucket {b}", folders
        )
        if not task.packing:
            per_bucket[b] = per_bucket[b].batch(task.batch_size, drop_remainder=True,
                                                batch_fn=_Collate(task, b))
    if task.packing:  # one stream of clips from every bucket, patchified where they load
        ds = packing.RandomMixIterDataset(per_bucket, plan.bucket_weights,
                                          _seed(task.seed, "buckets"))
        ds = ds.map(packing.Patchify(task))
    elif len(per_bucket) > 1:
        ds = grain.IterDataset.mix(per_bucket, plan.bucket_weights)
    else:
        ds = next(iter(per_bucket.values()))
    if task.num_workers > 0:
        from absl import flags  # pylint: disable=import-outside-toplevel

        if not flags.FLAGS.is_parsed():  # Grain's worker code reads absl flags
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=task.num_workers, per_worker_buffer_size=2)
        )
    if task.packing:
        if not prepared:
            ds = ds.map(packing.EncodeCaption(task))
        ds = packing.PackIterDataset(ds, task)
    elif not prepared:
        ds = ds.map(_EncodeCaptions(task))
    return _TallyIterDataset(ds, plan.skipped)


def make_iterator(
    task: Task, shard_index: int | None = None, shard_count: int | None = None
) -> grain.DatasetIterator:
    """Infinite iterator of batches; `get_state()`/`set_state()` resume the exact stream."""
    return iter(make_dataset(task, shard_index, shard_count))
