"""The sampler and the loss driving the real (tiny) NextDiT."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumina_jax.diffusion import (DEFAULT_TASKS, LossConfig, SampleSettings, multitask_loss,
                                  nnx_velocity_fn, sample)
from lumina_jax.model import NextDiT, get_preset


def _model():
    return NextDiT(get_preset("tiny"), rngs=nnx.Rngs(0))


def test_multiscale_sampling_with_model_compiles_once_per_patch_size():
    model = _model()
    fn, state = nnx_velocity_fn(model)
    traces = collections.Counter()

    def counted(state, x, t, c, m, ms, patch_size):
        traces[patch_size] += 1
        return fn(state, x, t, c, m, ms, patch_size)

    cfg = model.cfg
    st = SampleSettings(num_steps=6, shift=8.0, patch_size=("2x4", (0.05, "2x2"), (0.2, "1x2")),
                        cfg=(4.0, (0.3, 0.0)), renorm=2.0, motion=6.0, neg_motion=(2.0, (0.05, 6.0)))
    k1, k2 = jax.random.split(jax.random.key(0))
    noise = jax.random.normal(k1, (2, cfg.in_channels, 4, 8, 8))
    cap = jax.random.normal(k2, (2, 5, cfg.cap_feat_dim))
    x = sample(counted, noise, cap, jnp.ones((2, 5), bool), st, params=state, progress=False,
               neg_cap_feats=cap[:1, :3], neg_cap_mask=jnp.ones((1, 3), bool))
    assert x.shape == noise.shape and bool(jnp.all(jnp.isfinite(x)))
    assert traces == {(4, 2): 2, (2, 2): 2, (2, 1): 2}


def test_multitask_loss_grad_through_model():
    model = _model()
    cfg = model.cfg
    graphdef, params = nnx.split(model)
    key = jax.random.key(1)
    # one task keeps the compile short; the point is the gradient at the zero-initialised
    # final layer (prediction exactly 0), where a naive cosine term gives NaN
    batches = {"video_2x4": {"latents": jax.random.normal(key, (2, cfg.in_channels, 4, 8, 8)),
                             "cap_feats": jnp.ones((2, 4, cfg.cap_feat_dim)),
                             "cap_mask": jnp.ones((2, 4), bool), "motion_score": jnp.full(2, 3.0)}}

    @jax.jit
    def loss_and_grad(params, key, batches):
        def loss(params):
            m = nnx.merge(graphdef, params)
            return multitask_loss(m, key, batches, DEFAULT_TASKS, LossConfig())
        return jax.value_and_grad(loss, has_aux=True)(params)

    (total, aux), grads = loss_and_grad(params, key, batches)
    assert np.isfinite(float(total)) and set(aux) == set(batches)
    gnorm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads))
    assert np.isfinite(gnorm) and gnorm > 0
