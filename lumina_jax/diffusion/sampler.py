"""Euler ODE sampler with time-aware settings and multi-scale patch sizes (REFERENCE §4).

Integrates dx/dt = v(x, t) from t=0 (noise) to t=1 (data) over
`time_shift(linspace(0, 1, num_steps + 1), shift)`. At step i (from t_i to t_{i+1})
every time-aware setting is read at t_i (see `schedule.py`):

    patch size       (p, pF) given to the model
    cfg              guided = pos + cfg * (pos - neg); cfg == 0 -> model run once (pos only)
    renorm           if > 0: guided *= min(1, renorm * ||pos|| / ||guided||), per item
    motion           motion score of the positive branch
    neg_motion       motion score of the negative branch

`velocity_fn(x, t, cap_feats, cap_mask, motion_score, patch_size=(p, pF))`; with
`params` given it is called as `velocity_fn(params, x, t, ...)` so that large weights are
jit arguments rather than baked-in constants (see `nnx_velocity_fn`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lumina_jax.diffusion.path import time_shift
from lumina_jax.diffusion.schedule import parse_schedule, parse_patch_size, value_at


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    num_steps: int = 69         # Euler steps; the release's linspace(0, 1, 70) is 69 steps
    shift: float = 8.0
    patch_size: Any = "1x2"     # each of these: constant or (v0, (t1, v1), ...)
    cfg: Any = 0.0
    renorm: Any = -1.0          # <= 0: off
    motion: Any = 6.0
    neg_motion: Any = 6.0

    def __post_init__(self):  # fail on a malformed schedule at construction
        parse_schedule(self.patch_size, parse_patch_size)
        for f in ("cfg", "renorm", "motion", "neg_motion"):
            parse_schedule(getattr(self, f), float)


_960 = dict(num_steps=69, shift=24.0, cfg=(20.0, (0.2, 0.0)), renorm=2.0, motion=6.0,
            neg_motion=(2.0, (0.05, 6.0)))
_512 = dict(num_steps=69, shift=8.0, cfg=(12.0, (0.4, 0.0)), renorm=-1.0, motion=6.0,
            neg_motion=(2.0, (0.05, 6.0)))
# The published sampling configs (release names f24F96R960[-MultiScale], f16F64R512[-...]).
SAMPLER_PRESETS: dict[str, SampleSettings] = {
    "960px": SampleSettings(patch_size="1x2", **_960),
    "960px-multiscale": SampleSettings(patch_size=("2x4", (0.03, "2x2"), (0.125, "1x2")), **_960),
    "512px": SampleSettings(patch_size="1x2", **_512),
    "512px-multiscale": SampleSettings(patch_size=("2x4", (0.075, "2x2"), (0.3, "1x2")), **_512),
}


class Step(NamedTuple):
    t: float
    dt: float
    patch_size: tuple[int, int]
    cfg: float
    renorm: float
    motion: float
    neg_motion: float


def time_grid(num_steps: int, shift: float) -> np.ndarray:
    """The num_steps + 1 shifted times from 0 to 1 (float64)."""
    return time_shift(np.linspace(0.0, 1.0, num_steps + 1), shift)


def euler_steps(settings: SampleSettings) -> list[Step]:
    """Every Euler step with its settings, resolved in Python (all static)."""
    ts = time_grid(settings.num_steps, settings.shift)
    return [Step(float(t0), float(t1 - t0), value_at(settings.patch_size, t0, parse_patch_size),
                 *(value_at(getattr(settings, f), t0, float)
                   for f in ("cfg", "renorm", "motion", "neg_motion")))
            for t0, t1 in zip(ts[:-1], ts[1:])]


def guide(pos: jax.Array, neg: jax.Array, cfg, renorm) -> jax.Array:
    """pos + cfg*(pos - neg), then per item clipped to norm renorm*||pos|| when renorm > 0."""
    out = pos + cfg * (pos - neg)
    axes = tuple(range(1, pos.ndim))
    pos_norm = jnp.sqrt(jnp.sum(pos.astype(jnp.float32) ** 2, axes, keepdims=True))
    out_norm = jnp.sqrt(jnp.sum(out.astype(jnp.float32) ** 2, axes, keepdims=True))
    factor = jnp.minimum(1.0, renorm * pos_norm / jnp.maximum(out_norm, 1e-12))
    return out * jnp.where(renorm > 0, factor, 1.0).astype(out.dtype)


@dataclasses.dataclass(frozen=True)
class _NoParams:
    """Adapts a plain velocity_fn to the (params, ...) form; hashes as the wrapped fn, so
    repeated `sample` calls with the same function hit the jit cache."""
    fn: Callable[..., jax.Array]

    def __call__(self, params, *args, **kwargs):
        return self.fn(*args, **kwargs)


# One jitted Euler step, specialised (compiled) per patch size only: every other setting
# is a runtime scalar, so a whole multi-scale schedule costs at most three compilations
# however its cfg / motion / renorm schedules switch. `lax.cond` on cfg != 0 runs the
# negative branch only when it is needed. The Python loop around it costs microseconds
# per step against a model call of milliseconds to seconds, buys a progress bar, and
# keeps the code plainer than lax loops over constant segments.
@functools.partial(jax.jit, static_argnames=("velocity_fn", "patch_size", "motion_only"))
def _euler_step(velocity_fn, params, x, t, dt, cfg, renorm, motion, neg_motion,
                cap, cap_mask, neg_cap, neg_cap_mask, *, patch_size, motion_only=False):
    B = x.shape[0]
    tb = jnp.full((B,), t, jnp.float32)
    call = functools.partial(velocity_fn, params, patch_size=patch_size)

    def positive_only():
        return call(x, tb, cap, cap_mask, jnp.full((B,), motion, jnp.float32)).astype(x.dtype)

    def guided():  # positive and negative as one doubled batch
        v = call(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]),
                 jnp.concatenate([cap, neg_cap]), jnp.concatenate([cap_mask, neg_cap_mask]),
                 jnp.concatenate([jnp.full((B,), motion), jnp.full((B,), neg_motion)]
                                 ).astype(jnp.float32)).astype(x.dtype)
        return guide(v[:B], v[B:], cfg, renorm)

    needed = cfg != 0
    if motion_only:  # same captions and scores (e.g. both dropped): no second run needed
        needed &= jnp.any(motion != neg_motion)
    v = positive_only() if neg_cap is None else jax.lax.cond(needed, guided, positive_only)
    return x + dt * v


def _pad_caption(feats, mask, length):
    pad = length - feats.shape[1]
    return (jnp.pad(feats, ((0, 0), (0, pad), (0, 0))),
            jnp.pad(mask.astype(bool), ((0, 0), (0, pad))))


def sample(velocity_fn: Callable[..., jax.Array], noise: jax.Array, cap_feats: jax.Array,
           cap_mask: jax.Array, settings: SampleSettings | str = "960px", *,
           neg_cap_feats: jax.Array | None = None, neg_cap_mask: jax.Array | None = None,
           params: Any = None, motion: jax.Array | None = None,
           motion_only: bool = False, progress: bool = True) -> jax.Array:
    """Integrate noise [B,C,F,H,W] (t=0) to data (t=1); returns float32 latents.

    `cap_feats [B,L,D]`, `cap_mask [B,L]`: positive captions; `neg_cap_*` the negative
    ones (e.g. the system prompt with an empty prompt), needed only where cfg != 0.
    `motion_only`: instead, the negative branch gets each item's own caption, so the
    branches differ only in motion score and cfg amplifies just that (motion guidance).
    `settings`: a SampleSettings or a SAMPLER_PRESETS name. `motion [B]`: per-item positive
    motion scores in place of settings.motion (e.g. one prompt at several motion scores).
    """
    if isinstance(settings, str):
        settings = SAMPLER_PRESETS[settings]
    steps = euler_steps(settings)
    if motion_only:
        if neg_cap_feats is not None:
            raise ValueError("motion_only guidance takes no neg_cap_feats (it uses the captions)")
        neg_cap_feats, neg_cap_mask = cap_feats, cap_mask
    if neg_cap_feats is None and any(s.cfg != 0 for s in steps):
        raise ValueError("cfg != 0 somewhere in the schedule needs neg_cap_feats / neg_cap_mask"
                         " (or motion_only)")
    fn = _NoParams(velocity_fn) if params is None else velocity_fn
    cap_mask = cap_mask.astype(bool)
    if neg_cap_feats is not None:
        B = noise.shape[0]
        neg_cap_feats = jnp.broadcast_to(neg_cap_feats, (B,) + neg_cap_feats.shape[-2:])
        neg_cap_mask = jnp.broadcast_to(neg_cap_mask, (B, neg_cap_feats.shape[1]))
        L = max(cap_feats.shape[1], neg_cap_feats.shape[1])
        cap_feats, cap_mask = _pad_caption(cap_feats, cap_mask, L)
        neg_cap_feats, neg_cap_mask = _pad_caption(neg_cap_feats, neg_cap_mask, L)
    x = noise.astype(jnp.float32)
    bar = tqdm(steps, disable=not progress, desc="sampling", unit="step")
    for s in bar:
        if progress:
            bar.set_postfix(t=f"{s.t:.3f}", patch=f"{s.patch_size[1]}x{s.patch_size[0]}",
                            cfg=s.cfg, refresh=False)
        x = _euler_step(fn, params, x, s.t, s.dt, s.cfg, s.renorm,
                        s.motion if motion is None else motion, s.neg_motion,
                        cap_feats, cap_mask, neg_cap_feats, neg_cap_mask, patch_size=s.patch_size,
                        motion_only=motion_only)
    return x


def nnx_velocity_fn(model):
    """(velocity_fn, params) for a Flax NNX model: pass both to `sample(..., params=params)`.
    Call once and reuse the returned fn, so that the jit cache is hit across samples."""
    from flax import nnx
    graphdef, state = nnx.split(model)

    def velocity_fn(state, x, t, cap_feats, cap_mask, motion_score, patch_size):
        return nnx.merge(graphdef, state)(x, t, cap_feats, cap_mask, motion_score,
                                          patch_size=patch_size)
    return velocity_fn, state
