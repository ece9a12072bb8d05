"""Multi-scale Next-DiT (Lumina-Video), REFERENCE.md §1.

One transformer shared by every patch size; each (p, pF) pair has its own input
embedder and final layer. The transformer blocks are stacked along a leading `layers`
axis and run with `lax.scan` (one compiled block, optional remat).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lumina_jax.diffusion.loss import VIDEO_INPUTS
from lumina_jax.model import layers as L
from lumina_jax.model.config import ModelConfig
from lumina_jax.model.rope import grid_tables, position_tables
from lumina_jax.parallel.rules import constrain

TOKENS_AXES = ("act_batch", "act_tokens", None)

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def token_count(frames: int, height: int, width: int, patch_size) -> int:
    """Tokens of one item `[C, F, H, W]` at patch size (p, pF); an image fed with pF > 1
    is repeated to pF frames, so it still makes one frame of tokens."""
    p, pf = patch_size
    return -(-frames // pf) * (height // p) * (width // p)


def patchify(x: jax.Array, p: int, pf: int) -> jax.Array:
    """`[B, C, F, H, W] -> [B, (f h w), (pf ph pw c)]` (tokens frame-major)."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f // pf, pf, h // p, p, w // p, p)
    x = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)  # b f h w pf ph pw c
    return x.reshape(b, (f // pf) * (h // p) * (w // p), pf * p * p * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], p: int, pf: int, c: int) -> jax.Array:
    """Exact inverse of `patchify` for a token grid (Ft, Ht, Wt)."""
    b = tokens.shape[0]
    ft, ht, wt = grid
    x = tokens.reshape(b, ft, ht, wt, pf, p, p, c)
    x = x.transpose(0, 7, 1, 4, 2, 5, 3, 6)  # b c f pf h ph w pw
    return x.reshape(b, c, ft * pf, ht * p, wt * p)


def run_blocks(layers, cfg: ModelConfig, tokens, adaln_input, rope_cos, rope_sin, y, y_mask,
               segments: L.Segments | None = None):
    """The stacked TransformerBlocks as one `lax.scan` (one compiled block, optional remat)."""
    graphdef, stacked = nnx.split(layers)

    def body(h, layer_state):
        block = nnx.merge(graphdef, layer_state)
        h = block(h, adaln_input, rope_cos, rope_sin, y, y_mask, segments)
        return constrain(h, TOKENS_AXES), None

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=REMAT[cfg.remat], prevent_cse=False)
    tokens, _ = jax.lax.scan(body, tokens, stacked, unroll=min(cfg.scan_unroll, cfg.n_layers))
    return tokens


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs):
    """cfg.n_layers TransformerBlocks with their parameters stacked on a `layers` axis."""
    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
        return L.TransformerBlock(cfg, rngs=rngs)

    return make_layers(rngs)


