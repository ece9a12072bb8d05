"""Model configuration and presets (REFERENCE.md §1)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


# (p, pF) pairs, spatial first: 1x2, 2x2 and 2x4 in the paper's "pF x p" notation.
DEFAULT_PATCH_SIZES = ((2, 1), (2, 2), (4, 2))
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
MODEL_KINDS = ("video", "v2a")
DTYPES = ("float32", "bfloat16", "float16")  # names; jnp_dtype gives the type (JAX loads late)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    dim: int = 2304
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int | None = 8
    in_channels: int = 16
    cap_feat_dim: int = 2304
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    qk_norm: bool = True
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    motion_scale: float = 20.0
    patch_sizes: tuple[tuple[int, int], ...] = DEFAULT_PATCH_SIZES
    axes_lens: tuple[int, int, int] = (64, 128, 128)  # max tokens along (frames, rows, cols)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls and activations
    remat: str = "none"
    # Layers per iteration of the layer scan: 1 compiles one block (fast compiles, the
    # right choice for deep models on GPU/TPU); n_layers unrolls fully, which on CPU saves
    # the scan's per-layer slicing of saved activations (~18% of a small model's step).
    scan_unroll: int = 1
    attention_impl: str = "auto"
    # "video": the Multi-scale Next-DiT; "v2a": Lumina-V2A (model/v2a.py), whose latents are
    # audio [C, 1, time, mel], conditioned on `frame_dim` visual features per video frame
    # and `sync_dim` synchronisation features per audio-latent step.
    kind: str = "video"
    frame_dim: int = 0
    sync_dim: int = 0

    def __post_init__(self):
        # Lists (e.g. from a config file) become tuples so the config stays hashable.
        object.__setattr__(self, "patch_sizes", tuple(tuple(p) for p in self.patch_sizes))
        object.__setattr__(self, "axes_lens", tuple(self.axes_lens))
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, 1024)

    @property
    def ffn_dim(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """head_dim split into (frame, height, width) parts, e.g. 36/54/54 for 144."""
        unit = self.head_dim // 8
        return unit * 2, unit * 3, unit * 3

    def patch_key(self, patch_size) -> str:
        p, pf = patch_size
        return f"{p}-{pf}"

    def jnp_dtype(self, name: str) -> Any:
        import jax.numpy as jnp  # here, so that configs load without JAX

        return jnp.dtype(getattr(self, name))

    def validate(self) -> None:
        def bad(field, msg):
            raise ValueError(f"ModelConfig.{field}: {msg}")

        if self.dim % self.n_heads:
            bad("dim", f"{self.dim} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            bad("n_kv_heads",
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads}")
        if self.head_dim % 16:
            bad("dim", f"head_dim={self.head_dim} must be a multiple of 16 so the 3D RoPE "
                       "frame/height/width parts (2/8, 3/8, 3/8 of head_dim) are even")
        if not self.patch_sizes:
            bad("patch_sizes", "at least one (p, pF) pair is required")
        for ps in self.patch_sizes:
            if len(ps) != 2 or min(ps) < 1:
                bad("patch_sizes", f"{ps} is not a (p, pF) pair of positive ints")
        if len(set(self.patch_sizes)) != len(self.patch_sizes):
            bad("patch_sizes", f"duplicate pairs in {self.patch_sizes}")
        if self.scan_unroll < 1:
            bad("scan_unroll", f"{self.scan_unroll} must be >= 1 (1 = rolled, n_layers = "
                               "fully unrolled)")
        if self.remat not in REMAT_POLICIES:
            bad("remat", f"{self.remat!r} is unknown; choose one of {REMAT_POLICIES}")
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in DTYPES:
                bad(field, f"{getattr(self, field)!r} is unknown; choose one of {tuple(DTYPES)}")
        if self.kind not in MODEL_KINDS:
            bad("kind", f"{self.kind!r} is unknown; choose one of {MODEL_KINDS}")
        if self.kind == "v2a":
            if self.frame_dim < 1 or self.sync_dim < 1:
                bad("frame_dim", f"a v2a model needs frame_dim and sync_dim >= 1 (got "
                                 f"{self.frame_dim}, {self.sync_dim})")
            if any(pf != 1 for _, pf in self.patch_sizes):
                bad("patch_sizes", f"v2a latents have one frame: pF must be 1 ({self.patch_sizes})")
        if not self.qk_norm:
            bad("qk_norm", "only qk_norm=True (the published model) is implemented")


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Published models (REFERENCE.md §1).
    "2B_GQA": dict(),
    "2B": dict(n_kv_heads=None),
    "4B_GQA": dict(dim=3072, n_layers=32, n_heads=24, n_kv_heads=8),
    # Small models: "tiny" for unit tests, "demo" for the CPU demo (pixel space, MiniLM
    # caption features of width 384).
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, in_channels=4,
                 cap_feat_dim=32, multiple_of=32),
    "demo": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, in_channels=3,
                 cap_feat_dim=384, multiple_of=64),
    # Lumina-V2A (REFERENCE.md §6; no published size): the demo's audio model over
    # identity (normalised log-mel, 1 channel) latents, 4x4 (time x mel) patches, MiniLM
    # text, 8x8 RGB pixel frame features and 32 sync features; "v2a_tiny" for tests.
    "v2a_demo": dict(kind="v2a", dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                     in_channels=1, cap_feat_dim=384, multiple_of=64, frame_dim=192,
                     sync_dim=32, patch_sizes=((4, 1),), axes_lens=(1, 512, 128)),
    "v2a_tiny": dict(kind="v2a", dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                     in_channels=1, cap_feat_dim=384, multiple_of=32, frame_dim=192,
                     sync_dim=32, patch_sizes=((4, 1),), axes_lens=(1, 512, 128)),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})
