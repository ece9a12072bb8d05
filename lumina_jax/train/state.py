"""Train state (params, AdamW state, EMA, step), created directly sharded on a mesh.

The state is a dict pytree: `params` and `ema` are `nnx.State`s whose Variables keep the
model's logical axis names, and optax's moments inherit them, so one rule table gives
the sharding of everything (`state_shardings`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumina_jax.model import ModelConfig, build_model
from lumina_jax.parallel.rules import Rules, logical_to_spec
from lumina_jax.train.config import OptimConfig  # noqa: F401 - (defined with the config schema)


def lr_schedule(cfg: OptimConfig, stage_lrs: tuple[tuple[int, float], ...] = ()) -> optax.Schedule:
    """Warmup then constant or cosine, scaled by the learning rate of the current stage.

    `stage_lrs` lists (first step, lr) per curriculum stage; without it `cfg.lr` applies.
    """
    if cfg.schedule == "cosine":
        shape = optax.warmup_cosine_decay_schedule(
            0.0, 1.0, cfg.warmup_steps, cfg.warmup_steps + cfg.decay_steps, cfg.min_lr_ratio)
    elif cfg.warmup_steps:
        shape = optax.linear_schedule(0.0, 1.0, cfg.warmup_steps)
    else:
        shape = optax.constant_schedule(1.0)
    if not stage_lrs:
        return lambda step: cfg.lr * shape(step)
    starts = jnp.asarray([start for start, _ in stage_lrs])
    lrs = jnp.asarray([lr for _, lr in stage_lrs], jnp.float32)
    return lambda step: lrs[jnp.searchsorted(starts, step, side="right") - 1] * shape(step)


def make_optimizer(cfg: OptimConfig, stage_lrs=()) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg, stage_lrs), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay),
    )


def model_graphdef(model_cfg: ModelConfig) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: build_model(model_cfg)))[0]


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> dict:
    params = nnx.state(build_model(model_cfg, seed), nnx.Param)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "ema": jax.tree.map(jnp.copy, params),
        "skipped_steps": jnp.zeros((), jnp.int32),
    }


def state_shardings(abstract_state, mesh: Mesh, rules: Rules):
    """NamedSharding for every leaf: Variables by their logical axes, the rest replicated."""
    def sharding(x):
        if isinstance(x, nnx.Variable):
            axes = x.get_metadata().get("out_sharding") or (None,) * x.value.ndim
            return NamedSharding(mesh, logical_to_spec(axes, x.value.shape, rules, mesh,
                                                       where="params"))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded_state(model_cfg: ModelConfig, tx, seed: int, mesh: Mesh, rules: Rules):
    """(state, shardings): the state is initialised under jit straight into its shards, so
    the full model never sits on one device."""
    init = lambda: init_state(model_cfg, tx, seed)
    shardings = state_shardings(jax.eval_shape(init), mesh, rules)
    return jax.jit(init, out_shardings=shardings)(), shardings
