"""lumina-jax: Lumina-Video's Multi-scale Next-DiT for sharded pretraining on JAX."""

__version__ = "0.1.0"
