"""Test config: a tiny model on mixed-bucket footage (tests/test_train_buckets.py).

Images and videos of three aspect ratios and two durations, prepared in pixel space
(resolution 16, multiple 8, 8 fps, 2 s), train together: every task draws batches of
several shapes. `--config.data_dir` points at the prepared folder.
"""

import ml_collections

from lumina_jax.train.config import default_config


def task(media: str, patch_size, shift: float) -> dict:
    return {"media": media, "patch_size": patch_size, "shift": shift, "data": {
        "sources": {"natural": {"path": "{data_dir}", "weight": 0.5},
                    "synthetic": {"path": "{data_dir}", "weight": 0.5}},
        "resolution": 16, "multiple": 8, "fps": 8.0, "max_frames": 16, "batch_size": 2,
        "caption_len": 56}}


def get_config(arg=None):
    del arg
    c = default_config()
    c.model.preset = "tiny"
    c.model.in_channels, c.model.cap_feat_dim = 3, 384
    c.model.n_layers, c.model.dim, c.model.n_heads, c.model.n_kv_heads = 1, 32, 2, 1
    c.model.scan_unroll = 1
    c.optim.lr = 1e-3
    c.optim.ema_every = 1
    c.stages = [ml_collections.ConfigDict({"name": "joint", "steps": 8, "tasks": {
        "image_1x2": task("image", (2, 1), 1.0), "video_2x2": task("video", (2, 2), 4.0)}})]
    c.rules = "dp"
    c.checkpoint.every, c.checkpoint.keep, c.log_every = 2, 10, 1
    c.eval.every = -1  # validation would compile every bucket shape again
    return c
