"""Lumina-V2A data: prepare video clips with sound into training examples, and the
resumable Grain stream of batches a V2A task trains on.

One clip = a fixed window of `seconds` from the start of a video with an audio track:
  latents    float16 [C, 1, T, M]   audio latents of the window's log-mel (T time steps,
                                    M mel bins; the 1 is our layout's frame axis)
  frames     float16 [Fv, Dv]       visual features of each video frame (at `fps`)
  sync       float16 [T, 32]        synchronisation features at the audio-latent rate
  cap_feats  float16 [L, D], cap_len   the caption's token features
`clip_features` computes all but the caption for any video (prepare and `lumina-jax v2a`
share it, so training and inference see the same features).

Batch contract (make_iterator for a task with media="audio"): latents [B, C, 1, T, M],
frames [B, Fv, Dv], sync [B, T, 32], cap_feats [B, caption_len, D], cap_mask [B, L] --
all float32/bool -- plus source/path metadata and num_skipped. Condition dropout for
classifier-free guidance: the caption is replaced by the empty caption with probability
1 - caption_keep_prob, and frames + sync are zeroed with probability 1 - visual_keep_prob.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Mapping

import grain
import numpy as np

from data_pipelines import audio, manifest, shards, video
from data_pipelines.manifest import DataError
from data_pipelines.pipeline import (Source, _DropSkippedIterDataset, _host_share, _seed,
                                     _TallyIterDataset, pad_captions)

log = logging.getLogger("data_pipelines")

KIND = "v2a"  # prepared.json "kind" of a V2A folder
# Audio latent time steps are kept to a multiple of this, so every patch size up to 8
# (and an audio VAE's 2x or 4x downsampling) tiles the window.
TIME_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class AudioTask:
    """A V2A training stream: prepared V2A folders mixed by weight, fixed-size batches."""

    sources: tuple[Source, ...]
    media: str = "audio"
    batch_size: int = 8
    caption_len: int = 16      # captions padded/cut to this many tokens (one shape)
    caption_keep_prob: float = 0.9
    visual_keep_prob: float = 0.9
    seed: int = 0
    read_threads: int = 2
    max_consecutive_failures: int = 64


def window_steps(seconds: float, s: audio.AudioSettings, time_factor: int) -> int:
    """Audio-latent time steps of a window: mel frames -> latent steps, cut to a multiple
    of TIME_MULTIPLE."""
    steps = audio.num_frames(int(round(seconds * s.sample_rate)), s) // time_factor
    return steps - steps % TIME_MULTIPLE


def clip_features(path: str, seconds: float, fps: float, settings: audio.AudioSettings,
                  visual, time_factor: int = 1, audio_latents=None) -> dict:
    """Features of the first `seconds` of the video at `path` (see the module doc):
    frames and sync at the rate of latents `time_factor` x coarser than mel frames, and,
    with `audio_latents` (an encoder; its factor wins), the audio latents of its sound.
    Raises video.DecodeError if the file cannot be read."""
    if audio_latents is not None:
        time_factor = audio_latents.time_factor
    steps = window_steps(seconds, settings, time_factor)
    if steps < TIME_MULTIPLE:
        raise video.DecodeError(f"{path}: {seconds:.2f} s is too short for a V2A clip")
    window = steps * time_factor * settings.hop / settings.sample_rate  # seconds covered
    n_frames = max(1, int(round(window * fps)))
    pixels = video.read_frames(path, fps, n_frames)
    out = {"frames": visual.encode(pixels).astype(np.float16),
           "sync": audio.sync_features(pixels, fps, steps, window / steps).astype(np.float16),
           "seconds": window}
    if audio_latents is not None:
        wave = audio.read_audio(path, settings.sample_rate)
        need = int(round(window * settings.sample_rate))
        wave = np.pad(wave[:need], (0, max(0, need - len(wave))))
        mel = audio.log_mel(wave, settings)[: steps * time_factor]
        out["latents"] = audio_latents.encode(mel)[:, None].astype(np.float16)  # [C, 1, T, M]
    return out


def prepare_v2a(input_path: str, output: str, *, seconds: float = 2.0, fps: float = 16.0,
                audio_latent_encoder: str = "identity", audio_latent_encoder_path: str = "",
                visual_encoder: str = "pixels", visual_encoder_path: str = "",
                caption_encoder: str = "minilm", caption_encoder_path: str = "",
                records_per_shard: int = 1024) -> dict:
    """Prepare a folder of videos with sound (or a JSONL manifest with `path` and
    `caption`) into `output`; returns prepared.json's fields plus `seconds_taken`.

    Clips shorter than `seconds` or without an audio track are skipped with a warning and
    counted. Staged like `prepare`: a killed run leaves any earlier `output` intact.
    """
    from data_pipelines.offline import _check_output, _staged

    t0 = time.time()
    output = os.path.realpath(output)
    _check_output(output)
    settings = audio.AudioSettings()
    latents = audio.get_audio_latent_encoder(audio_latent_encoder, audio_latent_encoder_path)
    visual = audio.get_visual_encoder(visual_encoder, visual_encoder_path)
    text = audio.get_text_encoder(caption_encoder, caption_encoder_path)
    records, skipped = manifest.load_input(input_path)
    with _staged(output) as folder:
        writer = shards.ShardWriter(folder, records_per_shard)
        for rec in records:
            if rec.get("media", "video") != "video" or rec.get("duration", 0) < seconds:
                manifest.skip(skipped, rec["path"], "too_short",
                              f"needs a video of >= {seconds:g} s")
                continue
            try:
                feats = clip_features(rec["path"], seconds, fps, settings, visual,
                                      audio_latents=latents)
            except video.DecodeError as e:
                manifest.skip(skipped, rec["path"], "unreadable", str(e))
                continue
            ((cap, n),) = text.encode([rec.get("caption", "")])
            record = shards.pack({"latents": feats["latents"], "frames": feats["frames"],
                                  "sync": feats["sync"], "cap_feats": cap.astype(np.float16),
                                  "cap_len": np.int32(n)})
            writer.write(record, {k: v for k, v in rec.items() if k != "record"})
        ((null, null_len),) = text.encode([""])
        np.savez(os.path.join(folder, shards.NULL_CAPTIONS), default=null.astype(np.float16),
                 default__len=np.int32(null_len))
        meta = writer.close({
            "kind": KIND, "seconds": seconds, "fps": fps, "audio": dataclasses.asdict(settings),
            "audio_latent_encoder": audio_latent_encoder,
            "audio_latent_encoder_path": audio_latent_encoder_path,
            "latent_channels": latents.channels, "time_factor": latents.time_factor,
            "mel_factor": latents.mel_factor, "visual_encoder": visual_encoder,
            "visual_encoder_path": visual_encoder_path, "frame_dim": visual.dim,
            "sync_dim": audio.SYNC_DIM, "caption_encoder": caption_encoder,
            "caption_encoder_path": caption_encoder_path, "cap_feat_dim": text.dim,
            "skip_counts": manifest.skip_counts(skipped), "skipped": dict(sorted(skipped.items())),
        })
        if not meta["num_examples"]:
            raise DataError(f"no usable clip in {input_path} (skipped: "
                            f"{meta['skip_counts'] or 'none'}): V2A needs videos of >= "
                            f"{seconds:g} s with an audio track")
    log.info("prepared %d V2A clips into %s in %.1fs; skipped %s", meta["num_examples"],
             output, time.time() - t0, meta["skip_counts"] or "none")
    return {**meta, "seconds_taken": round(time.time() - t0, 2)}


# ----------------------------------------------------------------------------- the stream

def audio_task_from_dict(d: Mapping[str, Any]) -> AudioTask:
    d = dict(d)
    allowed = sorted(f.name for f in dataclasses.fields(AudioTask))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed for media='audio': {allowed}")
    srcs = [Source(**{**dict(v), "name": name}) for name, v in dict(d.pop("sources", {})).items()]
    return AudioTask(sources=tuple(srcs), **d)


def check_audio_task(task: AudioTask) -> None:
    """ValueError('<field>: ...') before any compute if the task cannot run."""
    def need(ok, field, problem):
        if not ok:
            raise ValueError(f"{field}: {problem}")

    need(task.batch_size > 0, "batch_size", f"must be > 0 (got {task.batch_size})")
    need(task.caption_len > 0, "caption_len", f"must be > 0 (got {task.caption_len})")
    need(bool(task.sources), "sources", "a task needs at least one source")
    metas = []
    for src in task.sources:
        need(shards.is_prepared(src.path), "sources",
             f"{src.name!r}: {src.path!r} is not a prepared V2A folder (lumina-jax prepare "
             f"--v2a / --demo-v2a writes one)")
        meta = shards.read_meta(src.path)
        need(meta.get("kind") == KIND, "sources",
             f"{src.name!r}: {src.path} holds video examples, not V2A clips")
        metas.append(meta)
    for key in ("seconds", "audio", "audio_latent_encoder", "visual_encoder", "caption_encoder"):
        values = {json.dumps(m[key], sort_keys=True) for m in metas}
        need(len(values) == 1, "sources", f"the sources were prepared with different {key} "
                                          f"({sorted(values)}): their batches would not stack")


class _LoadClip:
    """random_map: example -> arrays with condition dropout, or {'skipped': path}."""

    def __init__(self, task: AudioTask):
        self.task = task
        self._readers: dict[str, Any] = {}
        self._null = {os.path.abspath(s.path): shards.read_null_captions(s.path)
                      for s in task.sources}

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def __call__(self, clip: dict, rng: np.random.Generator) -> dict:
        folder = clip["folder"]
        try:
            if folder not in self._readers:
                self._readers[folder] = grain.sources.ArrayRecordDataSource(
                    [os.path.join(folder, s) for s in shards.read_meta(folder)["shards"]])
            ex = shards.unpack(self._readers[folder][clip["record"]])
        except Exception as e:  # pylint: disable=broad-except
            return {"skipped": clip["path"], "source": clip["source"],
                    "reason": f"{type(e).__name__}: {e}"}
        out = {k: np.asarray(ex[k], np.float32) for k in ("latents", "frames", "sync")}
        cap, n = ex["cap_feats"], int(ex["cap_len"])
        if rng.random() >= self.task.caption_keep_prob:
            null = self._null[folder]
            cap, n = null["default"], int(null["default__len"])
        if rng.random() >= self.task.visual_keep_prob:
            out["frames"] = np.zeros_like(out["frames"])
            out["sync"] = np.zeros_like(out["sync"])
        out["cap_feats"], out["cap_len"] = cap, n
        out["source"], out["path"] = clip["source"], clip["path"]
        return out


class _Collate:
    def __init__(self, caption_len: int):
        self.caption_len = caption_len

    def __call__(self, items: list[dict]) -> dict:
        batch = {k: np.stack([it[k] for it in items]) for k in ("latents", "frames", "sync")}
        batch["cap_feats"], batch["cap_mask"] = pad_captions(
            [it["cap_feats"] for it in items], [it["cap_len"] for it in items],
            self.caption_len, self.caption_len)
        batch["source"] = np.array([it["source"] for it in items])
        batch["path"] = np.array([it["path"] for it in items])
        batch["media"] = "audio"
        batch["skipped_files"] = [p for it in items for p in it["skipped_files"]]
        return batch


def make_audio_dataset(task: AudioTask, shard_index: int | None = None,
                       shard_count: int | None = None) -> grain.IterDataset:
    """The task's infinite IterDataset of batches for this host (defaults: jax process)."""
    if shard_index is None or shard_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        shard_index, shard_count = jax.process_index(), jax.process_count()
    loader = _LoadClip(task)
    read = grain.ReadOptions(num_threads=task.read_threads,
                             prefetch_buffer_size=max(task.read_threads, task.batch_size))
    streams, weights = {}, {}
    for src in task.sources:
        folder = os.path.abspath(src.path)
        _, examples = shards.read_prepared(folder)
        clips = [{"folder": folder, "record": ex["record"], "path": ex["path"],
                  "source": src.name} for ex in examples]
        ds = grain.MapDataset.source(_host_share(clips, shard_index, shard_count))
        ds = ds.repeat(-(-1024 // len(ds)))  # Grain's index shuffle is slow on tiny lists
        ds = ds.shuffle(seed=_seed(task.seed, "v2a", src.name, "shuffle")).repeat()
        ds = ds.random_map(loader, seed=_seed(task.seed, "v2a", src.name, "load"))
        streams[src.name], weights[src.name] = ds.to_iter_dataset(read), src.weight
    mixed = (grain.IterDataset.mix(streams, weights) if len(streams) > 1
             else next(iter(streams.values())))
    folders = {src.name: src.path for src in task.sources}
    ds = _DropSkippedIterDataset(mixed, task.max_consecutive_failures, "audio task",
                                 folders).batch(task.batch_size, drop_remainder=True,
                                                batch_fn=_Collate(task.caption_len))
    return _TallyIterDataset(ds, {})


def read_v2a_meta(path: str) -> dict:
    meta = shards.read_meta(path)
    if meta.get("kind") != KIND:
        raise DataError(f"{path} is not a prepared V2A folder")
    return meta



def prepare_demo_v2a(output: str, n_train: int = 256, n_heldout: int = 32,
                     seed: int = 0) -> dict:
    """The embedded V2A demo: generate bouncing-shape clips with sound (v2a_demo) into
    OUTPUT/clips and OUTPUT/heldout_clips, prepare them into OUTPUT/prepared and
    OUTPUT/heldout (the benchmark's held-out clips). Returns both summaries."""
    from data_pipelines import v2a_demo

    out = {}
    for name, n, clip_seed in (("prepared", n_train, seed), ("heldout", n_heldout, seed + 1)):
        clips = os.path.join(output, "clips" if name == "prepared" else "heldout_clips")
        listing = os.path.join(clips, "clips.jsonl")
        if not (os.path.isfile(listing) and sum(1 for _ in open(listing)) == n):
            v2a_demo.generate(clips, n, seed=clip_seed)
        out[name] = prepare_v2a(listing, os.path.join(output, name))
    return out
