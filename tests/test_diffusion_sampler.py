"""Sampler tests: exact rectified-flow field for Gaussian data, settings, CFG, renorm."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumina_jax.diffusion import SAMPLER_PRESETS, SampleSettings, guide, euler_steps, sample, time_grid

MU, SIGMA = 2.0, 10.0  # data ~ N(MU, SIGMA^2) per element; noise ~ N(0, 1)


def gaussian_velocity(x, t, cap_feats, cap_mask, motion_score, patch_size):
    """E[x1 - x0 | x_t = x] for x1 ~ N(MU, SIGMA^2), x0 ~ N(0, 1), x_t = t*x1 + (1-t)*x0:
    v = MU + (t*SIGMA^2 - (1-t)) / (t^2 SIGMA^2 + (1-t)^2) * (x - t*MU)."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    var = t**2 * SIGMA**2 + (1 - t) ** 2
    return MU + (t * SIGMA**2 - (1 - t)) / var * (x - t * MU)


def _cond(B, L=4, D=3):
    return jnp.zeros((B, L, D)), jnp.ones((B, L), bool)


def _sample_stats(velocity_fn, shift, num_steps=32):
    noise = jax.random.normal(jax.random.key(0), (16, 4, 4, 16, 16))  # 16384 particles
    x = sample(velocity_fn, noise, *_cond(16), SampleSettings(num_steps=num_steps, shift=shift),
               progress=False)
    return float(x.mean()), float(x.std())


def _lands_on_data(stats):
    mean, std = stats
    return abs(mean - MU) < 0.3 and abs(std / SIGMA - 1) < 0.06


def test_euler_with_exact_field_lands_on_data_and_wrong_variants_do_not():
    # Wide data (SIGMA=10 vs unit noise) bends the trajectories near t=0: with 32 steps the
    # shifted grid (s=8) reaches std 0.96*SIGMA, the plain grid only 0.87*SIGMA.
    good = _sample_stats(gaussian_velocity, shift=8.0)
    assert _lands_on_data(good), good
    assert not _lands_on_data(_sample_stats(gaussian_velocity, shift=1.0))  # missing shift

    def wrong_sign(x, t, *a, **k):
        return -gaussian_velocity(x, t, *a, **k)

    def wrong_direction(x, t, *a, **k):  # t=1 taken as noise
        return gaussian_velocity(x, 1 - t, *a, **k)

    assert not _lands_on_data(_sample_stats(wrong_sign, shift=8.0))
    assert not _lands_on_data(_sample_stats(wrong_direction, shift=8.0))


def test_single_point_data_is_reached_exactly():
    point = 3.0  # x1 = point: v = (point - x) / (1 - t); the last Euler step lands on it
    fn = lambda x, t, *a, **k: (point - x) / (1 - t.reshape(-1, 1, 1, 1, 1))
    x = sample(fn, jax.random.normal(jax.random.key(1), (2, 1, 1, 4, 4)), *_cond(2),
               SampleSettings(num_steps=7, shift=4.0), progress=False)
    np.testing.assert_allclose(x, point, atol=1e-4)


def test_time_grid_and_preset_switching_points():
    g = time_grid(69, 24.0)
    assert len(g) == 70 and g[0] == 0 and g[-1] == 1 and np.all(np.diff(g) > 0)
    np.testing.assert_allclose(g, np.linspace(0, 1, 70) / (np.linspace(0, 1, 70) * (1 - 24) + 24))
    for name, (a, b) in {"960px-multiscale": (0.03, 0.125), "512px-multiscale": (0.075, 0.3)}.items():
        steps = euler_steps(SAMPLER_PRESETS[name])
        ps = [s.patch_size for s in steps]
        for s in steps:
            want = (4, 2) if s.t < a else (2, 2) if s.t < b else (2, 1)
            assert s.patch_size == want
        assert ps[0] == (4, 2) and ps[-1] == (2, 1) and set(ps) == {(4, 2), (2, 2), (2, 1)}
        assert sum(s.dt for s in steps) == pytest.approx(1.0)
    s960 = euler_steps(SAMPLER_PRESETS["960px"])
    assert all((s.cfg == 20.0) == (s.t < 0.2) and s.renorm == 2.0 and s.motion == 6.0
               and s.neg_motion == (2.0 if s.t < 0.05 else 6.0) for s in s960)
    assert all(s.cfg == (12.0 if s.t < 0.4 else 0.0) and s.renorm == -1.0
               for s in euler_steps(SAMPLER_PRESETS["512px"]))


def test_guide_cfg_and_renorm_arithmetic():
    pos = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    neg = jnp.array([[3.0, -1.0], [0.0, 0.0]])
    # cfg 2: pos + 2*(pos - neg) -> [1-4, 2+6] = [-3, 8]; [9, 12]
    np.testing.assert_allclose(guide(pos, neg, 2.0, -1.0), [[-3, 8], [9, 12]])
    # renorm 2: item 0 |(-3,8)| = 8.544 <= 2*|(1,2)| = 4.472? no -> scaled to norm 4.472;
    # item 1 |(9,12)| = 15 > 2*5 = 10 -> (6, 8).
    out = np.asarray(guide(pos, neg, 2.0, 2.0))
    np.testing.assert_allclose(out[1], [6.0, 8.0], rtol=1e-6)
    np.testing.assert_allclose(out[0], np.array([-3, 8]) * 2 * np.sqrt(5) / np.sqrt(73), rtol=1e-6)
    # renorm 4: item 1 (15 <= 20) unchanged, item 0 (8.544 <= 8.944) unchanged
    np.testing.assert_allclose(guide(pos, neg, 2.0, 4.0), [[-3, 8], [9, 12]], rtol=1e-6)
    # cfg 0 is pos exactly
    np.testing.assert_allclose(guide(pos, neg, 0.0, 2.0), pos)


