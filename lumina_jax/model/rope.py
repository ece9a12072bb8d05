"""3D rotary position tables (REFERENCE.md §1).

head_dim is split into frame/height/width parts; each part rotates by its own integer
token-grid index. Tokens of every patch size share one table: a 2x4 token at grid
(f, h, w) gets the same rotation as a 1x2 token at (f, h, w).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from lumina_jax.model.config import ModelConfig


@functools.lru_cache(maxsize=None)
def axis_tables(part_dim: int, length: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin `[length, part_dim/2]` for positions 0..length-1 of one RoPE part.

    Frequencies and angles in float64, rounded to float32 once (as the reference does).
    """
    freqs = 1.0 / theta ** (np.arange(0, part_dim, 2, dtype=np.float64) / part_dim)
    angles = np.outer(np.arange(length, dtype=np.float64), freqs).astype(np.float32)
    return np.cos(angles), np.sin(angles)


def grid_tables(cfg: ModelConfig, grid: tuple[int, int, int]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin `[Ft*Ht*Wt, head_dim/2]` for a frame-major token grid (Ft, Ht, Wt).

    Built with jnp from the small per-axis tables, so a traced call embeds kilobytes of
    constants rather than an `N x head_dim/2` table.
    """
    for name, n, limit in zip(("frames", "rows", "cols"), grid, cfg.axes_lens):
        if n > limit:
            raise ValueError(
                f"token grid {grid} has {n} {name}, more than ModelConfig.axes_lens allows "
                f"({cfg.axes_lens}); use a coarser patch size or raise axes_lens")
    cos_parts, sin_parts = [], []
    for axis, (part_dim, n) in enumerate(zip(cfg.rope_dims, grid)):
        cos, sin = axis_tables(part_dim, n, float(cfg.rope_theta))
        shape = [1, 1, 1, part_dim // 2]
        shape[axis] = n
        cos_parts.append(jnp.broadcast_to(cos.reshape(shape), (*grid, part_dim // 2)))
        sin_parts.append(jnp.broadcast_to(sin.reshape(shape), (*grid, part_dim // 2)))
    n_tokens = grid[0] * grid[1] * grid[2]
    cos = jnp.concatenate(cos_parts, axis=-1).reshape(n_tokens, -1)
    sin = jnp.concatenate(sin_parts, axis=-1).reshape(n_tokens, -1)
    return cos, sin


def position_tables(cfg: ModelConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin `[B, N, head_dim/2]` for per-token grid indices `positions [B, N, 3]`
    (frame, row, col) -- packed rows, where each clip keeps its own grid. The same values
    as `grid_tables` for the same indices. Indices past `axes_lens` are clipped (traced
    values cannot raise; the config check compares the task's largest grid with it)."""
    cos_parts, sin_parts = [], []
    for axis, (part_dim, n) in enumerate(zip(cfg.rope_dims, cfg.axes_lens)):
        cos, sin = axis_tables(part_dim, n, float(cfg.rope_theta))
        index = positions[..., axis]
        cos_parts.append(jnp.take(jnp.asarray(cos), index, axis=0, mode="clip"))
        sin_parts.append(jnp.take(jnp.asarray(sin), index, axis=0, mode="clip"))
    return jnp.concatenate(cos_parts, axis=-1), jnp.concatenate(sin_parts, axis=-1)
