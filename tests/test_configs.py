"""Every config in configs/ (each variant) loads without JAX and builds into a typed
experiment, the flagship 2B recipe and its runlocal miniature included; and the code passes
ruff."""

import pathlib
import subprocess
import sys

import pytest

from lumina_jax.train.config import build, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ["demo.py", "demo.py:quick", "demo.py:tiny", "lumina_video_2b.py",
            "lumina_video_2b.py:runlocal", "v2a_demo.py", "v2a_demo.py:quick", "v2a_demo.py:tiny"]


def test_every_config_file_is_covered():
    files = {p.name for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py"}
    assert files == {v.split(":")[0] for v in VARIANTS}


def test_loading_a_config_imports_no_jax():
    # A fresh interpreter: this test process has JAX loaded already.
    code = ("import sys\nfrom lumina_jax.train.config import load_config\n"
            f"for v in {VARIANTS!r}:\n    load_config('configs/' + v)\n"
            "assert not [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax'))], "
            "sorted(m for m in sys.modules if m.startswith(('jax', 'flax')))[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_builds(variant):
    exp = build(load_config(str(ROOT / "configs" / variant)), check_data=False)
    assert exp.total_steps == sum(s.steps for s in exp.stages) > 0
    assert all(task.spec.patch_size in exp.model.patch_sizes
               for stage in exp.stages for task in stage.tasks)


def test_build_types_every_section_the_run_reads():
    """Run settings, checkpointing, evaluation and sampling come out of build() typed, with
    "{data_dir}" substituted, so nothing downstream reads the ConfigDict."""
    from lumina_jax.train.config import CheckpointConfig, ConfigError

    demo = str(ROOT / "configs" / "demo.py")
    exp = build(load_config(demo, ["--config.data_dir=/d", "--config.profile_steps=3,5",
                                   "--config.checkpoint.keep_every=10",
                                   "--config.sample.every=7", "--config.rules=fsdp"]),
                check_data=False)
    assert exp.model_preset == "demo" and exp.run.seed == 0 and exp.run.rules == "fsdp"
    assert exp.run.profile_steps == (3, 5) and exp.run.data_dir == "/d"
    assert exp.checkpoint == CheckpointConfig(every=50, keep=3, keep_every=10, async_save=True)
    assert exp.eval.sources == {"video_2x4": "/d/heldout"}
    assert exp.eval.judge == "demo" and exp.eval.judge_motion == (8.0, 14.0, 20.0, 26.0)
    assert exp.sample.prompts[0] == "a red square moving left quickly" and exp.sample_every == 7
    assert exp.sample.latent_decoder == "identity"  # the last stage's encoder
    with pytest.raises(ConfigError, match="profile_steps"):
        build(load_config(demo, ["--config.profile_steps=ten"]), check_data=False)
    # the launch settings, applied before JAX's backend starts, come from build() too
    run = build(load_config(str(ROOT / "configs" / "lumina_video_2b.py") + ":runlocal"),
                check_data=False).run
    assert run.cpu_devices == 4 and "--xla_backend_optimization_level=0" in run.xla_flags
    assert run.prepare_data == "data_pipelines.miniature:prepare_for_config"


def test_lumina_jax_and_data_pipelines_pass_ruff():
    """One style (pyproject's [tool.ruff]) across the package and the data pipelines."""
    import shutil

    ruff = (shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
            or shutil.which("ruff"))
    assert ruff, "no ruff: pip install -e '.[test]'"
    proc = subprocess.run([ruff, "check", "lumina_jax", "data_pipelines"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
