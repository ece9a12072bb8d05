"""Read and write PyTorch-style checkpoints: safetensors and (when torch is present) .pth.

Streaming choice: the safetensors library only writes a complete in-memory dict, so we
write the (simple, documented) format ourselves: the header is known up front from the
layout (every tensor fp32), then each tensor is exported and written on its own. The
.pth is built afterwards from the safetensors library's memory map of that file, so its
tensors are file-backed pages, not a second copy in RAM. Reading takes one tensor at a
time into the stacked parameter arrays.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

import numpy as np
from flax import nnx

from lumina_jax.export.state_dict import (WeightsError, expected_shapes, from_torch,
                                          model_args, strip_compile_mark, to_torch)
from lumina_jax.model.config import ModelConfig

CONSOLIDATED = "consolidated.00-of-01"
CONSOLIDATED_EMA = "consolidated_ema.00-of-01"
STEMS = {"ema": CONSOLIDATED_EMA, "params": CONSOLIDATED}  # which weights -> file stem


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def write_safetensors(path: str, shapes: dict[str, tuple[int, ...]],
                      tensors: Iterable[tuple[str, np.ndarray]], metadata=None) -> None:
    """Write fp32 tensors in the order given; `shapes` (same order) fixes the header."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # the data buffer starts 8-byte aligned
    order = iter(shapes.items())
    tmp = path + ".tmp"  # never leave a truncated file under the final name
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, arr in tensors:
                want, shape = next(order, (None, None))
                if name != want or arr.shape != tuple(shape):
                    raise ValueError(f"tensor {name} {arr.shape} arrived where the header has "
                                     f"{want} {shape}")
                np.ascontiguousarray(arr, dtype="<f4").tofile(f)
            if next(order, None) is not None:
                raise ValueError("fewer tensors than the header announced")
    except BaseException:
        os.remove(tmp)
        raise
    os.replace(tmp, path)


def read_safetensors(path: str, framework: str = "numpy"):
    """Header shapes and a per-tensor getter (keys in file order). The library reads
    each tensor on request ("pt": a view of its memory map, not a copy)."""
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(path, framework=framework)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.offset_keys()}
    except SafetensorError as e:
        raise WeightsError(f"{path} is not a safetensors file, or is truncated ({e}); copy "
                           f"or export it again") from None
    return shapes, f.get_tensor


def read_pth(path: str) -> tuple[dict[str, tuple[int, ...]], Callable[[str], np.ndarray]]:
    if not _have_torch():
        raise WeightsError(f"reading {path} needs torch (pip install torch); or give the "
                           f".safetensors file")
    import torch

    try:
        try:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (pre-zip) .pth files cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure: the file is not a usable .pth
        reason = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:150]
        raise WeightsError(f"{path} is not a readable PyTorch file ({reason}); is it "
                           f"truncated? copy or export it again") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} holds a {type(sd).__name__}, not a state_dict")
    # bf16/fp16 are widened to fp32 per tensor (numpy has no bf16 bridge in torch).
    return ({k: tuple(v.shape) for k, v in sd.items()},
            lambda name: sd[name].detach().float().numpy())


def read_state_dict(path: str):
    """(clean name -> shape, clean name -> numpy array) for a .safetensors or .pth file."""
    if path.endswith(".safetensors"):
        shapes, get = read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        shapes, get = read_pth(path)
    else:
        raise WeightsError(f"{path}: expected a .safetensors or .pth file (or a folder "
                           f"written by export)")
    names = {strip_compile_mark(k): k for k in shapes}
    if len(names) != len(shapes):
        raise WeightsError(f"{path}: keys collide once '_orig_mod.' is removed")
    return {c: shapes[k] for c, k in names.items()}, lambda c: get(names[c])


def _write_pth_from_safetensors(st_path: str, pth_path: str) -> None:
    import torch

    # memory-mapped tensors: file-backed pages, not a second copy of the weights in RAM
    shapes, get = read_safetensors(st_path, framework="pt")
    sd = {name: get(name) for name in shapes}
    tmp = pth_path + ".tmp"
    torch.save(sd, tmp)
    os.replace(tmp, pth_path)


