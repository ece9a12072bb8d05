"""Sampling from trained weights: prompts -> caption features -> Euler ODE -> latents
(saved as npz) -> decoder (identity or the CogVideoX VAE) -> mp4/GIF, plus an enlarged
`<clip>.preview.mp4` (`.preview.png` for images) when the clip is smaller than
PREVIEW_SIDE px (a 16-px demo clip is invisible in a normal player), and one labelled
`contact_sheet.png` of every frame of every prompt.

Used by the trainer (fixed prompts and seeds, EMA weights) and by `lumina-jax sample`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import re

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion.sampler import (SAMPLER_PRESETS, SampleSettings, euler_steps,
                                          nnx_velocity_fn, sample)
from lumina_jax.model import ModelConfig, NextDiT
from lumina_jax.train.config import PROMPT_ITSELF

PREVIEW_SIDE = 256  # previews are enlarged (nearest neighbour) to at least this short side
CONTACT_SHEET = "contact_sheet.png"  # every frame of every prompt, labelled, one image


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """What to generate: latent shape, prompts, seeds, sampler settings and the codecs."""
    prompts: tuple[str, ...]
    frames: int
    height: int
    width: int
    seed: int = 0
    fps: float = 8.0
    caption_encoder: str = "minilm"
    caption_encoder_path: str = ""
    latent_decoder: str = "identity"  # an encoders.LATENT_ENCODERS name
    latent_decoder_path: str = ""
    system_prompt: str = ""      # prepended to every prompt, the negative one included
    negative_prompt: str = ""    # or PROMPT_ITSELF (motion-only guidance)
    settings: dict = dataclasses.field(default_factory=dict)  # SampleSettings fields
    preset: str = ""                                          # or a SAMPLER_PRESETS name

    def sample_settings(self) -> SampleSettings:
        if self.preset:
            return dataclasses.replace(SAMPLER_PRESETS[self.preset], **self.settings)
        return SampleSettings(**self.settings)


def encode_prompts(texts, encoder_name: str, path: str = ""):
    """Caption features `[N, L, D]` and mask `[N, L]` for full texts (system prompt included)."""
    from data_pipelines.encoders import get_caption_encoder
    from data_pipelines.pipeline import pad_captions

    encoder = get_caption_encoder(encoder_name, path)
    encoded = encoder.encode(list(texts))
    return pad_captions([f for f, _ in encoded], [n for _, n in encoded], 0, encoder.max_len)


@functools.lru_cache(maxsize=4)
def _velocity_fn(model_cfg: ModelConfig):
    """One velocity function per model config, so repeated sampling (every in-loop
    evaluation) reuses the sampler's compiled steps. The model is abstract: no
    initialisers run (on CPU they cost more than a short sample)."""
    return nnx_velocity_fn(nnx.eval_shape(lambda: NextDiT(model_cfg, rngs=nnx.Rngs(0))))[0]


def generate(model_cfg: ModelConfig, params, spec: SampleSpec, progress: bool = True,
             motion: np.ndarray | None = None) -> np.ndarray:
    """Latents `[N, C, F, H, W]` for every prompt of `spec` (seed + prompt index);
    `motion [N]` replaces the settings' positive motion score per prompt."""
    feats, mask = encode_prompts([spec.system_prompt + t for t in spec.prompts],
                                 spec.caption_encoder, spec.caption_encoder_path)
    shape = (spec.frames, spec.height, spec.width)
    return generate_from_features(model_cfg, params, feats, mask, shape, spec, progress, motion)


def generate_from_features(model_cfg: ModelConfig, params, feats, mask, shape, spec: SampleSpec,
                           progress: bool = True, motion: np.ndarray | None = None) -> np.ndarray:
    """`generate` for caption features `[N, L, D]` / mask `[N, L]` already encoded (e.g. a
    data batch's, system prompt included) and latent size `shape` = (F, H, W); spec gives
    the seed, settings and negative prompt."""
    settings = spec.sample_settings()
    neg = {}
    if spec.negative_prompt == PROMPT_ITSELF:
        neg = dict(motion_only=True)
    elif any(step.cfg != 0 for step in euler_steps(settings)):
        nf, nm = encode_prompts([spec.system_prompt + spec.negative_prompt],
                                spec.caption_encoder, spec.caption_encoder_path)
        neg = dict(neg_cap_feats=jnp.asarray(nf[0]), neg_cap_mask=jnp.asarray(nm[0]))
    keys = [jax.random.key(spec.seed + i) for i in range(len(feats))]
    noise = jnp.stack([jax.random.normal(k, (model_cfg.in_channels, *shape)) for k in keys])
    out = sample(_velocity_fn(model_cfg), noise, jnp.asarray(feats), jnp.asarray(mask),
                 settings, params=params, progress=progress,
                 motion=None if motion is None else jnp.asarray(motion, jnp.float32), **neg)
    return np.asarray(out)


def decode(latents: np.ndarray, spec: SampleSpec) -> np.ndarray:
    """Latents `[N, C, F, H, W]` -> uint8 frames `[N, F', H', W', 3]` via spec.latent_decoder."""
    from data_pipelines.encoders import get_latent_encoder

    decoder = get_latent_encoder(spec.latent_decoder, spec.latent_decoder_path)
    if latents.shape[1] != decoder.channels:
        raise ValueError(f"the {spec.latent_decoder!r} decoder takes {decoder.channels} "
                         f"channels; the latents have {latents.shape[1]}")
    return decoder.decode(latents)


