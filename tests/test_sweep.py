"""`lumina-jax sweep`: expanding a sweep file into named runs, validating them all before
any starts, running a real 2-run sweep of the demo config and summarising it."""

import argparse
import csv
import json
import pathlib

import pytest

from train_helpers import COMPILE_CACHE

from lumina_jax import sweep
from lumina_jax.train.config import ConfigError, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.py") + ":tiny"


def cli(*argv, overrides=()):
    """The `sweep` subcommand as lumina_jax/cli.py wires it (overrides parsed there)."""
    parser = argparse.ArgumentParser(prog="lumina-jax")
    sweep.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *argv])
    args.overrides = list(overrides)
    return sweep.run(args)


def write_sweep(folder, body):
    path = pathlib.Path(folder) / "sweep.py"
    path.write_text(f"def get_sweep():\n    return {body!r}\n")
    return str(path)


def test_grid_times_list_gives_named_runs_with_their_overrides():
    runs = sweep.expand({"grid": {"optim.lr": [1e-3, 3e-4], "model.patch_sizes": [((2, 1),)]},
                         "list": [{"rules": "dp"}, {"rules": "fsdp", "mesh.fsdp": -1}]},
                        ["--config.seed=3"])
    assert list(runs) == ["lr=0.001,patch_sizes=2_1,rules=dp",
                          "lr=0.001,patch_sizes=2_1,rules=fsdp,fsdp=-1",
                          "lr=0.0003,patch_sizes=2_1,rules=dp",
                          "lr=0.0003,patch_sizes=2_1,rules=fsdp,fsdp=-1"]
    assert runs["lr=0.001,patch_sizes=2_1,rules=fsdp,fsdp=-1"] == [
        "--config.seed=3", "--config.optim.lr=0.001", "--config.model.patch_sizes=((2, 1),)",
        "--config.rules=fsdp", "--config.mesh.fsdp=-1"]
    # Overrides that load_config parses back to the swept values.
    config = load_config(CONFIG, runs["lr=0.0003,patch_sizes=2_1,rules=dp"])
    assert (config.optim.lr, config.rules, config.seed) == (3e-4, "dp", 3)
    # Two keys with one leaf name: full paths keep the names apart.
    assert list(sweep.expand({"list": [{"mesh.data": 2, "dcn.data": 1}]})) == [
        "mesh.data=2,dcn.data=1"]
    assert list(sweep.expand({})) == ["base"]
    with pytest.raises(SystemExit, match="both by the sweep and on the command line"):
        sweep.expand({"grid": {"seed": [0, 1]}}, ["--config.seed=2"])


def test_every_run_is_validated_before_any_starts(tmp_path, capsys):
    spec = write_sweep(tmp_path, {"list": [{"optim.lr": 1e-3}, {"optim.lrr": 1.0},
                                           {"model.preset": "huge"}]})
    (tmp_path / "prepared").mkdir()  # the data path check only needs it to exist
    with pytest.raises(ConfigError) as err:
        cli("--config", CONFIG, "--sweep", spec, "--workdir", str(tmp_path / "runs"),
            overrides=[f"--config.data_dir={tmp_path}"])
    assert "lrr=1: unknown config key 'optim.lrr'" in str(err.value)
    assert "preset=huge: config.model" in str(err.value)
    assert "lr=0.001" not in str(err.value)  # the valid run is not reported
    assert not (tmp_path / "runs").exists()


def test_two_run_sweep_of_the_demo_config_and_its_summary(demo_data, tmp_path, capsys):
    # Seeds differ only in runtime inputs, so run 2 reuses run 1's compiled step from the
    # suite's persistent cache (an XLA compile is most of a tiny run's time on CPU; the
    # config's default cache is per workdir, so each run would compile its own).
    stage = load_config(CONFIG).stages[0].to_dict()  # the images stage, 2 steps
    stage["steps"] = 2
    base = [f"--config.data_dir={demo_data}", f"--config.stages={[stage]!r}",
            "--config.sample.prompts=[]", "--config.checkpoint.every=2",
            f"--config.compilation_cache_dir={COMPILE_CACHE}"]
    spec = write_sweep(tmp_path, {"grid": {"seed": [0, 1]}})
    root = tmp_path / "sweep"

    assert cli("--config", CONFIG, "--sweep", spec, "--print-commands", "--launcher",
               "sbatch launch/slurm.sbatch", "--workdir", str(root), overrides=base) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2 and commands[1].startswith("sbatch launch/slurm.sbatch --config ")
    assert f"--workdir {root}/seed=1 " in commands[1] and commands[1].endswith("--config.seed=1")

    assert cli("--config", CONFIG, "--sweep", spec, "--workdir", str(root), overrides=base) == 0
    table = (root / "summary.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert sorted(rows) == ["seed=0", "seed=1"]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["run", "seed", "steps"]
    assert {"loss", "best loss", "best step", "loss/image_1x2", "grad_norm"} <= set(header)

    with open(root / "summary.csv") as f:
        csv_rows = {r["run"]: r for r in csv.DictReader(f)}
    for seed in (0, 1):
        r = csv_rows[f"seed={seed}"]
        last = [json.loads(ln) for ln in (root / f"seed={seed}" / "metrics.jsonl")
                .read_text().splitlines() if "loss" in ln][-1]
        assert (int(r["seed"]), int(r["steps"])) == (seed, 2)
        assert float(r["loss"]) == pytest.approx(last["loss"])
        assert float(r["best loss"]) <= float(r["loss"])
    assert csv_rows["seed=0"]["loss"] != csv_rows["seed=1"]["loss"]  # different runs
    png = (root / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # Re-running skips finished runs; --summarize rebuilds the same table.
    capsys.readouterr()
    assert cli("--config", CONFIG, "--sweep", spec, "--workdir", str(root), overrides=base) == 0
    assert capsys.readouterr().out.count("done (2 steps), skipped") == 2
    (root / "summary.md").unlink()
    assert cli("--summarize", str(root)) == 0
    assert (root / "summary.md").read_text() == table
