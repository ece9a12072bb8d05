"""Device mesh from config: axes `data`, `fsdp`, `tensor`, `sequence`.

Sizes may be -1 (at most one axis): it takes whatever the other axes leave. With
`dcn` sizes (multi-slice TPU / multi-node GPU) the mesh is hybrid: each axis size is
`ici * dcn`, with the `dcn` part spanning slices/hosts over the slower network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor", "sequence")


def resolve_axis_sizes(sizes: Mapping[str, int], n_devices: int,
                       what: str = "mesh") -> dict[str, int]:
    """Fill a single -1 axis and check the product against the device count."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"{what}: unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    out = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
    fill = [a for a, s in out.items() if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in out.values()):
        raise ValueError(f"{what}: axis sizes must be positive with at most one -1; got {out}")
    known = math.prod(s for s in out.values() if s != -1)
    if fill:
        if n_devices % known:
            raise ValueError(f"{what}: {n_devices} devices are not divisible by the fixed axes "
                             f"{ {a: s for a, s in out.items() if s != -1} } (product {known})")
        out[fill[0]] = n_devices // known
    if math.prod(out.values()) != n_devices:
        raise ValueError(f"{what}: axis sizes {out} multiply to {math.prod(out.values())}, "
                         f"but there are {n_devices} devices; fix the sizes or set one to -1")
    return out


def make_mesh(ici: Mapping[str, int], dcn: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices, hybrid when `dcn` sizes are given."""
    devices = list(jax.devices() if devices is None else devices)
    if dcn:
        n_slices = _slice_count(devices)
        dcn_sizes = resolve_axis_sizes(dcn, n_slices, "mesh.dcn")
        ici_sizes = resolve_axis_sizes(ici, len(devices) // n_slices, "mesh.ici")
        grid = mesh_utils.create_hybrid_device_mesh(
            [ici_sizes[a] for a in MESH_AXES], [dcn_sizes[a] for a in MESH_AXES], devices,
            process_is_granule=not hasattr(devices[0], "slice_index"))
    else:
        sizes = resolve_axis_sizes(ici, len(devices))
        shape = [sizes[a] for a in MESH_AXES]
        try:  # topology-aware order on TPU/GPU; plain order where that is not supported
            grid = mesh_utils.create_device_mesh(shape, devices)
        except (NotImplementedError, ValueError, AssertionError):
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _slice_count(devices) -> int:
    if hasattr(devices[0], "slice_index"):
        return len({d.slice_index for d in devices})
    return len({d.process_index for d in devices})
