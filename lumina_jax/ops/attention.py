"""The one attention entry point of the model.

Layout: q `[B, Nq, Hq, D]`, k and v `[B, Nk, Hkv, D]` with `Hq % Hkv == 0` (GQA: each
group of `Hq // Hkv` query heads shares one kv head; K/V are never repeated).

Masking (any combination, all optional):
  * `q_segment_ids [B, Nq]` / `kv_segment_ids [B, Nk]`: a query attends only to keys with
    the same segment id (packed items never attend across; give padding its own id).
  * `kv_mask [B, Nk]` (bool): keys that may be attended at all (e.g. valid caption tokens).
A query row with no key to attend to returns zeros, never NaN.

`impl` picks the implementation:
  * "xla": the reference einsum path (materialises the [Nq, Nk] scores).
  * "chunked": XLA online softmax over key chunks; memory linear in N (ops/chunked.py).
  * "pallas": our flash kernels (ops/pallas_gpu.py Triton, ops/pallas_tpu.py Mosaic);
    on CPU they run in interpret mode (slow, for tests and tiny models).
  * "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`; masks are passed
    as a dense [B, 1, Nq, Nk] boolean, so prefer it for unmasked attention.
  * "splash": JAX's maintained TPU splash attention (ops/splash.py); interpret mode on CPU.
  * "auto": GPU: cuDNN when there is no mask and cuDNN supports the shape/dtype, else
    Pallas; TPU: splash, or our Mosaic kernel where splash refuses the call; CPU: chunked
    from CHUNKED_MIN_KEYS keys up, else xla. On GPU/TPU the pick is printed once per
    compiled shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp

from lumina_jax.ops.flash_common import DEFAULT_BLOCK_SIZES, BlockSizes, FlashConfig, run_padded

IMPLEMENTATIONS = ("auto", "xla", "chunked", "pallas", "cudnn", "splash")
# From 64 keys up the chunked path is faster on CPU (fwd+bwd, 4/2 heads, D=64: 1.2x at
# 64 tokens, 2.9x at 512, 4.7x at 1024) and its memory is linear; below, plain XLA.
CHUNKED_MIN_KEYS = 64


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "auto",
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
    platform: str | None = None,
) -> jax.Array:
    """See the module docstring. `block_sizes` defaults per platform; `interpret`
    (Pallas and splash kernels) defaults to True on CPU; `platform` ("cpu" | "gpu" | "tpu")
    defaults to
    `jax.default_backend()` and picks the kernel family (set it to lower for another
    platform, e.g. under `jax.export`)."""
    _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl={impl!r} is unknown; choose one of {IMPLEMENTATIONS}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scale = float(scale)
    platform = _platform(platform)
    interpret = platform == "cpu" if interpret is None else bool(interpret)
    masks = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, kv_mask=kv_mask)
    if impl == "auto":
        impl, why = _auto_impl(q, k, platform, masks), ""
        if impl in ("cudnn", "splash"):
            try:
                out = _VENDOR[impl](q, k, v, **masks, scale=scale, interpret=interpret)
                _report_choice(impl, platform, q, k, why)
                return out
            except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
                # the vendor kernel rejected the shape/dtype/masks at trace time
                why = f" ({impl} refused: {type(e).__name__}: {e})"
                impl = "pallas"
        _report_choice(impl, platform, q, k, why)
    if impl == "xla":
        return xla_attention(q, k, v, **masks, scale=scale)
    if impl in _VENDOR:
        return _VENDOR[impl](q, k, v, **masks, scale=scale, interpret=interpret)
    if impl == "chunked":
        from lumina_jax.ops.chunked import chunked_attention

        bs = block_sizes or DEFAULT_BLOCK_SIZES["cpu"]
        bq, bk = min(bs.block_q, q.shape[1]), min(bs.block_k, k.shape[1])
        cfg = FlashConfig(scale=scale, block_sizes=BlockSizes(bq, bk), interpret=False)
        return run_padded(chunked_attention, cfg, q, k, v, **masks, q_multiple=bq,
                          k_multiple=bk)
    return pallas_attention(q, k, v, **masks, scale=scale, block_sizes=block_sizes,
                            interpret=interpret, platform=platform)


# The platform kernels are chosen for when a call names none: the backend, unless code
# that lowers for another one (jax.export, plan) says otherwise with `kernels_for`.
_TARGET: contextvars.ContextVar = contextvars.ContextVar("attention_platform", default=None)


@contextlib.contextmanager
def kernels_for(platform: str):
    """Pick attention kernels for `platform` ("gpu"/"cuda", "tpu") while tracing inside,
    e.g. to `jax.export` a whole model for an accelerator from a CPU machine. Only new
    traces see it: a jitted function already traced for these shapes keeps its kernels."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


_REPORTED: set = set()


def _report_choice(impl, platform, q, k, why: str) -> None:
    """Say which kernel `auto` picked on an accelerator, once per shape: a call is traced
    once per compile, so this is one line per compiled attention shape."""
    key = (impl, platform, q.shape, k.shape, str(q.dtype))
    if platform == "cpu" or key in _REPORTED:
        return
    _REPORTED.add(key)
    print(f"attention auto on {platform}: {impl} for q {list(q.shape)}, k {list(k.shape)} "
          f"{q.dtype}{why[:200]}", flush=True)


