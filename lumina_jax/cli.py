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

    from lumina_jax.model import NextDiT, count_params, get_preset, token_count

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
            tokens = token_count(frames, h, w, ps)
            kind = "image" if frames == 1 else "video"
            print(f"  {kind} {pf}x{p}: in {tuple(x.shape)} -> out {tuple(out.shape)}, "
                  f"{tokens} tokens/item, max|out| {float(jnp.max(jnp.abs(out))):.3g} "
                  f"(zero at init), compile+run {took:.2f}s")
    return 0


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train from an ml_collections config; resumes from the workdir",
        description="Train. Config fields are overridden with --config.a.b=value (unknown "
                    "keys and wrong types are rejected before any compute).")
    p.add_argument("--config", required=True, help="configs/x.py or configs/x.py:arg")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, samples go here")
    p.set_defaults(func=_run_train, accepts_overrides=True)


def _run_train(args) -> int:
    from lumina_jax.train.config import load_config
    from lumina_jax.train.loop import train

    config = load_config(args.config, args.overrides)
    last = train(config, args.workdir)
    if last:
        print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                                             if isinstance(v, float) and "/" not in k))
    return 0


def _register_sample(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate videos from a training workdir's EMA weights (latents npz, "
                       "decoded mp4 + GIF)")
    p.add_argument("--checkpoint", required=True, help="training workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeatable); default: the config's sample prompts")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new WORKDIR/samples/step<N>_<time> per call)")
    p.add_argument("--weights", choices=("ema", "params"), default="ema")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system-prompt", default=None,
                   help="prepended to every prompt and the negative one (default: the run's)")
    p.add_argument("--negative-prompt", default=None, help="default: the run's")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps")
    p.add_argument("--cfg", type=float, default=None, help="constant CFG scale")
    p.add_argument("--motion", type=float, default=None, help="positive motion score")
    p.add_argument("--preset", default=None,
                   help="sampler preset (960px, 960px-multiscale, 512px, 512px-multiscale)")
    p.add_argument("--size", type=int, nargs=3, default=None, metavar=("F", "H", "W"),
                   help="latent frames, height and width")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    import dataclasses
    import os
    import time

    from lumina_jax.train import samples
    from lumina_jax.train.loop import load_run, sample_spec

    exp, state = load_run(args.checkpoint, args.step)
    step = int(state["step"])
    print(f"checkpoint step {step} of {args.checkpoint}, "
          f"{'EMA' if args.weights == 'ema' else 'raw (non-EMA)'} weights")
    spec = sample_spec(exp.config, exp, prompts=args.prompt)
    if spec is None:
        raise SystemExit("sample: give --prompt (the config has no sample prompts)")
    settings = dict(spec.settings)
    for name, value in (("num_steps", args.num_steps), ("cfg", args.cfg),
                        ("motion", args.motion)):
        if value is not None:
            settings[name] = value
    changes = {"settings": settings}
    for name in ("seed", "system_prompt", "negative_prompt"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.preset is not None:
        changes["preset"] = args.preset
    if args.size is not None:
        changes["frames"], changes["height"], changes["width"] = args.size
    spec = dataclasses.replace(spec, **changes)
    latents = samples.generate(exp.model, state[args.weights], spec)
    out = args.out or _new_folder(os.path.join(
        args.checkpoint, "samples", f"step{step:07d}_{time.strftime('%Y%m%d-%H%M%S')}"))
    paths, _ = samples.save_samples(latents, spec, out)
    print("\n".join(paths))
    return 0


def _new_folder(path: str) -> str:
    """Create `path` (or `path_2`, ... if taken), so earlier samples are never overwritten."""
    import os

    candidate, n = path, 1
    while True:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a training workdir's weights as the official PyTorch "
                       "state_dict (consolidated[_ema].00-of-01.safetensors/.pth + model_args)")
    p.add_argument("--checkpoint", required=True, help="training workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from lumina_jax.export import export_params
    from lumina_jax.train.loop import load_run

    exp, state = load_run(args.checkpoint, args.step)
    for path in export_params(state["params"], exp.model, args.out, ema_params=state["ema"]):
        print(path)
    return 0


def _register_import(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="start a training workdir from PyTorch weights (.safetensors/.pth)")
    p.add_argument("--weights", required=True, help="state_dict file or export folder")
    p.add_argument("--config", required=True, help="configs/x.py[:arg] of the run to start")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=_run_import, accepts_overrides=True)


def _run_import(args) -> int:
    from lumina_jax.train.config import load_config
    from lumina_jax.train.loop import import_weights

    step_dir = import_weights(load_config(args.config, args.overrides), args.weights,
                              args.workdir)
    print(f"wrote {step_dir}; `lumina-jax train --config {args.config} --workdir "
          f"{args.workdir}` continues from these weights")
    return 0


def _register_prepare(subparsers) -> None:
    from data_pipelines.cli import register

    register(subparsers)


def _register_sweep(subparsers) -> None:
    from lumina_jax.sweep import register

    register(subparsers)


def _register_plan(subparsers) -> None:
    from lumina_jax.train.plan import register

    register(subparsers)


REGISTRARS = [_register_info, _register_prepare, _register_train, _register_sample,
              _register_export, _register_import, _register_sweep, _register_plan]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lumina-jax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(subparsers)
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--config.")]
    if len(overrides) != len(extra) or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in overrides) or ' '.join(extra)}")
    args.overrides = overrides
    from lumina_jax.errors import UserError

    try:
        return args.func(args)
    except UserError as e:  # the user's mistake: one line that names the fix
        print(f"lumina-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
