"""The published Lumina-Video 2B recipe: four progressive stages (REFERENCE.md §3).

    lumina-jax train --config configs/lumina_video_2b.py --workdir /mnt/shared/runs/2b \
        --config.data_dir=/data/lumina --config.mesh.fsdp=-1

The workdir must be a file system path every host sees (a shared mount on multi-host).

(1) images 256px; (2) + video 256px 8 fps; (3) 512px 16 fps; (4) 960px 24 fps. Clips are
at most 4 s; video tasks train at three patch sizes (1x2, 2x2, 2x4) with scale-aware
time shifts 2 / 4 / 8 and images at 1x2 with shift 1; every task has a global batch of
256. Latents are CogVideoX VAE latents (16 ch, 8x spatial, 4x temporal) and captions
Gemma-2-2B features, prepared offline with `lumina-jax prepare --latent-encoder cogvideox
--caption-encoder gemma` into `{data_dir}/images`, `{data_dir}/video_<res>` folders.
Stage lengths are not published: the step counts below are placeholders to set for your
compute budget. Plan the mesh first: `lumina-jax plan --config configs/lumina_video_2b.py`.
"""

import ml_collections

from lumina_jax.train.loop import default_config

# (name, resolution px, fps, steps, video sources); stage 1 is images only.
STAGES = (
    ("images_256", 256, 8.0, 100_000, None),
    ("video_256_8fps", 256, 8.0, 60_000, "video_256"),
    ("video_512_16fps", 512, 16.0, 40_000, "video_512"),
    ("video_960_24fps", 960, 24.0, 20_000, "video_960"),
)
VIDEO_PATCHES = {"video_1x2": ((2, 1), 2.0), "video_2x2": ((2, 2), 4.0),
                 "video_2x4": ((4, 2), 8.0)}


def data(folder: str, resolution: int, fps: float, frames: int, synthetic: bool) -> dict:
    sources = {"natural": {"path": "{data_dir}/" + folder, "weight": 0.9 if synthetic else 1.0}}
    if synthetic:  # ~10% synthetic clips, which scored best in the paper
        sources["synthetic"] = {"path": "{data_dir}/" + folder + "_synthetic", "weight": 0.1}
    return {"sources": sources, "resolution": resolution, "fps": fps, "max_frames": frames,
            "multiple": 32, "batch_size": 256, "latent_encoder": "cogvideox",
            "caption_encoder": "gemma", "caption_len": 256, "num_workers": 8}


def get_config(arg=None):
    c = default_config()
    c.model.preset = "2B_GQA"
    c.model.dtype = "bfloat16"   # fp32 master weights, bf16 compute
    c.model.remat = "full"
    c.optim.lr = 2e-4
    c.optim.ema_decay, c.optim.ema_every = 0.99, 10
    c.data_dir = "/data/lumina"
    stages = []
    for name, res, fps, steps, video in STAGES:
        tasks = {"image_1x2": {"media": "image", "patch_size": (2, 1), "shift": 1.0,
                               "data": data("images", res, fps, 1, False)}}
        if video:
            frames = int(4 * fps) + 1  # 4 s of video; 4k+1 frames for the 4x temporal VAE
            for task, (patch, shift) in VIDEO_PATCHES.items():
                tasks[task] = {"media": "video", "patch_size": patch, "shift": shift,
                               "data": data(video, res, fps, frames, True)}
        stages.append(ml_collections.ConfigDict({"name": name, "steps": steps,
                                                 "lr": 1e-4 if name == "video_960_24fps" else None,
                                                 "tasks": tasks}))
    c.stages = stages
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.rules = "fsdp_sp"  # = fsdp while mesh.sequence is 1; plan shows when 960px needs it
    c.checkpoint.every, c.checkpoint.keep = 1000, 3
    c.log_every = 50
    c.sample.every = 5000
    c.sample.prompts = ["A lighthouse on a cliff at sunset, waves crashing below."]
    c.sample.caption_encoder = "gemma"
    c.sample.frames, c.sample.height, c.sample.width = 25, 88, 156  # latents of 96f 704x1248
    c.sample.preset = "960px-multiscale"
    return c
