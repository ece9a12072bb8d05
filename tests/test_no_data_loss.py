"""Nothing is ever lost (issue 15): refused resumes, checkpoint checksums, corrupt steps
moved aside and saved again, config checks, disk problems in one line, metrics rows,
SIGINT, the workdir lock, non-finite runs, and preemption agreed across two processes.

The unit tests run in-process; the end-to-end ones run `lumina-jax train` on the tiny
demo curriculum (configs/demo.py:tiny) in subprocesses, like tests/test_train.py."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import with_xla_flags

from train_helpers import NO_SAMPLES, ROOT, TINY, per_step, train_cmd

from lumina_jax.errors import UserError
from lumina_jax.train import guard
from lumina_jax.train.checkpoint import CHECKSUMS, checksum_problem
from lumina_jax.train.config import ConfigError, build, load_config
from lumina_jax.train.metrics import keep_rows_up_to

TOTAL_STEPS = 10


def run(workdir, demo_data, *overrides, ok=True, **kw):
    proc = subprocess.run(train_cmd(workdir, demo_data, *overrides), capture_output=True,
                          text=True, timeout=600, cwd=ROOT, **kw)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def finished(tiny_run):
    """A finished tiny run: checkpoints 2, 4, 6, 8, 10 (every 2, keep 5)."""
    return tiny_run[0]


def copy_run(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    return workdir


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(line) == 1 and all(w in line[0] for w in words), proc.stderr[-2000:]
    return line[0]


# ---- in-process ----------------------------------------------------------------------

def test_cadence_count_size_and_rate_fields_are_checked_before_compute():
    cases = {"checkpoint.keep=0": "checkpoint.keep", "checkpoint.every=0": "checkpoint.every",
             "checkpoint.keep_every=-1": "checkpoint.keep_every",
             "log_every=0": "log_every", "optim.lr=0.0": "optim.lr",
             "max_nonfinite_steps=-1": "max_nonfinite_steps", "mesh.fsdp=0": "config.mesh",
             "mesh.tensor=-1": "config.mesh",
             "stages.0.tasks.image_1x2.data.batch_size=0": "batch_size"}
    for override, field in cases.items():
        with pytest.raises(ConfigError, match=field):
            build(load_config(TINY, ["--config." + override]), check_data=False)


def test_orbax_saves_on_the_interval_and_keeps_the_latest_plus_milestones(tmp_path):
    """every 2, keep 2, keep_every 4: steps 1..9 save 2, 4, 6, 8 and a forced 9; the
    latest two (8, 9) and the milestone 4 stay; each kept step has its checksums and the
    fallback still restores the newest."""
    import jax.numpy as jnp

    from lumina_jax.train.checkpoint import CHECKSUMS, Checkpointer

    ckpt = Checkpointer(str(tmp_path), keep=2, every=2, async_save=False, keep_every=4)
    saved = [s for s in range(1, 10)
             if ckpt.save(s, {"w": jnp.full((3,), float(s))}, None, {"stage": -1},
                          force=s == 9)]
    assert not ckpt.save(9, {"w": jnp.zeros(3)}, None, {"stage": -1}, force=True)  # had it
    ckpt.wait()
    assert saved == [2, 4, 6, 8, 9] and ckpt.steps() == [4, 8, 9]
    assert all((tmp_path / str(s) / CHECKSUMS).is_file() for s in (4, 8, 9))
    step, state = ckpt.restore_latest({"w": jnp.zeros(3)})[:2]
    assert step == 9 and float(state["w"][0]) == 9.0
    ckpt.close()


def test_checksums_catch_flipped_and_truncated_bytes(tmp_path):
    from lumina_jax.train.checkpoint import file_checksums

    (tmp_path / "state").mkdir()
    data = tmp_path / "state" / "data"
    data.write_bytes(bytes(range(256)) * 64)
    (tmp_path / CHECKSUMS).write_text(json.dumps(file_checksums(tmp_path)))
    assert checksum_problem(tmp_path) is None
    raw = bytearray(data.read_bytes())
    raw[5000] ^= 0x40
    data.write_bytes(bytes(raw))
    assert "does not match its checksum" in checksum_problem(tmp_path)
    data.write_bytes(bytes(raw[:100]))
    assert "100 bytes, 16384 were saved" in checksum_problem(tmp_path)
    data.unlink()
    assert "state/data is missing" in checksum_problem(tmp_path)


def test_metrics_keep_whole_rows_and_drop_the_steps_a_resume_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(rows) + "\n" + '{"step": 5, "lo')  # torn by a crash
    keep_rows_up_to(str(path), 3)
    assert path.read_text() == "\n".join(rows[:3]) + "\n"
    keep_rows_up_to(str(path), 10)  # nothing to change
    assert path.read_text() == "\n".join(rows[:3]) + "\n"


def test_workdir_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    lock = guard.WorkdirLock(str(tmp_path))
    lock.acquire()
    with pytest.raises(UserError, match=f"pid {os.getpid()} on host"):
        guard.WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / guard.LOCK).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    other = guard.WorkdirLock(str(tmp_path))
    other.acquire()  # stale: its process is gone
    assert json.loads((tmp_path / guard.LOCK).read_text())["pid"] == os.getpid()
    other.release()
    assert not (tmp_path / guard.LOCK).exists()


def test_a_stop_request_interrupts_a_stuck_data_wait_and_a_second_ctrl_c_aborts():
    import threading

    stop = guard.StopRequests()
    try:
        stop.waiting_for_data = True
        t0 = time.perf_counter()
        with pytest.raises(guard.Interrupted):
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            threading.Event().wait(30)  # a data source that never answers
        assert time.perf_counter() - t0 < 10 and stop.name == "SIGTERM" and stop.agreed()
        stop.waiting_for_data, stop.name = False, None
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: noted, the step goes on
        time.sleep(0.1)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    finally:
        stop.close()


def test_too_many_consecutive_nonfinite_steps_stop_the_run():
    from lumina_jax.train.loop import Diverged, Window, _check_finite

    class NoCheckpoints:
        def close(self):
            pass

        def steps(self):
            return [4]

    window = Window()
    window.metrics = [{"finite": np.bool_(f)} for f in (True, False, False)]
    assert _check_finite(window, 0, 3, 3, NoCheckpoints()) == 2  # 2 in a row: go on
    assert _check_finite(window, 0, 0, 3, NoCheckpoints()) == 2  # 0: never stop
    window.metrics = [{"finite": np.bool_(False)}]
    with pytest.raises(Diverged, match="3 consecutive steps up to step 4"):
        _check_finite(window, 2, 3, 4, NoCheckpoints())


# ---- end to end ----------------------------------------------------------------------

def test_a_resume_that_restores_nothing_refuses_and_restart_moves_the_run_aside(
        finished, demo_data, tmp_path):
    workdir = copy_run(finished, tmp_path)
    before, config = listing(workdir), (workdir / "config.json").read_bytes()
    proc = run(workdir, demo_data, "--config.model.dim=64", ok=False)
    one_line_error(proc, "has checkpoints but none restores", "--restart",
                   "steps 2, 4, 6, 8, 10: ValueError: does not fit the config")
    assert listing(workdir) == before and (workdir / "config.json").read_bytes() == config

    proc = run(workdir, demo_data, "--restart", "--config.stages.1.steps=1",
               "--config.stages.2.steps=1", NO_SAMPLES)
    moved = list(workdir.glob("before-restart-*"))
    assert len(moved) == 1 and "moved the earlier run's files" in proc.stdout
    assert sorted(p.name for p in (moved[0] / "checkpoints").iterdir()) == \
        ["10", "2", "4", "6", "8"]
    assert max(per_step(moved[0])) == TOTAL_STEPS  # the old metrics are kept too
    assert max(per_step(workdir)) == 5 and (workdir / "checkpoints" / "5").is_dir()
    history = list((workdir / "config_history").iterdir())
    assert len(history) == 1 and history[0].read_bytes() == config


def test_corrupt_steps_fall_back_to_the_last_good_one_moved_aside_and_saved_again(
        finished, demo_data, tmp_path):
    """Step 10 has one flipped byte (same size: only the checksum can tell), step 8 lost
    the second half of every data file (a truncated copy): the resume takes step 6. The run
    was trained on one device with replicated params; it resumes on 4 devices with FSDP."""
    workdir = copy_run(finished, tmp_path)
    ckpts = workdir / "checkpoints"
    files = [f for f in (ckpts / "10" / "state").rglob("*")
             if f.is_file() and f.stat().st_size > 256]
    biggest = max(files, key=lambda f: f.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    for f in (ckpts / "8" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    proc = run(workdir, demo_data, "--config.stages.2.steps=4", "--config.mesh.data=1",
               "--config.mesh.fsdp=-1", "--config.rules=fsdp", NO_SAMPLES,
               env=with_xla_flags("--xla_force_host_platform_device_count=4"))
    out = proc.stdout + proc.stderr
    assert "devices: 4 x cpu" in out
    assert "checkpoint 10 failed to restore (OSError: checksum mismatch" in out
    assert "checkpoint 8 failed to restore (OSError:" in out and "were saved" in out
    assert "resumed from step 6" in out
    for step in (8, 10):
        assert f"moved corrupt checkpoint {step} aside" in out
        assert (ckpts / f"{step}.corrupt").is_dir() and (ckpts / str(step)).is_dir()  # again
        assert checksum_problem(ckpts / str(step)) is None
        assert (ckpts / str(step) / CHECKSUMS).exists()
    steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(1, TOTAL_STEPS + 2))  # each step once, no duplicates


def test_a_full_disk_stops_in_one_line_and_leaves_whole_metric_rows(demo_data, tmp_path):
    workdir = tmp_path / "run"
    # Writes past 146 KiB fail like a full disk (EFBIG), even for root.
    small_files = ["bash", "-c", 'trap "" XFSZ; ulimit -f 146; exec "$0" "$@"']
    proc = subprocess.run(
        small_files + train_cmd(workdir, demo_data, "--config.compilation_cache_dir=",
                                "--config.checkpoint.every=1"),
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    one_line_error(proc, "cannot write", "File too large")
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_ctrl_c_saves_like_sigterm_and_the_resume_is_bitwise_exact(finished, demo_data,
                                                                   tmp_path):
    proc = subprocess.Popen(train_cmd(tmp_path, demo_data), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n")
                                          >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "press Ctrl-C again to abort" in out and "Traceback" not in out
    saved = int(out.split("SIGINT: saved step ")[1].split(";")[0])
    assert 3 <= saved < TOTAL_STEPS and (tmp_path / "checkpoints" / str(saved)).is_dir()
    assert not (tmp_path / guard.LOCK).exists()
    # the restart picks up the saved step and finishes (SIGTERM takes the same path; the
    # preemption test below sends it), through the stage switches after it, with the
    # uninterrupted run's losses to the bit
    proc = run(tmp_path, demo_data, NO_SAMPLES)
    assert f"resumed from step {saved}" in proc.stdout + proc.stderr
    want, got = per_step(finished), per_step(tmp_path)
    assert sorted(got) == sorted(want) == list(range(1, TOTAL_STEPS + 1))
    for step in want:
        for key in ("loss", "grad_norm", "lr"):
            assert got[step][key] == want[step][key], (step, key)


# One stage of the tiny curriculum (images, batch 4 = 2 per process), 6 steps, no samples
# at the end: few compiles, so the three two-process runs below stay short.
ONE_STAGE = """
from configs.demo import get_config as demo


