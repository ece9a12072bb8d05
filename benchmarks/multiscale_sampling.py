"""Wall time of multi-scale vs single-scale (1x2) sampling, same step count, one run.

    python benchmarks/multiscale_sampling.py                      # CPU: demo model, small clip
    python benchmarks/multiscale_sampling.py --model 2B_GQA --dtype bfloat16 \
        --frames 24 --height 88 --width 156                       # the paper's 1248x704x96f

Runs the real NextDiT (random weights: the cost does not depend on them) through
`lumina_jax.diffusion.sample` with the published settings (`--preset 960px` or `512px`,
CFG, renorm and motion schedules included) and its `-multiscale` twin. Prints the
measured ratio next to the ratio the token counts predict (model evaluations weighted by
tokens, doubled while CFG runs) and the paper's 0.34. Compilation (one per patch size)
is done and timed before the measurement. Measures; never passes or fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lumina_jax.diffusion import SAMPLER_PRESETS, SampleSettings, nnx_velocity_fn, euler_steps, sample
from lumina_jax.model import NextDiT, get_preset, token_count

PAPER = {"multiscale": 0.34, (2, 1): 1.00, (2, 2): 0.36, (4, 2): 0.07}


def tokens(shape, ps):
    return token_count(*shape[2:], ps)


def predicted_cost(settings, shape):
    return sum(tokens(shape, s.patch_size) * (2 if s.cfg else 1) for s in euler_steps(settings))


def timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="lumina_jax.model preset")
    ap.add_argument("--dtype", default="float32", help="model param and compute dtype")
    ap.add_argument("--preset", default="960px", choices=["960px", "512px"])
    ap.add_argument("--steps", type=int, default=69)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8, help="latent frames")
    ap.add_argument("--height", type=int, default=32, help="latent height")
    ap.add_argument("--width", type=int, default=32, help="latent width")
    ap.add_argument("--cap-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per schedule (min taken)")
    args = ap.parse_args()

    cfg = get_preset(args.model, dtype=args.dtype, param_dtype=args.dtype)
    model = NextDiT(cfg, rngs=nnx.Rngs(0))
    fn, params = nnx_velocity_fn(model)
    shape = (args.batch, cfg.in_channels, args.frames, args.height, args.width)
    k = jax.random.split(jax.random.key(0), 3)
    noise = jax.random.normal(k[0], shape)
    cap = jax.random.normal(k[1], (args.batch, args.cap_len, cfg.cap_feat_dim))
    cap_mask = jnp.ones((args.batch, args.cap_len), bool)
    neg = dict(neg_cap_feats=jax.random.normal(k[2], (1, args.cap_len, cfg.cap_feat_dim)),
               neg_cap_mask=jnp.ones((1, args.cap_len), bool))
    single = dataclasses.replace(SAMPLER_PRESETS[args.preset], num_steps=args.steps)
    multi = dataclasses.replace(SAMPLER_PRESETS[f"{args.preset}-multiscale"], num_steps=args.steps)
    run = lambda st: sample(fn, noise, cap, cap_mask, st, params=params, progress=False, **neg)

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  model: {args.model} "
          f"({args.dtype})  latents: {shape}  steps: {args.steps}  preset: {args.preset}")
    # Compile every patch size (one compilation each, CFG branch included), and time one
    # positive-only step per scale: the paper's per-scale relative costs.
    step_s = {}
    for ps in ((2, 1), (2, 2), (4, 2)):
        one = SampleSettings(num_steps=1, shift=1.0, patch_size=ps, cfg=1.0)
        c = timed(lambda: run(one))
        plain = dataclasses.replace(one, num_steps=3, cfg=0.0)
        step_s[ps] = min(timed(lambda: run(plain)) for _ in range(2)) / 3
        print(f"  compile+1 step {ps[1]}x{ps[0]}: {c:7.2f} s   tokens {tokens(shape, ps):7d}   "
              f"step {step_s[ps] * 1e3:9.2f} ms")
    print("\nper-step cost relative to 1x2 (positive branch only):")
    print("  scale  tokens  measured  token-ratio  paper")
    for ps in ((2, 1), (2, 2), (4, 2)):
        print(f"  {ps[1]}x{ps[0]}  {tokens(shape, ps):7d}  {step_s[ps] / step_s[(2, 1)]:8.3f}  "
              f"{tokens(shape, ps) / tokens(shape, (2, 1)):11.3f}  {PAPER[ps]:5.2f}")

    # Alternate the two schedules so that drift in machine load hits both alike.
    t_single = t_multi = float("inf")
    for _ in range(args.repeats):
        t_single = min(t_single, timed(lambda: run(single)))
        t_multi = min(t_multi, timed(lambda: run(multi)))
    # The same ratio rebuilt from the per-step times above (a doubled batch counted as 2x):
    # a cross-check that is less sensitive to load changes during the long runs.
    from_steps = lambda st: sum(step_s[s.patch_size] * (2 if s.cfg else 1) for s in euler_steps(st))
    counts = {ps: sum(s.patch_size == ps for s in euler_steps(multi)) for ps in ((4, 2), (2, 2), (2, 1))}
    predicted = predicted_cost(multi, shape) / predicted_cost(single, shape)
    print(f"\nwhole schedule ({args.steps} steps; multi-scale steps 2x4/2x2/1x2 = "
          f"{counts[(4, 2)]}/{counts[(2, 2)]}/{counts[(2, 1)]}; CFG steps "
          f"{sum(bool(s.cfg) for s in euler_steps(single))}):")
    print(f"  single-scale 1x2   {t_single:9.2f} s")
    print(f"  multi-scale        {t_multi:9.2f} s")
    print(f"  ratio multi/single {t_multi / t_single:9.3f}   token-count prediction "
          f"{predicted:.3f}   paper {PAPER['multiscale']:.2f}")
    print(f"  ratio rebuilt from per-step times {from_steps(multi) / from_steps(single):.3f}")


if __name__ == "__main__":
    main()
