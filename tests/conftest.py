"""Suite-wide settings. Most of the suite's time is XLA:CPU compiling tiny models (every
bucket shape of every task is a compile); cheaper codegen cuts that to about a third
without changing what is computed: LLVM at -O0 without its expensive passes, and XLA:CPU's
classic elemental fusion emitters instead of the newer MLIR ones (which compile each fusion
~2.5x slower on CPU). Subprocesses inherit it (`with_xla_flags` adds more).

One thread per process for XLA's, BLAS's and OpenMP's own compute pools: the suite runs a
process per core already (two xdist workers and their subprocesses), and idle pool threads
spin-wait for work, burning the other process's CPU. For the same reason XLA:CPU emits each
executable as one LLVM module: splitting it for parallel codegen costs ~7% of a compile
(llvm::SplitModule) and gains nothing on one thread."""

import os

FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_multi_thread_eigen=false "
                "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
for pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(pool, "1")

from lumina_jax.cli import fewer_gc_passes  # noqa: E402

fewer_gc_passes()  # as `lumina-jax` does: the workers trace and compile in-process too


def with_xla_flags(*flags: str) -> dict:
    """os.environ with `flags` appended to XLA_FLAGS (for a subprocess)."""
    return {**os.environ, "XLA_FLAGS": " ".join([os.environ["XLA_FLAGS"], *flags])}


# ---- data and runs made once per test session, shared by the xdist workers ------------

import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402


def made_once(tmp_path_factory, worker_id: str, name: str, make):
    """`<session tmp>/<name>`, made by `make(folder)` in whichever worker asks first."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the parent is per session
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory, worker_id):
    """The demo dataset at 16 px, 8 frames, one clip per caption (half of command 1's:
    the tests train a few steps), prepared once."""
    from data_pipelines import demo

    return made_once(tmp_path_factory, worker_id, "demo_data",
                     lambda f: demo.prepare_demo(str(f), resolution=16, frames=8, variants=1))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id, demo_data):
    """(workdir, printed output) of one finished run of configs/demo.py:tiny: 10 steps over
    3 stages, checkpoints 2, 4, 6, 8, 10, profiled at steps 1-2. Copy it before changing it."""
    from train_helpers import ROOT, train_cmd

    def make(folder):
        proc = subprocess.run(train_cmd(folder / "run", demo_data,
                                        "--config.profile_steps=1,2"),
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (folder / "output.txt").write_text(proc.stdout + proc.stderr)

    folder = made_once(tmp_path_factory, worker_id, "tiny_run", make)
    return folder / "run", (folder / "output.txt").read_text()


@pytest.fixture(scope="session")
def mixed_footage(tmp_path_factory, worker_id):
    """Real encoded footage of three aspect ratios, two durations, images and videos,
    prepared at 16 px (multiple 8, 8 fps, at most 2 s); the prepared folder (made once)."""
    from data_pipelines import footage, offline

    def make(folder):
        footage.make_footage(str(folder / "raw"))
        offline.prepare(str(folder / "raw"), str(folder / "prepared"), resolution=16,
                        multiple=8, fps=8.0, max_duration=2.0)

    return made_once(tmp_path_factory, worker_id, "mixed_footage", make) / "prepared"


# ---- order: two halves that each start with long tests and end with short ones ---------
#
# README's command runs `-n 2 --dist worksteal` (pyproject addopts): each worker gets one
# contiguous half of this order, and a worker that runs out takes tests from the end of
# the other's queue. So each half starts with its share of the long tests, split by the
# shared data they build (runs on the demo data and footage in one half, the rest in the
# other: neither waits for a fixture the other is building), and ends with short tests
# that even out the finish.

SHARED_FIXTURES = ("demo_data", "eight_devices", "mixed_footage", "v2a_clips", "i3d")
DEMO_FIXTURES = ("demo_data", "mixed_footage")


def pytest_collection_modifyitems(config, items):
    for item in items:  # a test that needs a shared fixture waits for it (tens of seconds)
        if any(f in item.fixturenames for f in SHARED_FIXTURES):
            item.add_marker(pytest.mark.slow)
    slow = [i for i in items if i.get_closest_marker("slow")]
    on_demo = [i for i in slow if any(f in i.fixturenames for f in DEMO_FIXTURES)]
    others = [i for i in slow if i not in on_demo]
    short = [i for i in items if not i.get_closest_marker("slow")]
    cut = min(max(0, (len(items) + 1) // 2 - len(others)), len(short))
    items[:] = others + short[:cut] + on_demo + short[cut:]
