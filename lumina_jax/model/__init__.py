"""Multi-scale Next-DiT (and Lumina-V2A) in Flax NNX."""

from lumina_jax.model.config import MODEL_PRESETS, ModelConfig, get_preset

_NEXTDIT = ("NextDiT", "patchify", "token_count", "unpatchify")


def __getattr__(name):  # the model (and JAX) load on first use, so configs load without JAX
    if name in _NEXTDIT:
        from lumina_jax.model import nextdit

        return getattr(nextdit, name)
    raise AttributeError(f"module 'lumina_jax.model' has no attribute {name!r}")


def model_class(cfg: ModelConfig):
    """The model that a config describes (`ModelConfig.kind`)."""
    if cfg.kind == "v2a":
        from lumina_jax.model.v2a import V2ADiT

        return V2ADiT
    from lumina_jax.model.nextdit import NextDiT

    return NextDiT


def build_model(cfg: ModelConfig, seed: int = 0):
    from flax import nnx

    return model_class(cfg)(cfg, rngs=nnx.Rngs(seed))


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from abstract shapes (nothing is allocated)."""
    import jax
    from flax import nnx

    abstract = nnx.eval_shape(lambda: build_model(cfg))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


__all__ = ["MODEL_PRESETS", "ModelConfig", "get_preset", "NextDiT", "build_model", "count_params",
           "model_class", "patchify", "token_count", "unpatchify"]
