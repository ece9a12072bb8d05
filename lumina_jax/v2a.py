"""Lumina-V2A inference: sound for a video from a trained V2A workdir (`lumina-jax v2a`).

Features are computed exactly as prepare computed them for training (data_pipelines.v2a.
clip_features with the run's prepared settings); audio latents are sampled with the Euler
rectified-flow sampler and classifier-free guidance, whose negative branch is the
training-time dropout (no frames, no sync, the empty caption); latents -> log-mel (the
audio latent decoder) -> waveform (the vocoder) -> muxed into a copy of the video.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion.sampler import guide, time_grid
from lumina_jax.errors import UserError
from lumina_jax.model import ModelConfig, build_model


@dataclasses.dataclass(frozen=True)
class V2ASettings:
    num_steps: int = 25
    cfg: float = 2.0       # guided = pos + cfg * (pos - neg); 0 = conditional only
    shift: float = 1.0
    seed: int = 0


@functools.partial(jax.jit, static_argnames=("graphdef", "patch_size"))
def _euler(graphdef, params, x, t, dt, cfg, cond, neg, *, patch_size):
    model = nnx.merge(graphdef, params)
    b = x.shape[0]
    both = {k: jnp.concatenate([cond[k], neg[k]]) for k in cond}
    v = model(jnp.concatenate([x, x]), jnp.full((2 * b,), t, jnp.float32), **both,
              patch_size=patch_size)
    return x + dt * guide(v[:b], v[b:], cfg, -1.0)


def unconditional(cond: dict, null_caption: np.ndarray, null_len: int) -> dict:
    """The guidance's negative branch: what training drops (frames, sync, caption)."""
    b, length = cond["cap_mask"].shape
    feats = np.zeros((b, length, null_caption.shape[-1]), np.float32)
    n = min(null_len, length)
    feats[:, :n] = null_caption[:n]
    return {"cap_feats": feats, "cap_mask": np.broadcast_to(np.arange(length) < null_len,
                                                            (b, length)),
            "frames": np.zeros_like(cond["frames"]), "sync": np.zeros_like(cond["sync"])}


