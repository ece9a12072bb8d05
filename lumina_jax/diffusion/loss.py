"""Rectified-flow training objective (REFERENCE §3).

`velocity_fn(x, t, cap_feats, cap_mask, motion_score, patch_size=(p, pF))` is any
callable with the model's signature (the train step wraps the NNX state around it); a
model with an `inputs` attribute (V2A) gets those batch fields, in that order, instead.
A batch is a dict of arrays: `latents [B,C,F,H,W]`, `cap_feats [B,L,D]`,
`cap_mask [B,L]`, `motion_score [B]`, optionally `loss_mask` (broadcastable to latents).
Condition dropout (caption -> system prompt only, motion -> -1 / 0) is applied by the
data pipeline, which knows each source's system prompt (`data_pipelines.Task`).

Packed batches (`data.packing`, data_pipelines/packing.py) hold several clips per row:
`latents [B, N, pF*p*p*C]` are patch tokens, with `positions [B, N, 3]`, `segment_ids
[B, N]` (0 = padding), per-clip `frames [B, S]` (latent frames; 1 = an image, 0 = empty
slot) and `motion_score [B, S]`, and captions `cap_feats [B, Lc, D]` + `cap_segment_ids
[B, Lc]`. `task_loss` sees `segment_ids` and takes per-clip t and a per-clip loss over
each clip's own tokens, so the objective is the unpacked one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from lumina_jax.diffusion import path
from lumina_jax.diffusion.schedule import parse_patch_size


VIDEO_INPUTS = ("cap_feats", "cap_mask", "motion_score")
# what a packed batch ships besides `latents` (the patch tokens); see NextDiT.packed
PACKED_INPUTS = ("positions", "segment_ids", "frames", "cap_feats", "cap_segment_ids",
                 "motion_score")
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
        object.__setattr__(self, "patch_size", parse_patch_size(self.patch_size))


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
    m = None if mask is None else jnp.broadcast_to(mask, pred.shape)
    return loss_from_sums(*_sums(pred, target, m, tuple(range(1, pred.ndim))), vd_weight, eps)


def _sums(pred, target, mask, axes):
    """The five sums over `axes` that the per-item loss is made of (fp32): squared error,
    kept elements, |pred|^2, |target|^2, pred . target."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    m = jnp.ones_like(pred) if mask is None else mask.astype(jnp.float32)
    return (jnp.sum(m * (pred - target) ** 2, axes), jnp.sum(m, axes),
            jnp.sum(m * pred**2, axes), jnp.sum(m * target**2, axes),
            jnp.sum(m * pred * target, axes))


def loss_from_sums(sq_err, count, pred_sq, target_sq, dot, vd_weight=1.0, eps=1e-8):
    """(loss, mse, cos) of items from their `_sums` (any shape: per item or per clip)."""
    mse = sq_err / jnp.maximum(count, 1.0)
    # As torch.cosine_similarity: each norm clamped to >= eps. An all-zero prediction
    # (the zero-initialised final layer on the first step of every run and stage) is the
    # one exception: torch's gradient there is target_hat / eps, a 1e8-scale spike in
    # grad_norm for a direction that carries no information; its cosine term is taken as
    # 0 with no gradient instead (MSE alone trains that step; `where` passes a zero
    # cotangent to the finite, clamped quotient). Any non-zero prediction gets the
    # official value and gradient.
    zero = pred_sq == 0.0
    norm = lambda sq: jnp.sqrt(jnp.maximum(sq, eps**2))
    cos = jnp.where(zero, 0.0, dot / (norm(pred_sq) * norm(target_sq)))
    return mse + vd_weight * (1.0 - cos), mse, cos


def bin_by_t(values: jax.Array, t: jax.Array, n_bins: int, weight: jax.Array | None = None):
    """(sum, count) of `values` [B] per equal-width bin of t in [0, 1] -> two [n_bins]
    arrays; sums and counts add across steps, tasks and hosts before dividing. `weight`
    [B] (0/1) leaves items out (the padding clips of packed rows)."""
    idx = jnp.clip(jnp.floor(t * n_bins).astype(jnp.int32), 0, n_bins - 1)
    onehot = jax.nn.one_hot(idx, n_bins, dtype=jnp.float32)
    if weight is not None:
        onehot = onehot * weight.astype(jnp.float32)[:, None]
    return values.astype(jnp.float32) @ onehot, jnp.sum(onehot, 0)


