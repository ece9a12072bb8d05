"""Flash attention for TPU in Pallas (Mosaic), forward and backward.

Layout inside: [B, H, N, Dp] with the head dim zero-padded to a multiple of 128 lanes
(144 -> 256: the MXU works in 128-wide passes anyway, so the padding adds HBM traffic
but no MXU passes). Zero columns change no dot product; they are sliced off after.

The key (resp. query) loop is the innermost "arbitrary" grid axis and the online-softmax
state lives in VMEM scratch, the usual Mosaic pipelining pattern. Segment ids arrive as a
column [bq, 1] and a row [1, bk] so the mask is a broadcast compare, no in-kernel
transpose. GQA: kv head = q head // G in the index maps; the dk/dv kernel reduces over
the G query heads of its kv head as an extra "arbitrary" grid axis, so neither K/V nor
dk/dv are ever repeated in memory. The dk/dv kernel works on transposed scores [bk, bq]
so every matmul is NN or NT (lse/delta come in as rows [1, bq]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lumina_jax.ops.flash_common import MASK_VALUE, FlashConfig, make_flash, pad_axis

F32 = jnp.float32
LANES = 128


def _nt(a, b):  # a @ b.T with fp32 accumulation
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _nn(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _fwd_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc,
                *, scale):
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, F32)
        l_sc[...] = jnp.zeros(l_sc.shape, F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    v = v_ref[...]
    valid = qid_ref[...] == kid_ref[...]  # [bq, 1] == [1, bk]
    s = jnp.where(valid, _nt(q_ref[...], k_ref[...]) * scale, MASK_VALUE)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    p = jnp.where(valid, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_sc[...] = alpha * acc_sc[...] + _nn(p.astype(v.dtype), v)
    m_sc[...] = m_new

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        l = l_sc[...]
        nonempty = l > 0.0
        safe_l = jnp.where(nonempty, l, 1.0)
        o_ref[...] = (acc_sc[...] / safe_l).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(nonempty, m_sc[...] + jnp.log(safe_l), jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, do_ref, lse_ref, delta_ref, dq_ref,
               dq_sc, *, scale):
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _():
        dq_sc[...] = jnp.zeros(dq_sc.shape, F32)

    k = k_ref[...]
    valid = qid_ref[...] == kid_ref[...]
    s = _nt(q_ref[...], k) * scale
    p = jnp.where(valid, jnp.exp(s - lse_ref[...]), 0.0)
    ds = p * (_nt(do_ref[...], v_ref[...]) - delta_ref[...])
    dq_sc[...] += _nn(ds.astype(k.dtype), k)

    @pl.when(j == pl.num_programs(3) - 1)
    def _():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(k_ref, v_ref, kid_ref, qid_ref, q_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dk_sc, dv_sc, *, scale):
    g, i = pl.program_id(3), pl.program_id(4)
    first = (g == 0) & (i == 0)
    last = (g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1)

    @pl.when(first)
    def _():
        dk_sc[...] = jnp.zeros(dk_sc.shape, F32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, F32)

    q, do = q_ref[...], do_ref[...]
    valid = kid_ref[...] == qid_ref[...]  # [bk, 1] == [1, bq]
    s_t = _nt(k_ref[...], q) * scale
    p_t = jnp.where(valid, jnp.exp(s_t - lse_ref[...]), 0.0)
    dv_sc[...] += _nn(p_t.astype(do.dtype), do)
    ds_t = p_t * (_nt(v_ref[...], do) - delta_ref[...])
    dk_sc[...] += _nn(ds_t.astype(q.dtype), q)

    @pl.when(last)
    def _():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _to_kernel_layout(x):  # [B, N, H, D] -> [B, H, N, Dp]
    return pad_axis(jnp.swapaxes(x, 1, 2), 3, LANES)


def _from_kernel_layout(x, d):
    return jnp.swapaxes(x[..., :d], 1, 2)


def _fwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids):
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    bq, bk = cfg.block_sizes.block_q, cfg.block_sizes.block_k
    qt, kt, vt = map(_to_kernel_layout, (q, k, v))
    dp = qt.shape[-1]
    q_spec = pl.BlockSpec((None, None, bq, dp), lambda b_, h, i, j: (b_, h, i, 0))
    # lax.div, not //: floor division lowers via `sign`, which Mosaic rejects off-TPU.
    kv_spec = pl.BlockSpec((None, None, bk, dp),
                           lambda b_, h, i, j: (b_, lax.div(h, groups), j, 0))
    col_spec = pl.BlockSpec((None, None, bq, 1), lambda b_, h, i, j: (b_, h, i, 0))
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, scale=cfg.scale),
        grid=(b, hq, nq // bq, nk // bk),
        in_specs=[q_spec, kv_spec, kv_spec,
                  pl.BlockSpec((None, bq, 1), lambda b_, h, i, j: (b_, i, 0)),
                  pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, j))],
        out_specs=[q_spec, col_spec],
        out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, hq, nq, 1), F32)],
        scratch_shapes=[pltpu.VMEM((bq, 1), F32), pltpu.VMEM((bq, 1), F32),
                        pltpu.VMEM((bq, dp), F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret, name="lumina_flash_fwd",
    )(qt, kt, vt, q_ids[:, :, None], kv_ids[:, None, :])
    return _from_kernel_layout(o, d), lse[..., 0]


def _bwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids, o, lse, do, delta):
    del o
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    qt, kt, vt, dot_ = map(_to_kernel_layout, (q, k, v, do))
    dp = qt.shape[-1]
    bq, bk = cfg.block_sizes.block_q, cfg.block_sizes.block_k
    q_spec = pl.BlockSpec((None, None, bq, dp), lambda b_, h, i, j: (b_, h, i, 0))
    # lax.div, not //: floor division lowers via `sign`, which Mosaic rejects off-TPU.
    kv_spec = pl.BlockSpec((None, None, bk, dp),
                           lambda b_, h, i, j: (b_, lax.div(h, groups), j, 0))
    col_spec = pl.BlockSpec((None, None, bq, 1), lambda b_, h, i, j: (b_, h, i, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=cfg.scale),
        grid=(b, hq, nq // bq, nk // bk),
        in_specs=[q_spec, kv_spec, kv_spec,
                  pl.BlockSpec((None, bq, 1), lambda b_, h, i, j: (b_, i, 0)),
                  pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, j)),
                  q_spec, col_spec, col_spec],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, dp), F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret, name="lumina_flash_dq",
    )(qt, kt, vt, q_ids[:, :, None], kv_ids[:, None, :], dot_, lse[..., None],
      delta[..., None])

    bq, bk = cfg.block_sizes.dkv
    # grid (b, kv head h, key block j, group member g, query block i)
    kv_spec = pl.BlockSpec((None, None, bk, dp), lambda b_, h, j, g, i: (b_, h, j, 0))
    q_spec = pl.BlockSpec((None, None, bq, dp),
                          lambda b_, h, j, g, i: (b_, h * groups + g, i, 0))
    row_spec = pl.BlockSpec((None, None, 1, bq),
                            lambda b_, h, j, g, i: (b_, h * groups + g, 0, i))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=cfg.scale),
        grid=(b, hkv, nk // bk, groups, nq // bq),
        in_specs=[kv_spec, kv_spec,
                  pl.BlockSpec((None, bk, 1), lambda b_, h, j, g, i: (b_, j, 0)),
                  pl.BlockSpec((None, 1, bq), lambda b_, h, j, g, i: (b_, 0, i)),
                  q_spec, q_spec, row_spec, row_spec],
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype)] * 2,
        scratch_shapes=[pltpu.VMEM((bk, dp), F32), pltpu.VMEM((bk, dp), F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=(
            "parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=cfg.interpret, name="lumina_flash_dkv",
    )(kt, vt, kv_ids[:, :, None], q_ids[:, None, :], qt, dot_, lse[:, :, None, :],
      delta[:, :, None, :])
    return _from_kernel_layout(dq, d), _from_kernel_layout(dk, d), _from_kernel_layout(dv, d)


flash_attention = make_flash(_fwd, _bwd)
