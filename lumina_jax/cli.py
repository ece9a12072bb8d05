"""Train and sample Lumina-Video (a multi-scale Next-DiT) and Lumina-V2A with JAX.

A first run on a CPU (a few minutes): make the demo data, train, then look at samples:

  lumina-jax prepare --demo --output workdirs/demo_data --max-frames 8 --resolution 16
  lumina-jax train --config configs/demo.py --workdir workdirs/demo
  lumina-jax sample --checkpoint workdirs/demo
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from lumina_jax.errors import UserError


def _register_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="a model preset's parameter counts; --forward: a test forward pass",
        description="A model preset's parameter counts, per part, from shapes alone "
                    "(seconds, no memory, even for the 2B models). --forward also builds the "
                    "model with random weights and runs one forward pass per patch size.")
    p.add_argument("--preset", default="demo",
                   help="model preset (default: demo): one of " + ", ".join(_preset_names()))
    p.add_argument("--forward", action="store_true",
                   help="also build the model (random weights: memory for every parameter) "
                        "and run one forward pass per patch size on random inputs")
    p.add_argument("--frames", type=int, default=8,
                   help="--forward: latent frames of the test video (V2A: video frames of "
                        "visual features) (default: 8)")
    p.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"),
                   help="--forward: latent height and width of the test inputs (V2A: audio "
                        "latent time steps and mel bins) (default: 32 32)")
    p.add_argument("--batch", type=int, default=2,
                   help="--forward: items per test batch (default: 2)")
    p.set_defaults(func=_run_info)


def _preset_names() -> list[str]:
    from lumina_jax.model.config import MODEL_PRESETS

    return list(MODEL_PRESETS)


def _run_info(args) -> int:
    from flax import nnx

    from lumina_jax.model import build_model, get_preset

    cfg = get_preset(args.preset)
    extra = (f", frame features {cfg.frame_dim}, sync features {cfg.sync_dim}"
             if cfg.kind == "v2a" else "")
    print(f"preset {args.preset} ({cfg.kind}): dim {cfg.dim}, {cfg.n_layers} layers, "
          f"{cfg.n_heads} heads ({cfg.kv_heads} kv, head_dim {cfg.head_dim}), ffn "
          f"{cfg.ffn_dim}, patch sizes {cfg.patch_sizes}{extra}")
    # Shapes only (nnx.eval_shape runs no initialiser and allocates nothing): seconds and
    # a few hundred MB even for the 2B models, whose real build takes minutes and ~15 GB.
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    groups: dict[str, int] = {}
    nbytes = 0
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        shape = var.get_value()  # a jax.ShapeDtypeStruct
        groups[str(path[0])] = groups.get(str(path[0]), 0) + shape.size
        nbytes += shape.size * shape.dtype.itemsize
    size = (f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB")
    print(f"parameters: {sum(groups.values()):,} ({size} in {cfg.param_dtype})")
    for name, n in groups.items():
        print(f"  {name:<22} {n:>14,}")
    if not args.forward:
        print("(add --forward to build the model and run a test forward pass per patch size)")
        return 0
    _check_ranges(args, frames=(1, None), size=(1, None), batch=(1, None))
    del abstract
    print(f"building the model with random weights ({size})...", flush=True)
    model = build_model(cfg)
    if cfg.kind == "v2a":
        _info_forward_v2a(model, cfg, args)
    else:
        _info_forward_video(model, cfg, args)
    return 0


def _info_forward_video(model, cfg, args) -> None:
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lumina_jax.model import token_count

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


def _info_forward_v2a(model, cfg, args) -> None:
    """Audio latents [B, C, 1, T, M] with Fv frames of visual features and T sync rows."""
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    b, (steps, mels), fv = args.batch, args.size, args.frames
    keys = jax.random.split(jax.random.key(0), 4)
    cap = jax.random.normal(keys[0], (b, 16, cfg.cap_feat_dim))
    mask = jnp.arange(16)[None] < jnp.array([16, 9] * b)[:b, None]
    frames = jax.random.normal(keys[1], (b, fv, cfg.frame_dim))
    sync = jax.random.normal(keys[2], (b, steps, cfg.sync_dim))
    t = jnp.full((b,), 0.5)
    x = jax.random.normal(keys[3], (b, cfg.in_channels, 1, steps, mels))
    forward = nnx.jit(lambda m, x, ps: m(x, t, cap, mask, frames, sync, patch_size=ps),
                      static_argnums=2)
    for ps in cfg.patch_sizes:
        start = time.perf_counter()
        out = jax.block_until_ready(forward(model, x, ps))
        took = time.perf_counter() - start
        p = ps[0]
        print(f"  audio {p}x{p}: in {tuple(x.shape)} + frames {tuple(frames.shape)} + sync "
              f"{tuple(sync.shape)} -> out {tuple(out.shape)}, {(steps // p) * (mels // p)} "
              f"tokens/item, max|out| {float(jnp.max(jnp.abs(out))):.3g} (zero at init), "
              f"compile+run {took:.2f}s")


TRAIN_DESCRIPTION = """\
Train a config in WORKDIR; running the same command again resumes from its last
checkpoint. Any config field can be overridden with --config.a.b=value (unknown keys and
wrong types are rejected before any compute), e.g. --config.optim.lr=1e-3.

