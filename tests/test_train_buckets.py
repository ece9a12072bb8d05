"""Training on mixed buckets: images and videos of several aspect ratios and durations in
one task, a compile per (task, shape), exact resume across a bucket change, and the
persistent compilation cache. Runs `lumina-jax train` on real encoded footage (the
session's `mixed_footage`, shared with tests/test_packing.py)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from train_helpers import per_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "tests" / "mixed_buckets_config.py")
STEPS = 8


def cmd(workdir, data, *overrides):
    return [sys.executable, "-m", "lumina_jax.cli", "train", "--config", CONFIG, "--workdir",
            str(workdir), f"--config.data_dir={data}", *overrides]


def run(workdir, data, *overrides, env=None):
    proc = subprocess.run(cmd(workdir, data, *overrides), capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(mixed_footage, tmp_path_factory):
    """(workdir, output, files in its persistent compilation cache) of the 8 steps, with
    the config's default cache, {workdir}/compilation_cache."""
    workdir = tmp_path_factory.mktemp("run")
    out = run(workdir, mixed_footage)
    return workdir, out, os.listdir(workdir / "compilation_cache")


def test_a_task_trains_on_several_aspect_and_frame_buckets(uninterrupted):
    workdir, out, cached = uninterrupted
    records = per_step(workdir)
    assert sorted(records) == list(range(1, STEPS + 1))
    video = {records[s]["shape/video_2x2"] for s in records}
    image = {records[s]["shape/image_1x2"] for s in records}
    # [B, C, F, H, W]: several (H, W) buckets for images, several F and (H, W) for video
    dims = lambda shapes, i: {tuple(int(x) for x in s.split("x"))[i] for s in shapes}
    assert len(dims(image, slice(3, 5))) >= 2 and dims(image, 2) == {1}, image
    assert len(dims(video, slice(3, 5))) >= 2 and len(dims(video, 2)) >= 2, video
    assert all(int(s.split("x")[2]) % 2 == 0 for s in video)  # multiples of pF = 2
    # one gradient executable per distinct (task, shape) plus the update, reported
    compiles = records[STEPS]["compiles"]
    assert compiles == len(video) + len(image) + 1
    assert f"{compiles} executables ({compiles - 1} task shapes + the update)" in out
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in records.values())
    # every executable was written to the default persistent cache, in the workdir
    assert sum(name.startswith(("jit_grad-", "jit__update-")) for name in cached) == compiles


def test_sigkill_resume_across_a_bucket_change_is_bitwise_exact(
        uninterrupted, mixed_footage, tmp_path):
    reference = per_step(uninterrupted[0])
    # a checkpoint at every step (kill anywhere); the uninterrupted run's persistent cache
    # (JAX keys entries by the cache's path too), so that the killed run and its restart
    # load those executables instead of compiling them again
    every = ["--config.checkpoint.every=1",
             f"--config.compilation_cache_dir={uninterrupted[0]}/compilation_cache"]
    proc = subprocess.Popen(cmd(tmp_path, mixed_footage, *every), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "checkpoints" / "3").is_dir():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "lock").exists()  # left behind by the killed trainer
    # JAX_LOG_COMPILES: JAX logs each executable it compiles or loads from the cache
    out = run(tmp_path, mixed_footage, *every, env={**os.environ, "JAX_LOG_COMPILES": "1"})
    assert "removing the stale lock" in out and not (tmp_path / "lock").exists()
    resumed_from = int(out.split("resumed from step ")[1].split()[0])
    assert 3 <= resumed_from < STEPS
    # after the resume point the stream moved on to other buckets
    after = {reference[s]["shape/video_2x2"] for s in range(resumed_from + 1, STEPS + 1)}
    assert after - {reference[resumed_from]["shape/video_2x2"]}
    # the restart found every executable of its steps in the persistent cache
    wanted = re.findall(r"Compiling jit\((grad|_update)\)", out)
    loaded = re.findall(r"Persistent compilation cache hit for 'jit_(grad|_update)'", out)
    assert sorted(loaded) == sorted(wanted) and "grad" in wanted and "_update" in wanted
    resumed = per_step(tmp_path)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        for key in ("loss", "grad_norm", "shape/video_2x2", "shape/image_1x2"):
            assert resumed[step][key] == reference[step][key], (step, key)
