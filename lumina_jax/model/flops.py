"""Analytic model FLOPs (2 per multiply-add), for MFU and the scale plan."""

from __future__ import annotations

from lumina_jax.model.config import ModelConfig


def forward_flops(cfg: ModelConfig, n_tokens: int, cap_len: int, patch_dim: int) -> float:
    """FLOPs of one item's forward pass: every matmul and both attention products.

    n_tokens: image/video tokens of the item; cap_len: caption tokens; patch_dim:
    pF*p*p*C of the patch size in use. Elementwise work (norms, RoPE, softmax) is left out.
    """
    d, kv, ffn = cfg.dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_dim
    n, L = n_tokens, cap_len
    per_token = (d * d          # wq
                 + 2 * d * kv   # wk, wv
                 + d * d        # wo
                 + 3 * d * ffn)  # w1, w3, w2
    caption = 2 * L * cfg.cap_feat_dim * kv  # wk_y, wv_y
    attention = 2 * n * n * d + 2 * n * L * d  # (QK^T and PV) for self and caption keys
    layer = 2 * (n * per_token + caption + attention)
    embed = 2 * n * patch_dim * d * 2        # input embedder and final linear
    return cfg.n_layers * layer + embed


def train_step_flops(cfg: ModelConfig, n_tokens: int, cap_len: int, patch_dim: int,
                     batch: int) -> float:
    """Model FLOPs of forward + backward (3x forward) for a batch.

    Remat recomputation is not counted: MFU is measured against model FLOPs.
    """
    return 3 * batch * forward_flops(cfg, n_tokens, cap_len, patch_dim)