Configs and their variants (configs/x.py:VARIANT):
  configs/demo.py                  the CPU demo, minutes (data: prepare --demo)
  configs/demo.py:quick            a smoke run of it: a few steps per stage
  configs/demo.py:tiny             the tests' tiny model and three short stages
  configs/lumina_video_2b.py       the published 2B recipe: four stages, for a cluster
  configs/lumina_video_2b.py:runlocal
                                   that recipe in miniature on one CPU; makes its own data
  configs/v2a_demo.py              the Lumina-V2A demo (data: prepare --demo-v2a)
  configs/v2a_demo.py:quick        a smoke run of it: a few steps
  configs/v2a_demo.py:tiny         the V2A tests' tiny model
"""


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a config in a workdir; run it again to resume",
        description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="configs/x.py, or configs/x.py:VARIANT (see the variants above)")
    p.add_argument("--workdir", required=True,
                   help="the run's folder: config.json, checkpoints, metrics, samples, logs; "
                        "an existing run there is resumed")
    p.add_argument("--restart", action="store_true",
                   help="start again from step 0: move this workdir's checkpoints, metrics, "
                        "samples and logs to <workdir>/before-restart-<time>/ (never deleted)")
    p.set_defaults(func=_run_train, accepts_overrides=True)


def _run_train(args) -> int:
    from lumina_jax.train.config import load_config
    from lumina_jax.train.loop import train

    config = load_config(args.config, args.overrides)
    last = train(config, args.workdir, restart=args.restart)
    if last:
        print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                                             if isinstance(v, float) and "/" not in k))
    return 0


def add_checkpoint_args(p, what: str = "training workdir (of `lumina-jax train` or `import`)"):
    """--checkpoint (a run's workdir) and --step, as every command that reads weights has."""
    p.add_argument("--checkpoint", required=True, help=what)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def _register_sample(subparsers) -> None:
    text = ("generate videos from a trained workdir's weights into a new folder per call: "
            "latents npz, mp4 + GIF per prompt, and a large <clip>.preview.mp4 to watch "
            "small samples in a normal player")
    p = subparsers.add_parser("sample", help="generate videos from a trained workdir",
                              description=text[0].upper() + text[1:] + ".")
    add_checkpoint_args(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeatable); default: the config's sample prompts")
    p.add_argument("--out", default=None,
                   help="output folder (default: a new WORKDIR/samples/step<N>_<time> per call)")
    p.add_argument("--weights", choices=("ema", "params"), default="ema",
                   help="ema: the moving average of the weights (default; what export "
                        "publishes), params: the raw trained weights")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed of the first prompt, +1 per prompt (default: the run's "
                        "sample seed)")
    p.add_argument("--system-prompt", default=None,
                   help="prepended to every prompt and the negative one (default: the run's)")
    p.add_argument("--negative-prompt", default=None,
                   help="what CFG steers away from (default: the run's); '{prompt}': each "
                        "prompt itself, so CFG steers only by motion score (motion guidance, "
                        "away from the run's neg_motion)")
    p.add_argument("--num-steps", type=int, default=None,
                   help="Euler steps (default: the run's)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale for every step (default: the run's)")
    p.add_argument("--motion", type=float, default=None,
                   help="motion score to condition on: higher = more motion (default: the "
                        "run's)")
    p.add_argument("--preset", default=None,
                   help="sampler preset (960px, 960px-multiscale, 512px, 512px-multiscale)")
    p.add_argument("--size", type=int, nargs=3, default=None, metavar=("F", "H", "W"),
                   help="latent frames, height and width")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    import dataclasses
    import time

    from lumina_jax.diffusion.sampler import SAMPLER_PRESETS
    from lumina_jax.train import samples
    from lumina_jax.train.loop import sample_spec

    _check_ranges(args, step=(0, None), size=(1, None), num_steps=(1, None),
                  seed=(0, 2**31 - 1), cfg=(0, None), motion=(0, None))
    if args.preset is not None and args.preset not in SAMPLER_PRESETS:
        raise UserError(f"--preset {args.preset}: no such sampler preset; choose one of "
                        f"{', '.join(SAMPLER_PRESETS)}")
    if args.out is not None:
        _check_new_folder(args.out)
    exp, state = _load_run(args.checkpoint, args.step)
    step = int(state["step"])
    print(f"checkpoint step {step} of {args.checkpoint}, "
          f"{'EMA' if args.weights == 'ema' else 'raw (non-EMA)'} weights")
    spec = sample_spec(exp, prompts=args.prompt)
    if spec is None:
        raise UserError(f"{args.checkpoint}/config.json has no sample prompts; give --prompt")
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
    _check_latent_size(spec)
    latents = samples.generate(exp.model, state[args.weights], spec)
    out = args.out or _new_folder(os.path.join(
        args.checkpoint, "samples", f"step{step:07d}_{time.strftime('%Y%m%d-%H%M%S')}"))
    _, frames = samples.save_samples(latents, spec, out)
    # The folder is new (or was empty): everything in it is this call's, previews included.
    written = sorted(os.listdir(out))
    note = (f" (*.preview.*: the clips enlarged to at least {samples.PREVIEW_SIDE} px, to "
            f"watch in a normal player)" if any(".preview." in n for n in written) else "")
    print(f"wrote {len(written)} files to {out}{note}:")
    print("\n".join(os.path.join(out, name) for name in written))
    if exp.eval.judge == "demo":
        _print_demo_judge(frames, spec.prompts)
    return 0


def _print_demo_judge(frames, prompts) -> None:
    """The demo judge's reading of these samples, where every prompt is a demo prompt."""
    from data_pipelines import demo_judge

    try:
        scores = demo_judge.judge(frames, prompts)
    except ValueError as e:  # a prompt the judge cannot read
        print(f"(not judged: {e})")
        return
    for row in scores["rows"]:
        print(f"  {row['prompt']!r}: read as {row['colour']} {row['shape']} moving "
              f"{row['direction']}" if row["found"] else f"  {row['prompt']!r}: no shape found")
    print(f"{demo_judge.format_scores(scores)} (these samples; `lumina-jax eval` judges all "
          f"{len(demo_judge.PROMPTS)} demo prompts)")


def _register_eval(subparsers) -> None:
    text = ("evaluate a trained workdir's weights: validation loss at fixed t and noise on "
            "the last stage's tasks, the prompt-adherence judge (demo runs) and FVD against "
            "held-out real clips; printed and written to WORKDIR/eval/step<N>.json")
    p = subparsers.add_parser("eval", help="validation loss, judge and FVD of a trained workdir",
                              description=text[0].upper() + text[1:] + ".")
    add_checkpoint_args(p)
    p.add_argument("--weights", choices=("ema", "params"), default="ema",
                   help="ema (default) or params: the raw trained weights")
    p.add_argument("--judge", choices=("demo", "none"), default=None,
                   help="prompt-adherence judge (default: the run's eval.judge)")
    p.add_argument("--fvd", type=int, default=None, metavar="N",
                   help="FVD over N generated vs N held-out clips (0 = off; default: the "
                        "run's eval.fvd_clips)")
    p.add_argument("--fvd-source", default=None,
                   help="prepared folder of the real clips (default: the run's "
                        "eval.fvd_source, else the last stage's video data)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    import dataclasses
    import json

    from lumina_jax.train.evaluate import Evaluator, evaluator_lines
    from lumina_jax.train.loop import eval_sample_spec
    from lumina_jax.train.state import model_graphdef
    from lumina_jax.train.step import batch_keys

    _check_ranges(args, step=(0, None), fvd=(0, None))
    if args.fvd == 1:
        raise UserError("--fvd 1: FVD needs at least 2 clips per set (and is biased below "
                        "a few hundred)")
    exp, state = _load_run(args.checkpoint, args.step)
    step = int(state["step"])
    changes = {}
    if args.judge is not None:
        changes["judge"] = "" if args.judge == "none" else args.judge
    if args.fvd is not None:
        changes["fvd_clips"] = args.fvd
    if args.fvd_source is not None:
        changes["fvd_source"] = args.fvd_source.format(data_dir=exp.run.data_dir)
    cfg = dataclasses.replace(exp.eval, **changes)
    out_dir = os.path.join(args.checkpoint, "eval")
    evaluator = Evaluator(exp, cfg, model_graphdef(exp.model), batch_keys(exp.model),
                          eval_sample_spec(exp, cfg), out_dir)
    print(f"checkpoint step {step} of {args.checkpoint}, "
          f"{'EMA' if args.weights == 'ema' else 'raw (non-EMA)'} weights")
    values = evaluator(state[args.weights], exp.stages[-1], step)
    losses = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in values.items()
                       if k.startswith("eval/loss/"))
    print(f"validation loss (t = {', '.join(f'{t:g}' for t in cfg.t_values)}): {losses}")
    for line in evaluator_lines(values):
        print(line)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"step{step:07d}.json")
    with open(path, "w") as f:
        json.dump({"step": step, "weights": args.weights, **values}, f, indent=1)
    print(f"wrote {path}")
    return 0


