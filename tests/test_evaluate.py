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


def test_motion_control_samples_each_prompt_with_one_noise_at_every_level(monkeypatch):
    """Only the requested score may differ between a prompt's samples: each judge prompt
    keeps its seed at every motion level (else the noise alone changes the speed)."""
    from data_pipelines import demo_judge
    from lumina_jax.train import samples
    from lumina_jax.train.config import build, load_config
    from lumina_jax.train.evaluate import Evaluator
    from lumina_jax.train.loop import eval_sample_spec

    exp = build(load_config(str(ROOT / "configs" / "demo.py")), check_data=False)
    calls = []  # (prompt, motion, seed) of every motion-control sample

    def fake_generate(model_cfg, params, spec, progress=True, motion=None):
        if motion is not None:
            calls.extend((p, float(m), spec.seed + i)
                         for i, (p, m) in enumerate(zip(spec.prompts, motion)))
        return np.zeros((len(spec.prompts), 3, spec.frames, spec.height, spec.width), np.float32)

    monkeypatch.setattr(samples, "generate", fake_generate)
    out = Evaluator(exp, exp.eval, None, None, eval_sample_spec(exp)).judge(None, 0)
    assert np.isnan(out["eval/judge/motion_spearman"])  # blank samples: no shape found
    levels = exp.eval.judge_motion
    assert len(calls) == len(levels) * len(demo_judge.MOTION_PROMPTS)
    for prompt in demo_judge.MOTION_PROMPTS:
        mine = [(m, seed) for p, m, seed in calls if p == prompt]
        assert sorted(m for m, _ in mine) == sorted(levels)
        assert len({seed for _, seed in mine}) == 1, (prompt, mine)