def save_samples(latents: np.ndarray, spec: SampleSpec, out_dir: str,
                 prefix: str = "") -> tuple[list[str], np.ndarray]:
    """Write `<prefix>latents.npz` (latents, prompts, seed), then decode and write one mp4
    + GIF per clip (png for images). Returns (paths, npz first; the decoded frames).
    Clips smaller than PREVIEW_SIDE also get an enlarged `<clip>.preview.mp4` (or
    `.preview.png`) beside them, and all clips one `<prefix>contact_sheet.png`; neither is
    in the returned paths (see `preview_path`, CONTACT_SHEET).

    The npz comes first so a failing decoder (missing VAE, out of memory) loses nothing:
    the error is re-raised naming the npz, which can be decoded later.
    """
    os.makedirs(out_dir, exist_ok=True)
    npz = os.path.join(out_dir, f"{prefix}latents.npz")
    np.savez(npz, latents=latents, prompts=np.asarray(spec.prompts), seed=spec.seed)
    try:
        frames = decode(latents, spec)
    except Exception as e:
        raise RuntimeError(f"decoding the samples with {spec.latent_decoder!r} failed ({e}); "
                           f"the raw latents are saved in {npz}") from e
    paths = [npz] + _write_clips(frames, spec.prompts, out_dir, spec.fps, prefix)
    iio.imwrite(os.path.join(out_dir, f"{prefix}{CONTACT_SHEET}"),
                contact_sheet(frames, spec.prompts))
    return paths, frames


def _write_clips(frames: np.ndarray, prompts, out_dir: str, fps: float, prefix: str) -> list[str]:
    """One mp4 and one GIF per clip (and an enlarged preview); returns the mp4 (or png)
    paths."""
    paths = []
    for i, (clip, prompt) in enumerate(zip(frames, prompts)):
        slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower())[:48].strip("_")
        base = os.path.join(out_dir, f"{prefix}{i:02d}_{slug}")
        big = enlarge(clip)
        if clip.shape[0] > 1:
            _write_mp4(base + ".mp4", _even(clip), fps)
            iio.imwrite(base + ".gif", clip, duration=1000 / fps, loop=0)
            if big is not None:
                _write_mp4(preview_path(base + ".mp4"), _even(big), fps)
            paths.append(base + ".mp4")
        else:
            iio.imwrite(base + ".png", clip[0])
            if big is not None:
                iio.imwrite(preview_path(base + ".png"), big[0])
            paths.append(base + ".png")
    return paths


def _write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    """H.264 in yuv420p, which every player takes (imageio's PyAV plugin)."""
    with _collect_new_objects_only():
        iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=fps,
                    out_pixel_format="yuv420p")


@contextlib.contextmanager
def _collect_new_objects_only():
    """imageio's PyAV plugin runs a full `gc.collect()` on every close, to free PyAV's
    filter-graph cycles: ~0.4 s in a process that holds JAX, a model and its executables,
    for each mp4. Frozen objects are skipped by collections, and the cycles it frees are
    made inside the block, so freezing everything older makes that collection cheap."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def contact_sheet(frames: np.ndarray, prompts, cell: int = 96) -> np.ndarray:
    """Every frame of every clip on one labelled image: a row per prompt (its text above),
    frames left to right, each enlarged by whole factors (nearest neighbour) to >= `cell`
    px on its short side. `frames` uint8 [N, F, H, W, 3] -> uint8 [rows, cols, 3]."""
    from PIL import Image, ImageDraw

    n, f, h, w, _ = frames.shape
    k = max(1, -(-cell // min(h, w)))
    gap, label = 4, 14
    ch, cw = h * k, w * k
    sheet = np.full((n * (label + ch + gap) + gap, f * (cw + gap) + gap, 3), 255, np.uint8)
    for i, clip in enumerate(frames):
        top = gap + i * (label + ch + gap) + label
        for j, frame in enumerate(clip):
            left = gap + j * (cw + gap)
            sheet[top:top + ch, left:left + cw] = frame.repeat(k, 0).repeat(k, 1)
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for i, prompt in enumerate(prompts):
        draw.text((gap, gap + i * (label + ch + gap)), f"{i:02d} {prompt}", fill=(0, 0, 0))
    return np.asarray(image)


def preview_path(path: str) -> str:
    """`x/00_clip.mp4` -> `x/00_clip.preview.mp4` (where save_samples puts the preview)."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.preview{ext}"


def enlarge(clip: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray | None:
    """Frames `[F, H, W, 3]` repeated (nearest neighbour, sharp pixels) by the smallest
    whole factor that makes min(H, W) >= side; None if they are that large already."""
    h, w = clip.shape[1:3]
    if min(h, w) >= side:
        return None
    k = -(-side // min(h, w))
    return np.repeat(np.repeat(clip, k, axis=1), k, axis=2)


def _even(clip: np.ndarray) -> np.ndarray:
    """h264 needs even sides; pad by one edge row/column where needed."""
    h, w = clip.shape[1:3]
    return np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