def _check_ranges(args, **ranges: tuple[float, float | None]) -> None:
    """UserError for a numeric argument (or any of its values) outside [low, high]."""
    for name, (low, high) in ranges.items():
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and any(v < low or (high is not None and v > high)
                                     for v in values):
            want = f"at least {low}" if high is None else f"from {low} to {high}"
            raise UserError(f"--{name.replace('_', '-')} {' '.join(map(str, values))}: "
                            f"{'each value ' if len(values) > 1 else ''}must be {want}")


def _check_latent_size(spec) -> None:
    """UserError unless every patch size the sampler will use tiles the latent size."""
    from lumina_jax.diffusion.sampler import euler_steps

    for p, pf in sorted({s.patch_size for s in euler_steps(spec.sample_settings())}):
        if spec.height % p or spec.width % p or (spec.frames > 1 and spec.frames % pf):
            raise UserError(
                f"latent size F H W = {spec.frames} {spec.height} {spec.width} does not fit "
                f"the sampler's patch size {pf}x{p}: H and W must be multiples of {p}, F 1 "
                f"(an image) or a multiple of {pf}; change --size")


def _check_new_folder(path: str) -> None:
    """UserError unless `path` is a new or empty folder (nothing gets overwritten)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {path} is a file; give a new folder")
    if os.path.isdir(path) and os.listdir(path):
        raise UserError(f"--out {path} is not empty; give a new or empty folder (nothing "
                        f"is overwritten)")


def _checkpoint_steps(workdir: str) -> list[int]:
    """The steps saved under `workdir/checkpoints` (Orbax names each step's folder by it)."""
    folder = os.path.join(workdir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(n) for n in names if n.isdigit())


def _steps_text(steps: list[int]) -> str:
    shown = steps if len(steps) <= 10 else steps[:3] + ["..."] + steps[-6:]
    return ", ".join(map(str, shown))


def _load_run(workdir: str, step: int | None):
    """`load_run`, with a wrong workdir or step as a one-line UserError."""
    from lumina_jax.train.loop import load_run

    if not os.path.isfile(os.path.join(workdir, "config.json")):
        what = ("has no config.json" if os.path.isdir(workdir) else
                "is a file" if os.path.exists(workdir) else "does not exist")
        raise UserError(f"--checkpoint {workdir} {what}; give the --workdir of a "
                        f"`lumina-jax train` or `lumina-jax import` run")
    steps = _checkpoint_steps(workdir)
    if not steps:
        raise UserError(f"--checkpoint {workdir} has no checkpoints yet (in "
                        f"{workdir}/checkpoints); train it first")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: {workdir}/checkpoints has no such step; available: "
                        f"{_steps_text(steps)}")
    try:
        return load_run(workdir, step)
    except FileNotFoundError as e:  # every candidate failed to restore (warnings above)
        raise UserError(f"{e} (see the warnings above); give another --step") from None


