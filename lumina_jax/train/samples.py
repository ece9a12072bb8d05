"""Sampling from trained weights: prompts -> caption features -> Euler ODE -> mp4/GIF.

Used by the trainer (fixed prompts and seeds, EMA weights) and by `lumina-jax sample`.
"""

from __future__ import annotations

import dataclasses
import os
import re

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion.sampler import PRESETS, SampleSettings, nnx_velocity_fn, plan, sample
from lumina_jax.model import ModelConfig, NextDiT


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """What to generate: latent shape, prompts, seeds, and the sampler settings."""
    prompts: tuple[str, ...]
    frames: int
    height: int
    width: int
    seed: int = 0
    fps: float = 8.0
    caption_encoder: str = "minilm"
    system_prompt: str = ""      # prepended to every prompt, the negative one included
    negative_prompt: str = ""
    settings: dict = dataclasses.field(default_factory=dict)  # SampleSettings fields
    preset: str = ""                                          # or a sampler PRESETS name

    def sample_settings(self) -> SampleSettings:
        if self.preset:
            return dataclasses.replace(PRESETS[self.preset], **self.settings)
        return SampleSettings(**self.settings)


def encode_prompts(texts, encoder_name: str):
    """Caption features `[N, L, D]` and mask `[N, L]` for full texts (system prompt included)."""
    from data_pipelines.encoders import get_caption_encoder
    from data_pipelines.pipeline import pad_captions

    encoder = get_caption_encoder(encoder_name)
    encoded = encoder.encode(list(texts))
    return pad_captions([f for f, _ in encoded], [n for _, n in encoded], 0, encoder.max_len)


def generate(model_cfg: ModelConfig, params, spec: SampleSpec, progress: bool = True) -> np.ndarray:
    """Latents `[N, C, F, H, W]` for every prompt of `spec` (seed + prompt index)."""
    model = NextDiT(model_cfg, rngs=nnx.Rngs(0))
    nnx.update(model, params)
    velocity_fn, state = nnx_velocity_fn(model)
    feats, mask = encode_prompts([spec.system_prompt + p for p in spec.prompts],
                                 spec.caption_encoder)
    settings = spec.sample_settings()
    neg = {}
    if any(step.cfg != 0 for step in plan(settings)):
        nf, nm = encode_prompts([spec.system_prompt + spec.negative_prompt], spec.caption_encoder)
        neg = dict(neg_cap_feats=jnp.asarray(nf[0]), neg_cap_mask=jnp.asarray(nm[0]))
    keys = [jax.random.key(spec.seed + i) for i in range(len(spec.prompts))]
    shape = (model_cfg.in_channels, spec.frames, spec.height, spec.width)
    noise = jnp.stack([jax.random.normal(k, shape) for k in keys])
    out = sample(velocity_fn, noise, jnp.asarray(feats), jnp.asarray(mask), settings,
                 params=state, progress=progress, **neg)
    return np.asarray(out)


def to_frames(latents: np.ndarray) -> np.ndarray:
    """Pixel-space latents in [-1, 1], `[N, 3, F, H, W]` -> uint8 `[N, F, H, W, 3]`."""
    if latents.shape[1] != 3:
        raise ValueError(f"only the pixel-space (identity) decoder is built in; latents have "
                         f"{latents.shape[1]} channels (decode them with the VAE yourself)")
    x = np.clip((latents + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.moveaxis(x, 1, -1)


def write_samples(frames: np.ndarray, prompts, out_dir: str, fps: float, prefix: str = "") -> list[str]:
    """One mp4 and one GIF preview per clip; returns the mp4 paths."""
    from data_pipelines.video import write_video

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (clip, prompt) in enumerate(zip(frames, prompts)):
        slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower())[:48].strip("_")
        base = os.path.join(out_dir, f"{prefix}{i:02d}_{slug}")
        if clip.shape[0] > 1:
            write_video(base + ".mp4", _even(clip), fps)
            iio.imwrite(base + ".gif", clip, duration=1000 / fps, loop=0)
            paths.append(base + ".mp4")
        else:
            iio.imwrite(base + ".png", clip[0])
            paths.append(base + ".png")
    return paths


def _even(clip: np.ndarray) -> np.ndarray:
    """h264 needs even sides; pad by one edge row/column where needed."""
    h, w = clip.shape[1:3]
    return np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
