"""Helpers for tests that run `lumina-jax train` in subprocesses (imported explicitly)."""

import json
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "demo.py") + ":tiny"
# One persistent compilation cache for every test run of the tiny curriculum: runs after
# the first load their executables instead of compiling them (the same executables, so
# results are unchanged).
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), f"lumina-jax-test-cache-{os.getuid()}")


# For runs whose test is not about samples: no sampling at the end (it loads the caption
# encoder and compiles the sampler, seconds that such a test does not look at).
NO_SAMPLES = "--config.sample.prompts=[]"


def train_cmd(workdir, demo_data, *overrides, config=TINY):
    return [sys.executable, "-m", "lumina_jax.cli", "train", "--config", config,
            "--workdir", str(workdir), f"--config.data_dir={demo_data}",
            f"--config.compilation_cache_dir={COMPILE_CACHE}", *overrides]


def per_step(workdir):
    """The last logged record of every step (a resumed run re-logs steps it redid)."""
    records = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            records[rec["step"]] = rec
    return records
