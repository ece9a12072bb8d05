"""The published Lumina-Video 2B recipe: four progressive stages (REFERENCE.md §3, §7).

    lumina-jax train --config configs/lumina_video_2b.py --workdir /mnt/shared/runs/2b \
        --config.data_dir=/data/lumina --config.mesh.fsdp=-1

    # the same recipe in miniature on one CPU, from nothing, in a few minutes:
    lumina-jax train --config configs/lumina_video_2b.py:runlocal --workdir workdirs/runlocal

The workdir must be a file system path every host sees (a shared mount on multi-host).

(1) images 256px; (2) + video 256px 8 fps; (3) 512px 16 fps; (4) 960px 24 fps. Clips are
at most 4 s; video tasks train at three patch sizes (1x2, 2x2, 2x4) with scale-aware
time shifts 2 / 4 / 8 and images at 1x2 with shift 1; every task has a global batch of
256. Latents are CogVideoX VAE latents (16 ch, 8x spatial, 4x temporal), each clip
encoded whole (up to 4 s) by `lumina-jax prepare --latent-encoder cogvideox
--caption-encoder gemma --max-duration 4` into `{data_dir}/images_<res>`, `{data_dir}/video_<res>`
folders; training drops latent 0 and draws a random window of max_frames // 4 latents
(8 / 16 / 24), truncated to the task's temporal patch. Samples are frames // 4 = 24
latents (96 frames at 24 fps), decoded by the VAE. Stage lengths are not published: the
step counts below are placeholders to set for your compute budget. Plan the mesh first:
`lumina-jax plan --config configs/lumina_video_2b.py`.

`:runlocal` keeps the four stages, the three patch sizes, the shifts, the source mixing
and the dropout probabilities, at miniature scale on 4 CPU devices (fsdp 2 x sequence
2): a small Next-DiT, and the real CogVideoX VAE and Gemma-2 architectures at tiny
RANDOM weights (made locally, no download). It generates real encoded footage (several
aspect ratios, durations, frame rates and codecs, plus images) into `<workdir>/data`,
prepares it, trains and writes decoded mp4 samples to `<workdir>/samples`.
"""

import ml_collections

from lumina_jax.train.config import default_config

SYSTEM_PROMPT = ("You are an assistant designed to generate high-quality videos with the "
                 "highest degree of image-text alignment based on user prompts. <Prompt Start> ")
# (name, resolution px, fps, steps, video folder); stage 1 is images only.
STAGES = (
    ("images_256", 256, 8.0, 100_000, None),
    ("video_256_8fps", 256, 8.0, 60_000, "video_256"),
    ("video_512_16fps", 512, 16.0, 40_000, "video_512"),
    ("video_960_24fps", 960, 24.0, 20_000, "video_960"),
)
VIDEO_PATCHES = {"video_1x2": ((2, 1), 2.0), "video_2x2": ((2, 2), 4.0),
                 "video_2x4": ((4, 2), 8.0)}
SECONDS = 4.0  # clip length of the recipe


def data(folder: str, resolution: int, fps: float, frames: int, synthetic: bool,
         batch_size: int = 256) -> dict:
    sources = {"natural": {"path": "{data_dir}/" + folder, "weight": 0.9 if synthetic else 1.0,
                           "system_prompt": SYSTEM_PROMPT}}
    if synthetic:  # ~10% synthetic clips, which scored best in the paper
        sources["synthetic"] = {"path": "{data_dir}/" + folder + "_synthetic", "weight": 0.1,
                                "system_prompt": SYSTEM_PROMPT}
    return {"sources": sources, "resolution": resolution, "fps": fps, "max_frames": frames,
            "multiple": 32, "batch_size": batch_size, "latent_encoder": "cogvideox",
            "caption_encoder": "gemma", "caption_len": 256, "num_workers": 8}


