"""Lumina-V2A: the video-to-audio Next-DiT (REFERENCE.md §6; described only in the report).

Audio latents `[B, C, 1, T, M]` (C channels over T time steps x M mel bins; the 1 is the
frame axis of our video layout, so patchify, RoPE and the blocks are the video model's)
are cut into (time x mel) patches and run through the same stacked TransformerBlocks:

  * 2D RoPE: the token grid is (1, T/p, M/p), so the frame part of the 3D RoPE stays at
    position 0 (identity) and the row/col parts rotate by time and mel position;
  * cross-attention context: the visual frame tokens (each video frame's features through
    a learned frame encoder) concatenated with the text tokens, jointly attended by every
    audio token (the caption mask extended with ones for the frames);
  * adaLN condition: t embedding + pooled visual + pooled text embeddings (per clip) +
    the synchronisation features of each token's time step (per token), injected by the
    blocks' scale and gate. The per-token sync term is what lets a sound start at the
    video frame where its cause happens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lumina_jax.model import layers as L
from lumina_jax.model.config import ModelConfig
from lumina_jax.model.nextdit import (TOKENS_AXES, check_captions, check_patch_size, patchify,
                                      run_blocks, stacked_blocks, unpatchify)
from lumina_jax.model.rope import grid_tables
from lumina_jax.parallel.rules import constrain


class V2ADiT(nnx.Module):
    # Batch fields the model takes besides the latents (the train step ships these).
    inputs = ("cap_feats", "cap_mask", "frames", "sync")

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dense = lambda d_in, d_out, axes, init=L.xavier_uniform: L.Dense(
            d_in, d_out, axes, init=init, cfg=cfg, rngs=rngs)
        self.all_x_embedder = nnx.Dict({
            cfg.patch_key(ps): dense(ps[0] ** 2 * cfg.in_channels, cfg.dim, ("patch", "embed"))
            for ps in cfg.patch_sizes})
        self.all_final_layer = nnx.Dict({
            cfg.patch_key(ps): L.FinalLayer(cfg, ps[0] ** 2 * cfg.in_channels, rngs=rngs)
            for ps in cfg.patch_sizes})
        self.t_embedder = L.TimestepEmbedder(cfg, rngs=rngs)
        # The learned frame encoder: visual features per frame -> the context width.
        self.frame_encoder_0 = dense(cfg.frame_dim, cfg.cap_feat_dim, ("frame", "cap_embed"))
        self.frame_encoder_2 = dense(cfg.cap_feat_dim, cfg.cap_feat_dim,
                                     ("cap_embed_hidden", "cap_embed"))
        ln = dict(eps=L.TORCH_LN_EPS, cfg=cfg, rngs=rngs)
        self.visual_embedder_norm = L.LayerNorm(cfg.cap_feat_dim, "cap_embed", **ln)
        self.visual_embedder_linear = dense(cfg.cap_feat_dim, cfg.adaln_dim,
                                            ("cap_embed", "adaln"), init=L.zeros)
        self.cap_embedder_norm = L.LayerNorm(cfg.cap_feat_dim, "cap_embed", **ln)
        self.cap_embedder_linear = dense(cfg.cap_feat_dim, cfg.adaln_dim,
                                         ("cap_embed", "adaln"), init=L.zeros)
        # Sync features of a token's time steps -> its own adaLN term (zero at init).
        self.sync_embedder_0 = dense(cfg.sync_dim, cfg.adaln_dim, ("sync", "adaln"))
        self.sync_embedder_2 = dense(cfg.adaln_dim, cfg.adaln_dim, ("adaln_hidden", "adaln"),
                                     init=L.zeros)
        self.layers = stacked_blocks(cfg, rngs)

    def __call__(self, x, t, cap_feats, cap_mask, frames, sync, *, patch_size):
        """Velocity for audio latents `x [B, C, 1, T, M]` at times `t [B]` (1 = clean).

        cap_feats `[B, L, cap_feat_dim]`, cap_mask `[B, L]`; frames `[B, Fv, frame_dim]`
        (visual features of each video frame; an all-zero clip = no video); sync
        `[B, T, sync_dim]` (one row per latent time step). Returns x's shape.
        """
        cfg = self.cfg
        p, pf = self._check_inputs(x, t, cap_feats, cap_mask, frames, sync, patch_size)
        key = cfg.patch_key((p, pf))
        b, c, _, steps, mels = x.shape
        grid = (1, steps // p, mels // p)
        dtype = cfg.jnp_dtype("dtype")

        tokens = constrain(self.all_x_embedder[key](patchify(x, p, 1)), TOKENS_AXES)
        visual = self.frame_encoder_2(jax.nn.silu(self.frame_encoder_0(frames)))
        frame_mask = jnp.ones(frames.shape[:2], bool)
        per_clip = (self.t_embedder(t * cfg.t_scale)
                    + self.visual_embedder_linear(self.visual_embedder_norm(
                        L.masked_mean(visual, frame_mask)))
                    + self.cap_embedder_linear(self.cap_embedder_norm(
                        L.masked_mean(cap_feats, cap_mask))))
        # each token's time steps (p of them) -> one sync row; tokens are time-major
        sync_rows = sync.astype(jnp.float32).reshape(b, grid[1], p, -1).mean(axis=2)
        per_step = self.sync_embedder_2(jax.nn.silu(self.sync_embedder_0(sync_rows)))
        per_token = jnp.repeat(per_step, grid[2], axis=1)
        adaln_input = (per_clip[:, None, :] + per_token).astype(dtype)

        context = jnp.concatenate([visual.astype(dtype), cap_feats.astype(dtype)], axis=1)
        context_mask = jnp.concatenate([frame_mask, cap_mask.astype(bool)], axis=1)
        rope_cos, rope_sin = grid_tables(cfg, grid)
        tokens = run_blocks(self.layers, cfg, tokens, adaln_input, rope_cos, rope_sin,
                            context, context_mask)
        out = self.all_final_layer[key](tokens, adaln_input)
        return unpatchify(out, grid, p, 1, c).astype(x.dtype)

    def _check_inputs(self, x, t, cap_feats, cap_mask, frames, sync, patch_size):
        cfg = self.cfg
        p, pf = check_patch_size(cfg, patch_size)
        if x.ndim != 5 or x.shape[1] != cfg.in_channels or x.shape[2] != 1:
            raise ValueError(f"audio latents must be [B, C={cfg.in_channels}, 1, T, M]; got "
                             f"{x.shape}")
        b, _, _, steps, mels = x.shape
        if steps % p or mels % p:
            raise ValueError(f"latent time steps and mel bins ({steps}, {mels}) must be "
                             f"divisible by the patch size p={p}")
        if t.shape != (b,):
            raise ValueError(f"t must be [B]=[{b}]; got {t.shape}")
        check_captions(cfg, b, cap_feats, cap_mask)
        if frames.ndim != 3 or frames.shape[0] != b or frames.shape[2] != cfg.frame_dim:
            raise ValueError(f"frames must be [B={b}, Fv, frame_dim={cfg.frame_dim}]; got "
                             f"{frames.shape}")
        if sync.shape != (b, steps, cfg.sync_dim):
            raise ValueError(f"sync must be [B, T, sync_dim]=[{b}, {steps}, {cfg.sync_dim}]; "
                             f"got {sync.shape}")
        return p, pf
