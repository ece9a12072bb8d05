"""Readers (sample, eval, export, v2a) restore a run's step, params and EMA only, split
FSDP-style over the local devices, never the optimiser state (issue 21); the corrupt-step
fallback still holds for them."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import with_xla_flags
from train_helpers import ROOT

# On 4 CPU devices: the reader's restore against the full train state's (the trainer's
# layout on the same devices), leaf by leaf.
COMPARE = """
import json, sys
import jax, numpy as np
from lumina_jax.train.checkpoint import Checkpointer
from lumina_jax.train.loop import load_run, local_layout
from lumina_jax.train.state import run_optimizer

workdir = sys.argv[1]
exp, reader = load_run(workdir)
ckpt = Checkpointer(workdir + "/checkpoints", keep=None, every=1)
full = ckpt.restore_latest(local_layout(exp, run_optimizer(exp)).target(), move_corrupt=False)[1]
ckpt.close()

def device_bytes(tree):
    out = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
    return out

equal = {k: all(jax.tree.leaves(jax.tree.map(
    lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), reader[k], full[k])))
    for k in ("params", "ema")}
print("RESULT " + json.dumps({
    "keys": sorted(reader), "step": int(reader["step"]), "full_step": int(full["step"]),
    "equal": equal, "devices": jax.device_count(),
    "sharded": [str(l.sharding.spec) for l in jax.tree.leaves(reader["params"])
                if not l.sharding.is_fully_replicated],
    "param_bytes": sum(l.nbytes for l in jax.tree.leaves(reader["params"])),
    "reader_device_bytes": device_bytes(reader), "full_device_bytes": device_bytes(full)}))
"""


@pytest.fixture(scope="module")
def compared(tiny_run):
    proc = subprocess.run([sys.executable, "-c", COMPARE, str(tiny_run[0])], cwd=ROOT,
                          env=with_xla_flags("--xla_force_host_platform_device_count=4"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_reader_restore_equals_the_full_restore(compared):
    assert compared["step"] == compared["full_step"] == 10
    assert compared["equal"] == {"params": True, "ema": True}


def test_reader_restore_is_sharded_over_the_devices(compared):
    assert compared["devices"] == 4
    assert compared["sharded"] and all("fsdp" in spec for spec in compared["sharded"])
    per_device = compared["reader_device_bytes"]
    assert len(per_device) == 4
    # params + EMA split four ways (a few small, indivisible arrays stay whole)
    for n in per_device.values():
        assert 2 * compared["param_bytes"] / 4 <= n < 0.6 * compared["param_bytes"]


def test_reader_restore_skips_the_optimiser_state(compared):
    assert compared["keys"] == ["ema", "params", "step"]
    # the full state is 4 param sizes (params, EMA, AdamW's two moments): twice the reader's
    for device, n in compared["reader_device_bytes"].items():
        assert compared["full_device_bytes"][device] == pytest.approx(2 * n, rel=0.01)


def test_reader_falls_back_past_corrupt_checkpoints_and_renames_nothing(tiny_run, tmp_path,
                                                                        capsys):
    from lumina_jax.train.loop import load_run

    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(tiny_run[0] / "config.json", workdir)
    shutil.copytree(tiny_run[0] / "checkpoints", workdir / "checkpoints")
    ckpts = workdir / "checkpoints"

    # step 10: one flipped byte (its checksum tells); step 8: its array data cut in half
    # and no checksum record (Orbax's partial restore itself fails)
    data = max((f for f in (ckpts / "10" / "state").rglob("*") if f.is_file()),
               key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (ckpts / "8" / "checksums.json").unlink()
    for data in (ckpts / "8" / "state" / "ocdbt.process_0" / "d").iterdir():
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    _, state = load_run(str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint 10 failed to restore (OSError: checksum mismatch" in out
    assert "checkpoint 8 failed to restore" in out
    assert int(state["step"]) == 6 and sorted(state) == ["ema", "params", "step"]
    _, want = load_run(str(tiny_run[0]), 6)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(want["ema"])))
    assert sorted(p.name for p in ckpts.iterdir()) == ["10", "2", "4", "6", "8"]
    with pytest.raises(FileNotFoundError, match="no restorable checkpoint 10"):
        load_run(str(workdir), 10)

