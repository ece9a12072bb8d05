"""The trainer end to end: curriculum stages, what a run prints, resume onto another mesh,
config validation, export/import/sample on a run. Runs `lumina-jax train` in subprocesses
on the prepared demo data with the tiny three-stage curriculum of configs/demo.py:tiny.
(Exact resumes after SIGKILL, Ctrl-C and preemption, and corrupt checkpoints, are in
tests/test_train_buckets.py and tests/test_no_data_loss.py.)"""

import os
import subprocess
import sys

import pytest

from train_helpers import ROOT, TINY, per_step, train_cmd

from lumina_jax.train.config import ConfigError, build, load_config

TOTAL_STEPS = 10  # 3 + 4 + 3 in configs/demo.py:tiny


def run(workdir, demo_data, *overrides, env=None):
    proc = subprocess.run(train_cmd(workdir, demo_data, *overrides), capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(tiny_run):
    return tiny_run


def test_stages_switch_shapes_and_tasks_at_the_right_steps(uninterrupted):
    workdir, out = uninterrupted
    records = per_step(workdir)
    assert sorted(records) == list(range(1, TOTAL_STEPS + 1))
    tasks = {s: sorted(k[5:] for k in r if k.startswith("loss/")) for s, r in records.items()}
    assert all(tasks[s] == ["image_1x2"] and records[s]["stage"] == 0 for s in (1, 2, 3))
    assert all(tasks[s] == ["video_2x4"] and records[s]["stage"] == 1 for s in (4, 5, 6, 7))
    assert all(tasks[s] == ["image_1x2", "video_2x2", "video_2x4"] for s in (8, 9, 10))
    assert out.count("compiled step, per device") == 3  # one compile per stage
    # the optimiser update is the same in every stage: compiled once, in stage 1
    assert out.count("compiled update") == 1
    assert "stage 3 'joint': 3 executables (3 task shapes) compiled" in out
    assert "stage 3/3 'joint': steps 7..10" in out
    assert all(r["skipped_steps"] == 0 and r["mfu"] > 0 for r in records.values())
    # samples were written with the EMA weights at the end
    assert list((workdir / "samples").glob("step0000010_*.mp4"))
    assert (workdir / "config.json").exists() and list((workdir / "tensorboard").iterdir())
    assert list((workdir / "profile").rglob("*.xplane.pb"))  # --config.profile_steps=1,2


def test_the_run_says_what_it_does_and_where_everything_goes(uninterrupted):
    workdir, out = uninterrupted
    from lumina_jax.model import count_params
    from lumina_jax.train.config import build, load_config

    params = count_params(build(load_config(TINY), check_data=False).model)
    for line in (f"run {workdir}: config {workdir}/config.json",
                 f"model: preset demo (video), {params:,} parameters",
                 "devices: 1 x cpu in 1 process(es); mesh {'data': 1, 'fsdp': 1",
                 "steps: 10 in 3 stage(s)",
                 "stage 3 'joint' steps 7..10: image_1x2 (global batch 2, 16px, patch 1x2",
                 f"checkpoints: {workdir}/checkpoints (every 2 steps, keep 5)",
                 f"samples: {workdir}/samples (at the end)",
                 "compiling stage 1: 2 new executables (image_1x2 [4, 3, 1, 16, 16], update)",
                 f"saved checkpoint 2 (async, {workdir}/checkpoints/2)",
                 "sampling 1 prompt at step 10 (EMA weights)",
                 f"loss and validation curves: {workdir}/metrics.png"):
        assert line in out, line
    assert (workdir / "metrics.png").stat().st_size > 1000
    # the bar shows the mean over tasks, logged as "loss"; "loss_total" is the summed one
    records = per_step(workdir)
    assert records[10]["loss_total"] > 2 * records[10]["loss"]  # 3 tasks in stage 3


def test_bad_configs_are_rejected_before_any_compute(demo_data):
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(TINY, ["--config.optim.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="expected a float"):
        load_config(TINY, ["--config.optim.lr=fast"])
    config = load_config(TINY, ["--config.stages.1.tasks.video_2x4.patch_size=(8, 2)",
                                            f"--config.data_dir={demo_data}"])
    with pytest.raises(ConfigError, match=r"patch_size=\(8, 2\) is not in model.patch_sizes"):
        build(config)
    with pytest.raises(ConfigError, match="does not exist"):
        build(load_config(TINY, ["--config.data_dir=/nonexistent"]))
    with pytest.raises(ConfigError, match="config.model: ModelConfig.n_kv_heads"):
        build(load_config(TINY, ["--config.model.n_kv_heads=3",
                                             f"--config.data_dir={demo_data}"]))
    # the CLI reports it without starting to train
    proc = subprocess.run([sys.executable, "-m", "lumina_jax.cli", "train", "--config",
                           TINY, "--workdir", "/tmp/never",
                           "--config.optim.betas=1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "unknown config key 'optim.betas'" in proc.stderr
    assert not os.path.exists("/tmp/never")


def test_export_import_and_sample_commands_work_on_a_run(uninterrupted, demo_data, tmp_path):
    import imageio.v3 as iio
    import jax
    import numpy as np

    from lumina_jax.cli import main
    from lumina_jax.train.loop import load_run

    workdir = uninterrupted[0]
    assert main(["export", "--checkpoint", str(workdir), "--out", str(tmp_path / "torch")]) == 0
    for name in ("consolidated.00-of-01.safetensors", "consolidated_ema.00-of-01.safetensors",
                 "model_args.json"):
        assert (tmp_path / "torch" / name).exists()
    assert main(["import", "--weights", str(tmp_path / "torch" / "consolidated.00-of-01.safetensors"),
                 "--config", TINY, "--workdir", str(tmp_path / "imported"),
                 f"--config.data_dir={demo_data}"]) == 0
    _, original = load_run(str(workdir))
    _, imported = load_run(str(tmp_path / "imported"))
    assert int(imported["step"]) == 0
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        original["params"], imported["params"])
    assert all(jax.tree.leaves(same))
    assert main(["sample", "--checkpoint", str(workdir), "--prompt", "a red square moving left",
                 "--num-steps", "2", "--out", str(tmp_path / "samples")]) == 0
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert sorted(n.split(".", 1)[1] for n in names) == ["gif", "mp4", "npz", "png",
                                                         "preview.mp4"], names
    sheet = iio.imread(tmp_path / "samples" / "contact_sheet.png")  # 8 frames, labelled
    assert sheet.shape[1] >= 8 * 96 and sheet.shape[0] >= 96 + 14
