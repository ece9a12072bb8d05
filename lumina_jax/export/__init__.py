"""Flax <-> PyTorch state_dict with the official Lumina-Video names (REFERENCE.md §2)."""

from lumina_jax.export.io import (export_params, find_weights, import_params, read_state_dict,
                                  write_safetensors)
from lumina_jax.export.state_dict import (WeightsError, check_shapes, expected_shapes,
                                          from_torch, layout, model_args, to_torch)

__all__ = ["export_params", "find_weights", "import_params", "read_state_dict",
           "write_safetensors", "WeightsError", "check_shapes", "expected_shapes",
           "from_torch", "layout", "model_args", "to_torch"]
