"""Grain data pipelines for lumina-jax: decode, bucket, mix, motion scores, caches, demo.

Batch contract (what `make_iterator` yields; one bucket and one media type per batch):
  latents       float32 [B, C, F, H, W]  channel-first; identity encoder: C=3, [-1, 1];
                                         F = the bucket's window (latent frames)
  cap_feats     float32 [B, L, D]        caption token features (D=384 for minilm),
                                         L = longest caption in the batch rounded up to
                                         a multiple of 8 (or Task.caption_len if set)
  cap_mask      bool    [B, L]
  motion_score  float32 [B]              -1 = dropped/unknown (recipe condition dropout);
                                         raw path: from the manifest's motion_score
  source, path  str arrays [B]           metadata
  media         str                      'video' | 'image' (images have F = 1)
  bucket        str                      e.g. 'video_8x192x320' (media_FxHxW: F latent
                                         frames, H x W pixels)
  num_skipped   int                      unique bad files skipped so far (for metrics)
Keep the str/int metadata out of jitted code.

Public API:
  Source(name, path, weight=1.0, system_prompt=...)     path: manifest .jsonl, a media
      folder (raw, decoded on the fly) or a folder written by `prepare` (ArrayRecord)
  Task(sources, media, resolution, fps, max_frames, frame_buckets, temporal_multiple,
       batch_size, multiple, ..., max_consecutive_failures)
  task_from_dict(d)                  Task from a dict/ConfigDict (sources as a mapping);
                                     unknown keys raise ValueError
  check_task(task)                   ValueError('<field>: ...') before any compute
  DataError                          unusable data: bad manifest line, no usable media, a
                                     stream of only bad files (lumina_jax UserError, ValueError)
  make_dataset(task, shard_index=None, shard_count=None) -> grain.IterDataset
  make_iterator(task, ...) -> grain.DatasetIterator   infinite; per-host sharded
      (defaults: jax.process_index/count); it.get_state()/it.set_state(s) resume the
      exact next batch (also with Task.num_workers > 0, i.e. mp_prefetch)
  plan_task(task) -> TaskPlan        buckets, per-bucket clips, mixing weights, skips
  prepare(input, output, ...)        motion scores + whole-clip latents + caption features
  footage.make_footage(folder)       small real mp4/webm/png/jpg set for recipe checks
  demo.generate(folder) / demo.prepare_demo(folder) / demo.demo_task(folder, media)
                                     the embedded demo dataset (32 px, 16 frames, 8 fps)
  buckets.resolution_buckets(resolution, multiple, max_aspect)   official crop sizes
  scan(folder), read_manifest, write_manifest, probe, read_frames, motion_score
  encoders.get_caption_encoder(name, path), encoders.get_latent_encoder(name, path)
  cli.register(subparsers)           adds `prepare` to an argparse CLI
"""

from data_pipelines.manifest import read_manifest, scan, write_manifest
from data_pipelines.motion import motion_score
from data_pipelines.pipeline import (
    DataError,
    Source,
    Task,
    TaskPlan,
    check_task,
    make_dataset,
    make_iterator,
    plan_task,
    task_from_dict,
)
from data_pipelines.offline import prepare
from data_pipelines.video import DecodeError, probe, read_frames, write_video

__all__ = [
    "DataError",
    "DecodeError",
    "Source",
    "Task",
    "TaskPlan",
    "check_task",
    "make_dataset",
    "make_iterator",
    "motion_score",
    "plan_task",
    "prepare",
    "probe",
    "read_frames",
    "read_manifest",
    "scan",
    "task_from_dict",
    "write_manifest",
    "write_video",
]
