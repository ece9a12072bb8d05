"""Metric sinks (JSONL + TensorBoard) and the per-device peak FLOP/s used for MFU."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def measured_matmul_flops(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """FLOP/s of a large matmul on the default device (the CPU's practical peak)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak_flops(override: float = 0.0) -> float:
    """Peak FLOP/s of one local device: the config's value, the data sheet, or measured."""
    if override > 0:
        return override
    kind = jax.local_devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak
    return measured_matmul_flops()


def keep_rows_up_to(path: str, step: int) -> None:
    """Rewrite metrics.jsonl keeping whole rows of steps <= `step` (drops a torn last line
    left by a crash or a full disk, and the rows a resumed run is about to log again)."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    rows = []
    for line in data.split(b"\n"):
        try:
            if json.loads(line)["step"] <= step:
                rows.append(line + b"\n")
        except (ValueError, KeyError, TypeError):
            pass  # a torn or foreign line
    kept = b"".join(rows)
    if kept != data:
        with open(path + ".tmp", "wb") as f:
            f.write(kept)
        os.replace(path + ".tmp", path)


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch
    (when installed) only for type hints, and that import costs ~3 s of every run's
    start. A None entry in sys.modules makes its `import torch` fail fast; the entry is
    removed again, so later code that needs torch still gets it."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Scalars to `<workdir>/metrics.jsonl` and TensorBoard event files (process 0 only)."""

    def __init__(self, workdir: str, start_step: int = 0):
        """`start_step`: the step training starts (or resumes) from; rows logged after it
        by an earlier attempt are dropped, since this run logs those steps again."""
        self.enabled = jax.process_index() == 0
        self.jsonl = self.tb = None
        if self.enabled:
            SummaryWriter = _summary_writer()
            path = os.path.join(workdir, "metrics.jsonl")
            keep_rows_up_to(path, start_step)
            self.jsonl = open(path, "ab", buffering=0)
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        # One write call per whole line, unbuffered: a crash cannot leave half a row
        # behind a later one (a torn last line is repaired by keep_rows_up_to).
        self.jsonl.write((json.dumps({"step": step, **values}) + "\n").encode())
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A uint8 [H, W, 3] image (e.g. the samples' contact sheet) into TensorBoard."""
        if self.enabled:
            self.tb.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
