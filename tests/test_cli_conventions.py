"""`lumina-jax` behaves as users expect (issue 20): --version, help text on every flag, the
config variants in `train --help`, `info` from shapes (no 2B model built unless --forward),
`plan` printing each stage as it finishes, `export` naming the step and weights, enlarged
sample previews, and `sample` writing a new folder per call."""

import argparse
import os
import pathlib
import re

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import decoded_frames
from flax import nnx

from lumina_jax import cli
from lumina_jax.cli import build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "demo.py") + ":tiny"
NO_DATA = "--config.data_dir=/nonexistent"  # import, export and sample never read data


def help_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------ conventions

def test_version_is_the_package_version(capsys, monkeypatch):
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"lumina-jax {metadata.version('lumina-jax')}\n"

    # Not installed (a source checkout): pyproject.toml's version.
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    want = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert cli.version() == want


def parsers(parser, name="lumina-jax"):
    """(command name, parser) for the top-level parser and every subcommand's."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for sub, subparser in action.choices.items():
                assert helps.get(sub), f"`{name} {sub}` has no one-line help"
                yield from parsers(subparser, f"{name} {sub}")


def test_every_flag_of_every_command_has_help():
    missing, seen = [], 0
    for name, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            seen += 1
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "no help text: " + ", ".join(missing)
    assert seen > 60  # the walk reached every subcommand's flags


def test_descriptions_speak_to_users(capsys):
    top = help_of(capsys, [])
    for developer_talk in ("registered by its module", "subcommand", "Wired into"):
        assert developer_talk not in top
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"prepare", "train", "sample", "export", "import", "info", "plan"}
    for command in commands:  # each listed with its one line
        assert re.search(rf"^\s+{command}\s+\S", top, re.M), command
    for command in ("prepare", "sweep"):  # their descriptions are module docstrings
        text = help_of(capsys, [command])
        assert "Wired into" not in text and "subcommand" not in text


def test_train_help_names_the_config_variants_and_they_exist(capsys):
    from lumina_jax.train.config import load_config

    text = help_of(capsys, ["train"])
    variants = set(re.findall(r"configs/\w+\.py:[a-z]+", text))
    assert variants >= {"configs/demo.py:quick", "configs/demo.py:tiny",
                        "configs/lumina_video_2b.py:runlocal", "configs/v2a_demo.py:quick",
                        "configs/v2a_demo.py:tiny"}
    for spec in variants:  # every variant named in the help is a real one
        load_config(str(ROOT / spec))


# ------------------------------------------------------------------ info

def test_info_counts_2b_from_shapes_and_runs_no_forward(capsys, monkeypatch):
    from lumina_jax.model import nextdit

    def no_forward(*args, **kwargs):
        raise AssertionError("info ran the model without --forward")

    monkeypatch.setattr(nextdit.NextDiT, "__call__", no_forward)
    assert main(["info", "--preset", "2B_GQA"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 1,771,364,672 " in out
    assert re.search(r"^\s+layers\s+1,756,035,456$", out, re.M)
    groups = sum(int(n.replace(",", "")) for n in re.findall(r"^  \w+\s+([\d,]+)$", out, re.M))
    assert groups == 1_771_364_672
    assert "compile+run" not in out and "--forward" in out


def test_info_forward_on_a_v2a_preset(capsys):
    from lumina_jax.model import count_params, get_preset

    assert main(["info", "--preset", "v2a_tiny", "--forward", "--frames", "8",
                 "--size", "32", "32", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {count_params(get_preset('v2a_tiny')):,} " in out
    assert ("audio 4x4: in (1, 1, 1, 32, 32) + frames (1, 8, 192) + sync (1, 32, 32) -> out "
            "(1, 1, 1, 32, 32), 64 tokens/item") in out
    assert "compile+run" in out


# ------------------------------------------------------------------ plan

def test_plan_prints_each_stage_as_it_finishes(capsys, monkeypatch):
    from lumina_jax.train import plan

    # One candidate mesh per stage: the smallest-mesh search is not under test here.
    monkeypatch.setattr(plan, "growth_meshes", lambda sizes, *a, **k: [dict(sizes)])
    printed_before = {}
    real_plan_stage = plan.plan_stage

    def plan_stage(exp, spec, overrides, si, *args):
        printed_before[si] = capsys.readouterr().out
        return real_plan_stage(exp, spec, overrides, si, *args)

    monkeypatch.setattr(plan, "plan_stage", plan_stage)
    args = argparse.Namespace(config=TINY, mesh="fsdp=1", devices=0, accelerator="v5e", stage=0,
                              method="analytic", timeout=60, json=False, overrides=[])
    assert plan.run(args) == 0
    rest = capsys.readouterr().out
    assert sorted(printed_before) == [0, 1, 2]
    assert printed_before[0].startswith("plan: ")  # the header before any stage is planned
    assert "stage 1 'images'" in printed_before[1] and "smallest mesh" in printed_before[1]
    assert "stage 2 'video'" in printed_before[2] and "stage 3" not in printed_before[2]
    assert "stage 3 'joint'" in rest
    assert "activations x1.00" in rest and '"activations xK"' in rest  # explained


# ------------------------------------------------------------------ export, import, sample

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny run at step 0 made by `import` from random weights (distinct params / EMA)."""
    from lumina_jax.export import export_params
    from lumina_jax.export.state_dict import abstract_params
    from lumina_jax.train.config import build, load_config

    root = tmp_path_factory.mktemp("conventions")
    cfg = build(load_config(TINY, [NO_DATA]), check_data=False).model
    rng = np.random.default_rng(0)
    weights = {k: nnx.from_flat_state([
        (path, var.copy(jnp.asarray(0.02 * rng.normal(size=var.get_value().shape),
                                    jnp.float32)))
        for path, var in nnx.to_flat_state(abstract_params(cfg))]) for k in ("params", "ema")}
    export_params(weights["params"], cfg, str(root / "export"), ema_params=weights["ema"],
                  pth=False)
    run = str(root / "run")
    assert main(["import", "--weights", str(root / "export"), "--config", TINY,
                 "--workdir", run, NO_DATA]) == 0
    return run


