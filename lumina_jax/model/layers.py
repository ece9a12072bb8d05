"""Next-DiT building blocks (REFERENCE.md §1).

Parameter names follow the PyTorch state_dict (weight/bias, wq, adaLN_modulation, ...)
so the export is a rename-free walk; Dense kernels are stored `[in, out]` (JAX layout)
and transposed on export. Every parameter carries logical axis names for sharding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lumina_jax.model.config import ModelConfig
from lumina_jax.ops.sharded import mesh_attention
from lumina_jax.parallel.rules import constrain, splits

xavier_uniform = nnx.initializers.xavier_uniform()
normal_002 = nnx.initializers.normal(0.02)
zeros = nnx.initializers.zeros
ones = nnx.initializers.ones
# torch.nn.LayerNorm's default eps: the official LayerNorms (qk norms, caption pooling)
# keep it whatever norm_eps is; norm_eps applies to the RMSNorms only (REFERENCE.md §7).
TORCH_LN_EPS = 1e-5


def param(rngs: nnx.Rngs, init, shape, axes, dtype) -> nnx.Param:
    """A parameter annotated with logical axis names (sharding is applied by the trainer)."""
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    def __init__(self, d_in, d_out, axes, *, init, use_bias=True, cfg: ModelConfig, rngs):
        self.kernel = param(rngs, init, (d_in, d_out), axes, cfg.jnp_dtype("param_dtype"))
        self.bias = (param(rngs, zeros, (d_out,), axes[1:], cfg.jnp_dtype("param_dtype"))
                     if use_bias else None)
        self.dtype = cfg.jnp_dtype("dtype")

    def __call__(self, x):
        kernel = self.kernel[...].astype(self.dtype)
        if x.ndim == 3 and splits("act_tokens", x.shape[1]):
            # Tokens split over `sequence`: merging them with the batch (split over other
            # axes) has no matching layout, so XLA would gather every token.
            y = jnp.dot(x.astype(self.dtype), kernel)
        else:
            # As a 2-D matmul: XLA:CPU runs [B, N, D] @ [D, F] (and its weight gradient,
            # which contracts two axes) 2.3x slower than [B*N, D] @ [D, F].
            y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel)
            y = y.reshape(*x.shape[:-1], -1)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Weight-only RMSNorm; statistics in fp32, result in the compute dtype."""

    def __init__(self, dim, axis, *, eps, cfg: ModelConfig, rngs):
        self.weight = param(rngs, ones, (dim,), (axis,), cfg.jnp_dtype("param_dtype"))
        self.eps = eps
        self.dtype = cfg.jnp_dtype("dtype")

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * self.weight[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; optional affine weight and bias; stats in fp32."""

    def __init__(self, dim, axis, *, eps, affine=True, cfg: ModelConfig, rngs):
        pdt = cfg.jnp_dtype("param_dtype")
        self.weight = param(rngs, ones, (dim,), (axis,), pdt) if affine else None
        self.bias = param(rngs, zeros, (dim,), (axis,), pdt) if affine else None
        self.eps = eps
        self.dtype = cfg.jnp_dtype("dtype")

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def masked_mean(feats: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `feats [B, L, D]` over the tokens where `mask [B, L]` is True (fp32)."""
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(feats.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def masked_mean_rows(feats: jax.Array, masks: jax.Array) -> jax.Array:
    """`masked_mean` of `feats [B, L, D]` under each of `masks [B, S, L]` -> `[B, S, D]`
    (fp32; e.g. each packed clip's pooled caption). One matmul, at full fp32 precision."""
    m = masks.astype(jnp.float32)
    total = jnp.einsum("bsl,bld->bsd", m, feats.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    return total / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding `[cos, sin]` (cos first) of a float vector `[B] -> [B, dim]`."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nnx.Module):
    """sinusoid(256) -> Linear -> SiLU -> Linear; used for t and for the motion score."""

    FREQ_DIM = 256

    def __init__(self, cfg: ModelConfig, *, zero_out: bool = False, rngs):
        h = cfg.adaln_dim
        self.mlp_0 = Dense(self.FREQ_DIM, h, ("freq", "adaln"), init=normal_002, cfg=cfg, rngs=rngs)
        self.mlp_2 = Dense(h, h, ("adaln_hidden", "adaln"),
                           init=zeros if zero_out else normal_002, cfg=cfg, rngs=rngs)

    def __call__(self, t):
        return self.mlp_2(jax.nn.silu(self.mlp_0(timestep_embedding(t, self.FREQ_DIM))))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Interleaved rotary embedding in fp32: pairs (x[2i], x[2i+1]) are rotated.

    x `[B, N, H, D]`, cos/sin `[N, D/2]` (one grid for the batch) or `[B, N, D/2]` (per
    row: packed clips at their own grid positions).
    """
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = x32[..., 0], x32[..., 1]
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class Segments(NamedTuple):
    """Segment ids of packed rows (several clips per row; 0 = padding): `tokens [B, N]` and
    `captions [B, Lc]` (the clip each caption token belongs to). A token attends only to
    tokens and caption tokens of its own clip, and takes its clip's adaLN condition."""
    tokens: jax.Array
    captions: jax.Array


class Attention(nnx.Module):
    """GQA self-attention with qk LayerNorm and 3D RoPE, plus per-head tanh-gated
    cross-attention of the same queries over the valid caption tokens."""

    def __init__(self, cfg: ModelConfig, *, rngs):
        d, hd, kv = cfg.dim, cfg.head_dim, cfg.kv_heads * cfg.head_dim
        kw = dict(init=xavier_uniform, use_bias=False, cfg=cfg, rngs=rngs)
        self.wq = Dense(d, cfg.n_heads * hd, ("embed", "heads"), **kw)
        self.wk = Dense(d, kv, ("embed", "kv_heads"), **kw)
        self.wv = Dense(d, kv, ("embed", "kv_heads"), **kw)
        self.wk_y = Dense(cfg.cap_feat_dim, kv, ("cap_embed", "kv_heads"), **kw)
        self.wv_y = Dense(cfg.cap_feat_dim, kv, ("cap_embed", "kv_heads"), **kw)
        self.wo = Dense(cfg.n_heads * hd, d, ("heads", "embed"), **kw)
        self.gate = param(rngs, zeros, (cfg.n_heads,), ("heads",), cfg.jnp_dtype("param_dtype"))
        ln = dict(eps=TORCH_LN_EPS, cfg=cfg, rngs=rngs)
        self.q_norm = LayerNorm(cfg.n_heads * hd, "heads", **ln)
        self.k_norm = LayerNorm(kv, "kv_heads", **ln)
        self.ky_norm = LayerNorm(kv, "kv_heads", **ln)
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.impl = cfg.attention_impl

    def __call__(self, x, rope_cos, rope_sin, y, y_mask, segments: Segments | None = None):
        b, n, _ = x.shape
        q = self.q_norm(self.wq(x)).reshape(b, n, self.n_heads, self.head_dim)
        k = self.k_norm(self.wk(x)).reshape(b, n, self.kv_heads, self.head_dim)
        v = self.wv(x).reshape(b, n, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
        # On a mesh the kernels run inside shard_map: batch and heads split as the rules
        # say, and tokens split over `sequence` swapped for heads (Ulysses) around the
        # kernel, so no device gathers the full q, k or v (ops/sharded.py). The
        # constraints keep XLA from gathering tokens at the reshapes above.
        q, k, v = (constrain(x, ("act_batch", "act_tokens", "act_heads", None))
                   for x in (q, k, v))
        # Packed rows: self-attention within each clip, caption tokens of the clip only
        # (y_mask is then None: padding caption tokens carry segment 0, no clip's id).
        tok, cap = (None, None) if segments is None else segments
        out = mesh_attention(q, k, v, q_segment_ids=tok, kv_segment_ids=tok, impl=self.impl)

        yk = self.ky_norm(self.wk_y(y)).reshape(b, -1, self.kv_heads, self.head_dim)
        yv = self.wv_y(y).reshape(b, -1, self.kv_heads, self.head_dim)
        out_y = mesh_attention(q, yk, yv, kv_mask=y_mask, q_segment_ids=tok,
                               kv_segment_ids=cap, impl=self.impl, self_attention=False)
        gate = jnp.tanh(self.gate[...].astype(jnp.float32)).astype(out.dtype)
        out = out + gate[None, None, :, None] * out_y
        return self.wo(out.reshape(b, n, self.n_heads * self.head_dim))


class FeedForward(nnx.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig, *, rngs):
        kw = dict(init=xavier_uniform, use_bias=False, cfg=cfg, rngs=rngs)
        self.w1 = Dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), **kw)
        self.w3 = Dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), **kw)
        self.w2 = Dense(cfg.ffn_dim, cfg.dim, ("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


def per_token(mod: jax.Array, segments: Segments | None = None) -> jax.Array:
    """adaLN output `[B, D]` (one condition per item), `[B, N, D]` (one per token, e.g.
    V2A's synchronisation features), or with `segments` `[B, S, D]` (one per packed clip;
    computed per clip, then gathered per token: cheaper than the Linear on every token)
    -> broadcastable against tokens `[B, N, D]`."""
    if segments is not None:
        index = jnp.maximum(segments.tokens - 1, 0)  # padding takes clip 1's (unused)
        return jnp.take_along_axis(mod, index[:, :, None], axis=1)
    return mod[:, None, :] if mod.ndim == 2 else mod


def modulation(dense: Dense, adaln_input: jax.Array, segments: Segments | None = None):
    """`dense(SiLU(adaln_input))` broadcastable against tokens (see `per_token`); a packed
    row's per-clip conditions `[B, S, A]` go through as one 2-D matmul (S is no token axis
    to shard)."""
    if segments is None:
        return per_token(dense(jax.nn.silu(adaln_input)))
    b, s, a = adaln_input.shape
    mod = dense(jax.nn.silu(adaln_input.reshape(b * s, a))).reshape(b, s, -1)
    return per_token(mod, segments)


class TransformerBlock(nnx.Module):
    """Sandwich-norm block with tanh-gated adaLN (scale and gate, no shift); adaln_input
    is `[B, adaln_dim]`, per token `[B, N, adaln_dim]`, or per packed clip
    `[B, S, adaln_dim]` with `segments`."""

    def __init__(self, cfg: ModelConfig, *, rngs):
        norm = dict(eps=cfg.norm_eps, cfg=cfg, rngs=rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.feed_forward = FeedForward(cfg, rngs=rngs)
        self.attention_norm1 = RMSNorm(cfg.dim, "embed", **norm)
        self.attention_norm2 = RMSNorm(cfg.dim, "embed", **norm)
        self.ffn_norm1 = RMSNorm(cfg.dim, "embed", **norm)
        self.ffn_norm2 = RMSNorm(cfg.dim, "embed", **norm)
        self.attention_y_norm = RMSNorm(cfg.cap_feat_dim, "cap_embed", **norm)
        self.adaLN_modulation = Dense(cfg.adaln_dim, 4 * cfg.dim, ("adaln", "modulation"),
                                      init=zeros, cfg=cfg, rngs=rngs)

    def __call__(self, x, adaln_input, rope_cos, rope_sin, y, y_mask,
                 segments: Segments | None = None):
        mod = modulation(self.adaLN_modulation, adaln_input, segments)
        scale_msa, gate_msa, scale_mlp, gate_mlp = jnp.split(mod, 4, axis=-1)
        h = self.attention(self.attention_norm1(x) * (1 + scale_msa), rope_cos, rope_sin,
                           self.attention_y_norm(y), y_mask, segments)
        x = x + jnp.tanh(gate_msa) * self.attention_norm2(h)
        h = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp))
        return x + jnp.tanh(gate_mlp) * self.ffn_norm2(h)


class FinalLayer(nnx.Module):
    """LayerNorm(no affine, eps 1e-6) * (1 + scale) -> Linear to patch features."""

    def __init__(self, cfg: ModelConfig, patch_dim: int, *, rngs):
        self.norm_final = LayerNorm(cfg.dim, "embed", eps=1e-6, affine=False, cfg=cfg, rngs=rngs)
        self.adaLN_modulation = Dense(cfg.adaln_dim, cfg.dim, ("adaln", "embed"),
                                      init=zeros, cfg=cfg, rngs=rngs)
        self.linear = Dense(cfg.dim, patch_dim, ("embed", "patch"), init=zeros, cfg=cfg, rngs=rngs)

    def __call__(self, x, adaln_input, segments: Segments | None = None):
        scale = modulation(self.adaLN_modulation, adaln_input, segments)
        return self.linear(self.norm_final(x) * (1 + scale))
