"""Attention on a device mesh: the kernels run inside `shard_map`, never under XLA's
partitioner (which cannot split a `pallas_call` or cuDNN's custom call and would gather
q, k and v onto every device first).

Specs come from the active logical-axis rules (`parallel.activation_sharding`):
  * batch over the mesh axes of `act_batch`; heads over those of `act_heads` (tensor);
  * self-attention with tokens split over `act_tokens` (sequence) uses Ulysses: an
    all-to-all turns the token split into a head split, each device runs full-length
    attention on its heads, and a second all-to-all turns it back. Activations stay
    token-split everywhere else, and no device ever holds the full-length q, k or v of
    all heads.
  * caption cross-attention keeps queries token-split; its short keys are replicated over
    the sequence axis.
GQA with fewer kv heads than shards: each kv head is repeated (consecutively, so query
head h still reads kv head h // group) just enough that every shard holds whole kv heads
-- at most the one copy per device it needs -- instead of replicating all kv heads
everywhere. When the query heads do not divide over the shards the split falls back to
what does divide (heads replicated over tensor; keys all-gathered over sequence), with a
warning: correct, only less parallel.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lumina_jax.ops.attention import attention
from lumina_jax.parallel.rules import current_sharding


def _mesh_axes(rules, name: str, size: int, mesh) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that `name` maps to, if together they divide `size`."""
    target = rules.get(name)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _kv_repeat(kv_heads: int, q_heads: int, shards: int) -> int | None:
    """How often to repeat each kv head so `shards` divides them (None: impossible)."""
    r = shards // math.gcd(kv_heads, shards)
    return r if (q_heads // kv_heads) % r == 0 else None


def mesh_attention(q, k, v, *, kv_mask=None, q_segment_ids=None, kv_segment_ids=None,
                   impl: str = "auto", self_attention: bool = True):
    """`ops.attention.attention` on the active mesh (plain call when there is none).

    q `[B, Nq, Hq, D]`; k, v `[B, Nk, Hkv, D]`; `kv_mask [B, Nk]` optional;
    `q_segment_ids [B, Nq]` / `kv_segment_ids [B, Nk]` optional (packed rows), split like
    the tokens they label. `self_attention`: q and k/v are the same tokens (split alike
    over the sequence axis); False for cross-attention over short, unsplit keys (captions).
    """
    masks = {"kv_mask": kv_mask, "q_segment_ids": q_segment_ids,
             "kv_segment_ids": kv_segment_ids}
    masks = {name: m for name, m in masks.items() if m is not None}
    ctx = current_sharding()
    if ctx is None or ctx[0].size == 1:
        return attention(q, k, v, **masks, impl=impl)
    mesh, rules = ctx
    b, nq, hq, _ = q.shape
    hkv = k.shape[2]
    batch = _mesh_axes(rules, "act_batch", b, mesh)
    tensor = _mesh_axes(rules, "act_heads", hq, mesh)
    t = math.prod(mesh.shape[a] for a in tensor)
    if tensor and hkv % t:
        r = _kv_repeat(hkv, hq, t)
        if r is None:
            warnings.warn(f"attention: {hkv} kv heads cannot be split over tensor={t}; heads "
                          f"stay replicated over {tensor}", stacklevel=2)
            tensor, t = (), 1
        else:
            k, v, hkv = jnp.repeat(k, r, axis=2), jnp.repeat(v, r, axis=2), hkv * r
    seq = _mesh_axes(rules, "act_tokens", nq, mesh)
    s = math.prod(mesh.shape[a] for a in seq)
    ulysses = bool(seq) and self_attention
    local_kv_repeat = 1
    if ulysses:
        hq_l, hkv_l = hq // t, hkv // t
        r = _kv_repeat(hkv_l, hq_l, s) if hq_l % s == 0 else None
        if r is None:
            warnings.warn(f"attention: {hq_l} query / {hkv_l} kv heads per device do not split "
                          f"over sequence={s}; keys are all-gathered instead of Ulysses",
                          stacklevel=2)
            ulysses = False
        else:
            local_kv_repeat = r

    bspec, hspec, sspec = _spec_entry(batch), _spec_entry(tensor), _spec_entry(seq)
    q_spec = P(bspec, sspec, hspec, None)
    kv_spec = P(bspec, sspec if self_attention else None, hspec, None)
    mask_specs = {"kv_mask": P(bspec, None), "q_segment_ids": P(bspec, sspec),
                  "kv_segment_ids": P(bspec, sspec if self_attention else None)}
    gather = lambda x: jax.lax.all_gather(x, seq, axis=1, tiled=True)

    def local(q, k, v, masks):
        if ulysses:
            if local_kv_repeat > 1:
                k, v = (jnp.repeat(x, local_kv_repeat, axis=2) for x in (k, v))
            # tokens split -> heads split: every device sees all tokens of its heads (and
            # so needs every token's segment id: a gather of [B, N] ints)
            to_heads = lambda x: jax.lax.all_to_all(x, seq, 2, 1, tiled=True)
            masks = {n: gather(m) if n.endswith("segment_ids") else m for n, m in masks.items()}
            out = attention(to_heads(q), to_heads(k), to_heads(v), **masks, impl=impl)
            return jax.lax.all_to_all(out, seq, 1, 2, tiled=True)
        if seq and self_attention:  # no Ulysses: every device gathers the keys it needs
            k, v = gather(k), gather(v)
            masks = {n: gather(m) if n == "kv_segment_ids" else m for n, m in masks.items()}
        return attention(q, k, v, **masks, impl=impl)

    # check_vma=False: Pallas and cuDNN calls carry no replication annotations.
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(q_spec, kv_spec, kv_spec,
                                   {n: mask_specs[n] for n in masks}),
                         out_specs=q_spec, check_vma=False)(q, k, v, masks)
