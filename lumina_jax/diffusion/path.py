"""Rectified-flow path (REFERENCE §3): `x_t = t*x1 + (1-t)*x0`, t=1 clean data, t=0 noise.

Time sampling (uniform or logit-normal) and the scale-aware shift `t/(t + s - s*t)`,
which for s > 1 moves t towards 0 (more noise): used for training times and for the
sampler's grid alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIME_SAMPLINGS = ("uniform", "logit_normal")


def time_shift(t, shift: float):
    """Scale-aware shift `t / (t + s - s*t)`; s = 1 is the identity, 0 and 1 are fixed."""
    return t / (t + shift - shift * t)


def sample_time(key: jax.Array, batch: int, kind: str = "uniform", *,
                logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0) -> jax.Array:
    """t [batch] float32: U(0,1) or sigmoid(N(logit_mean, logit_std^2)), then shifted."""
    if kind == "uniform":
        t = jax.random.uniform(key, (batch,), jnp.float32)
    elif kind == "logit_normal":
        t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (batch,), jnp.float32))
    else:
        raise ValueError(f"time sampling {kind!r} is unknown; choose one of {TIME_SAMPLINGS}")
    return time_shift(t, shift)


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = t*x1 + (1-t)*x0 with t [B] broadcast over the item dimensions."""
    t = _bcast(t, x1).astype(x1.dtype)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """d x_t / d t = x1 - x0 (the same for every t)."""
    return x1 - x0
