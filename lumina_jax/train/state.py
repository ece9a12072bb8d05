"""Train state (params, AdamW state, EMA, step), created directly sharded on a mesh.

The state is a dict pytree: `params` and `ema` are `nnx.State`s whose Variables keep the
model's logical axis names, and optax's moments inherit them, so one rule table gives
the sharding of everything (`state_shardings`). `state_layout` is the one place a run's
state takes shape: the optimiser, the abstract state, every leaf's sharding; training,
import, the plan and the readers (sample, eval, export: no optimiser state) all use it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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


class Optimizer(NamedTuple):
    tx: optax.GradientTransformation
    lr: optax.Schedule  # the learning rate `tx` applies at a step (the train step logs it)


# optax.apply_if_finite gives up skipping after this many non-finite steps in a row; the
# loop's own limit (config.max_nonfinite_steps) stops the run instead, so never.
NEVER = 2**31 - 1


def make_optimizer(cfg: OptimConfig, stage_lrs=()) -> Optimizer:
    """Clip, AdamW; a step whose gradient has an Inf or NaN changes nothing (its update is
    zero, the moments are kept) and is counted in the state's `total_notfinite`."""
    lr = lr_schedule(cfg, stage_lrs)
    return Optimizer(optax.apply_if_finite(optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
    ), NEVER), lr)


def skipped_steps(state) -> jax.Array:
    """How many steps of the run were skipped for a non-finite gradient."""
    return state["opt_state"].total_notfinite


def run_optimizer(exp) -> Optimizer:
    """The optimiser of an experiment (train.config.Experiment): lr set per stage."""
    starts = np.cumsum([0] + [s.steps for s in exp.stages])[:-1].tolist()
    return make_optimizer(exp.optim, tuple((start, s.lr or exp.optim.lr)
                                           for start, s in zip(starts, exp.stages)))


@functools.cache  # a GraphDef is immutable; each stage's TrainStep asks again
def model_graphdef(model_cfg: ModelConfig) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: build_model(model_cfg)))[0]


def init_state(model_cfg: ModelConfig, opt: Optimizer | None = None, seed: int = 0,
               params=None) -> dict:
    """The state at step 0: fresh params (or `params`), EMA equal to them and, with an
    optimiser, its state. Without one: step, params and EMA (what readers restore)."""
    if params is None:
        params = nnx.state(build_model(model_cfg, seed), nnx.Param)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "ema": jax.tree.map(jnp.copy, params)}
    if opt is not None:
        state["opt_state"] = opt.tx.init(params)
    return state


def state_shardings(abstract_state, mesh: Mesh, rules: Rules):
    """NamedSharding for every leaf: Variables by their logical axes, the rest replicated."""
    def sharding(x):
        if isinstance(x, nnx.Variable):
            axes = x.get_metadata().get("out_sharding") or (None,) * x.value.ndim
            return NamedSharding(mesh, logical_to_spec(axes, x.value.shape, rules, mesh,
                                                       where="params"))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """A state before any array exists: its optimiser (None: a reader's state of step,
    params and EMA), shapes (`abstract`, from jax.eval_shape) and leaf shardings."""
    model: ModelConfig
    opt: Optimizer | None
    seed: int
    abstract: dict
    shardings: dict

    def init(self, params=None) -> dict:
        """The state at step 0 (with `params` instead of fresh ones), initialised under
        jit straight into its shards, so the full model never sits on one device."""
        return jax.jit(lambda p: init_state(self.model, self.opt, self.seed, p),
                       out_shardings=self.shardings)(params)

    def target(self) -> dict:
        """ShapeDtypeStructs carrying the shardings: what a checkpoint restores into."""
        return jax.tree.map(
            lambda s, sub: jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub),
            self.shardings, self.abstract)


def state_layout(model_cfg: ModelConfig, mesh: Mesh, rules: Rules, opt: Optimizer | None,
                 seed: int = 0) -> StateLayout:
    """The layout of a state of `model_cfg` on `mesh` (any mesh, abstract ones too)."""
    abstract = jax.eval_shape(lambda: init_state(model_cfg, opt, seed))
    return StateLayout(model_cfg, opt, seed, abstract, state_shardings(abstract, mesh, rules))
