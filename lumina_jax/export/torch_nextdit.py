"""Independent plain-PyTorch Multi-scale Next-DiT, written from REFERENCE.md §1-2 only.

The oracle of the exporter's tests (tests/test_export.py) and of the JAX-vs-PyTorch
benchmark (benchmarks/jax_vs_torch.py); imports torch, so nothing in the package imports
it. Module/parameter names follow the official state_dict so
an exported file loads with strict=True. fp32, no flash-attn; items are processed one at
a time (own tokens for self-attention, only the valid caption tokens for
cross-attention), deliberately unlike the batched, masked JAX code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float32) / 128)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def rope_complex(x, freqs_cis):
    """Interleaved pairs as complex numbers times e^{i angle}. x [N, H, D], freqs [N, D/2]."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(-2)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, y_dim):
        super().__init__()
        self.n_heads, self.n_kv = n_heads, n_kv_heads
        self.hd = dim // n_heads
        kv = n_kv_heads * self.hd
        self.wq = nn.Linear(dim, n_heads * self.hd, bias=False)
        self.wk = nn.Linear(dim, kv, bias=False)
        self.wv = nn.Linear(dim, kv, bias=False)
        self.wk_y = nn.Linear(y_dim, kv, bias=False)
        self.wv_y = nn.Linear(y_dim, kv, bias=False)
        self.gate = nn.Parameter(torch.zeros(n_heads))
        self.wo = nn.Linear(n_heads * self.hd, dim, bias=False)
        self.q_norm = nn.LayerNorm(n_heads * self.hd, eps=1e-5)
        self.k_norm = nn.LayerNorm(kv, eps=1e-5)
        self.ky_norm = nn.LayerNorm(kv, eps=1e-5)

    def _sdpa(self, q, k, v):
        # q [N, H, D], k/v [M, Hkv, D]; GQA: query head h uses kv head h // (H / Hkv).
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(self.hd)
        return torch.einsum("hnm,mhd->nhd", scores.softmax(-1), v)

    def forward(self, x, freqs_cis, y):
        """One item: x [N, dim], y [M_valid, y_dim] (already attention_y_norm'ed)."""
        n = x.shape[0]
        q = self.q_norm(self.wq(x)).view(n, self.n_heads, self.hd)
        k = self.k_norm(self.wk(x)).view(n, self.n_kv, self.hd)
        v = self.wv(x).view(n, self.n_kv, self.hd)
        q, k = rope_complex(q, freqs_cis), rope_complex(k, freqs_cis)
        out = self._sdpa(q, k, v)
        yk = self.ky_norm(self.wk_y(y)).view(-1, self.n_kv, self.hd)
        yv = self.wv_y(y).view(-1, self.n_kv, self.hd)
        out = out + self.gate.tanh()[None, :, None] * self._sdpa(q, yk, yv)
        return self.wo(out.reshape(n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, ffn_hidden, norm_eps, y_dim):
        super().__init__()
        self.attention = Attention(dim, n_heads, n_kv_heads, y_dim)
        self.feed_forward = FeedForward(dim, ffn_hidden)
        self.attention_norm1 = RMSNorm(dim, norm_eps)
        self.attention_norm2 = RMSNorm(dim, norm_eps)
        self.ffn_norm1 = RMSNorm(dim, norm_eps)
        self.ffn_norm2 = RMSNorm(dim, norm_eps)
        self.attention_y_norm = RMSNorm(y_dim, norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), 4 * dim))

    def forward(self, x, c, freqs_cis, y):
        """One item: x [N, dim], c [adaln] (this item's adaLN input), y [M_valid, y_dim]."""
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4)
        h = self.attention(self.attention_norm1(x) * (1 + scale_msa), freqs_cis,
                           self.attention_y_norm(y))
        x = x + gate_msa.tanh() * self.attention_norm2(h)
        h = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp))
        return x + gate_mlp.tanh() * self.ffn_norm2(h)


class FinalLayer(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), dim))

    def forward(self, x, c):
        return self.linear(self.norm_final(x) * (1 + self.adaLN_modulation(c)))


