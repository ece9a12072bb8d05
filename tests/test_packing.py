"""Sequence packing (data.packing): the packed objective and its gradients equal the
unpacked ones clip by clip; packing is deterministic, whole-clip, first-fit and resumable;
a packed task trains through `lumina-jax train` with one compile per task per stage, and a
packed step on an 8-device mesh equals the single-device one."""

import json
import pathlib
import re
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import with_xla_flags
from flax import nnx
from train_helpers import COMPILE_CACHE

from data_pipelines import DataError, make_iterator, packing, task_from_dict
from data_pipelines import buckets as bk
from lumina_jax.diffusion import path
from lumina_jax.diffusion.loss import TaskSpec, packed_clip_losses, per_item_loss
from lumina_jax.model import NextDiT, get_preset, token_count

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = get_preset("tiny", n_layers=1)


def randomize(model, seed=0, std=0.2):
    """Random non-zero values for every parameter (init zeroes the final layers); numpy
    noise, so no compile per parameter shape."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
    nnx.update(model, jax.tree.unflatten(treedef, [
        x + std * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]))
    return model


def clip_examples(rng, shapes, cap_dim):
    """Latents [C, F, H, W], noise of the same shape, caption features, t, motion."""
    out = []
    for i, (f, h, w) in enumerate(shapes):
        cap_len = 3 + 2 * i
        out.append({"x1": rng.standard_normal((CFG.in_channels, f, h, w), dtype=np.float32),
                    "x0": rng.standard_normal((CFG.in_channels, f, h, w), dtype=np.float32),
                    "cap_feats": rng.standard_normal((8, cap_dim), dtype=np.float32),
                    "cap_len": cap_len, "t": float(rng.uniform(0.05, 0.95)),
                    "motion_score": [2.5, -1.0, 0.0, 4.0][i % 4]})
    return out


def packed_batch(clips, rows, task, field):
    """The clips patchified (`field`: x1 or x0) and laid into `rows` by packing.collate."""
    p, pf = task.patch_size
    exs = []
    for c in clips:
        tokens, positions = packing.patchify(c[field], p, pf)
        exs.append({**c, "tokens": tokens, "positions": positions, "frames": c[field].shape[1],
                    "source": "s", "path": "p", "bucket": "b", "skipped_files": []})
    return packing.collate([[exs[i] for i in row] for row in rows], task)


# Clips of different sizes and frame counts, and an image (F = 1: repeated to pF frames).
SHAPES = [(2, 4, 8), (4, 8, 4), (1, 8, 4)]
ROWS = [[0, 2], [1]]  # two rows


@pytest.fixture(scope="module")
def model():
    return randomize(NextDiT(CFG, rngs=nnx.Rngs(0)))


@pytest.mark.slow
@pytest.mark.parametrize("patch_size", [(2, 1), (2, 2)])
def test_packed_losses_and_gradients_equal_unpacked(model, patch_size):
    """Same clips, noise and t: per-clip losses and the gradient of their mean agree to
    float32 round-off (losses: rtol 1e-4; every gradient entry: rtol 1e-4 plus atol 1e-5 x
    the largest gradient entry, as sums run in another order; some gradients, e.g. of the
    key norm's bias, are 0 up to round-off): packed attention is masked by segment over a whole row, unpacked attention runs
    over one clip. (Rows are short, so both use XLA attention; the chunked kernel's segment
    masks run in the training and mesh tests below.)"""
    spec = TaskSpec("video", patch_size, 4.0)
    clips = clip_examples(np.random.default_rng(0), SHAPES, CFG.cap_feat_dim)
    task = task_from_dict({"sources": {}, "caption_len": 8, "packing": True, "pack_clips": 3,
                           "pack_tokens": 32, "patch_size": patch_size})
    batch = {k: jnp.asarray(v) for k, v in packed_batch(clips, ROWS, task, "x1").items()
             if k in ("latents", "positions", "segment_ids", "frames", "cap_feats",
                      "cap_segment_ids", "motion_score")}
    x0 = jnp.asarray(packed_batch(clips, ROWS, task, "x0")["latents"])
    t = np.zeros((2, 3), np.float32)
    for r, row in enumerate(ROWS):
        for j, i in enumerate(row):
            t[r, j] = clips[i]["t"]
    graphdef, params = nnx.split(model)

    def packed(params):
        loss, _, _, real = packed_clip_losses(nnx.merge(graphdef, params), x0,
                                              batch["latents"], jnp.asarray(t), batch, spec)
        return jnp.sum(loss * real) / jnp.sum(real), (loss, real)

    def unpacked(params):
        m = nnx.merge(graphdef, params)
        losses = []
        for c in clips:
            x0_, x1_ = jnp.asarray(c["x0"])[None], jnp.asarray(c["x1"])[None]
            tt = jnp.asarray([c["t"]], jnp.float32)
            mask = jnp.arange(8)[None] < c["cap_len"]
            pred = m(path.interpolate(x0_, x1_, tt), tt, jnp.asarray(c["cap_feats"])[None],
                     mask, jnp.asarray([c["motion_score"]], jnp.float32), patch_size=patch_size)
            losses.append(per_item_loss(pred, x1_ - x0_)[0][0])
        return jnp.mean(jnp.stack(losses)), jnp.stack(losses)

    (mean_p, (loss_p, real)), grad_p = jax.jit(jax.value_and_grad(packed, has_aux=True))(params)
    (mean_u, loss_u), grad_u = jax.jit(jax.value_and_grad(unpacked, has_aux=True))(params)
    assert np.asarray(real).tolist() == [[1, 1, 0], [1, 0, 0]]
    per_clip = np.asarray([loss_p[r, j] for r, row in enumerate(ROWS) for j, _ in enumerate(row)])
    order = [i for row in ROWS for i in row]
    np.testing.assert_allclose(per_clip, np.asarray(loss_u)[order], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mean_p, mean_u, rtol=1e-4)
    leaves_p, leaves_u = jax.tree.leaves(grad_p), jax.tree.leaves(grad_u)
    scale = max(float(jnp.max(jnp.abs(g))) for g in leaves_u)
    assert scale > 0
    for gp, gu in zip(leaves_p, leaves_u):
        np.testing.assert_allclose(gp, gu, rtol=1e-4, atol=1e-5 * scale)


# ------------------------------------------------------------------------- packing


def test_first_fit_places_each_clip_in_the_first_row_with_room():
    # (tokens, caption tokens): 6 -> row 0, 5 -> row 1, 4 -> row 0 (full), 3 -> row 1,
    # 2 -> row 1 (full); 1 fits nowhere and waits for the next batch.
    assert packing.first_fit([(6, 1), (5, 1), (4, 1), (3, 1), (2, 1), (1, 1)], 2, 10, 8,
                             99) == [0, 1, 0, 1, 1, None]
    assert packing.first_fit([(1, 1)] * 3, 2, 10, 1, 99) == [0, 1, None]  # clips per row
    assert packing.first_fit([(1, 6), (1, 6), (1, 4)], 2, 10, 8, 10) == [0, 1, 0]  # captions


def synthetic_clips(n, seed=0):
    """A realistic mix at 2x2 patches: every official 256 px aspect bucket (latents 8x
    smaller), 1..4 token frames (2..8 latent frames), images; feature width 1."""
    rng = np.random.default_rng(seed)
    sizes = bk.resolution_buckets(256, 32)
    out = []
    for i in range(n):
        h, w = sizes[rng.integers(len(sizes))]
        frames = int(rng.choice([1, 2, 4, 6, 8]))
        n_tok = token_count(frames, h // 8, w // 8, (2, 2))
        out.append({"tokens": np.full((n_tok, 1), i, np.float32),
                    "positions": np.zeros((n_tok, 3), np.int32), "frames": frames,
                    "cap_feats": np.full((16, 2), i, np.float32), "cap_len": int(rng.integers(4, 17)),
                    "motion_score": 1.0, "source": "s", "path": f"clip{i}",
                    "bucket": f"video_{frames}x{h}x{w}", "skipped_files": []})
    return out


def pack_task(**fields):
    return task_from_dict({"sources": {}, "batch_size": 4, "caption_len": 16, "packing": True,
                           "pack_tokens": 4096, "pack_clips": 16, "patch_size": (2, 2),
                           **fields})


def pack(clips, task):
    parent = grain.MapDataset.source(clips).to_iter_dataset()
    return iter(packing.PackIterDataset(parent, task))


def test_packing_a_realistic_mix_wastes_little_and_never_splits_a_clip():
    clips = synthetic_clips(2000)
    it = pack(clips, pack_task())
    padding, seen = [], []
    for _ in range(40):
        batch = next(it)
        padding.append(batch["padding"])
        assert batch["padding"] == np.mean(batch["segment_ids"] == 0)
        for r in range(4):
            for j, name in enumerate(batch["path"][r]):
                if not name:
                    continue
                i = int(name[4:])
                where = np.flatnonzero(batch["segment_ids"][r] == j + 1)
                assert len(where) == len(clips[i]["tokens"])  # whole, contiguous, its own
                assert where[-1] - where[0] == len(where) - 1
                assert np.all(batch["latents"][r, where] == i)
                cap = np.flatnonzero(batch["cap_segment_ids"][r] == j + 1)
                assert len(cap) == clips[i]["cap_len"]
                seen.append(i)
    assert len(seen) == len(set(seen))  # no clip twice
    # first-fit over a lookahead of batch_size x pack_clips: a few % padding at most
    assert np.mean(padding) <= 0.05, np.mean(padding)
    # every clip drawn is packed within a few batches: none is starved
    assert set(range(max(seen) - 200)) <= set(seen)


def test_resume_mid_stream_gives_the_same_batches():
    clips = synthetic_clips(600, seed=1)
    it = pack(clips, pack_task())
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    expected = [next(it) for _ in range(4)]
    resumed = pack(clips, pack_task())
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in ("latents", "segment_ids", "positions", "cap_feats", "path"):
            np.testing.assert_array_equal(got[key], want[key])


def test_a_clip_larger_than_a_row_is_an_error_naming_the_field():
    big = synthetic_clips(1)[0]
    big["tokens"] = np.zeros((5000, 1), np.float32)
    with pytest.raises(DataError, match=r"raise data.pack_tokens \(now 4096\) to >= 5000"):
        next(pack([big], pack_task()))
    # caught before any compute: the task's largest bucket x longest window
    with pytest.raises(ValueError, match=r"^pack_tokens: .*raise pack_tokens to >= 512"):
        packing.check_packing(pack_task(pack_tokens=500, resolution=16, multiple=8,
                                        max_frames=16, latent_encoder="identity"))


# ------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def footage(mixed_footage):
    """Real encoded footage of three aspect ratios, two durations, images and videos
    (conftest's session fixture, shared with tests/test_train_buckets.py)."""
    return mixed_footage


def footage_task(folder, media="video", patch_size=(2, 2), tokens=1024):
    return task_from_dict({
        "media": media, "sources": {"natural": {"path": str(folder), "weight": 0.5},
                                    "synthetic": {"path": str(folder), "weight": 0.5}},
        "resolution": 16, "multiple": 8, "fps": 8.0, "max_frames": 16, "batch_size": 2,
        "caption_len": 56, "temporal_multiple": patch_size[1] if media == "video" else 1,
        "packing": True, "pack_tokens": tokens, "pack_clips": 8, "patch_size": patch_size})


def test_grain_pipeline_packs_every_bucket_deterministically_and_resumes(footage):
    task = footage_task(footage)
    reference = [next(it) for it in [make_iterator(task, 0, 1)] for _ in range(6)]
    it = make_iterator(task, 0, 1)
    batches = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))
    resumed = make_iterator(task, 0, 1)
    resumed.set_state(state)
    batches += [next(resumed) for _ in range(3)]
    buckets = set()
    for want, got in zip(reference, batches):  # deterministic, and exact after a restore
        for key in ("latents", "positions", "segment_ids", "frames", "cap_feats",
                    "cap_segment_ids", "motion_score", "path"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        for r in range(2):
            for j, bucket in enumerate(got["buckets"][r]):
                if bucket:
                    buckets.add(bucket)
                    f, h, w = bk.parse_bucket_key(bucket)[1:]
                    seg = got["segment_ids"][r] == j + 1
                    assert seg.sum() == token_count(f, h, w, (2, 2))  # the whole clip
                    assert got["frames"][r, j] == f
                    assert tuple(got["positions"][r][seg].max(0) + 1) == (f // 2, h // 2, w // 2)
        assert got["latents"].shape == (2, 1024, 24) and got["padding"] < 0.5
    assert len(buckets) >= 4, buckets  # several aspect ratios and durations in one shape


# ------------------------------------------------------------------------- training

PACKED_CONFIG = """
import importlib.util

spec = importlib.util.spec_from_file_location("mixed", {mixed!r})
mixed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mixed)


def get_config(arg=None):
    c = mixed.get_config(arg)
    c.stages[0].steps = 4
    for name, tokens in (("image_1x2", 256), ("video_2x2", 1024)):
        c.stages[0].tasks[name].data.update(packing=True, pack_tokens=tokens, pack_clips=8)
    return c
"""


def test_packed_tasks_train_with_one_compile_per_task_per_stage(footage, tmp_path):
    config = tmp_path / "packed_config.py"
    config.write_text(PACKED_CONFIG.format(mixed=str(ROOT / "tests" / "mixed_buckets_config.py")))
    proc = subprocess.run(
        [sys.executable, "-m", "lumina_jax.cli", "train", "--config", str(config), "--workdir",
         str(tmp_path / "run"), f"--config.data_dir={footage}",
         f"--config.compilation_cache_dir={COMPILE_CACHE}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    compiled = sorted(re.findall(r"^compiled (\S+) (.*) in [\d.]+s$", out, re.M))
    # rows of [batch, pack_tokens, pF*p*p*C]: one shape per task, whatever the buckets
    assert compiled == [("image_1x2", "[2, 256, 12]"), ("update", ""),
                        ("video_2x2", "[2, 1024, 24]")], compiled
    # (printed whether compiled or loaded from the test suite's persistent cache)
    assert "3 executables (2 task shapes + the update)" in out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["shape/video_2x2"] == "2x1024x24" for r in steps)


# ------------------------------------------------------------------------- mesh

MESH_SCRIPT = """
import json, sys
import jax, numpy as np, optax
sys.path.insert(0, {tests!r})
from test_packing import CFG, SHAPES, clip_examples, packed_batch
from data_pipelines import task_from_dict
from lumina_jax.diffusion.loss import LossConfig, TaskSpec
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
from lumina_jax.train.step import TrainStep, enable_compilation_cache, global_batch

enable_compilation_cache({cache!r})  # the suite's: a rerun loads these executables
task = task_from_dict({{"sources": {{}}, "caption_len": 8, "packing": True, "pack_clips": 3,
                       "pack_tokens": 64, "patch_size": (2, 2)}})
clips = clip_examples(np.random.default_rng(0), SHAPES * 2, CFG.cap_feat_dim)
local = packed_batch(clips, [[0, 1], [2, 3], [4, 5], [0, 2]], task, "x1")
out = {{}}
for mesh_spec, rules, n in (("data=1", "dp", 1), ("fsdp=2,tensor=2,sequence=2", "fsdp_tp_sp", 8)):
    sizes = {{k: int(v) for k, v in (kv.split("=") for kv in mesh_spec.split(","))}}
    mesh, rules = make_mesh(sizes, devices=jax.devices()[:n]), get_rules(rules)
    optim = OptimConfig(lr=1e-3, ema_every=1)
    layout = state_layout(CFG, mesh, rules, make_optimizer(optim))
    state = layout.init()
    step = TrainStep(CFG, optim, LossConfig(), {{"video_2x2": TaskSpec("video", (2, 2), 4.0)}},
                     mesh, rules, layout)
    batch = global_batch(local, mesh, rules, ("latents", "cap_feats", "cap_mask", "motion_score"))
    # the task's gradient executable alone (the update is the same code on any batch)
    grads, aux = step._grad_jit["video_2x2"](state["params"], step._zeros(state["params"]),
                                             batch, 0, jax.random.key(0))
    out[mesh_spec] = [float(aux["loss"]), float(jax.jit(optax.global_norm)(grads))]
print("REPORT " + json.dumps(out))
"""


@pytest.mark.slow
def test_a_packed_step_on_an_8_device_mesh_equals_one_device():
    """fsdp x tensor x sequence (Ulysses: segment ids gathered with the tokens) vs data=1."""
    script = MESH_SCRIPT.format(tests=str(ROOT / "tests"), cache=COMPILE_CACHE)
    proc = subprocess.run([sys.executable, "-c", script],
                          env=with_xla_flags("--xla_force_host_platform_device_count=8"),
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ")[-1])
    np.testing.assert_allclose(report["fsdp=2,tensor=2,sequence=2"], report["data=1"], rtol=1e-4)
