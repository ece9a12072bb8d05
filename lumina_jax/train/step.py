"""The train step: every task of the stage, one summed gradient, one optimiser update.

Batches of a task may change shape from step to step (aspect x frame buckets, images and
videos), so the step is two kinds of executables, each compiled lazily and kept:

  * per task and batch shape: `acc + grad(task loss)` (the accumulator donated), so a
    stage with T tasks of S_t shapes compiles sum_t S_t gradients, not prod_t S_t steps;
  * once per run: the update (global-norm clip, AdamW, EMA) from the summed gradient. It
    does not depend on the stage's tasks, so every stage's TrainStep shares it
    (`update=` the previous stage's `step.update`): a stage switch compiles only the new
    tasks' gradients.

A task with packed data (`data.packing`: several clips of any shape per row of a fixed
token budget) has one batch shape, so it compiles one gradient per stage.

Explicit in/out shardings everywhere, the state and the accumulator donated, activation
sharding rules active while tracing. A non-finite gradient skips the update (optax's
apply_if_finite; counted by `state.skipped_steps`). Every compile is recorded in
`compiles` (task, shapes, seconds); JAX's persistent compilation cache
(`enable_compilation_cache`) makes a restart load them instead of compiling again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumina_jax.diffusion.loss import PACKED_INPUTS, LossConfig, TaskSpec, task_loss
from lumina_jax.model import ModelConfig, NextDiT, model_class, token_count
from lumina_jax.model.flops import train_step_flops
from lumina_jax.parallel.rules import Rules, activation_sharding, logical_to_spec
from lumina_jax.train.state import OptimConfig, StateLayout, model_graphdef


def batch_keys(model_cfg: ModelConfig) -> tuple[str, ...]:
    """The batch fields a train step ships to the devices: latents + the model's inputs."""
    return ("latents", *model_class(model_cfg).inputs)


def enable_compilation_cache(directory: str) -> None:
    """Persist every compiled executable under `directory` (all sizes, all compile times),
    so a restarted or resumed run loads its steps instead of compiling them again."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def batch_sharding(mesh: Mesh, rules: Rules, shape) -> NamedSharding:
    axes = ("act_batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(axes, shape, rules, mesh, where="batch"))


def host_rows(mesh: Mesh, rules: Rules, global_batch_size: int) -> slice:
    """The rows of the global batch that this process must load (its devices' shards)."""
    n = global_batch_size
    shards = batch_sharding(mesh, rules, (n,)).addressable_devices_indices_map((n,)).values()
    rows = slice(min(i[0].start or 0 for i in shards), max(i[0].stop or n for i in shards))
    if (rows.stop - rows.start) * jax.process_count() != global_batch_size:
        raise ValueError(f"this process's devices hold rows {rows} of a global batch of "
                         f"{global_batch_size}; each process must own an equal contiguous block")
    return rows


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules,
                 keys: tuple[str, ...] = ("latents", *NextDiT.inputs)) -> dict:
    """This host's slice of the global batch (its `keys`) -> global jax.Arrays on the mesh.
    A packed batch (`data.packing`: it has `segment_ids`) ships its own fields instead."""
    if "segment_ids" in local:
        keys = ("latents", *PACKED_INPUTS)
    out = {}
    for key in keys:
        arr = np.asarray(local[key])
        global_shape = (arr.shape[0] * jax.process_count(),) + arr.shape[1:]
        sharding = batch_sharding(mesh, rules, global_shape)
        out[key] = jax.make_array_from_process_local_data(sharding, arr, global_shape)
    return out


def batch_signature(batch: Mapping) -> tuple:
    """What a compiled gradient depends on: each array's shape and dtype."""
    return tuple((k, tuple(batch[k].shape), str(batch[k].dtype)) for k in sorted(batch))


@dataclasses.dataclass(frozen=True)
class Compile:
    what: str          # task name, or "update"
    latents: tuple     # the task batch's latent shape ([] for the update)
    seconds: float
    memory: object     # the executable's memory_analysis() (None where unsupported)
    flops: float       # XLA's cost analysis (a scanned body counts once)


@dataclasses.dataclass
class Update:
    """The optimiser update's jitted function and, once compiled, its executable and the
    Compile record (shared by the TrainSteps of a run's stages)."""
    jitted: object
    executable: object = None
    record: Compile | None = None