def get_config(arg=None):
    c = demo("tiny")
    c.stages = c.stages[:1]
    c.stages[0].steps = 6
    c.sample.prompts = []
    return c
"""


def two_process_run(workdir, demo_data, config, sigterm_process=None, after_step=2):
    """Train with 2 processes (1 CPU device each, gloo); optionally SIGTERM one of them."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu"}
        procs.append(subprocess.Popen(train_cmd(workdir, demo_data, config=config), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=ROOT))
    if sigterm_process is not None:
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (
                metrics.exists() and metrics.read_text().count("\n") >= after_step):
            time.sleep(0.05)
        procs[sigterm_process].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    return outs


def test_preemption_of_one_host_saves_the_same_step_on_both_and_resumes_exactly(
        demo_data, tmp_path):
    config = tmp_path / "one_stage.py"
    config.write_text(ONE_STAGE)
    reference = tmp_path / "reference"
    two_process_run(reference, demo_data, str(config))
    workdir = tmp_path / "preempted"
    outs = two_process_run(workdir, demo_data, str(config), sigterm_process=1)
    saved = int(outs[0].split("saved step ")[1].split(";")[0])
    assert "SIGTERM" in outs[1] and "SIGTERM" not in outs[0] and saved < 6
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir()
               if p.name.isdigit()) == saved
    outs = two_process_run(workdir, demo_data, str(config))
    assert f"resumed from step {saved}" in outs[0] + outs[1]
    want, got = per_step(reference), per_step(workdir)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step]["loss"] == want[step]["loss"], step
