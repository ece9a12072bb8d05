"""`prepare` subcommand. Wired into `lumina-jax` by lumina_jax/cli.py via `register`.

  lumina-jax prepare --input DIR_or_manifest.jsonl --output OUT [--resolution 256 --fps 8
      --max-duration 4 --latent-encoder identity|cogvideox --latent-encoder-path VAE_DIR
      --caption-encoder minilm|gemma --caption-encoder-path GEMMA_DIR]
  lumina-jax prepare --demo --output OUT [--max-frames 16 --resolution 32]
                                             # generate + prepare the embedded demo data

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
        help="scan media, compute motion scores, write ArrayRecord shards",
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
    p.add_argument("--resolution", type=int, default=None, help="bucket area = this squared")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--max-duration", type=float, default=4.0,
                   help="seconds of each video encoded, from frame 0")
    p.add_argument("--max-frames", type=int, default=None,
                   help="--demo only: frames per generated clip (default 16)")
    p.add_argument("--multiple", type=int, default=32, help="bucket sides divisible by this")
    p.add_argument("--max-aspect", type=float, default=4.0)
    p.add_argument("--latent-encoder", choices=sorted(encoders.LATENT_ENCODERS), default="identity")
    p.add_argument("--latent-encoder-path", default="", help="local weights folder (cogvideox)")
    p.add_argument("--caption-encoder", choices=sorted(encoders.CAPTION_ENCODERS), default="minilm")
    p.add_argument("--caption-encoder-path", default="", help="local weights folder (gemma)")
    p.add_argument("--system-prompt", default=encoders.DEFAULT_SYSTEM_PROMPT)
    p.add_argument("--records-per-shard", type=int, default=1024)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipelines import demo, offline  # pylint: disable=import-outside-toplevel

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
