"""Rectified-flow training objective (REFERENCE §3).

`velocity_fn(x, t, cap_feats, cap_mask, motion_score, patch_size=(p, pF))` is any
callable with the model's signature (the train step wraps the NNX state around it); a
model with an `inputs` attribute (V2A) gets those batch fields, in that order, instead.
A batch is a dict of arrays: `latents [B,C,F,H,W]`, `cap_feats [B,L,D]`,
`cap_mask [B,L]`, `motion_score [B]`, optionally `loss_mask` (broadcastable to latents).
Condition dropout (caption -> system prompt only, motion -> -1 / 0) is applied by the
data pipeline, which knows each source's system prompt (`data_pipelines.Task`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from lumina_jax.diffusion import path
from lumina_jax.diffusion.schedule import patch_size as _patch_size


VIDEO_INPUTS = ("cap_feats", "cap_mask", "motion_score")
MEDIA = ("image", "video", "audio")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One training task: a media type at one patch size with its own time shift."""
    media: str                      # "image" | "video" | "audio" (V2A)
    patch_size: tuple[int, int]     # (p, pF)
    shift: float
    weight: float = 1.0

    def __post_init__(self):
        if self.media not in MEDIA:
            raise ValueError(f"media must be one of {MEDIA}, got {self.media!r}")
        object.__setattr__(self, "patch_size", _patch_size(self.patch_size))


# Scale-aware shifts of the recipe: image 1x2 -> 1, video 1x2 / 2x2 / 2x4 -> 2 / 4 / 8.
DEFAULT_TASKS: dict[str, TaskSpec] = {
    "image_1x2": TaskSpec("image", (2, 1), 1.0),
    "video_1x2": TaskSpec("video", (2, 1), 2.0),
    "video_2x2": TaskSpec("video", (2, 2), 4.0),
    "video_2x4": TaskSpec("video", (4, 2), 8.0),
}


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Flat, so that `LossConfig(**config.loss)` works from an ml_collections config."""
    vd_weight: float = 1.0              # weight of (1 - cosine similarity)
    time_sampling: str = "uniform"      # or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    n_t_bins: int = 10                  # loss logged in this many equal bins of (shifted) t


def per_item_loss(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None,
                  vd_weight: float = 1.0, eps: float = 1e-8):
    """MSE + vd_weight * (1 - cos) over each flattened item -> (loss, mse, cos), each [B].

    `mask` (broadcastable to pred, e.g. [B,1,F,H,W]) keeps only its nonzero elements in
    both terms; the MSE averages over the kept elements.
    """
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    m = jnp.ones_like(pred) if mask is None else jnp.broadcast_to(mask, pred.shape).astype(jnp.float32)
    axes = tuple(range(1, pred.ndim))
    mse = jnp.sum(m * (pred - target) ** 2, axes) / jnp.maximum(jnp.sum(m, axes), 1.0)
    # As torch.cosine_similarity: each norm clamped to >= eps. An all-zero prediction
    # (the zero-initialised final layer on the first step of every run and stage) is the
    # one exception: torch's gradient there is target_hat / eps, a 1e8-scale spike in
    # grad_norm for a direction that carries no information; its cosine term is taken as
    # 0 with no gradient instead (MSE alone trains that step). Any non-zero prediction
    # gets the official value and gradient.
    pred_sq = jnp.sum(m * pred**2, axes)
    zero = pred_sq == 0.0
    pred_nz = jnp.where(_bcast(zero, pred), 1.0, pred)  # a safe stand-in, never used
    norm = lambda sq: jnp.sqrt(jnp.maximum(sq, eps**2))
    cos = jnp.sum(m * pred_nz * target, axes) / (norm(jnp.sum(m * pred_nz**2, axes))
                                                   * norm(jnp.sum(m * target**2, axes)))
    cos = jnp.where(zero, 0.0, cos)
    return mse + vd_weight * (1.0 - cos), mse, cos


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def bin_by_t(values: jax.Array, t: jax.Array, n_bins: int):
    """(sum, count) of `values` [B] per equal-width bin of t in [0, 1] -> two [n_bins]
    arrays; sums and counts add across steps, tasks and hosts before dividing."""
    idx = jnp.clip(jnp.floor(t * n_bins).astype(jnp.int32), 0, n_bins - 1)
    onehot = jax.nn.one_hot(idx, n_bins, dtype=jnp.float32)
    return values.astype(jnp.float32) @ onehot, jnp.sum(onehot, 0)


def task_loss(velocity_fn: Callable[..., jax.Array], key: jax.Array,
              batch: Mapping[str, jax.Array], task: TaskSpec,
              cfg: LossConfig = LossConfig()) -> tuple[jax.Array, dict[str, Any]]:
    """Mean per-item loss of one task's batch, and logging aux:
    `loss, mse, cos` (batch means), `loss_by_t_sum / loss_by_t_count` [n_t_bins]."""
    x1 = batch["latents"]
    k_t, k_noise = jax.random.split(key)
    t = path.sample_time(k_t, x1.shape[0], cfg.time_sampling, logit_mean=cfg.logit_mean,
                         logit_std=cfg.logit_std, shift=task.shift)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
    # the conditioning the model takes (NextDiT: captions + motion; V2A: + frames, sync)
    cond = [batch[k] for k in getattr(velocity_fn, "inputs", VIDEO_INPUTS)]
    pred = velocity_fn(path.interpolate(x0, x1, t), t, *cond, patch_size=task.patch_size)
    loss, mse, cos = per_item_loss(pred, path.velocity_target(x0, x1), batch.get("loss_mask"),
                                   cfg.vd_weight)
    s, c = bin_by_t(loss, t, cfg.n_t_bins)
    aux = {"loss": loss.mean(), "mse": mse.mean(), "cos": cos.mean(),
           "loss_by_t_sum": s, "loss_by_t_count": c}
    return loss.mean(), aux


def multitask_loss(velocity_fn: Callable[..., jax.Array], key: jax.Array,
                   batches: Mapping[str, Mapping[str, jax.Array]], tasks: Mapping[str, TaskSpec],
                   cfg: LossConfig = LossConfig()):
    """sum_task weight * task_loss over every task that has a batch -> (total, {task: aux}).

    Its gradient is the sum of the per-task gradients (the recipe's accumulation); a
    train step short of memory can instead call `task_loss` per task and add gradients.
    """
    total, aux = jnp.zeros((), jnp.float32), {}
    for i, name in enumerate(sorted(batches)):
        loss, aux[name] = task_loss(velocity_fn, jax.random.fold_in(key, i), batches[name],
                                    tasks[name], cfg)
        total = total + tasks[name].weight * loss
    return total, aux