def generate(model_cfg: ModelConfig, params, cond: dict, neg: dict, latent_shape,
             settings: V2ASettings = V2ASettings()) -> np.ndarray:
    """Audio latents [B, C, 1, T, M] for a batch of conditions (dicts of arrays with the
    model's inputs: cap_feats, cap_mask, frames, sync)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(model_cfg)))[0]
    b = cond["frames"].shape[0]
    x = jax.random.normal(jax.random.key(settings.seed), (b, *latent_shape), jnp.float32)
    cond = {k: jnp.asarray(v) for k, v in cond.items()}
    neg = {k: jnp.asarray(v) for k, v in neg.items()}
    ts = time_grid(settings.num_steps, settings.shift)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = _euler(graphdef, params, x, float(t0), float(t1 - t0), settings.cfg, cond, neg,
                   patch_size=model_cfg.patch_sizes[0])
    return np.asarray(x)


def run_settings(exp) -> dict:
    """The prepared-data settings of a V2A run (its last stage's first source)."""
    from data_pipelines.v2a import read_v2a_meta

    if exp.model.kind != "v2a":
        raise UserError(f"the run's model is kind={exp.model.kind!r}; `lumina-jax v2a` needs "
                        f"a V2A run (e.g. configs/v2a_demo.py)")
    path = exp.stages[-1].tasks[0].data.sources[0].path
    if not os.path.isdir(path):
        raise UserError(f"the run's prepared data {path} is gone: V2A inference reads its "
                        f"encoder settings from there (re-run its prepare)")
    return read_v2a_meta(path)


def decode_audio(latents: np.ndarray, meta: dict, vocoder: str = "griffinlim",
                 vocoder_path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """One item's latents [C, 1, T, M] -> (log-mel [T', M], waveform)."""
    from data_pipelines import audio

    settings = audio.AudioSettings(**meta["audio"])
    decoder = audio.get_audio_latent_encoder(meta["audio_latent_encoder"],
                                             meta["audio_latent_encoder_path"])
    mel = decoder.decode(np.asarray(latents[:, 0], np.float32))
    return mel, audio.get_vocoder(vocoder, vocoder_path, settings).vocode(mel)


def save_mel_png(mel: np.ndarray, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma")
    ax.set_xlabel("mel frame")
    ax.set_ylabel("mel bin")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def video_to_audio(exp, params, video_path: str, out_path: str, *, caption: str = "",
                   settings: V2ASettings = V2ASettings(), vocoder: str = "griffinlim",
                   vocoder_path: str = "") -> dict:
    """Write `out_path` = the video with generated sound, and `<out>.mel.png`."""
    from data_pipelines import audio, video
    from data_pipelines.v2a import clip_features

    meta = run_settings(exp)
    s = audio.AudioSettings(**meta["audio"])
    try:
        info = video.probe(video_path)
    except video.DecodeError as e:
        raise UserError(f"--video {video_path}: {e}") from None
    # the whole video, as long as the model's RoPE table allows
    factor = meta["time_factor"]
    p = exp.model.patch_sizes[0][0]
    max_seconds = exp.model.axes_lens[1] * p * factor * s.hop / s.sample_rate
    seconds = min(float(info["duration"]), max_seconds)
    visual = audio.get_visual_encoder(meta["visual_encoder"], meta["visual_encoder_path"])
    try:
        feats = clip_features(video_path, seconds, meta["fps"], s, visual, factor)
    except video.DecodeError as e:
        raise UserError(f"--video {video_path}: {e}") from None
    text = audio.get_text_encoder(meta["caption_encoder"], meta["caption_encoder_path"])
    ((cap, n),) = text.encode([caption])
    ((null, null_n),) = text.encode([""])
    length = max(n, null_n, 1)
    cap_feats = np.zeros((1, length, cap.shape[-1]), np.float32)
    cap_feats[0, :n] = cap[:n]
    cond = {"cap_feats": cap_feats, "cap_mask": np.arange(length)[None] < n,
            "frames": feats["frames"][None].astype(np.float32),
            "sync": feats["sync"][None].astype(np.float32)}
    steps = feats["sync"].shape[0]
    mels = s.n_mels // meta["mel_factor"]
    latents = generate(exp.model, params, cond, unconditional(cond, null, null_n),
                       (exp.model.in_channels, 1, steps, mels), settings)
    mel, wave = decode_audio(latents[0], meta, vocoder, vocoder_path)
    audio.mux_audio(video_path, wave, s.sample_rate, out_path)
    png = os.path.splitext(out_path)[0] + ".mel.png"
    save_mel_png(mel, png, f"generated log-mel: {os.path.basename(video_path)}")
    return {"video": out_path, "mel_png": png, "seconds": feats["seconds"]}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "v2a", help="Lumina-V2A: give a video the sound a trained V2A run generates "
                    "(writes OUT.mp4 and OUT.mel.png)")
    from lumina_jax.cli import add_checkpoint_args

    add_checkpoint_args(p, "training workdir of a V2A run")
    p.add_argument("--video", required=True, help="input video (its own sound is ignored)")
    p.add_argument("--out", required=True, help="output .mp4 (must not exist)")
    p.add_argument("--weights", choices=("ema", "params"), default="ema",
                   help="the EMA weights (default) or the raw trained params")
    p.add_argument("--caption", default="", help="text condition (default: none)")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: the "
                                                                 "config's v2a.num_steps)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: config)")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed (default: the config's v2a.seed)")
    p.add_argument("--vocoder", choices=("griffinlim", "hifigan"), default=None,
                   help="default: the config's v2a.vocoder (griffinlim needs no weights)")
    p.add_argument("--vocoder-path", default=None, help="HiFi-GAN weights folder (hifigan)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lumina_jax.cli import _check_ranges, _load_run

    _check_ranges(args, step=(0, None), num_steps=(1, None), cfg=(0, None),
                  seed=(0, 2**31 - 1))
    if not args.out.endswith(".mp4"):
        raise UserError(f"--out {args.out}: give a .mp4 path")
    if os.path.exists(args.out):
        raise UserError(f"--out {args.out} exists; give a new path (nothing is overwritten)")
    if not os.path.isfile(args.video):
        raise UserError(f"--video {args.video} is not a file")
    exp, state = _load_run(args.checkpoint, args.step)
    defaults = exp.v2a
    pick = lambda value, name, fallback: (value if value is not None
                                          else defaults.get(name, fallback))
    settings = V2ASettings(num_steps=pick(args.num_steps, "num_steps", 25),
                           cfg=pick(args.cfg, "cfg", 2.0), seed=pick(args.seed, "seed", 0))
    vocoder = pick(args.vocoder, "vocoder", "griffinlim")
    print(f"checkpoint step {int(state['step'])} of {args.checkpoint}, "
          f"{'EMA' if args.weights == 'ema' else 'raw (non-EMA)'} weights; {settings}")
    out = video_to_audio(exp, state[args.weights], args.video, args.out, caption=args.caption,
                         settings=settings, vocoder=vocoder,
                         vocoder_path=pick(args.vocoder_path, "vocoder_path", ""))
    print(f"wrote {out['video']} ({out['seconds']:.2f} s of generated sound) and "
          f"{out['mel_png']}")
    return 0
