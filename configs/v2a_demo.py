"""Lumina-V2A demo: video-to-audio on the embedded bouncing-shapes dataset (CPU, minutes).

    lumina-jax prepare --demo-v2a --output workdirs/v2a_data
    lumina-jax train --config configs/v2a_demo.py --workdir workdirs/v2a
    lumina-jax v2a --checkpoint workdirs/v2a --video IN.mp4 --out OUT.mp4

The data: 2 s clips of a shape falling and bouncing, with an impact sound at every floor
contact and a tone whose pitch is set by the shape's colour; the caption never names the
colour, so timing and pitch must come from the picture. The model: Lumina-V2A (model/v2a.py,
preset v2a_demo) on normalised log-mel latents (16 kHz, 32 mel bins, 4x4 patches), pixel
frame features and frame-difference sync features, trained with the same rectified flow,
train step, checkpoints and metrics as the video model. `lumina-jax v2a` writes the input
video with the generated sound (Griffin-Lim vocoder) and a PNG of its mel spectrogram;
`benchmarks/v2a_sync.py` scores onsets and pitch on the held-out clips.
`:quick` is a smoke run (a few steps); `:tiny` is the tests' tiny model.
"""

import ml_collections

from lumina_jax.train.config import default_config


def task(batch_size: int) -> dict:
    return {"media": "audio", "patch_size": (4, 1), "shift": 1.0, "data": {
        "sources": {"demo": {"path": "{data_dir}/prepared", "weight": 1.0}},
        "batch_size": batch_size, "caption_len": 16,
        # dropped conditions train the unconditional branch of classifier-free guidance
        "caption_keep_prob": 0.9, "visual_keep_prob": 0.9}}


def get_config(arg=None):
    c = default_config()
    c.model.preset = "v2a_demo"
    c.data_dir = "workdirs/v2a_data"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.optim.ema_decay = 0.98
    c.optim.ema_every = 1
    c.stages = [ml_collections.ConfigDict({"name": "v2a", "steps": 1200, "tasks": {
        "audio": task(16)}})]
    c.mesh.data = -1
    c.rules = "dp"
    c.checkpoint.every = 200
    c.log_every = 20
    c.eval.every = 200
    c.eval.sources = {"audio": "{data_dir}/heldout"}  # the benchmark's held-out clips
    # `lumina-jax v2a` and the benchmark: Euler steps and the guidance scale
    c.v2a = ml_collections.ConfigDict({"num_steps": 25, "cfg": 2.0, "seed": 0,
                                       "vocoder": "griffinlim", "vocoder_path": ""})
    if arg == "quick":
        c.stages[0].steps = 6
        c.checkpoint.every, c.log_every, c.eval.every = 3, 2, 3
        c.v2a.num_steps = 4
    elif arg == "tiny":
        c.model.preset = "v2a_tiny"
        c.stages[0].steps = 4
        c.stages[0].tasks.audio.data.batch_size = 4
        c.checkpoint.every, c.checkpoint.keep, c.log_every = 2, 5, 1
        # the tests' clips have no held-out folder: fixed batches of the training clips
        c.eval.every, c.eval.batches, c.eval.sources = 2, 1, {}
        c.v2a.num_steps = 3
    elif arg:
        raise ValueError(f"configs/v2a_demo.py: unknown variant {arg!r}; use quick or tiny")
    return c
