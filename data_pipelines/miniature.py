"""Data for a miniature run of a recipe, made from nothing on one CPU.

`prepare_for_config(config)` (a config's `prepare_data` hook, e.g.
configs/lumina_video_2b.py:runlocal) fills `config.data_dir` on first use:
  raw/      real encoded footage (footage.make_footage: several aspect ratios,
            durations, frame rates and codecs, plus images)
  models/   the CogVideoX VAE and Gemma-2 architectures at tiny RANDOM weights
  <folder>  one prepared folder per data source of the config, with the resolution,
            fps, clip length and encoders of the tasks that read it
Folders that are already prepared are kept, so a resumed run prepares nothing.
"""

from __future__ import annotations

import logging
import os

from data_pipelines import encoders, footage, manifest, offline, shards

log = logging.getLogger("data_pipelines")
VAE_FOLDER, GEMMA_FOLDER = "models/cogvideox_vae_random", "models/gemma2_random"


def _folders(config) -> dict[str, dict]:
    """Prepared folder -> prepare arguments, from every task that reads it."""
    out: dict[str, dict] = {}
    for stage in config.stages:
        for task in stage.tasks.values():
            d = task.data
            for name, src in d.sources.items():
                path = src.path.format(data_dir=config.data_dir)
                args = {"resolution": d.resolution, "fps": d.fps, "multiple": d.multiple,
                        "latent_encoder": d.latent_encoder, "caption_encoder": d.caption_encoder,
                        "max_duration": d.max_frames / d.fps if task.media == "video" else 0.0}
                seen = out.setdefault(path, {**args, "media": set(),
                                             "system_prompts": {}})
                if {k: seen[k] for k in args if k != "max_duration"} != {
                        k: v for k, v in args.items() if k != "max_duration"}:
                    raise ValueError(f"{path} is read by tasks with different resolution, "
                                     "fps or encoders; give each its own folder")
                seen["max_duration"] = max(seen["max_duration"], args["max_duration"])
                seen["media"].add(task.media)
                seen["system_prompts"][name] = src.get("system_prompt")
    return out


def _encoder_path(config, name: str, folder: str) -> str:
    return os.path.join(config.data_dir, folder) if name in ("cogvideox", "gemma") else ""


def prepare_for_config(config) -> None:
    folders = {p: a for p, a in _folders(config).items() if not shards.is_prepared(p)}
    if not folders:
        return
    root = config.data_dir
    raw = os.path.join(root, "raw")
    if not os.path.isdir(raw):
        print(f"making miniature footage in {raw}", flush=True)
        # 1.5x: the largest miniature stage (128 px) keeps all but the too-small clip
        footage.make_footage(raw, scale=1.5)
    vae, gemma = os.path.join(root, VAE_FOLDER), os.path.join(root, GEMMA_FOLDER)
    if not os.path.isdir(vae):
        encoders.make_random_cogvideox_vae(vae)
    if not os.path.isdir(gemma):
        encoders.make_random_gemma2(gemma, hidden_size=int(config.model.cap_feat_dim or 64))
    print(f"NOTE: {vae} and {gemma} hold RANDOM weights (tiny stand-ins of the real "
          "architectures): the pipeline runs for real, the pictures and captions mean nothing",
          flush=True)
    records, _ = manifest.load_input(raw)
    for path, args in sorted(folders.items()):
        media = args.pop("media")
        prompts = {k: v for k, v in args.pop("system_prompts").items() if v}
        listing = os.path.join(root, "manifests", os.path.basename(path) + ".jsonl")
        manifest.write_manifest(listing, [r for r in records if r["media"] in media])
        print(f"preparing {path} ({', '.join(sorted(media))}, {args['resolution']} px, "
              f"{args['fps']:g} fps)", flush=True)
        offline.prepare(
            listing, path, system_prompt=encoders.DEFAULT_SYSTEM_PROMPT,
            system_prompts=prompts or None,
            latent_encoder_path=_encoder_path(config, args["latent_encoder"], VAE_FOLDER),
            caption_encoder_path=_encoder_path(config, args["caption_encoder"], GEMMA_FOLDER),
            **{**args, "max_duration": args["max_duration"] or 1.0})