def _platform(platform):
    platform = platform or _TARGET.get() or jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def _auto_impl(q, k, platform, masks):
    if platform == "gpu":
        unmasked = all(m is None for m in masks.values())
        return "cudnn" if unmasked and q.dtype in (jnp.bfloat16, jnp.float16) else "pallas"
    if platform == "tpu":
        return "splash"
    return "chunked" if k.shape[1] >= CHUNKED_MIN_KEYS else "xla"


def pallas_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, kv_mask=None,
                     scale, block_sizes=None, interpret=None, platform=None):
    """Our flash kernels: Mosaic on TPU, Triton elsewhere (interpret mode on CPU)."""
    platform = _platform(platform)
    if interpret is None:
        interpret = platform == "cpu"
    bs = block_sizes or DEFAULT_BLOCK_SIZES[platform]
    nq, nk = q.shape[1], k.shape[1]
    if platform == "tpu":
        from lumina_jax.ops import pallas_tpu as kernels

        # Shrink blocks for short sequences, keeping Mosaic's 128-lane tiling.
        fit_q, fit_k = (-(-n // 128) * 128 for n in (nq, nk))
    else:
        from lumina_jax.ops import pallas_gpu as kernels

        # Triton tiles are powers of two and its dots need >= 16 rows.
        fit_q, fit_k = (max(16, 1 << (n - 1).bit_length()) for n in (nq, nk))
    bq_dkv, bk_dkv = bs.dkv
    bs = BlockSizes(min(bs.block_q, fit_q), min(bs.block_k, fit_k),
                    min(bq_dkv, fit_q), min(bk_dkv, fit_k))
    cfg = FlashConfig(scale=scale, block_sizes=bs, interpret=bool(interpret))
    return run_padded(kernels.flash_attention, cfg, q, k, v, q_segment_ids, kv_segment_ids,
                      kv_mask, q_multiple=math.lcm(bs.block_q, bs.dkv[0]),
                      k_multiple=math.lcm(bs.block_k, bs.dkv[1]))


def cudnn_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, kv_mask=None, scale,
                    interpret=None):
    """cuDNN fused attention; raises (NotImplementedError/ValueError) where unsupported.
    (`interpret` is unused: cuDNN has no interpret mode.)"""
    mask = attention_mask(q_segment_ids, kv_segment_ids, kv_mask)
    if mask is not None:  # cuDNN wants [B, 1, Nq, Nk] (broadcast over heads only)
        mask = jnp.broadcast_to(mask[:, :, 0], (q.shape[0], 1, q.shape[1], k.shape[1]))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                       implementation="cudnn")
    if mask is not None:  # our contract: rows with nothing to attend are zeros
        out = jnp.where(jnp.any(mask, axis=-1)[:, 0, :, None, None], out, 0)
    return out


def splash_attention(q, k, v, *, scale, interpret, **masks):
    """TPU splash attention (ops/splash.py; imported late, it is TPU-only code)."""
    from lumina_jax.ops.splash import splash_attention as run

    return run(q, k, v, **masks, scale=scale, interpret=interpret)


_VENDOR = {"cudnn": cudnn_attention, "splash": splash_attention}


def _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, kv_mask):
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"attention expects q [B,Nq,Hq,D], k = v [B,Nk,Hkv,D]; got q {q.shape}, "
            f"k {k.shape}, v {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[2] % k.shape[2]:
        raise ValueError(
            f"attention: batch/head_dim must match and Hq must be a multiple of Hkv; "
            f"got q {q.shape}, k {k.shape}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither")
    if q_segment_ids is not None and (q_segment_ids.shape != q.shape[:2]
                                      or kv_segment_ids.shape != k.shape[:2]):
        raise ValueError(
            f"attention: segment ids must be [B,Nq] and [B,Nk]; got "
            f"{q_segment_ids.shape}, {kv_segment_ids.shape}")
    if kv_mask is not None and kv_mask.shape != k.shape[:2]:
        raise ValueError(f"attention: kv_mask must be [B,Nk]={k.shape[:2]}; got {kv_mask.shape}")


def attention_mask(q_segment_ids, kv_segment_ids, kv_mask):
    """Boolean `[B, 1, 1, Nq, Nk]` (broadcast over kv heads and groups) or None."""
    mask = None
    if q_segment_ids is not None:
        mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if kv_mask is not None:
        km = kv_mask.astype(bool)[:, None, :]
        mask = km if mask is None else mask & km
    return None if mask is None else mask[:, None, None]


def xla_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, kv_mask=None, scale):
    """Reference path: fp32 scores and softmax, inputs' dtype for the matmul operands."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, nq, hkv, hq // hkv, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    mask = attention_mask(q_segment_ids, kv_segment_ids, kv_mask)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked row
    probs = jnp.exp(scores - jax.lax.stop_gradient(row_max))
    denom = jnp.sum(probs, axis=-1, keepdims=True)
    probs = probs / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, nq, hq, d).astype(q.dtype)