class MultiScaleNextDiT(nn.Module):
    def __init__(self, all_patch_size=(2, 2, 4), all_f_patch_size=(1, 2, 2), in_channels=16,
                 dim=2304, n_layers=24, n_heads=16, n_kv_heads=8, multiple_of=256,
                 ffn_dim_multiplier=None, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2304,
                 rope_theta=256.0, t_scale=1000.0, motion_scale=20.0):
        super().__init__()
        assert qk_norm
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.in_channels, self.t_scale, self.motion_scale = in_channels, t_scale, motion_scale
        self.head_dim, self.rope_theta = dim // n_heads, rope_theta
        self.all_x_embedder = nn.ModuleDict()
        self.all_final_layer = nn.ModuleDict()
        for p, pf in zip(all_patch_size, all_f_patch_size):
            feat = pf * p * p * in_channels
            self.all_x_embedder[f"{p}-{pf}"] = nn.Linear(feat, dim)
            self.all_final_layer[f"{p}-{pf}"] = FinalLayer(dim, feat)
        hidden = min(dim, 1024)
        self.t_embedder = TimestepEmbedder(hidden)
        self.motion_embedder = TimestepEmbedder(hidden)
        self.cap_embedder = nn.Sequential(nn.LayerNorm(cap_feat_dim),
                                          nn.Linear(cap_feat_dim, hidden))
        ffn = int(2 * 4 * dim / 3)
        if ffn_dim_multiplier is not None:
            ffn = int(ffn_dim_multiplier * ffn)
        ffn = multiple_of * math.ceil(ffn / multiple_of)
        self.layers = nn.ModuleList(
            TransformerBlock(dim, n_heads, n_kv_heads, ffn, norm_eps, cap_feat_dim)
            for _ in range(n_layers))
        self.pad_token = nn.Parameter(torch.empty(dim).normal_(std=0.02))

    def rope(self, ft, ht, wt):
        """complex64 [ft*ht*wt, head_dim/2]: (frame, row, col) parts, frame-major tokens."""
        u = self.head_dim // 8
        parts = []
        for d, n, axis in ((2 * u, ft, 0), (3 * u, ht, 1), (3 * u, wt, 2)):
            freqs = 1.0 / self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
            angles = torch.outer(torch.arange(n, dtype=torch.float64), freqs).float()
            table = torch.polar(torch.ones_like(angles), angles)  # [n, d/2]
            shape = [1, 1, 1, d // 2]
            shape[axis] = n
            parts.append(table.view(shape).expand(ft, ht, wt, d // 2))
        return torch.cat(parts, dim=-1).reshape(ft * ht * wt, -1)

    def forward(self, x, t, cap_feats, cap_mask, motion_score, patch_size=(2, 1)):
        """x [B, C, F, H, W], t [B] (1 = clean), cap_feats [B, L, D], cap_mask [B, L] bool,
        motion_score [B] (negative = dropped)."""
        p, pf = patch_size
        key = f"{p}-{pf}"
        b, c, frames, h, w = x.shape
        if frames == 1 and pf > 1:
            x = x.repeat_interleave(pf, dim=2)
        ft, ht, wt = x.shape[2] // pf, h // p, w // p

        t_emb = self.t_embedder(t * self.t_scale)
        m = cap_mask.float()[..., None]
        cap_emb = self.cap_embedder((cap_feats * m).sum(1) / m.sum(1))
        dropped = motion_score < 0
        motion = torch.where(dropped, 0.0, motion_score) * self.motion_scale
        motion_emb = self.motion_embedder(motion)
        motion_emb = motion_emb * (~dropped).float()[:, None]
        adaln = t_emb + cap_emb + motion_emb

        freqs_cis = self.rope(ft, ht, wt)
        outs = []
        for i in range(b):
            tokens = (x[i].reshape(c, ft, pf, ht, p, wt, p)
                      .permute(1, 3, 5, 2, 4, 6, 0).reshape(ft * ht * wt, -1))
            tok = self.all_x_embedder[key](tokens)
            y = cap_feats[i][cap_mask[i]]
            for layer in self.layers:
                tok = layer(tok, adaln[i], freqs_cis, y)
            out = self.all_final_layer[key](tok, adaln[i])
            out = (out.reshape(ft, ht, wt, pf, p, p, c).permute(6, 0, 3, 1, 4, 2, 5)
                   .reshape(c, ft * pf, ht * p, wt * p))
            outs.append(out[:, :frames])
        return torch.stack(outs)