def _new_folder(path: str) -> str:
    """Create `path` (or `path_2`, ... if taken), so earlier samples are never overwritten."""
    candidate, n = path, 1
    while True:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def _register_export(subparsers) -> None:
    text = ("write a workdir's weights as the official PyTorch checkpoint: the raw params "
            "as consolidated.00-of-01.safetensors/.pth, the EMA weights as "
            "consolidated_ema.00-of-01.safetensors/.pth, and model_args")
    p = subparsers.add_parser(
        "export", help="write a workdir's weights (params and EMA) as the official PyTorch "
                       "checkpoint", description=text[0].upper() + text[1:] + ".")
    add_checkpoint_args(p, "training workdir")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from lumina_jax.export import export_params

    _check_ranges(args, step=(0, None))
    _check_new_folder(args.out)
    exp, state = _load_run(args.checkpoint, args.step)
    if exp.model.kind != "video":
        raise UserError(f"--checkpoint {args.checkpoint} is a {exp.model.kind} run; the "
                        f"official PyTorch layout exists for the video model only")
    step = int(state["step"])
    print(f"exporting step {step} of {args.checkpoint}: the raw params as consolidated.* and "
          f"the EMA weights as consolidated_ema.* (import takes the EMA ones unless "
          f"--use params)", flush=True)
    for path in export_params(state["params"], exp.model, args.out, ema_params=state["ema"]):
        print(path)
    print(f"exported step {step} (params and EMA) to {args.out}")
    return 0


