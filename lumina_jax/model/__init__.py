"""Multi-scale Next-DiT in Flax NNX."""

from lumina_jax.model.config import PRESETS, ModelConfig, get_preset
from lumina_jax.model.nextdit import NextDiT, count_params, patchify, token_count, unpatchify

__all__ = ["PRESETS", "ModelConfig", "get_preset", "NextDiT", "count_params", "patchify",
           "token_count", "unpatchify"]
