"""configs/lumina_video_2b.py:runlocal end to end, as its docstring runs it: real footage
made and prepared with the CogVideoX VAE and Gemma-2 architectures (tiny, random
weights), all four stages on 4 CPU devices (fsdp x sequence), decoded mp4 samples."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import decoded_frames

from lumina_jax.train.config import build, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "lumina_video_2b.py")


def test_the_recipe_config_and_its_miniature_build():
    full = build(load_config(CONFIG), check_data=False)
    mini = build(load_config(CONFIG + ":runlocal"), check_data=False)
    for exp in (full, mini):
        assert [len(s.tasks) for s in exp.stages] == [1, 4, 4, 4]
        last = {t.name: t for t in exp.stages[-1].tasks}
        assert {n: t.spec.shift for n, t in last.items()} == {
            "image_1x2": 1.0, "video_1x2": 2.0, "video_2x2": 4.0, "video_2x4": 8.0}
        assert last["video_2x4"].data.temporal_multiple == 2
        assert {s.name: s.weight for s in last["video_1x2"].data.sources} == {
            "natural": 0.9, "synthetic": 0.1}
    # 96 frames at 24 fps -> windows of 24 latents; samples are 24 latents too
    assert full.stages[-1].tasks[1].data.max_frames == 96 and full.sample.frames == 24


@pytest.mark.slow
def test_runlocal_trains_all_four_stages_and_writes_decoded_samples(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lumina_jax.cli", "train", "--config",
                           CONFIG + ":runlocal", "--workdir", str(tmp_path),
                           # one step per stage keeps the suite short; all four stages run
                           *(f"--config.stages.{i}.steps=1" for i in range(4))],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "RANDOM weights" in out
    assert "low_fps" in out and "too_small" in out  # the official filters skipped footage
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ends = {r["stage"]: r for r in records if "compiles" in r}
    assert sorted(ends) == [0, 1, 2, 3] and all(r["compiles"] >= 2 for r in ends.values())
    prepared = json.loads((tmp_path / "data" / "video_128" / "prepared.json").read_text())
    assert prepared["latent_encoder"] == "cogvideox" and prepared["caption_encoder"] == "gemma"
    samples = sorted((tmp_path / "samples").glob("*.mp4"))
    assert samples, list((tmp_path / "samples").iterdir())
    frames = decoded_frames(samples[0])
    # 4 latents of 12 x 20 decoded by the VAE (8x spatial, 4x temporal): 96 x 160 px
    assert frames.shape[1:3] == (96, 160) and frames.shape[0] >= 13, frames.shape
    assert np.load(next((tmp_path / "samples").glob("*latents.npz")))["latents"].shape == (
        1, 16, 4, 12, 20)
