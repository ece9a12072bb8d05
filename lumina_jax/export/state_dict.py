"""Flax NNX params <-> the official PyTorch state_dict layout (REFERENCE.md §2).

Our parameter paths already mirror the PyTorch names, so the mapping is a table built
from the model's abstract parameter tree (`nnx.eval_shape`, nothing allocated):
  * Dense `kernel [in, out]` -> `weight [out, in]` (transposed);
  * stacked `layers/...` with a leading layer axis -> `layers.{i}....`;
  * a few renames where PyTorch uses `nn.Sequential` indices (`RENAMES`).
Both directions walk the same table, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from lumina_jax.errors import UserError
from lumina_jax.model import NextDiT
from lumina_jax.model.config import ModelConfig

RENAMES = {
    "mlp_0": "mlp.0",
    "mlp_2": "mlp.2",
    "cap_embedder_norm": "cap_embedder.0",
    "cap_embedder_linear": "cap_embedder.1",
    "adaLN_modulation": "adaLN_modulation.1",  # torch: Sequential(SiLU, Linear)
    "kernel": "weight",
}
# torch.compile wraps modules: keys gain "_orig_mod." in front of the model or of each
# compiled block (`layers.3._orig_mod.attention...`); the official loaders drop it anywhere.
COMPILE_MARK = "_orig_mod."


class WeightsError(UserError, ValueError):
    """Weights given to import that cannot be used: missing, unreadable, or another model's."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch tensor and where it lives in our param tree."""

    name: str                 # PyTorch state_dict key
    path: tuple[str, ...]     # path in nnx.state(model, nnx.Param)
    layer: int | None         # index into the stacked layer axis, if any
    transpose: bool           # Dense kernel: [in, out] here, [out, in] in torch
    shape: tuple[int, ...]    # PyTorch shape