def stages(stage_table, seconds: float, batch_size: int = 256) -> list:
    out = []
    for name, res, fps, steps, video in stage_table:
        tasks = {"image_1x2": {"media": "image", "patch_size": (2, 1), "shift": 1.0,
                               "data": data(f"images_{res}", res, fps, 1, False, batch_size)}}
        if video:
            frames = int(seconds * fps)  # max_frames // 4 latents per training window
            for task, (patch, shift) in VIDEO_PATCHES.items():
                tasks[task] = {"media": "video", "patch_size": patch, "shift": shift,
                               "data": data(video, res, fps, frames, True, batch_size)}
        out.append(ml_collections.ConfigDict({"name": name, "steps": steps,
                                              "lr": 1e-4 if name.startswith("video_960") else None,
                                              "tasks": tasks}))
    return out


def get_config(arg=None):
    c = default_config()
    c.model.preset = "2B_GQA"
    c.model.dtype = "bfloat16"   # fp32 master weights, bf16 compute
    c.model.remat = "full"
    c.optim.lr = 2e-4
    c.optim.ema_decay, c.optim.ema_every = 0.99, 10
    c.data_dir = "/data/lumina"
    c.stages = stages(STAGES, SECONDS)
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.rules = "fsdp_sp"  # = fsdp while mesh.sequence is 1; plan shows when 960px needs it
    c.checkpoint.every, c.checkpoint.keep = 1000, 3
    c.log_every = 50
    c.eval.every = 1000  # validation loss at fixed t and noise (train/evaluate.py)
    c.sample.every = 5000
    c.sample.prompts = ["A lighthouse on a cliff at sunset, waves crashing below."]
    c.sample.caption_encoder = "gemma"
    c.sample.system_prompt = SYSTEM_PROMPT  # the negative prompt gets it too
    c.sample.frames, c.sample.height, c.sample.width = 24, 88, 156  # 96 f at 704x1248 px
    c.sample.fps = 24.0
    c.sample.preset = "960px-multiscale"
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"configs/lumina_video_2b.py: unknown variant {arg!r}; use runlocal")
    return c


def runlocal(c: ml_collections.ConfigDict) -> None:
    """The recipe in miniature: same stages, tasks, shifts, mixing and dropout."""
    c.model.preset = "2B_GQA"
    c.model.dim, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 64, 2, 4, 2
    c.model.multiple_of, c.model.cap_feat_dim = 32, 64  # the tiny Gemma-2's hidden size
    c.model.dtype, c.model.remat = "float32", "none"
    # a few hundred tokens: plain XLA attention, unrolled layers compile fastest on CPU
    c.model.attention_impl, c.model.scan_unroll = "xla", 2
    c.data_dir = "{workdir}/data"
    # Footage, encoders with random weights and prepared folders are made on first use.
    c.prepare_data = "data_pipelines.miniature:prepare_for_config"
    c.stages = stages((("images_64", 64, 8.0, 2, None),
                       ("video_64_8fps", 64, 8.0, 2, "video_64"),
                       ("video_96_16fps", 96, 16.0, 2, "video_96"),
                       ("video_128_24fps", 128, 24.0, 2, "video_128")), seconds=2.0,
                      batch_size=4)
    for stage in c.stages:
        for task in stage.tasks.values():
            task.data.num_workers = 0
            task.data.caption_len = 64  # fixed, like the recipe's 256: one shape per bucket
            # natural and synthetic clips share one prepared folder, told apart by source
            for source in task.data.sources.values():
                source.path = source.path.removesuffix("_synthetic")
    c.cpu_devices = 4
    # Every new bucket shape compiles: cheaper CPU codegen halves that for a tiny model.
    c.xla_flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    c.mesh.data, c.mesh.fsdp, c.mesh.sequence = 1, 2, 2
    c.rules = "fsdp_sp"
    c.checkpoint.every, c.checkpoint.keep = 4, 2
    c.log_every = 1
    c.eval.every = -1  # a minutes-long smoke run: validation would double its compiles
    c.sample.every = 0  # at the end
    c.sample.prompts = ["a red circle moving right over a checkered floor"]
    c.sample.caption_encoder_path = "{data_dir}/models/gemma2_random"
    c.sample.latent_decoder_path = "{data_dir}/models/cogvideox_vae_random"
    c.sample.frames, c.sample.height, c.sample.width = 4, 12, 20  # 16 f at 96x160 px
    c.sample.fps = 8.0
    c.sample.preset = "512px-multiscale"
    c.sample.settings = {"num_steps": 4}
