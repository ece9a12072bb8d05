"""`lumina-jax` command line: one subcommand per job, each registered by its module."""

from __future__ import annotations

import argparse
import sys


def _register_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="build a model preset, print its parameter counts and run a forward "
                     "pass for every patch size (images and video)")
    p.add_argument("--preset", default="demo", help="model preset (default: demo)")
    p.add_argument("--frames", type=int, default=8, help="latent frames of the test video")
    p.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"),
                   help="latent height and width of the test inputs")
    p.add_argument("--batch", type=int, default=2)
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lumina_jax.model import NextDiT, count_params, get_preset

    cfg = get_preset(args.preset)
    print(f"preset {args.preset}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads "
          f"({cfg.kv_heads} kv, head_dim {cfg.head_dim}), ffn {cfg.ffn_dim}, "
          f"patch sizes {cfg.patch_sizes}")
    print(f"parameters: {count_params(cfg):,}")
    model = NextDiT(cfg, rngs=nnx.Rngs(0))
    groups: dict[str, int] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        groups[str(path[0])] = groups.get(str(path[0]), 0) + var.value.size
    for name, n in groups.items():
        print(f"  {name:<22} {n:>14,}")

    b, (h, w) = args.batch, args.size
    key = jax.random.key(0)
    cap = jax.random.normal(key, (b, 16, cfg.cap_feat_dim))
    mask = jnp.arange(16)[None] < jnp.array([16, 9] * b)[:b, None]
    t, motion = jnp.full((b,), 0.5), jnp.full((b,), 2.0)
    forward = nnx.jit(lambda m, x, ps: m(x, t, cap, mask, motion, patch_size=ps),
                      static_argnums=2)
    for frames in (1, args.frames):
        x = jax.random.normal(key, (b, cfg.in_channels, frames, h, w))
        for ps in cfg.patch_sizes:
            start = time.perf_counter()
            out = jax.block_until_ready(forward(model, x, ps))
            took = time.perf_counter() - start
            p, pf = ps
            tokens = -(-frames // pf) * (h // p) * (w // p)
            kind = "image" if frames == 1 else "video"
            print(f"  {kind} {pf}x{p}: in {tuple(x.shape)} -> out {tuple(out.shape)}, "
                  f"{tokens} tokens/item, max|out| {float(jnp.max(jnp.abs(out))):.3g} "
                  f"(zero at init), compile+run {took:.2f}s")
    return 0


def _register_prepare(subparsers) -> None:
    from data_pipelines.cli import register

    register(subparsers)


REGISTRARS = [_register_info, _register_prepare]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lumina-jax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
