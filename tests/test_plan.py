"""`lumina-jax plan` (lumina_jax/train/plan.py) on the tiny demo config: per-device
arithmetic, the smallest-mesh search, mesh errors, and one real compile on 2 fake devices."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from lumina_jax.parallel import get_rules
from lumina_jax.train import plan
from lumina_jax.train.config import build, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "demo.py") + ":tiny"


def args(**kw):
    base = dict(config=TINY, mesh="", devices=0, accelerator=None, stage=0, method="analytic",
                timeout=120, json=True, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def test_state_bytes_shrink_with_fsdp():
    exp = build(load_config(TINY), check_data=False)
    sizes = lambda **s: {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1, **s}
    one = plan.state_bytes_per_device(exp.model, exp.optim, sizes(), get_rules("fsdp"))
    four = plan.state_bytes_per_device(exp.model, exp.optim, sizes(fsdp=4), get_rules("fsdp"))
    dp = plan.state_bytes_per_device(exp.model, exp.optim, sizes(data=4), get_rules("dp"))
    assert dp == one  # data parallel: every device holds everything
    assert one["optimizer"] >= 2 * one["params"] and one["ema"] == one["params"]
    for k in one:  # ~1/4 (a few small vectors that 4 does not divide stay whole)
        assert one[k] / 4 <= four[k] <= one[k] / 4 * 1.1, (k, one[k], four[k])


def test_plan_numbers_and_flops_split():
    report = json.loads(plan.plan(args(mesh="fsdp=4", stage=3)))
    (stage,) = report["stages"]
    assert report["devices"] == 4 and stage["method"] == "analytic"
    assert stage["flops_per_device"] == pytest.approx(stage["flops_total"] / 4)
    parts = ("params", "optimizer", "ema", "gradients", "activations")
    assert stage["total"] == sum(stage[p] for p in parts)
    for t in stage["tasks"].values():  # identity latents: pixels = latents, 32x32, 8 frames
        p, pf = t["patch"]
        f, h, w = t["latents"][1:]
        assert t["tokens"] == -(-f // pf) * (h // p) * (w // p)


def test_growth_meshes_double_fsdp_then_sequence():
    base = {"data": 1, "fsdp": 4, "tensor": 1, "sequence": 1}
    grown = plan.growth_meshes(base, get_rules("fsdp_sp"), global_batch=4, steps=4)
    assert [(m["fsdp"], m["sequence"]) for m in grown] == [(1, 1), (2, 1), (4, 1), (4, 2),
                                                          (4, 4)]
    # Rules that do not split tokens over `sequence`: only the largest axis grows.
    grown = plan.growth_meshes(base, get_rules("fsdp"), global_batch=4, steps=3)
    assert [(m["fsdp"], m["sequence"]) for m in grown] == [(1, 1), (2, 1), (4, 1), (8, 1)]


def test_sequence_axis_shrinks_the_activation_estimate():
    exp = build(load_config(TINY), check_data=False)
    rules = get_rules("fsdp_sp")
    acts = lambda seq: plan.analytic_stage(
        exp, 2, {"data": 1, "fsdp": 1, "tensor": 1, "sequence": seq}, rules)["activations"]
    assert acts(4) < acts(2) < acts(1)


def test_smallest_mesh_fits_and_the_one_before_does_not():
    exp = build(load_config(TINY), check_data=False)
    rules = get_rules("fsdp")
    total = lambda n: plan.analytic_stage(exp, 0, {"data": 1, "fsdp": n, "tensor": 1,
                                                    "sequence": 1}, rules)["total"]
    for accel, cap in (("v5e", (total(2) + total(4)) / 2), ("v5p", total(1) * 2)):
        plan.ACCELERATORS[accel], old = cap, plan.ACCELERATORS[accel]
        try:
            report = json.loads(plan.plan(args(mesh="fsdp=1", stage=1, accelerator=accel,
                                               overrides=["--config.rules=fsdp"])))
        finally:
            plan.ACCELERATORS[accel] = old
        (stage,) = report["stages"]
        assert stage["smallest_mesh"][accel] == ("fsdp=4" if accel == "v5e" else
                                                 "single device")


@pytest.mark.parametrize("mesh, devices, message", [
    ("fsdp=3", 8, "multiply to 3"),
    ("fsdp=-1,data=-1", 8, "at most one -1"),
    ("model=4", 4, "unknown mesh axes"),
    ("fsdp", 0, "must look like axis=size"),
    ("fsdp=-1", 0, "give --devices"),
])
def test_bad_mesh_is_rejected(mesh, devices, message, capsys):
    with pytest.raises(plan.PlanError, match=message):
        plan.plan(args(mesh=mesh, devices=devices))
    assert plan.run(args(mesh=mesh, devices=devices)) == 2
    assert "lumina-jax plan: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_plan_on_two_fake_devices():
    """The real step compiled for 2 CPU devices (subprocess): the update's arguments hold
    the state and the gradient accumulator (fp32, sharded like the params)."""
    out = subprocess.run(
        [sys.executable, "-m", "lumina_jax.train.plan", "plan", "--config", TINY,
         "--mesh", "fsdp=2", "--stage", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    (stage,) = json.loads(out.stdout)["stages"]
    assert stage["method"] == "compiled", stage.get("compile_error")
    c = stage["compiled"]
    state = stage["params"] + stage["optimizer"] + stage["ema"]
    assert state + stage["params"] <= c["argument"] <= state + stage["params"] + 4096
    assert c["temp"] > 0 and stage["total"] >= c["argument"]