def _recording_fn(log):
    """v = cap_feats[:, 0, 0] + motion broadcast over the item; logs (batch, patch) per
    executed call (debug callback, so only branches that really run are counted)."""
    def fn(x, t, cap_feats, cap_mask, motion_score, patch_size):
        jax.debug.callback(lambda b: log.append((int(b.shape[0]), patch_size)), t)
        v = cap_feats[:, 0, 0] + motion_score
        return jnp.broadcast_to(v.reshape(-1, 1, 1, 1, 1), x.shape)
    return fn


def test_sample_cfg_renorm_motion_end_to_end_one_step():
    log = []
    cap, mask = jnp.full((2, 4, 3), 1.0), jnp.ones((2, 4), bool)
    neg, neg_mask = jnp.full((1, 2, 3), 0.5), jnp.ones((1, 2), bool)  # shorter: padded
    x0 = jnp.zeros((2, 1, 1, 2, 2))
    st = SampleSettings(num_steps=1, shift=1.0, cfg=3.0, motion=2.0, neg_motion=1.0)
    x = sample(_recording_fn(log), x0, cap, mask, st, neg_cap_feats=neg, neg_cap_mask=neg_mask,
               progress=False)
    # pos = 1 + 2 = 3, neg = 0.5 + 1 = 1.5, guided = 3 + 3*1.5 = 7.5; dt = 1
    np.testing.assert_allclose(x, 7.5)
    st = dataclass_replace(st, renorm=2.0)  # |guided| = 7.5*|1| > 2*3 -> clipped to 6
    np.testing.assert_allclose(sample(_recording_fn([]), x0, cap, mask, st, neg_cap_feats=neg,
                                      neg_cap_mask=neg_mask, progress=False), 6.0, rtol=1e-6)
    assert log == [(4, (2, 1))]  # one doubled-batch call


def test_motion_only_guidance_amplifies_just_the_motion_score():
    log = []
    cap = jnp.asarray([1.0, 5.0]).reshape(2, 1, 1) * jnp.ones((2, 4, 3))  # differing captions
    mask, x0 = jnp.ones((2, 4), bool), jnp.zeros((2, 1, 1, 2, 2))
    st = SampleSettings(num_steps=1, shift=1.0, cfg=3.0, motion=2.0, neg_motion=0.5)
    x = sample(_recording_fn(log), x0, cap, mask, st, motion_only=True, progress=False)
    # each item's own caption c in both branches: (c + 2) + 3 * (2 - 0.5) = c + 6.5
    np.testing.assert_allclose(x[:, 0, 0, 0, 0], [7.5, 11.5])
    assert log == [(4, (2, 1))]
    # equal scores make the branches identical: one plain call, unguided result
    log.clear()
    x = sample(_recording_fn(log), x0, cap, mask, dataclass_replace(st, neg_motion=2.0),
               motion_only=True, progress=False)
    np.testing.assert_allclose(x[:, 0, 0, 0, 0], [3.0, 7.0])
    assert log == [(2, (2, 1))]
    with pytest.raises(ValueError, match="motion_only"):
        sample(_recording_fn([]), x0, cap, mask, st, motion_only=True, neg_cap_feats=cap,
               neg_cap_mask=mask, progress=False)


def dataclass_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def test_cfg_zero_evaluates_model_once_per_step_and_compiles_once_per_patch_size():
    log, traces = [], collections.Counter()
    rec = _recording_fn(log)

    def fn(x, t, cap_feats, cap_mask, motion_score, patch_size):
        traces[patch_size] += 1  # Python side effect: runs at trace time only
        return rec(x, t, cap_feats, cap_mask, motion_score, patch_size)

    B = 2
    st = dataclass_replace(SAMPLER_PRESETS["960px-multiscale"], num_steps=40)
    steps = euler_steps(st)
    args = (jnp.zeros((B, 1, 2, 4, 4)), *_cond(B))
    neg = dict(neg_cap_feats=jnp.zeros((1, 4, 3)), neg_cap_mask=jnp.ones((1, 4), bool))
    sample(fn, *args, st, progress=False, **neg)
    assert 0 < sum(s.cfg == 0 for s in steps) < len(steps)
    # exactly one model call per step: doubled batch while cfg != 0, plain batch at cfg 0
    assert log == [(2 * B if s.cfg else B, s.patch_size) for s in steps]
    # one compilation per patch size (each traces its two cond branches once)
    assert traces == {(4, 2): 2, (2, 2): 2, (2, 1): 2}
    log.clear()
    sample(fn, *args, st, progress=False, **neg)  # cached: no retrace
    assert traces == {(4, 2): 2, (2, 2): 2, (2, 1): 2} and len(log) == len(steps)


def test_cfg_without_negative_caption_raises():
    with pytest.raises(ValueError, match="neg_cap"):
        sample(gaussian_velocity, jnp.zeros((1, 1, 1, 2, 2)), *_cond(1), "512px", progress=False)


def test_params_are_passed_to_velocity_fn():
    fn = lambda params, x, t, *a, patch_size: params["w"] * jnp.ones_like(x)
    x = sample(fn, jnp.zeros((1, 1, 1, 2, 2)), *_cond(1), SampleSettings(num_steps=4),
               params={"w": jnp.float32(2.0)}, progress=False)
    np.testing.assert_allclose(x, 2.0, rtol=1e-6)
