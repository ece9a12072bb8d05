"""Turn videos and images (or the built-in demo) into training shards for `lumina-jax train`.

  lumina-jax prepare --input DIR_or_manifest.jsonl --output OUT [--resolution 256 --fps 8
      --max-duration 4 --latent-encoder identity|cogvideox --latent-encoder-path VAE_DIR
      --caption-encoder minilm|gemma --caption-encoder-path GEMMA_DIR]
  lumina-jax prepare --demo --output OUT [--max-frames 16 --resolution 32]
                                             # generate + prepare the embedded demo data
  lumina-jax prepare --v2a --input DIR_or_manifest.jsonl --output OUT [--seconds 2 --fps 16
      --audio-latent-encoder identity|audioldm --audio-latent-encoder-path VAE_DIR
      --visual-encoder pixels|clip --visual-encoder-path CLIP_DIR --caption-encoder minilm|clip]
                                             # Lumina-V2A clips: videos with sound
  lumina-jax prepare --demo-v2a --output OUT  # the V2A demo: bouncing shapes with sound

Videos are encoded whole from frame 0 up to --max-duration seconds at --fps (all
latents stored; training draws windows). Skipped, and counted per reason: unreadable
files (also FIFOs and broken links), items smaller than resolution^2, videos below half the
fps, clips too short, unknown extensions, captions without media, unreadable captions
(sidecar .txt: UTF-8, UTF-16 with a BOM, else Latin-1). A malformed manifest line or input
with no usable media is an error; the output folder is replaced only when all is written.

Standalone: python -m data_pipelines.cli prepare ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from data_pipelines import encoders
from lumina_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="turn videos/images (or the built-in demo) into training shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", help="folder of videos/images (sub-folder = source) or manifest")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--demo",
        action="store_true",
        help="generate the embedded demo dataset into OUTPUT/raw, prepare it "
        "into OUTPUT/prepared (32 px, 8 fps, 16 frames unless given)",
    )
    p.add_argument("--v2a", action="store_true",
                   help="prepare Lumina-V2A clips (videos with an audio track) instead")
    p.add_argument("--demo-v2a", action="store_true",
                   help="generate the V2A demo (bouncing shapes with impact sounds and "
                        "colour-pitched tones) into OUTPUT/clips and OUTPUT/heldout_clips and "
                        "prepare them into OUTPUT/prepared and OUTPUT/heldout")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="--v2a: seconds of each clip (from its start) used for training")
    p.add_argument("--audio-latent-encoder", choices=("identity", "audioldm"),
                   default="identity", help="--v2a: normalised log-mel, or an AudioLDM-style "
                                            "VAE from --audio-latent-encoder-path")
    p.add_argument("--audio-latent-encoder-path", default="",
                   help="--v2a: local diffusers AutoencoderKL folder (audioldm)")
    p.add_argument("--visual-encoder", choices=("pixels", "clip"), default="pixels",
                   help="--v2a: 8x8 pixels per frame (the model learns on top), or CLIP")
    p.add_argument("--visual-encoder-path", default="", help="--v2a: local CLIP folder (clip)")
    p.add_argument("--resolution", type=int, default=None, help="bucket area = this squared")
    p.add_argument("--fps", type=float, default=None, help="frames per second sampled "
                                                            "(default 8; --v2a: 16)")
    p.add_argument("--max-duration", type=float, default=4.0,
                   help="seconds of each video encoded, from frame 0")
    p.add_argument("--max-frames", type=int, default=None,
                   help="--demo only: frames per generated clip (default 16)")
    p.add_argument("--multiple", type=int, default=32, help="bucket sides divisible by this")
    p.add_argument("--max-aspect", type=float, default=4.0,
                   help="widest bucket aspect ratio (long side / short side) (default: 4)")
    p.add_argument("--latent-encoder", choices=sorted(encoders.LATENT_ENCODERS), default="identity",
                   help="identity: the pixels themselves (the demo), cogvideox: the "
                        "CogVideoX VAE from --latent-encoder-path (default: identity)")
    p.add_argument("--latent-encoder-path", default="", help="local weights folder (cogvideox)")
    p.add_argument("--caption-encoder", choices=sorted({*encoders.CAPTION_ENCODERS, "clip"}),
                   default="minilm", help="text features (clip: --v2a only)")
    p.add_argument("--caption-encoder-path", default="",
                   help="local weights folder (gemma; clip for --v2a)")
    p.add_argument("--system-prompt", default=encoders.DEFAULT_SYSTEM_PROMPT,
                   help="prepended to every caption before it is encoded (default: the "
                        "official Lumina-Video system prompt)")
    p.add_argument("--records-per-shard", type=int, default=1024,
                   help="clips per ArrayRecord shard file (default: 1024)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines import demo, offline  # pylint: disable=import-outside-toplevel

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.demo_v2a or args.v2a:
        return _run_v2a(args)
    if args.caption_encoder == "clip":
        raise UserError("prepare: --caption-encoder clip is for --v2a; video captions use "
                        "minilm or gemma")
    args.fps = args.fps or 8.0
    if args.demo:
        summary = demo.prepare_demo(
            args.output,
            resolution=args.resolution or 32,
            fps=args.fps,
            frames=args.max_frames or 16,
            caption_encoder=args.caption_encoder,
        )
    else:
        if not args.input:
            raise SystemExit("prepare: --input is required (or --demo)")
        if args.max_frames is not None:
            raise SystemExit("prepare: --max-frames is for --demo only; videos are encoded "
                             "whole up to --max-duration seconds (training picks windows)")
        summary = offline.prepare(
            args.input,
            args.output,
            resolution=args.resolution or 256,
            fps=args.fps,
            max_duration=args.max_duration,
            multiple=args.multiple,
            max_aspect=args.max_aspect,
            latent_encoder=args.latent_encoder,
            latent_encoder_path=args.latent_encoder_path,
            caption_encoder=args.caption_encoder,
            caption_encoder_path=args.caption_encoder_path,
            system_prompt=args.system_prompt,
            records_per_shard=args.records_per_shard,
        )
    # Skipped files were warned one line each; the summary gives the counts per reason.
    hidden = ("system_prompts", "skipped", "shards")
    print(json.dumps({k: v for k, v in summary.items() if k not in hidden}, indent=1))
    return 0


def _run_v2a(args: argparse.Namespace) -> int:
    from data_pipelines import v2a  # pylint: disable=import-outside-toplevel

    if args.demo_v2a:
        summary = v2a.prepare_demo_v2a(args.output)
    else:
        if not args.input:
            raise UserError("prepare --v2a: --input is required (a folder of videos with "
                            "sound, or a manifest)")
        summary = {"prepared": v2a.prepare_v2a(
            args.input, args.output, seconds=args.seconds, fps=args.fps or 16.0,
            audio_latent_encoder=args.audio_latent_encoder,
            audio_latent_encoder_path=args.audio_latent_encoder_path,
            visual_encoder=args.visual_encoder, visual_encoder_path=args.visual_encoder_path,
            caption_encoder=args.caption_encoder,
            caption_encoder_path=args.caption_encoder_path,
            records_per_shard=args.records_per_shard)}
    hidden = ("skipped", "shards")
    print(json.dumps({name: {k: v for k, v in s.items() if k not in hidden}
                      for name, s in summary.items()}, indent=1))
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="data_pipelines")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:  # as lumina-jax prints it: one line naming the file and the fix
        sys.exit(f"data_pipelines {args.command}: error: {e}")


if __name__ == "__main__":
    main()
