"""Grain data pipelines for lumina-jax: decode, bucket, mix, motion scores, caches, demo.

Batch contract (what `make_iterator` yields; one bucket and one media type per batch):
  latents       float32 [B, C, F, H, W]  channel-first; identity encoder: C=3, [-1, 1]
  cap_feats     float32 [B, L, D]        caption token features (D=384 for minilm),
                                         L = longest caption in the batch rounded up to
                                         a multiple of 8 (or Task.caption_len if set)
  cap_mask      bool    [B, L]
  motion_score  float32 [B]              -1 = dropped/unknown (recipe condition dropout);
                                         raw path: from the manifest's motion_score
  source, path  str arrays [B]           metadata
  media         str                      'video' | 'image' (images have F = 1)
  bucket        str                      e.g. 'video_16x256x256' (media_FxHxW, pixels)
  num_skipped   int                      unique bad files skipped so far (for metrics)
Keep the str/int metadata out of jitted code.

Public API:
  Source(name, path, weight=1.0, system_prompt=...)     path: manifest .jsonl, a media
      folder (raw, decoded on the fly) or a folder written by `prepare` (ArrayRecord)
  Task(sources, media, resolution, fps, max_frames, batch_size, multiple, ...)
  task_from_dict(d)                  Task from a dict/ConfigDict (sources as a mapping)
  make_dataset(task, shard_index=None, shard_count=None) -> grain.IterDataset
  make_iterator(task, ...) -> grain.DatasetIterator   infinite; per-host sharded
      (defaults: jax.process_index/count); it.get_state()/it.set_state(s) resume the
      exact next batch (also with Task.num_workers > 0, i.e. mp_prefetch)
  plan_task(task) -> TaskPlan        buckets, per-bucket clips and mixing weights
  prepare(input, output, ...)        motion scores + latents + caption features -> shards
  demo.generate(folder) / demo.prepare_demo(folder) / demo.demo_task(folder, media)
                                     the embedded demo dataset (32 px, 16 frames, 8 fps)
  scan(folder), read_manifest, write_manifest, probe, read_frames, motion_score
  encoders.get_caption_encoder('minilm'|'gemma'), encoders.LATENT_ENCODERS
  cli.register(subparsers)           adds `prepare` to an argparse CLI
"""

from data_pipelines.manifest import read_manifest, scan, write_manifest
from data_pipelines.motion import motion_score
from data_pipelines.pipeline import (
    Source,
    Task,
    TaskPlan,
    make_dataset,
    make_iterator,
    plan_task,
    task_from_dict,
)
from data_pipelines.offline import prepare
from data_pipelines.video import DecodeError, probe, read_frames, write_video

__all__ = [
    "DecodeError",
    "Source",
    "Task",
    "TaskPlan",
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
