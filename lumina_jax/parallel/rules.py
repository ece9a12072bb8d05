"""Logical-axis rules: data that maps the model's logical axis names to mesh axes.

Parameters are annotated with names such as `embed`, `heads`, `mlp`, `layers`;
activations with `act_batch`, `act_tokens`, `act_heads`. A rule set maps each name to a
mesh axis, a tuple of mesh axes, or None (replicated). DP, FSDP, TP and sequence
parallelism are therefore presets of this table, not code.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Mapping[str, str | tuple[str, ...] | None]

_BATCH = {"act_batch": ("data", "fsdp")}
# ZeRO-3 style: every weight split along one model-width side (the first listed name of
# an array that maps to `fsdp` wins; the rest of that array stays whole).
_FSDP = {name: "fsdp" for name in ("embed", "cap_embed", "modulation", "adaln", "patch")}
RULE_PRESETS: dict[str, dict] = {
    # Replicated parameters; the batch is split over every data-like axis.
    "dp": {**_BATCH},
    "fsdp": {**_BATCH, **_FSDP},
    # + Megatron tensor parallelism over heads and the FFN hidden axis.
    "fsdp_tp": {**_BATCH, **_FSDP, "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor",
                "act_heads": "tensor"},
    # + the token axis of activations split over `sequence` (long videos; attention runs
    # Ulysses-style, see ops/sharded.py).
    "fsdp_sp": {**_BATCH, **_FSDP, "act_tokens": "sequence"},
    # tensor and sequence parallelism together.
    "fsdp_tp_sp": {**_BATCH, **_FSDP, "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor",
                   "act_heads": "tensor", "act_tokens": "sequence"},
}


def get_rules(rules: str | Rules) -> dict:
    if isinstance(rules, str):
        if rules not in RULE_PRESETS:
            raise ValueError(f"unknown sharding rules preset {rules!r}; choose one of "
                             f"{sorted(RULE_PRESETS)} or give a mapping")
        return dict(RULE_PRESETS[rules])
    return dict(rules)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], rules: Rules,
                    mesh: Mesh, *, where: str = "") -> PartitionSpec:
    """PartitionSpec for one array; a dim its mesh axes do not divide stays replicated."""
    spec, used = [], set()
    for name, size in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
        n = 1
        for a in mesh_axes:
            n *= mesh.shape[a]
        if mesh_axes and size % n:
            warnings.warn(f"{where}: dim {name}={size} is not divisible by mesh axes "
                          f"{mesh_axes} (size {n}); keeping it replicated", stacklevel=2)
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


# Activation constraints: the model calls `constrain(x, names)`; it is a no-op unless a
# trainer entered `activation_sharding(mesh, rules)` around tracing.
_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
    token = _CONTEXT.set((mesh, rules))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def splits(name: str, size: int) -> bool:
    """Whether the active rules split a dim named `name` of `size` over the mesh."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return False
    mesh, rules = ctx
    return any(logical_to_spec((name,), (size,), rules, mesh, where="activation"))


def current_sharding() -> tuple[Mesh, Rules] | None:
    """(mesh, rules) of the enclosing `activation_sharding`, or None."""
    return _CONTEXT.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = logical_to_spec(axes, x.shape, rules, mesh, where="activation")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
