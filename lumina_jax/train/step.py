"""The jitted train step: every task of the stage, one summed gradient, one update.

`TrainStep` owns the compiled function for one stage (its tasks and batch shapes):
explicit in/out shardings, the state donated, activation sharding rules active while
tracing. A non-finite loss or gradient skips the update (counted in `skipped_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumina_jax.diffusion.loss import LossConfig, TaskSpec, multitask_loss
from lumina_jax.model import ModelConfig, token_count
from lumina_jax.model.flops import train_step_flops
from lumina_jax.parallel.rules import Rules, activation_sharding, logical_to_spec
from lumina_jax.train.state import OptimConfig, lr_schedule, make_optimizer, model_graphdef

BATCH_KEYS = ("latents", "cap_feats", "cap_mask", "motion_score")


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


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict:
    """This host's slice of the global batch -> global jax.Arrays on the mesh."""
    out = {}
    for key in BATCH_KEYS:
        arr = np.asarray(local[key])
        global_shape = (arr.shape[0] * jax.process_count(),) + arr.shape[1:]
        sharding = batch_sharding(mesh, rules, global_shape)
        out[key] = jax.make_array_from_process_local_data(sharding, arr, global_shape)
    return out


class TrainStep:
    def __init__(self, model_cfg: ModelConfig, optim_cfg: OptimConfig, loss_cfg: LossConfig,
                 tasks: Mapping[str, TaskSpec], mesh: Mesh, rules: Rules, state_shardings,
                 stage_lrs=()):
        self.model_cfg, self.optim_cfg, self.loss_cfg = model_cfg, optim_cfg, loss_cfg
        self.tasks, self.mesh, self.rules = dict(tasks), mesh, rules
        self.graphdef = model_graphdef(model_cfg)
        self.tx = make_optimizer(optim_cfg, stage_lrs)
        self.lr = lr_schedule(optim_cfg, stage_lrs)
        replicated = NamedSharding(mesh, PartitionSpec())
        # Batches arrive as global arrays already laid out by `global_batch`.
        self._jitted = jax.jit(self._step, in_shardings=(state_shardings, None, replicated),
                               out_shardings=(state_shardings, replicated), donate_argnums=0)
        self.state_shardings = state_shardings
        self.compiled = None

    def _step(self, state, batches, key):
        with activation_sharding(self.mesh, self.rules):
            return self._update(state, batches, key)

    def _update(self, state, batches, key):
        key = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            # Condition dropout happened in the data pipeline, which knows each source's
            # system prompt (the "null" caption).
            model = nnx.merge(self.graphdef, params)
            return multitask_loss(model, key, batches, self.tasks, self.loss_cfg)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        refresh = step % self.optim_cfg.ema_every == 0
        decay = self.optim_cfg.ema_decay
        ema = jax.tree.map(lambda e, p: jnp.where(refresh, decay * e + (1 - decay) * p, e),
                           state["ema"], params)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": step,
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "ema": keep(ema, state["ema"]),
            "skipped_steps": state["skipped_steps"] + (~finite).astype(jnp.int32),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.lr(state["step"]),
                   "finite": finite, "tasks": aux}
        return new_state, metrics

    def compile(self, state, batches, key):
        """Lower and compile once (for the memory report) before the first step."""
        self.compiled = self._jitted.lower(state, batches, key).compile()
        return self.compiled

    def __call__(self, state, batches, key):
        fn = self.compiled if self.compiled is not None else self._jitted
        return fn(state, batches, key)

    def report(self, batches, cap_len: int | None = None) -> str:
        """Per-device compiled memory and analytic model FLOPs per step, as text."""
        lines = []
        if self.compiled is not None:
            mem = self.compiled.memory_analysis()
            if mem is not None:
                gib = lambda b: b / 2**30
                lines.append(
                    f"compiled step, per device: arguments {gib(mem.argument_size_in_bytes):.3f} "
                    f"GiB, outputs {gib(mem.output_size_in_bytes):.3f} GiB, temporaries "
                    f"{gib(mem.temp_size_in_bytes):.3f} GiB, code "
                    f"{gib(mem.generated_code_size_in_bytes):.3f} GiB")
        lines.append(f"model FLOPs per step: {self.model_flops(batches):.4g}")
        return "\n".join(lines)

    def tokens(self, batches) -> int:
        return sum(b["latents"].shape[0] * self._tokens_per_item(name, b)
                   for name, b in batches.items())

    def _tokens_per_item(self, name: str, batch) -> int:
        return token_count(*batch["latents"].shape[2:], self.tasks[name].patch_size)

    def model_flops(self, batches) -> float:
        total = 0.0
        for name, batch in batches.items():
            p, pf = self.tasks[name].patch_size
            b, c = batch["latents"].shape[:2]
            total += train_step_flops(self.model_cfg, self._tokens_per_item(name, batch),
                                      batch["cap_feats"].shape[1], pf * p * p * c, b)
        return total