class NextDiT(nnx.Module):
    # Batch fields the model takes besides the latents (the train step ships these).
    inputs = VIDEO_INPUTS

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = cfg.jnp_dtype("param_dtype")
        self.all_x_embedder = nnx.Dict({
            cfg.patch_key(ps): L.Dense(ps[1] * ps[0] ** 2 * cfg.in_channels, cfg.dim,
                                       ("patch", "embed"), init=L.xavier_uniform,
                                       cfg=cfg, rngs=rngs)
            for ps in cfg.patch_sizes})
        self.all_final_layer = nnx.Dict({
            cfg.patch_key(ps): L.FinalLayer(cfg, ps[1] * ps[0] ** 2 * cfg.in_channels, rngs=rngs)
            for ps in cfg.patch_sizes})
        self.t_embedder = L.TimestepEmbedder(cfg, rngs=rngs)
        self.motion_embedder = L.TimestepEmbedder(cfg, zero_out=True, rngs=rngs)
        self.cap_embedder_norm = L.LayerNorm(cfg.cap_feat_dim, "cap_embed", eps=L.TORCH_LN_EPS,
                                             cfg=cfg, rngs=rngs)
        self.cap_embedder_linear = L.Dense(cfg.cap_feat_dim, cfg.adaln_dim, ("cap_embed", "adaln"),
                                           init=L.zeros, cfg=cfg, rngs=rngs)
        # Present in the published state_dict; unused by the forward pass.
        self.pad_token = L.param(rngs, L.normal_002, (cfg.dim,), ("embed",), pdt)
        self.layers = stacked_blocks(cfg, rngs)

    def __call__(self, x, t, cap_feats, cap_mask, motion_score, *, patch_size=(2, 1)):
        """Velocity for latents `x [B, C, F, H, W]` at times `t [B]` (1 = clean data).

        cap_feats `[B, L, cap_feat_dim]` with `cap_mask [B, L]` (True = valid token);
        motion_score `[B]` (negative = dropped); patch_size a configured (p, pF) pair.
        Returns an array of x's shape.
        """
        cfg = self.cfg
        p, pf = self._check_inputs(x, t, cap_feats, cap_mask, motion_score, patch_size)
        key = cfg.patch_key((p, pf))
        b, c, frames, h, w = x.shape
        if frames == 1 and pf > 1:  # an image fed to a temporal patch: repeat it pF times
            x = jnp.repeat(x, pf, axis=2)
        grid = (x.shape[2] // pf, h // p, w // p)
        adaln_input = self.condition(t, cap_feats, cap_mask, motion_score)
        out = self._transformer(patchify(x, p, pf), key, adaln_input, grid_tables(cfg, grid),
                                cap_feats, cap_mask)
        out = unpatchify(out, grid, p, pf, c)
        return out[:, :, :frames].astype(x.dtype)

    def packed(self, tokens, positions, segment_ids, t, cap_feats, cap_segment_ids,
               motion_score, *, patch_size=(2, 1)):
        """Velocity of packed rows: several clips per row, each its own segment.

        tokens `[B, N, pF*p*p*C]` (patchified noisy latents, as `patchify` lays them out);
        positions `[B, N, 3]` int (each token's (frame, row, col) in its clip's grid);
        segment_ids `[B, N]` int (1..S = clip of the row, 0 = padding); t and motion_score
        `[B, S]` (per clip); cap_feats `[B, Lc, cap_feat_dim]` with cap_segment_ids
        `[B, Lc]` (the clip of each caption token, 0 = padding). Returns tokens' shape.
        Each clip gets what `__call__` gives it alone: the same transformer, with attention
        masked to the clip, its own RoPE grid and its own conditioning.
        """
        cfg = self.cfg
        p, pf = check_patch_size(cfg, patch_size)
        b, n, d = tokens.shape
        if d != pf * p * p * cfg.in_channels:
            raise ValueError(f"packed tokens must be [B, N, pF*p*p*C="
                             f"{pf * p * p * cfg.in_channels}]"
                             f" at patch size {(p, pf)}; got {tokens.shape}")
        s = t.shape[-1]
        if (positions.shape != (b, n, 3) or segment_ids.shape != (b, n) or t.shape != (b, s)
                or motion_score.shape != (b, s)):
            raise ValueError(f"packed tokens {tokens.shape} need positions [B, N, 3], "
                             f"segment_ids [B, N], t and motion_score [B, S]; got "
                             f"{positions.shape}, {segment_ids.shape}, {t.shape}, "
                             f"{motion_score.shape}")
        check_captions(cfg, b, cap_feats, cap_segment_ids)
        # [B, S, Lc]: which caption tokens belong to each clip (the per-clip pooling mask)
        own = cap_segment_ids[:, None, :] == jnp.arange(1, s + 1)[None, :, None]
        adaln_input = self._condition(t, L.masked_mean_rows(cap_feats, own), motion_score)
        segments = L.Segments(segment_ids, cap_segment_ids)
        out = self._transformer(tokens, cfg.patch_key((p, pf)), adaln_input,
                                position_tables(cfg, positions), cap_feats, None, segments)
        return out.astype(tokens.dtype)

    def _transformer(self, tokens, key, adaln_input, rope, cap_feats, cap_mask, segments=None):
        """Patch tokens -> embedder -> blocks -> final layer (patch features per token)."""
        cfg = self.cfg
        tokens = constrain(self.all_x_embedder[key](tokens), TOKENS_AXES)
        y = cap_feats.astype(cfg.jnp_dtype("dtype"))
        tokens = run_blocks(self.layers, cfg, tokens, adaln_input, *rope, y, cap_mask, segments)
        return self.all_final_layer[key](tokens, adaln_input, segments)

    def condition(self, t, cap_feats, cap_mask, motion_score):
        """adaLN input = t embedding + pooled caption embedding + motion embedding."""
        return self._condition(t, L.masked_mean(cap_feats, cap_mask), motion_score)

    def _condition(self, t, pooled_caption, motion_score):
        """t, motion_score `[...]`, pooled_caption `[..., cap_feat_dim]` -> `[..., adaln]`
        (one condition per item, or per packed clip)."""
        cfg = self.cfg
        lead = t.shape
        t, motion_score = t.reshape(-1), motion_score.reshape(-1)
        t_emb = self.t_embedder(t * cfg.t_scale)
        cap_emb = self.cap_embedder_linear(self.cap_embedder_norm(
            pooled_caption.reshape(-1, pooled_caption.shape[-1])))
        dropped = motion_score < 0
        motion = jnp.where(dropped, 0.0, motion_score) * cfg.motion_scale
        motion_emb = jnp.where(dropped[:, None], 0.0, self.motion_embedder(motion))
        out = (t_emb + cap_emb + motion_emb).astype(cfg.jnp_dtype("dtype"))
        return out.reshape(*lead, -1)

    def _check_inputs(self, x, t, cap_feats, cap_mask, motion_score, patch_size):
        cfg = self.cfg
        p, pf = check_patch_size(cfg, patch_size)
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [B, C={cfg.in_channels}, F, H, W]; got {x.shape}")
        b, _, frames, h, w = x.shape
        if h % p or w % p:
            raise ValueError(f"height and width ({h}, {w}) must be divisible by p={p}")
        if frames != 1 and frames % pf:
            raise ValueError(f"frames={frames} must be 1 (an image) or divisible by pF={pf}")
        if t.shape != (b,) or motion_score.shape != (b,):
            raise ValueError(f"t and motion_score must be [B]=[{b}]; got {t.shape}, "
                             f"{motion_score.shape}")
        check_captions(cfg, b, cap_feats, cap_mask)
        return p, pf


def check_patch_size(cfg: ModelConfig, patch_size) -> tuple[int, int]:
    """(p, pF) if the model has that patch size, else ValueError."""
    patch_size = tuple(patch_size)
    if patch_size not in cfg.patch_sizes:
        raise ValueError(f"patch_size={patch_size} is not configured; ModelConfig.patch_sizes "
                         f"has {cfg.patch_sizes}")
    return patch_size


def check_captions(cfg: ModelConfig, b: int, cap_feats, cap_mask) -> None:
    if cap_feats.ndim != 3 or cap_feats.shape[0] != b or cap_feats.shape[2] != cfg.cap_feat_dim:
        raise ValueError(f"cap_feats must be [B={b}, L, {cfg.cap_feat_dim}]; got {cap_feats.shape}")
    if cap_mask.shape != cap_feats.shape[:2]:
        raise ValueError(f"cap_mask must be {cap_feats.shape[:2]}; got {cap_mask.shape}")