def _write_args(cfg: ModelConfig, out_dir: str, pth: bool) -> None:
    args = model_args(cfg)
    with open(os.path.join(out_dir, "model_args.json"), "w") as f:
        json.dump(args, f, indent=2)
    if pth:
        import argparse

        import torch
        # The official trainer saves its argparse Namespace; samplers read attributes.
        torch.save(argparse.Namespace(**args), os.path.join(out_dir, "model_args.pth"))


def export_params(params, cfg: ModelConfig, out_dir: str, ema_params=None, *,
                  pth: bool | None = None) -> list[str]:
    """Write params (and EMA params) in the official PyTorch checkpoint layout.

    params / ema_params: an nnx.Module, nnx.State of Params, or a nested dict of arrays
    with the model's parameter paths (e.g. restored from Orbax). pth: also write .pth
    files and model_args.pth (default: when torch is importable). Returns written paths.
    """
    pth = _have_torch() if pth is None else pth
    os.makedirs(out_dir, exist_ok=True)
    shapes = expected_shapes(cfg)
    written = []
    for stem, tree in ((CONSOLIDATED, params), (CONSOLIDATED_EMA, ema_params)):
        if tree is None:
            continue
        st = os.path.join(out_dir, stem + ".safetensors")
        write_safetensors(st, shapes, to_torch(tree, cfg), metadata={"format": "pt"})
        written.append(st)
        if pth:
            _write_pth_from_safetensors(st, os.path.join(out_dir, stem + ".pth"))
            written.append(os.path.join(out_dir, stem + ".pth"))
    _write_args(cfg, out_dir, pth)
    written += [os.path.join(out_dir, "model_args.json")]
    if pth:
        written.append(os.path.join(out_dir, "model_args.pth"))
    return written


def find_weights(path: str, which: str | None = None) -> tuple[str, str | None]:
    """(state_dict file, "ema" / "params" / None if unknown) for a file or an export folder.

    In a folder written by `export_params`, which="ema" takes consolidated_ema.00-of-01.*
    (the EMA weights, what an export publishes as the model), "params" the raw
    consolidated.00-of-01.*, None the EMA ones when present, else params; the safetensors
    file is preferred over the .pth. A file is taken as it is (`which` must be None).
    Raises WeightsError when there is no such file.
    """
    if not os.path.exists(path):
        raise WeightsError(f"{path} does not exist; give a .safetensors/.pth file or a "
                           f"folder written by `lumina-jax export`")
    if not os.path.isdir(path):
        if which is not None:
            raise WeightsError(f"{path} is a single file: EMA or params can only be chosen "
                               f"in an export folder; drop the choice or give the folder")
        name = os.path.basename(path)
        return path, next((w for w, stem in STEMS.items() if name.startswith(stem + ".")),
                          None)
    for w in [which] if which else STEMS:
        for ext in (".safetensors", ".pth"):
            candidate = os.path.join(path, STEMS[w] + ext)
            if os.path.exists(candidate):
                return candidate, w
    wanted = " or ".join(STEMS[w] + ".safetensors/.pth" for w in ([which] if which else STEMS))
    raise WeightsError(f"{path} has no {wanted}; give a folder written by `lumina-jax "
                       f"export` or a state_dict file")


def import_params(path: str, cfg: ModelConfig, which: str = "params") -> nnx.State:
    """Load a PyTorch-layout checkpoint into the Param state of NextDiT(cfg).

    path: a .safetensors/.pth file, or an export folder, from which the `which` weights
    ("params" or "ema", see `find_weights`) are taken. Use `nnx.update(model, state)` to
    load it. Raises WeightsError (a ValueError) for a missing or unreadable file, naming
    the first mismatching key (expected vs found shape) and any missing or unexpected keys.
    """
    path, _ = find_weights(path, which if os.path.isdir(path) else None)
    shapes, get = read_state_dict(path)
    return from_torch(get, shapes, cfg, source=path)