def task_loss(velocity_fn: Callable[..., jax.Array], key: jax.Array,
              batch: Mapping[str, jax.Array], task: TaskSpec,
              cfg: LossConfig = LossConfig()) -> tuple[jax.Array, dict[str, Any]]:
    """Mean per-item loss of one task's batch, and logging aux:
    `loss, mse, cos` (batch means), `loss_by_t_sum / loss_by_t_count` [n_t_bins].
    A packed batch (with `segment_ids`): see `packed_task_loss`."""
    if "segment_ids" in batch:
        return packed_task_loss(velocity_fn, key, batch, task, cfg)
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


def packed_task_loss(velocity_fn, key: jax.Array, batch: Mapping[str, jax.Array],
                     task: TaskSpec, cfg: LossConfig = LossConfig()):
    """`task_loss` of packed rows: t drawn per clip (with the task's shift), noise per
    token; mean over the real clips of each clip's loss over its own tokens. `velocity_fn`
    is a model with `.packed` (NextDiT). Aux as `task_loss`, plus `padding` (fraction of
    padding tokens) and `clips` (real clips in the batch)."""
    x1 = batch["latents"]
    b, s = batch["motion_score"].shape
    k_t, k_noise = jax.random.split(key)
    t = path.sample_time(k_t, b * s, cfg.time_sampling, logit_mean=cfg.logit_mean,
                         logit_std=cfg.logit_std, shift=task.shift).reshape(b, s)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)
    image = _repeated_images(batch, task)
    if image is not None:  # one noise for an image's pF copies, as the unpacked repeat
        x0 = jnp.where(image[..., None], _frames(x0, task, lambda f: jnp.broadcast_to(
            f[:, :, :1], f.shape)), x0)
    loss, mse, cos, real = packed_clip_losses(velocity_fn, x0, x1, t, batch, task,
                                              cfg.vd_weight)
    n = jnp.maximum(jnp.sum(real), 1.0)
    mean = lambda v: jnp.sum(v * real) / n
    sums, counts = bin_by_t(loss.reshape(-1), t.reshape(-1), cfg.n_t_bins, real.reshape(-1))
    aux = {"loss": mean(loss), "mse": mean(mse), "cos": mean(cos),
           "loss_by_t_sum": sums, "loss_by_t_count": counts,
           "padding": jnp.mean((batch["segment_ids"] == 0).astype(jnp.float32)),
           "clips": jnp.sum(real)}
    return aux["loss"], aux


def packed_clip_losses(velocity_fn, x0, x1, t, batch, task: TaskSpec, vd_weight=1.0):
    """(loss, mse, cos, real) `[B, S]` of each clip of packed rows for noise tokens `x0`
    and per-clip times `t [B, S]`: `per_item_loss` over the clip's own tokens (`real`: 1
    for a clip, 0 for an empty slot)."""
    seg = batch["segment_ids"]
    s = t.shape[1]
    t_tok = jnp.take_along_axis(t, jnp.maximum(seg - 1, 0), axis=1)  # each token's clip t
    pred = velocity_fn.packed(path.interpolate(x0, x1, t_tok), batch["positions"], seg, t,
                              batch["cap_feats"], batch["cap_segment_ids"],
                              batch["motion_score"], patch_size=task.patch_size)
    mask = jnp.broadcast_to((seg > 0)[..., None], x1.shape)
    image = _repeated_images(batch, task)
    if image is not None:  # the unpacked model crops its output to an image's one frame
        first = _frames(jnp.ones_like(mask), task, lambda f: f.at[:, :, 1:].set(False))
        mask = mask & (first | ~image[..., None])
    per_token = _sums(pred, path.velocity_target(x0, x1), mask, -1)  # five [B, N]
    clip = jax.nn.one_hot(seg - 1, s, dtype=jnp.float32)  # [B, N, S]; padding: all zero
    per_clip = [jnp.einsum("bn,bns->bs", v, clip, precision=jax.lax.Precision.HIGHEST)
                for v in per_token]
    return (*loss_from_sums(*per_clip, vd_weight), (batch["frames"] > 0).astype(jnp.float32))


def _repeated_images(batch, task: TaskSpec):
    """`[B, N]`: tokens of images (one latent frame) repeated to pF > 1 frames; None at
    pF = 1."""
    if task.patch_size[1] == 1:
        return None
    seg = batch["segment_ids"]
    image = jnp.take_along_axis(batch["frames"] == 1, jnp.maximum(seg - 1, 0), axis=1)
    return image & (seg > 0)


def _frames(tokens, task: TaskSpec, fn):
    """Apply `fn` to tokens `[B, N, pF*p*p*C]` viewed as `[B, N, pF, p*p*C]` (features are
    ordered pf, ph, pw, c: frame 0 of each token comes first)."""
    b, n, d = tokens.shape
    pf = task.patch_size[1]
    return fn(tokens.reshape(b, n, pf, d // pf)).reshape(b, n, d)


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
