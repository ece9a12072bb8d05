"""In-loop validation: the flow loss of fixed batches at fixed t with fixed noise.

Every number is a function of the weights alone (the same clips, noise and times at every
evaluation and in every run with the same data), so it is comparable across steps and
across runs, unlike the training loss, whose t and noise are drawn afresh each step.

Batches: per task of the current stage, `eval.batches` batches drawn once from the task's
data with a fixed seed and no condition dropout -- from `eval.sources` (a held-out folder,
e.g. the V2A demo's `heldout`) where given, else from the training sources (then it
measures fit, not generalisation; the log names which). Written as `eval/loss/<task>`
(mean over the t values) and `eval/loss_t<t>/<task>`.

Optionally, from generated samples (the run's sampler settings, EMA weights, fixed seeds):
  * `eval.judge = "demo"`: the embedded demo's prompt-adherence judge
    (data_pipelines/demo_judge.py): its 48 prompts sampled and scored from pixels for
    colour, shape, motion direction and quick-vs-slow speed, plus motion-score control
    (a few prompts with no speed word, each sampled at every motion score of
    `eval.judge_motion`: Spearman between the requested score and the shape's tracked
    speed, per prompt, averaged). Written as
    `eval/judge/*`, with the samples' contact sheet in `<workdir>/eval/`.
  * `eval.fvd_clips = N > 0`: FVD (lumina_jax/evaluation/fvd.py, I3D) between N held-out
    real clips of `eval.fvd_source` (a prepared folder) and N clips generated from their
    captions at their sizes. Written as `eval/fvd`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion import path
from lumina_jax.diffusion.loss import VIDEO_INPUTS, per_item_loss

EVAL_SEED = 1234567
JUDGE_KEYS = ("n", "colour_acc", "shape_acc", "direction_acc", "quick_faster", "speed_quick",
              "speed_slow", "no_foreground")


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
    """Fixed batches per task (drawn on first use) and one jitted loss per task shape;
    the judge and FVD when configured (they need `spec`, the run's sampling spec)."""

    def __init__(self, exp, eval_cfg, graphdef, batch_keys, spec=None, out_dir: str = ""):
        """`eval_cfg`: a config.EvalConfig (the run's `exp.eval`, or one with overrides)."""
        self.exp, self.cfg, self.graphdef, self.keys = exp, eval_cfg, graphdef, batch_keys
        self.spec, self.out_dir = spec, out_dir
        self.ts = np.asarray(eval_cfg.t_values, np.float32)
        self._batches: dict[str, list] = {}
        self._fn = jax.jit(self._losses, static_argnames=("patch_size",))
        self._fvd_real = None

    def _losses(self, params, batch, key, *, patch_size):
        return fixed_t_losses(nnx.merge(self.graphdef, params), batch, patch_size,
                              jnp.asarray(self.ts), key, self.exp.loss.vd_weight)

    def _iterator(self, data, folder: str = ""):
        """The task's data drawn with a fixed seed and no condition dropout, from `folder`
        (a prepared folder, "{data_dir}" already substituted by build) if given."""
        from data_pipelines import make_iterator

        # unpacked: the fixed-t loss and FVD take whole clips
        changes = {"seed": EVAL_SEED, "caption_keep_prob": 1.0}
        if getattr(data, "packing", False):
            changes["packing"] = False
        if data.media == "audio":
            changes["visual_keep_prob"] = 1.0
        else:
            changes["motion_drop_prob"] = 0.0
        if folder:
            changes["sources"] = tuple(dataclasses.replace(s, path=folder)
                                       for s in data.sources[:1])
        return make_iterator(dataclasses.replace(data, **changes), 0, 1)

    def _draw(self, task) -> list:
        it = self._iterator(task.data, self.cfg.sources.get(task.name, ""))
        return [{k: np.asarray(b[k]) for k in self.keys}
                for b in itertools.islice(it, self.cfg.batches)]

    def held_out(self, task_name: str) -> bool:
        return task_name in self.cfg.sources

    def __call__(self, params, stage, step: int = 0) -> dict:
        out = self.losses(params, stage)
        if self.spec is not None and self.cfg.judge:
            out.update(self.judge(params, step))
        if self.spec is not None and self.cfg.fvd_clips > 0:
            out.update(self.fvd(params))
        return out

    def losses(self, params, stage) -> dict:
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

    def _frames(self, params, prompts, motion=None) -> np.ndarray:
        from lumina_jax.train import samples

        spec = dataclasses.replace(self.spec, prompts=tuple(prompts), seed=EVAL_SEED)
        return samples.decode(samples.generate(self.exp.model, params, spec, progress=False,
                                               motion=motion), spec)

    def judge(self, params, step: int) -> dict:
        """The demo judge's scores of samples of its prompts (see the module docstring)."""
        from data_pipelines import demo_judge
        from lumina_jax.train import samples

        prompts = demo_judge.PROMPTS
        frames = self._frames(params, prompts)
        scores = demo_judge.judge(frames, prompts)
        out = {f"eval/judge/{k}": float(scores[k]) for k in JUDGE_KEYS}
        levels = list(self.cfg.judge_motion)
        if len(levels) > 1:  # each prompt at every level: Spearman per prompt, then the mean
            # One call per level: a prompt keeps its noise at every level, so only the
            # score differs between its samples.
            n = len(demo_judge.MOTION_PROMPTS)
            moved = np.concatenate([self._frames(params, demo_judge.MOTION_PROMPTS,
                                                 motion=np.full(n, level)) for level in levels])
            measured = demo_judge.measured_motion(moved)
            rhos = [demo_judge.motion_control(levels, measured[i::n]) for i in range(n)]
            rhos = [r for r in rhos if not np.isnan(r)]  # (a prompt's shape not found)
            out["eval/judge/motion_spearman"] = float(np.mean(rhos)) if rhos else float("nan")
        if self.out_dir:
            import imageio.v3 as iio

            os.makedirs(self.out_dir, exist_ok=True)
            iio.imwrite(os.path.join(self.out_dir, f"step{step:07d}_judge.png"),
                        samples.contact_sheet(frames, prompts, cell=48))
        return out

    def fvd(self, params) -> dict:
        """FVD of clips generated from held-out captions against those held-out clips."""
        from lumina_jax.evaluation import fvd
        from lumina_jax.train import samples

        task = next(t for s in self.exp.stages[::-1] for t in s.tasks if t.data.media == "video")
        if self._fvd_real is None:  # the real clips and their captions, drawn once
            it = self._iterator(task.data, self.cfg.fvd_source)
            batches, n = [], 0
            while n < self.cfg.fvd_clips:
                batches.append(next(it))
                n += len(batches[-1]["latents"])
            self._fvd_real = batches
        real, fake = [], []
        for i, b in enumerate(self._fvd_real):
            latents = np.asarray(b["latents"])
            spec = dataclasses.replace(self.spec, seed=EVAL_SEED + 1000 * i)
            real.append(samples.decode(latents, spec))
            fake.append(samples.decode(samples.generate_from_features(
                self.exp.model, params, b["cap_feats"], b["cap_mask"], latents.shape[2:],
                spec, progress=False), spec))
        n = self.cfg.fvd_clips
        real, fake = _clips(real)[:n], _clips(fake)[:n]
        return {"eval/fvd": float(fvd.fvd(real, fake))}


def evaluator_lines(values: dict) -> list[str]:
    """The judge's and FVD's figures of an evaluation, one line each (if present)."""
    lines = []
    if "eval/judge/colour_acc" in values:
        v = {k: values.get(f"eval/judge/{k}", float("nan"))
             for k in JUDGE_KEYS + ("motion_spearman",)}
        lines.append(
            f"judge ({v['n']:.0f} prompts): colour {v['colour_acc']:.0%}, shape "
            f"{v['shape_acc']:.0%}, direction {v['direction_acc']:.0%}, quick faster than "
            f"slow {v['quick_faster']:.0%} (mean speed {v['speed_quick']:.3f} vs "
            f"{v['speed_slow']:.3f} frame sides per frame), motion-score control Spearman "
            f"{v['motion_spearman']:.2f}; no shape found in {v['no_foreground']:.0f}")
    if "eval/fvd" in values:
        lines.append(f"FVD {values['eval/fvd']:.1f}")
    return lines


def _clips(batches: list[np.ndarray]) -> np.ndarray:
    """Decoded batches (possibly of different bucket sizes) -> one [N, F, H, W, 3] array,
    each clip resized to the first one's size (FVD resizes to 224 anyway)."""
    import cv2

    f, h, w = batches[0].shape[1:4]
    out = []
    for b in batches:
        for clip in b:
            clip = clip[:f] if len(clip) >= f else np.concatenate(
                [clip, np.repeat(clip[-1:], f - len(clip), 0)])
            out.append(np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA)
                                 for x in clip]))
    return np.stack(out)
