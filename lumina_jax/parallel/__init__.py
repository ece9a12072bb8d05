"""Meshes, logical-axis sharding rules and multi-host initialisation."""

from lumina_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_axis_sizes
from lumina_jax.parallel.rules import (RULE_PRESETS, activation_sharding, constrain, get_rules,
                                       logical_to_spec)

__all__ = ["MESH_AXES", "make_mesh", "resolve_axis_sizes", "RULE_PRESETS", "activation_sharding",
           "constrain", "get_rules", "logical_to_spec"]