def test_import_and_export_name_the_weights_and_step(workdir, capsys, tmp_path):
    out = capsys.readouterr().out  # import (in the fixture, if it ran in this test)
    assert main(["export", "--checkpoint", workdir, "--out", str(tmp_path / "torch")]) == 0
    out = capsys.readouterr().out
    assert "exporting step 0 of " in out and "exported step 0 (params and EMA)" in out
    assert "the raw params as consolidated.*" in out and "EMA weights as consolidated_ema.*" in out
    # import says which weights it read (the EMA ones of an export folder, by default)
    new = str(tmp_path / "again")
    assert main(["import", "--weights", str(tmp_path / "torch"), "--config", TINY,
                 "--workdir", new, NO_DATA]) == 0
    assert "read the EMA weights from " in capsys.readouterr().out


def test_sample_writes_a_new_folder_per_call_with_previews(workdir, capsys, monkeypatch):
    import time

    # Both calls in the same second: the folder name alone would collide.
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20250101-000000")
    argv = ["sample", "--checkpoint", workdir, "--prompt", "a red square", "--num-steps", "1"]
    folders = []
    for _ in range(2):
        assert main(argv) == 0
        out = capsys.readouterr().out
        listed = [line for line in out.splitlines() if line.startswith(workdir)]
        folders.append({os.path.dirname(p) for p in listed})
        assert any(p.endswith(".preview.mp4") for p in listed), out
        assert all(os.path.exists(p) for p in listed)
    (first,), (second,) = folders
    assert first == os.path.join(workdir, "samples", "step0000000_20250101-000000")
    assert second == first + "_2"
    assert sorted(os.listdir(first)) == sorted(os.listdir(second))  # nothing mixed in


def test_new_folder_never_reuses_a_path(tmp_path):
    path = str(tmp_path / "step0000000_20250101-000000")
    made = [cli._new_folder(path) for _ in range(3)]
    assert made == [path, path + "_2", path + "_3"]


def test_save_samples_writes_an_enlarged_preview_beside_each_clip(tmp_path):
    from lumina_jax.train.samples import SampleSpec, save_samples

    rng = np.random.default_rng(0)
    latents = rng.uniform(-1, 1, size=(2, 3, 4, 16, 24)).astype(np.float32)
    spec = SampleSpec(prompts=("a red square", "a blue circle"), frames=4, height=16, width=24)
    paths, frames = save_samples(latents, spec, str(tmp_path / "video"))
    assert [os.path.basename(p) for p in paths] == ["latents.npz", "00_a_red_square.mp4",
                                                    "01_a_blue_circle.mp4"]  # as before
    for i, clip in enumerate(paths[1:]):
        preview = decoded_frames(clip[:-4] + ".preview.mp4")
        assert preview.shape == (4, 256, 384, 3)  # x16: the short side reaches 256 px
        # nearest neighbour: each 16x16 block is one source pixel (h264 is lossy)
        err = np.abs(preview[:, 8::16, 8::16].astype(int) - frames[i].astype(int))
        assert err.mean() < 12, err.mean()
    # Images: a png preview, exact.
    paths, frames = save_samples(latents[:1, :, :1], SampleSpec(
        prompts=("a dot",), frames=1, height=16, width=24), str(tmp_path / "image"))
    preview = iio.imread(str(tmp_path / "image" / "00_a_dot.preview.png"))
    np.testing.assert_array_equal(preview, frames[0, 0].repeat(16, 0).repeat(16, 1))
    # Large samples need no preview.
    big = rng.uniform(-1, 1, size=(1, 3, 2, 256, 256)).astype(np.float32)
    save_samples(big, SampleSpec(prompts=("big",), frames=2, height=256, width=256),
                 str(tmp_path / "big"))
    assert not any(".preview." in n for n in os.listdir(tmp_path / "big"))
