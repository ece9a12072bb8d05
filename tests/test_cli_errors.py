"""User mistakes in `lumina-jax sample/export/import` end in one line on stderr (exit 2),
and import never loses or silently ignores a run: it refuses a workdir with checkpoints
unless they are moved aside, and says (and lets one choose) which weights it took.

One tiny workdir is made by `import` itself from random weights (no training)."""

import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumina_jax.cli import main
from lumina_jax.errors import UserError
from lumina_jax.export import export_params
from lumina_jax.export.state_dict import abstract_params, flat_arrays
from lumina_jax.train.config import build, load_config

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py") + ":tiny"
NO_DATA = "--config.data_dir=/nonexistent"  # import and sample never read training data


def random_params(cfg, seed):
    rng = np.random.default_rng(seed)
    return nnx.from_flat_state([
        (path, var.copy(jnp.asarray(rng.normal(size=var.get_value().shape), jnp.float32)))
        for path, var in nnx.to_flat_state(abstract_params(cfg))])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(export folder with distinct params and EMA weights, those weights, a workdir)."""
    root = tmp_path_factory.mktemp("cli_errors")
    cfg = build(load_config(CONFIG, [NO_DATA]), check_data=False).model
    weights = {"params": random_params(cfg, 1), "ema": random_params(cfg, 2)}
    export = str(root / "export")
    export_params(weights["params"], cfg, export, ema_params=weights["ema"], pth=False)
    workdir = str(root / "run")
    assert main(import_args(export, workdir)) == 0
    return export, {k: flat_arrays(v) for k, v in weights.items()}, workdir


def import_args(weights, workdir, *extra):
    return ["import", "--weights", weights, "--config", CONFIG, "--workdir", workdir, NO_DATA,
            *extra]


def one_line_error(capsys, argv, *words):
    """main(argv) exits 2 with exactly one stderr line holding every word; returns stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lumina-jax {argv[0]}: error: "), err
    for word in words:
        assert word in err, (word, err)
    return out


SAMPLE_MISTAKES = {  # argv after `sample --checkpoint WORKDIR` -> words of the message
    "step": (["--step", "7"], ["--step 7", "available: 0"]),
    "negative-step": (["--step", "-1"], ["--step -1", "at least 0"]),
    "size-0": (["--size", "0", "16", "16"], ["--size 0 16 16", "at least 1"]),
    "size-negative": (["--size", "8", "-16", "16"], ["--size 8 -16 16", "at least 1"]),
    "num-steps-0": (["--num-steps", "0"], ["--num-steps 0", "at least 1"]),
    "seed": (["--seed", "-1"], ["--seed -1", "from 0 to"]),
    "cfg": (["--cfg", "-2"], ["--cfg -2.0", "at least 0"]),
    "motion": (["--motion", "-1"], ["--motion -1.0", "at least 0"]),
    "preset": (["--preset", "1024px"], ["--preset 1024px", "512px-multiscale"]),
    "size-vs-patch": (["--size", "2", "14", "16"], ["2 14 16", "patch size 2x4", "--size"]),
}


@pytest.mark.parametrize("mistake", SAMPLE_MISTAKES)
def test_sample_mistakes_are_one_line(run, capsys, mistake):
    extra, words = SAMPLE_MISTAKES[mistake]
    one_line_error(capsys, ["sample", "--checkpoint", run[2], *extra], *words)


def test_export_and_sample_mistakes_are_one_line(run, capsys, tmp_path):
    _, _, workdir = run
    missing = str(tmp_path / "no_such_run")
    for cmd in ("sample", "export"):
        out = ["--out", str(tmp_path / f"{cmd}_out")]
        one_line_error(capsys, [cmd, "--checkpoint", missing, *out], missing, "does not exist")
        one_line_error(capsys, [cmd, "--checkpoint", str(tmp_path), *out], "no config.json")
        one_line_error(capsys, [cmd, "--checkpoint", workdir, "--step", "3", *out],
                       "--step 3", f"{workdir}/checkpoints", "available: 0")
    full = tmp_path / "full"
    full.mkdir()
    (full / "consolidated.00-of-01.safetensors").write_text("an earlier export")
    for cmd in ("sample", "export"):  # nothing is overwritten
        one_line_error(capsys, [cmd, "--checkpoint", workdir, "--out", str(full)],
                       str(full), "not empty")
    assert (full / "consolidated.00-of-01.safetensors").read_text() == "an earlier export"
    one_line_error(capsys, ["export", "--checkpoint", workdir, "--step", "-2", "--out", "x"],
                   "--step -2", "at least 0")