def _register_import(subparsers) -> None:
    text = ("start a training workdir from PyTorch weights (a .safetensors/.pth state_dict "
            "or an export folder) at step 0; then `lumina-jax train` trains from them")
    p = subparsers.add_parser(
        "import", help="start a workdir from PyTorch weights (an export folder or a file)",
        description=text[0].upper() + text[1:] + ".")
    p.add_argument("--weights", required=True,
                   help="state_dict file (.safetensors/.pth) or export folder")
    p.add_argument("--use", choices=("ema", "params"), default=None,
                   help="which weights of an export folder: ema (the default when present: "
                        "what export publishes as the model) or params (the raw ones)")
    p.add_argument("--config", required=True, help="configs/x.py[:arg] of the run to start")
    p.add_argument("--workdir", required=True,
                   help="the new run's folder (refused if it has checkpoints; see "
                        "--move-existing)")
    p.add_argument("--move-existing", action="store_true",
                   help="if the workdir has checkpoints, first move them and its config.json "
                        "to WORKDIR/before-import-<time>/ (nothing is deleted)")
    p.set_defaults(func=_run_import, accepts_overrides=True)


def _run_import(args) -> int:
    from lumina_jax.export import check_shapes, find_weights, read_state_dict
    from lumina_jax.train.config import build, load_config
    from lumina_jax.train.loop import import_weights

    weights, which = find_weights(args.weights, args.use)
    config = load_config(args.config, args.overrides)
    # A truncated, foreign or mismatched file fails here, before the workdir changes.
    check_shapes(read_state_dict(weights)[0], build(config, check_data=False).model, weights)
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UserError(f"--workdir {args.workdir} is a file; give a folder")
    steps = _checkpoint_steps(args.workdir)
    if steps and not args.move_existing:
        raise UserError(
            f"--workdir {args.workdir} already has checkpoints (steps {_steps_text(steps)}); "
            f"training there would resume them, not these weights. Give a new --workdir, or "
            f"add --move-existing to move them and config.json to "
            f"{args.workdir}/before-import-<time>/ first")
    if steps:
        from lumina_jax.train.guard import move_run_aside

        aside = move_run_aside(args.workdir, "import", ("checkpoints", "config.json"))
        print(f"moved the existing checkpoints (steps {_steps_text(steps)}) and config.json "
              f"to {aside}")
    step_dir = import_weights(config, weights, args.workdir)
    kind = {"ema": "the EMA weights", "params": "the raw (non-EMA) params"}.get(which, "weights")
    choice = " (choose with --use ema|params)" if os.path.isdir(args.weights) else ""
    print(f"read {kind} from {weights}{choice}")
    print(f"wrote {step_dir}: step 0, params and EMA both these weights, fresh optimizer "
          f"state; config in {os.path.join(args.workdir, 'config.json')}")
    print(f"`lumina-jax train --config {args.config} --workdir {args.workdir}` trains from them")
    return 0


