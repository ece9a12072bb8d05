"""In-loop validation: the flow loss of fixed batches at fixed t with fixed noise.

Every number is a function of the weights alone (the same clips, noise and times at every
evaluation and in every run with the same data), so it is comparable across steps and
across runs, unlike the training loss, whose t and noise are drawn afresh each step.

Batches: per task of the current stage, `eval.batches` batches drawn once from the task's
data with a fixed seed and no condition dropout -- from `eval.sources` (a held-out folder,
e.g. the V2A demo's `heldout`) where given, else from the training sources (then it
measures fit, not generalisation; the log names which). Written as `eval/loss/<task>`
(mean over the t values) and `eval/loss_t<t>/<task>`.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion import path
from lumina_jax.diffusion.loss import VIDEO_INPUTS, per_item_loss

EVAL_SEED = 1234567


def fixed_t_losses(model, batch, patch_size, ts, key, vd_weight):
    """Mean loss of `batch` at each t in `ts` (one noise draw shared by every t) -> [T]."""
    x1 = batch["latents"]
    x0 = jax.random.normal(key, x1.shape, x1.dtype)
    cond = [batch[k] for k in getattr(model, "inputs", VIDEO_INPUTS)]

    def at(t):
        tb = jnp.full((x1.shape[0],), t, jnp.float32)
        pred = model(path.interpolate(x0, x1, tb), tb, *cond, patch_size=patch_size)
        return per_item_loss(pred, path.velocity_target(x0, x1), batch.get("loss_mask"),
                             vd_weight)[0].mean()

    return jax.lax.map(at, ts)


class Evaluator:
    """Fixed batches per task (drawn on first use) and one jitted loss per task shape."""

    def __init__(self, exp, eval_cfg: dict, graphdef, batch_keys):
        self.exp, self.cfg, self.graphdef, self.keys = exp, eval_cfg, graphdef, batch_keys
        self.ts = np.asarray(eval_cfg["t_values"], np.float32)
        self._batches: dict[str, list] = {}
        self._fn = jax.jit(self._losses, static_argnames=("patch_size",))

    def _losses(self, params, batch, key, *, patch_size):
        return fixed_t_losses(nnx.merge(self.graphdef, params), batch, patch_size,
                              jnp.asarray(self.ts), key, self.exp.loss.vd_weight)

    def _draw(self, task) -> list:
        from data_pipelines import make_iterator

        data = task.data
        changes = {"seed": EVAL_SEED, "caption_keep_prob": 1.0}
        if data.media == "audio":
            changes["visual_keep_prob"] = 1.0
        else:
            changes["motion_drop_prob"] = 0.0
        sources = self.cfg.get("sources") or {}
        if task.name in sources:
            folder = sources[task.name].format(data_dir=self.exp.config.data_dir)
            changes["sources"] = tuple(dataclasses.replace(s, path=folder)
                                       for s in data.sources[:1])
        it = make_iterator(dataclasses.replace(data, **changes), 0, 1)
        return [{k: np.asarray(b[k]) for k in self.keys}
                for b in itertools.islice(it, int(self.cfg["batches"]))]

    def held_out(self, task_name: str) -> bool:
        return task_name in (self.cfg.get("sources") or {})

    def __call__(self, params, stage) -> dict:
        out = {}
        for task in stage.tasks:
            if task.name not in self._batches:
                self._batches[task.name] = self._draw(task)
            per_t = np.mean([np.asarray(self._fn(params, batch, jax.random.key(EVAL_SEED + i),
                                                 patch_size=task.spec.patch_size))
                             for i, batch in enumerate(self._batches[task.name])], axis=0)
            out[f"eval/loss/{task.name}"] = float(per_t.mean())
            for t, v in zip(self.ts, per_t):
                out[f"eval/loss_t{t:g}/{task.name}"] = float(v)
        return out