def test_import_mistakes_are_one_line(run, capsys, tmp_path):
    export, _, _ = run
    new = str(tmp_path / "new_run")
    good = os.path.join(export, "consolidated_ema.00-of-01.safetensors")
    data = pathlib.Path(good).read_bytes()
    cut = {"data": len(data) - 100, "header": 1000}
    for where, size in cut.items():
        (tmp_path / f"cut_{where}.safetensors").write_bytes(data[:size])
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    (tmp_path / "weights.npz").write_bytes(data)
    (tmp_path / "empty_dir").mkdir()
    cases = [
        (str(tmp_path / "missing.safetensors"), [], ["missing.safetensors", "does not exist"]),
        (str(tmp_path / "cut_data.safetensors"), [], ["cut_data.safetensors", "truncated"]),
        (str(tmp_path / "cut_header.safetensors"), [], ["cut_header.safetensors", "truncated"]),
        (str(tmp_path / "text.safetensors"), [], ["text.safetensors", "not a safetensors file"]),
        (str(tmp_path / "weights.npz"), [], ["weights.npz", "expected a .safetensors or .pth"]),
        (str(tmp_path / "empty_dir"), [], ["empty_dir", "consolidated_ema.00-of-01"]),
        (good, ["--use", "params"], ["single file", "export folder"]),
        (export, ["--config.model.n_layers=3"], ["does not match", "missing keys"]),
    ]
    for weights, extra, words in cases:
        one_line_error(capsys, import_args(weights, new, *extra), *words)
    assert not os.path.exists(new)  # nothing was started


def test_debug_shows_the_traceback(run):
    for argv in (["--debug", "sample", "--checkpoint", run[2], "--num-steps", "0"],
                 ["sample", "--checkpoint", run[2], "--num-steps", "0", "--debug"]):
        with pytest.raises(UserError, match="--num-steps 0"):
            main(argv)


def restored(workdir, which="params"):
    from lumina_jax.train.loop import load_run

    return flat_arrays(load_run(workdir)[1][which])


def assert_same(got, want):
    assert got.keys() == want.keys()
    assert all(np.array_equal(np.asarray(got[k]), want[k]) for k in want)


def test_import_refuses_a_run_and_moves_it_aside_on_request(run, capsys, tmp_path):
    export, weights, _ = run
    workdir = str(tmp_path / "run")
    assert main(import_args(export, workdir, "--use", "params")) == 0
    out = capsys.readouterr().out
    assert "read the raw (non-EMA) params from" in out and "consolidated.00-of-01" in out
    assert f"wrote {workdir}/checkpoints/0: step 0" in out
    config = pathlib.Path(workdir, "config.json").read_text()

    # A second import would be ignored by training (it resumes the old run): refused.
    one_line_error(capsys, import_args(export, workdir), workdir, "already has checkpoints",
                   "--move-existing", "new --workdir")
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]

    # --move-existing keeps the old run whole (config + checkpoints) next to the new one.
    assert main(import_args(export, workdir, "--move-existing")) == 0
    out = capsys.readouterr().out
    (aside,) = [d for d in os.listdir(workdir) if d.startswith("before-import-")]
    aside = os.path.join(workdir, aside)
    assert f"to {aside}" in out and "read the EMA weights from" in out
    assert pathlib.Path(aside, "config.json").read_text() == config
    assert_same(restored(aside), weights["params"])
    assert_same(restored(workdir), weights["ema"])  # default: the export's EMA weights
    assert_same(restored(workdir, "ema"), weights["ema"])
