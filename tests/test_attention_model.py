"""The tiny model gives the same loss and gradients with impl="pallas" (interpret mode on
CPU) as with impl="xla". (The chunked path is compared op-level in test_attention_kernels.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumina_jax.model import NextDiT, get_preset


def _loss_and_grads(impl):
    base = get_preset("tiny")
    cfg = (base.replace(attention_impl=impl) if hasattr(base, "replace")
           else dataclasses.replace(base, attention_impl=impl))
    model = NextDiT(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)  # init zeroes some layers: make all non-zero
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
    ks = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(ks[0], (2, cfg.in_channels, 4, 16, 16))
    cap = jax.random.normal(ks[1], (2, 8, cfg.cap_feat_dim))
    mask = jnp.arange(8)[None] < jnp.array([8, 5])[:, None]
    t = jax.random.uniform(ks[2], (2,))
    motion = jnp.array([0.5, 4.0])

    def loss(model):
        return jnp.mean(model(x, t, cap, mask, motion, patch_size=(2, 1)) ** 2)

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    return float(value), jax.tree.leaves(nnx.state(grads))


@pytest.mark.slow
def test_tiny_model_same_loss_and_grads_with_pallas_as_xla():
    ref_loss, ref_grads = _loss_and_grads("xla")
    got_loss, got_grads = _loss_and_grads("pallas")
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for a, b in zip(got_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