def _register_prepare(subparsers) -> None:
    from data_pipelines.cli import register

    register(subparsers)


def _register_sweep(subparsers) -> None:
    from lumina_jax.sweep import register

    register(subparsers)


def _register_v2a(subparsers) -> None:
    from lumina_jax.v2a import register

    register(subparsers)


def _register_plan(subparsers) -> None:
    from lumina_jax.train.plan import register

    register(subparsers)


# In the order of a run: data, training, using the weights, then the planning tools.
REGISTRARS = [_register_prepare, _register_train, _register_sample, _register_eval, _register_v2a,
              _register_export, _register_import, _register_sweep, _register_plan,
              _register_info]


def version() -> str:
    """The installed package's version, else (a source checkout) pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("lumina-jax")
    except metadata.PackageNotFoundError:
        import pathlib
        import tomllib

        pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The `lumina-jax` parser with every subcommand registered (what `main` parses with)."""
    parser = argparse.ArgumentParser(prog="lumina-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the lumina-jax version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a user error (also after the command)")
    subparsers = parser.add_subparsers(dest="command", required=True, title="commands",
                                       metavar="COMMAND",
                                       help="`lumina-jax COMMAND --help` shows its options")
    for register in REGISTRARS:
        register(subparsers)
    return parser


def fewer_gc_passes() -> None:
    """Run CPython's young-object collection every 50,000 allocations instead of every 700.
    Tracing and lowering allocate millions of short-lived objects: with the default a tiny
    demo run made ~1,500 collections, ~2 s of its ~20 s; now ~15, ~0.4 s. The collector
    only frees reference cycles; they now wait a little longer."""
    gc.set_threshold(50_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    fewer_gc_passes()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.debug = args.debug or "--debug" in extra
    extra = [a for a in extra if a != "--debug"]
    overrides = [a for a in extra if a.startswith("--config.")]
    if len(overrides) != len(extra) or (overrides
                                        and not getattr(args, "accepts_overrides", False)):
        unknown = " ".join(a for a in extra if a not in overrides) or " ".join(extra)
        parser.error(f"unrecognized arguments: {unknown}")
    args.overrides = overrides
    try:
        return args.func(args)
    except UserError as e:  # the user's mistake: one line that names the fix
        if args.debug:
            raise
        print(f"lumina-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while training, or Ctrl-C elsewhere
        if args.debug:
            raise
        print(f"lumina-jax {args.command}: aborted by Ctrl-C (nothing more was saved)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