class TrainStep:
    """`step(state, batches, key) -> (state, metrics)`; compiles per new batch shape."""

    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, loss_cfg: LossConfig,
                 tasks: Mapping[str, TaskSpec], mesh: Mesh, rules: Rules, layout: StateLayout,
                 update: Update | None = None):
        """`layout`: the state's shardings and the run's optimiser (state.state_layout);
        `update`: an earlier stage's `step.update` (same run, same layout) to reuse."""
        self.model_cfg, self.optim_cfg, self.loss_cfg = model_cfg, optim_cfg, loss_cfg
        self.tasks, self.mesh, self.rules = dict(tasks), mesh, rules
        self.order = sorted(self.tasks)  # task i draws its noise from fold_in(key, i)
        self.graphdef = model_graphdef(model_cfg)
        self.tx, self.lr = layout.opt
        self.state_shardings = layout.shardings
        params = layout.shardings["params"]
        replicated = NamedSharding(mesh, PartitionSpec())
        self._zeros = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p),
                              in_shardings=(params,), out_shardings=params)
        self._grad_jit = {
            name: jax.jit(self._grad_fn(name), in_shardings=(params, params, None, replicated,
                                                             replicated),
                          out_shardings=(params, replicated), donate_argnums=1)
            for name in self.order}
        self.update = update or Update(jax.jit(
            self._update, in_shardings=(layout.shardings, params),
            out_shardings=(layout.shardings, replicated), donate_argnums=0))
        self._executables: dict = {}
        self._param_bytes: int | None = None
        self.compiles: list[Compile] = []

    # ---------------------------------------------------------------- traced functions

    def _grad_fn(self, name: str):
        task, index = self.tasks[name], self.order.index(name)

        def grad(params, acc, batch, step, key):
            key = jax.random.fold_in(jax.random.fold_in(key, step), index)

            def loss_fn(p):
                # Condition dropout happened in the data pipeline, which knows each
                # source's system prompt (the "null" caption).
                return task_loss(nnx.merge(self.graphdef, p), key, batch, task, self.loss_cfg)

            with activation_sharding(self.mesh, self.rules):
                (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            acc = jax.tree.map(lambda a, b: a + task.weight * b, acc, g)
            return acc, aux

        return grad

    def _update(self, state, grads):
        grad_norm = optax.global_norm(grads)
        # optax.apply_if_finite (state.make_optimizer) zeroes a non-finite step's update
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        finite = opt_state.last_finite
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        refresh = (step % self.optim_cfg.ema_every == 0) & finite
        decay = self.optim_cfg.ema_decay
        ema = jax.tree.map(lambda e, p: jnp.where(refresh, decay * e + (1 - decay) * p, e),
                           state["ema"], params)
        new_state = {"step": step, "params": params, "opt_state": opt_state, "ema": ema}
        return new_state, {"grad_norm": grad_norm, "lr": self.lr(state["step"]),
                           "finite": finite}

    # ---------------------------------------------------------------- compiling

    def _executable(self, key, jitted, make_args, what, latents):
        """The executable for `key`, compiled from `make_args()` on the first request only
        (so a step whose shapes are all known does no abstraction work)."""
        if key not in self._executables:
            args = make_args()
            start = time.perf_counter()
            compiled = jitted.lower(*args).compile()
            seconds = time.perf_counter() - start
            self._executables[key] = compiled
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
            self.compiles.append(Compile(what, latents, seconds, compiled.memory_analysis(),
                                         float(cost.get("flops", float("nan")))))
        return self._executables[key]

    def compile(self, state, batches, key) -> list[Compile]:
        """Compile every executable these batches need that is not compiled yet, without
        running it; works on concrete or abstract (ShapeDtypeStruct) inputs."""
        abstract = lambda tree: jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
        step = jax.ShapeDtypeStruct((), jnp.int32)
        for name in self.order:
            if name in batches:
                self._grad_executable(name, lambda: abstract(state["params"]),
                                      abstract(batches[name]), step, key)
        self._update_executable(lambda: (abstract(state), abstract(state["params"])))
        return self.compiles

    def uncompiled(self, batches) -> list[str]:
        """'task [shape]' of each executable these batches need that is not compiled yet."""
        new = [f"{name} {list(batches[name]['latents'].shape)}" for name in self.order
               if name in batches and (name, batch_signature(batches[name]))
               not in self._executables]
        return new + (["update"] if self.update.executable is None else [])

    def _grad_executable(self, name, params, batch, step, key):
        """`params`: a callable giving the params (or their abstract values)."""
        def make_args():
            p = params()
            if self._param_bytes is None:
                self._param_bytes = sum(int(np.prod(a.sharding.shard_shape(a.shape)))
                                        * a.dtype.itemsize for a in jax.tree.leaves(p))
            return p, p, batch, step, key

        return self._executable((name, batch_signature(batch)), self._grad_jit[name],
                                make_args, name, tuple(batch["latents"].shape))

    def _update_executable(self, make_args):
        if self.update.executable is None:
            self.update.executable = self._executable("update", self.update.jitted, make_args,
                                                      "update", ())
            self.update.record = self.compiles[-1]
        return self.update.executable

    # ---------------------------------------------------------------- running

    def __call__(self, state, batches, key):
        acc = self._zeros(state["params"])
        aux = {}
        for name in self.order:
            if name not in batches:
                continue
            fn = self._grad_executable(name, lambda: state["params"], batches[name],
                                       state["step"], key)
            acc, aux[name] = fn(state["params"], acc, batches[name], state["step"], key)
        update = self._update_executable(lambda: (state, acc))
        state, metrics = update(state, acc)
        # "loss" is the tasks' weighted MEAN, comparable across stages with different task
        # counts; "loss_total" is the weighted sum that the gradient is of.
        weights = {n: self.tasks[n].weight for n in aux}
        total = sum(w * aux[n]["loss"] for n, w in weights.items())
        return state, {**metrics, "loss_total": total, "loss": total / sum(weights.values()),
                       "tasks": aux}

    # ---------------------------------------------------------------- accounting

    def peak_bytes(self) -> dict:
        """Per-device bytes of the compiled executables: the state and the gradient
        accumulator live across the whole step; the largest task's temporaries and batch,
        or the update's temporaries, come on top."""
        update = self.update.record and self.update.record.memory
        if update is None or self._param_bytes is None:
            return {}
        task_extra = max((c.memory.temp_size_in_bytes + c.memory.argument_size_in_bytes
                          - 2 * self._param_bytes  # params and accumulator are counted above
                          for c in self.compiles if c.what != "update" and c.memory), default=0)
        persistent = update.argument_size_in_bytes  # state + accumulator
        return {"state_and_grads": persistent, "update_temp": update.temp_size_in_bytes,
                "task_temp_and_batch": task_extra,
                "peak": persistent + max(update.temp_size_in_bytes, task_extra)}

    def report(self, batches) -> str:
        """Per-device compiled memory and analytic model FLOPs of a step, as text."""
        lines = []
        peak = self.peak_bytes()
        if peak:
            gib = lambda b: f"{b / 2**30:.3f} GiB"
            lines.append(f"compiled step, per device: state + gradients "
                         f"{gib(peak['state_and_grads'])}, "
                         f"largest task (temporaries + batch) {gib(peak['task_temp_and_batch'])}, "
                         f"update temporaries {gib(peak['update_temp'])}; peak {gib(peak['peak'])}")
        lines.append(f"model FLOPs per step: {self.model_flops(batches):.4g}")
        return "\n".join(lines)

    def tokens(self, batches, padding: Mapping[str, float] | None = None) -> float:
        """Tokens of the step's batches. Packed rows count their padding too unless
        `padding` gives each packed task's padding fraction (the host batch's `padding`
        field; also the task's `padding` aux metric): then real tokens only."""
        padding = padding or {}
        return sum(b["latents"].shape[0] * self._tokens_per_item(name, b)
                   * (1.0 - padding.get(name, 0.0)) for name, b in batches.items())

    def _tokens_per_item(self, name: str, batch) -> int:
        if "segment_ids" in batch:  # packed: [B, N, patch features]
            return batch["latents"].shape[1]
        return token_count(*batch["latents"].shape[2:], self.tasks[name].patch_size)

    def model_flops(self, batches) -> float:
        total = 0.0
        for name, batch in batches.items():
            p, pf = self.tasks[name].patch_size
            b, c = batch["latents"].shape[:2]
            if "segment_ids" in batch:  # packed rows: attention computed over the whole row
                c = batch["latents"].shape[2] // (pf * p * p)
            # cross-attention context: caption tokens (+ V2A's visual frame tokens)
            context = batch["cap_feats"].shape[1] + (batch["frames"].shape[1]
                                                     if "frames" in batch else 0)
            total += train_step_flops(self.model_cfg, self._tokens_per_item(name, batch),
                                      context, pf * p * p * c, b)
        return total