def abstract_params(cfg: ModelConfig) -> nnx.State:
    """The model's Param state as ShapeDtypeStructs (no memory allocated)."""
    return nnx.state(nnx.eval_shape(lambda: NextDiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)


@functools.lru_cache(maxsize=8)
def layout(cfg: ModelConfig) -> tuple[Entry, ...]:
    """Every tensor of the PyTorch state_dict, in a stable order (top level, then layers)."""
    top, per_layer = [], []
    for path, var in nnx.to_flat_state(abstract_params(cfg)):
        path = tuple(str(p) for p in path)
        shape = tuple(var.get_value().shape)
        transpose = path[-1] == "kernel"
        name = ".".join(RENAMES.get(p, p) for p in path)
        if path[0] == "layers":
            shape = shape[1:]
            per_layer.append((name[len("layers."):], path, shape, transpose))
        else:
            top.append(Entry(name, path, None, transpose, _torch_shape(shape, transpose)))
    layers = [Entry(f"layers.{i}.{rest}", path, i, tr, _torch_shape(shape, tr))
              for i in range(cfg.n_layers) for rest, path, shape, tr in per_layer]
    return tuple(top + layers)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {e.name: e.shape for e in layout(cfg)}


def _torch_shape(shape, transpose):
    return tuple(shape[::-1]) if transpose else tuple(shape)


def flat_arrays(params) -> dict[tuple[str, ...], jax.Array | np.ndarray]:
    """Path -> array for an nnx.Module, an nnx.State or a nested pure dict of arrays."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        return {tuple(str(p) for p in path): var.get_value() if isinstance(var, nnx.Variable)
                else var for path, var in nnx.to_flat_state(params)}
    out = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, prefix + (str(k),))
        else:
            out[prefix] = node.get_value() if isinstance(node, nnx.Variable) else node

    walk(params, ())
    return out


def to_torch(params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, fp32 array in torch layout) one tensor at a time.

    A generator, so a writer holds at most one exported tensor in host memory; a layer
    slice of a stacked device array is transferred on its own.
    """
    flat = flat_arrays(params)
    entries = layout(cfg)
    missing = sorted({e.path for e in entries} - flat.keys())
    if missing:
        raise ValueError(f"params lack {len(missing)} entries the config needs, first "
                         f"{'/'.join(missing[0])}; is cfg the model's config?")
    for e in entries:
        arr = flat[e.path]
        if e.layer is not None:
            arr = arr[e.layer]
        arr = np.asarray(jax.device_get(arr), dtype=np.float32)
        if e.transpose:
            arr = arr.T
        if arr.shape != e.shape:
            raise ValueError(f"{e.name}: params have shape {arr.shape}, the config expects "
                             f"{e.shape}; is cfg the model's config?")
        yield e.name, np.ascontiguousarray(arr)


def strip_compile_mark(name: str) -> str:
    return name.replace(COMPILE_MARK, "")


def check_shapes(found: Mapping[str, tuple[int, ...]], cfg: ModelConfig, source: str = "file"):
    """Raise WeightsError unless `found` (clean name -> shape) is exactly the layout of cfg."""
    expected = expected_shapes(cfg)
    problems = []
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != shape:
            problems.append(f"first bad key {name!r}: expected shape {shape}, found "
                            f"{tuple(found[name])}")
            break
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if problems:
        raise WeightsError(f"{source} does not match the state_dict layout of this ModelConfig "
                           f"({len(expected)} tensors): " + "; ".join(problems) +
                           "; use the config of the model that wrote these weights")


def from_torch(get: Callable[[str], np.ndarray], found: Mapping[str, tuple[int, ...]],
               cfg: ModelConfig, source: str = "file") -> nnx.State:
    """Build the Param state for cfg from torch-layout tensors.

    `get(name)` returns one tensor (clean name) as a numpy array; `found` maps clean names
    to shapes and is checked first, so a mismatched file fails before anything is read.
    Values are cast to cfg.param_dtype; stacked layers are filled in place, one tensor at
    a time, so only the growing result is held.
    """
    check_shapes(found, cfg, source)
    dtype = cfg.jnp_dtype("param_dtype")
    values: dict[tuple[str, ...], np.ndarray] = {}
    for e in layout(cfg):
        arr = np.asarray(get(e.name))
        if e.transpose:
            arr = arr.T
        if e.layer is None:
            values[e.path] = arr.astype(dtype)
        else:
            if e.path not in values:
                values[e.path] = np.empty((cfg.n_layers, *arr.shape), dtype)
            values[e.path][e.layer] = arr
    out = []
    for path, var in nnx.to_flat_state(abstract_params(cfg)):
        key = tuple(str(p) for p in path)
        out.append((path, var.copy(jax.numpy.asarray(values.pop(key)))))
    return nnx.from_flat_state(out)


def model_args(cfg: ModelConfig) -> dict:
    """Constructor arguments of the PyTorch MultiScaleNextDiT for this config.

    `model` names the official registry entry when the dims are the released 2B_GQA
    ones; the keyword arguments are always complete, so other sizes can be rebuilt from
    them. `patch_sizes`/`f_patch_sizes` are the spatial/temporal halves of the pairs (the
    names the official sampler reads from model_args).
    """
    spatial = [p for p, _ in cfg.patch_sizes]
    temporal = [pf for _, pf in cfg.patch_sizes]
    kwargs = dict(
        all_patch_size=spatial, all_f_patch_size=temporal, in_channels=cfg.in_channels,
        dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        multiple_of=cfg.multiple_of, ffn_dim_multiplier=cfg.ffn_dim_multiplier,
        norm_eps=cfg.norm_eps, qk_norm=cfg.qk_norm, cap_feat_dim=cfg.cap_feat_dim,
        rope_theta=cfg.rope_theta, t_scale=cfg.t_scale, motion_scale=cfg.motion_scale)
    released = (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads) == (2304, 24, 16, 8)
    return dict(model="MultiScaleNextDiT_2B_GQA" if released else "MultiScaleNextDiT",
                qk_norm=cfg.qk_norm, patch_sizes=spatial, f_patch_sizes=temporal,
                rope_theta=cfg.rope_theta, t_scale=cfg.t_scale, motion_scale=cfg.motion_scale,
                model_kwargs=kwargs)
