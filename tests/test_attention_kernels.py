"""Flash paths (Pallas GPU/TPU kernels and JAX's splash in interpret mode, chunked XLA) vs
`xla_attention`.

Outputs and gradients (dq, dk, dv) for segment ids with padding, kv mask, fully masked
rows, GQA (16 q / 8 kv heads), head_dim 64 and 144, lengths 1..block+1. Blocks of 8
keep interpret mode fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumina_jax.ops import attention as attn_mod
from lumina_jax.ops.attention import attention, xla_attention
from lumina_jax.ops.flash_common import BlockSizes

BLOCK = 8
SMALL = BlockSizes(block_q=BLOCK, block_k=BLOCK, block_q_dkv=BLOCK, block_k_dkv=BLOCK)
PATHS = {  # name -> attention() kwargs
    "pallas_gpu": dict(impl="pallas", platform="gpu", interpret=True, block_sizes=SMALL),
    "pallas_tpu": dict(impl="pallas", platform="tpu", interpret=True, block_sizes=SMALL),
    "chunked": dict(impl="chunked", block_sizes=SMALL),
    "splash": dict(impl="splash"),  # JAX's TPU kernel; its blocks are 128-row multiples
}
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _inputs(b, nq, nk, hq, hkv, d, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, nq, hq, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, nk, hkv, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, nk, hkv, d), jnp.float32).astype(dtype)
    w = jax.random.normal(ks[3], (b, nq, hq, d), jnp.float32)  # loss weights
    return q, k, v, w


def _value_and_grads(fn, q, k, v, w):
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _check(path, q, k, v, w, **masks):
    scale = q.shape[-1] ** -0.5
    out, grads = _value_and_grads(
        lambda q, k, v: attention(q, k, v, **masks, scale=scale, **PATHS[path]), q, k, v, w)
    ref_out, ref_grads = _value_and_grads(
        lambda q, k, v: xla_attention(q, k, v, **masks, scale=scale), q, k, v, w)
    tol = TOL[q.dtype.type]
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.all(np.isfinite(a)), name
        err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))
        assert err < tol, f"{path} {name}: relative max error {err:.2e} >= {tol}"


@pytest.mark.parametrize("path", PATHS)
def test_segments_padding_kv_mask_gqa_d64(path):
    # Batch 0: two packed items + padding (id 7); batch 1: one item, only 3 valid keys,
    # and a query segment (id 5) with no key at all -> those rows must be zeros.
    q, k, v, w = _inputs(2, 13, 13, 4, 2, 64, jnp.float32)
    seg = jnp.array([[0] * 5 + [1] * 6 + [7] * 2, [0] * 11 + [5] * 2])
    kv_seg = seg.at[1, 11:].set(0)
    kv_mask = jnp.array([[True] * 11 + [False] * 2, [True] * 3 + [False] * 10])
    _check(path, q, k, v, w, q_segment_ids=seg, kv_segment_ids=kv_seg, kv_mask=kv_mask)
    out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=kv_seg, kv_mask=kv_mask,
                    **PATHS[path])
    assert np.all(np.asarray(out[1, 11:]) == 0.0)


@pytest.mark.parametrize("path", PATHS)
def test_gqa_16_8_head_dim_144_bf16(path):
    q, k, v, w = _inputs(1, BLOCK + 1, BLOCK + 1, 16, 8, 144, jnp.bfloat16, seed=1)
    seg = jnp.array([[0] * 6 + [1] * 3])
    _check(path, q, k, v, w, q_segment_ids=seg, kv_segment_ids=seg)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("nq,nk", [(1, 1), (BLOCK, BLOCK), (BLOCK + 1, 5), (3, BLOCK + 1)])
def test_lengths_head_dim_144(path, nq, nk):
    q, k, v, w = _inputs(1, nq, nk, 2, 1, 144, jnp.float32, seed=nq * 31 + nk)
    kv_mask = jnp.arange(nk)[None, :] != nk // 2  # hide one key
    _check(path, q, k, v, w, kv_mask=kv_mask)


def test_auto_on_cpu_picks_xla_short_and_chunked_long(monkeypatch):
    q, k, v, _ = _inputs(1, 16, 16, 2, 1, 8, jnp.float32)
    assert "scan" not in str(jax.make_jaxpr(lambda *a: attention(*a, impl="auto"))(q, k, v))
    monkeypatch.setattr(attn_mod, "CHUNKED_MIN_KEYS", 16)
    jaxpr = str(jax.make_jaxpr(lambda *a: attention(*a, impl="auto"))(q, k, v))
    assert "scan" in jaxpr
    np.testing.assert_allclose(attention(q, k, v, impl="auto"),
                               attention(q, k, v, impl="xla"), atol=1e-5)


def test_pallas_defaults_to_interpret_on_cpu():
    q, k, v, _ = _inputs(1, 20, 20, 2, 2, 16, jnp.float32)  # default blocks, padded
    np.testing.assert_allclose(attention(q, k, v, impl="pallas"),
                               attention(q, k, v, impl="xla"), atol=1e-5)


def test_unknown_impl_raises():
    q, k, v, _ = _inputs(1, 4, 4, 2, 2, 8, jnp.float32)
    with pytest.raises(ValueError, match="unknown"):
        attention(q, k, v, impl="flash")


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_grad_memory_stays_linear_inside_a_layer_scan(masked):
    """Regression: under grad, scan partial evaluation used to hoist the (loop-invariant)
    id mask out of a layer scan and stack it over all key chunks: an [Nq, Nk] buffer."""

    def temp_bytes(n):
        q = jax.ShapeDtypeStruct((1, n, 4, 16), jnp.float32)
        k = jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32)

        def loss(q, k):
            ids = jnp.zeros((1, n), jnp.int32) if masked else None

            def layer(h, _):
                return attention(h, k, k, q_segment_ids=ids, kv_segment_ids=ids,
                                 impl="chunked"), None

            return jnp.sum(jax.lax.scan(layer, q, None, length=2)[0] ** 2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(q, k).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(4096), temp_bytes(16384)
    assert large < 5 * small, f"4x tokens took {large / small:.1f}x temp memory"
