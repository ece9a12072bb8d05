"""MetricWriter: JSONL rows and TensorBoard scalars, without importing PyTorch."""

import glob
import json
import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

WRITE = """
import sys
from lumina_jax.train.metrics import MetricWriter
w = MetricWriter(sys.argv[1])
for step in (1, 2):
    w.scalars(step, {"loss": 1.0 / step, "stage": 0})
w.close()
print("torch imported:", "torch" in sys.modules)
import torch  # still importable afterwards: the block was lifted
"""


def tensorboard_scalars(folder) -> dict:
    """{tag: [values]} read from the TFRecord event files in `folder`."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in glob.glob(f"{folder}/events.out.tfevents.*"):
        data, i = pathlib.Path(path).read_bytes(), 0
        while i < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(value.simple_value)
    return out


def test_writer_logs_jsonl_and_tensorboard_without_importing_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch imported: False" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 1.0, "stage": 0}, {"step": 2, "loss": 0.5, "stage": 0}]
    assert tensorboard_scalars(tmp_path / "tensorboard") == {"loss": [1.0, 0.5],
                                                             "stage": [0.0, 0.0]}
