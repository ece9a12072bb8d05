"""`lumina-jax eval` and the evaluator's judge / FVD paths on a finished tiny run.

The tiny run (10 steps) is far from learning the demo, so the judge's scores are only
checked for shape and range here; tests/test_demo_judge.py shows the judge passes ground
truth and fails noise, and tests/test_fvd.py checks the FVD numerics.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lumina_jax.train.evaluate import evaluator_lines
from train_helpers import ROOT


def _eval(workdir, *args):
    return subprocess.run([sys.executable, "-m", "lumina_jax.cli", "eval", "--checkpoint",
                           str(workdir), *args], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


def test_eval_command_judges_samples_and_computes_fvd(tiny_run, demo_data, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir)
    # FVD over 2 generated vs 2 held-out clips: the fewest it accepts (I3D at 224 px is
    # most of this command's time; tests/test_fvd.py checks the numerics on more clips)
    proc = _eval(workdir, "--judge", "demo", "--fvd", "2", "--fvd-source",
                 str(demo_data / "heldout"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "checkpoint step 10 of" in out and "validation loss (t = 0.1, 0.3" in out
    assert "judge (48 prompts): colour" in out and "FVD " in out
    result = json.loads((workdir / "eval" / "step0000010.json").read_text())
    for key in ("colour_acc", "shape_acc", "direction_acc", "quick_faster"):
        assert 0.0 <= result[f"eval/judge/{key}"] <= 1.0
    assert result["eval/judge/n"] == 48
    assert np.isfinite(result["eval/fvd"]) and result["eval/fvd"] > 0
    assert np.isfinite(result["eval/loss/video_2x2"])
    assert (workdir / "eval" / "step0000010_judge.png").stat().st_size > 0


def test_eval_rejects_a_one_clip_fvd_and_a_missing_run(tmp_path):
    proc = _eval(tmp_path / "nothing", "--fvd", "1")
    assert proc.returncode != 0 and "--fvd 1: FVD needs at least 2 clips" in proc.stderr
    proc = _eval(tmp_path / "nothing")
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_evaluator_lines_name_every_figure():
    values = {"eval/judge/n": 48.0, "eval/judge/colour_acc": 1.0, "eval/judge/shape_acc": 0.5,
              "eval/judge/direction_acc": 0.25, "eval/judge/quick_faster": 0.75,
              "eval/judge/speed_quick": 0.07, "eval/judge/speed_slow": 0.03,
              "eval/judge/no_foreground": 2.0, "eval/judge/motion_spearman": 0.8,
              "eval/fvd": 123.4}
    judge, fvd = evaluator_lines(values)
    assert judge == ("judge (48 prompts): colour 100%, shape 50%, direction 25%, quick faster "
                     "than slow 75% (mean speed 0.070 vs 0.030 frame sides per frame), motion-score "
                     "control Spearman 0.80; no shape found in 2")
    assert fvd == "FVD 123.4"
    assert evaluator_lines({"eval/loss/video": 0.1}) == []
