"""Training objective tests: path, shift, time sampling, loss arithmetic, tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumina_jax.diffusion import (DEFAULT_TASKS, LossConfig, TaskSpec, bin_by_t,
                                  interpolate, multitask_loss,
                                  per_item_loss, sample_time, task_loss, time_shift,
                                  velocity_target)


def test_time_shift_formula():
    assert time_shift(0.5, 3.0) == pytest.approx(0.25)       # 0.5 / (0.5 + 3 - 1.5)
    assert time_shift(0.2, 8.0) == pytest.approx(0.2 / (0.2 + 8 - 1.6))
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(time_shift(t, 1.0), t)
    for s in (2.0, 4.0, 8.0, 24.0):
        u = time_shift(t, s)
        assert u[0] == 0 and u[-1] == 1 and np.all(np.diff(u) > 0) and np.all(u[1:-1] < t[1:-1])


def test_time_sampling_stats():
    n = 200_000
    u = np.asarray(sample_time(jax.random.key(0), n))
    assert u.min() >= 0 and u.max() <= 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    ln = np.asarray(sample_time(jax.random.key(1), n, "logit_normal", logit_mean=0.5, logit_std=1.5))
    z = np.log(ln / (1 - ln))
    assert abs(z.mean() - 0.5) < 0.02 and abs(z.std() - 1.5) < 0.02
    # shift is applied after sampling: the median of U moves to time_shift(0.5, s)
    sh = np.asarray(sample_time(jax.random.key(2), n, shift=4.0))
    assert abs(np.median(sh) - 0.5 / (0.5 + 4 - 2)) < 0.005
    with pytest.raises(ValueError):
        sample_time(jax.random.key(0), 2, "cosine")


def test_path_and_target():
    x0, x1 = jnp.full((2, 1, 1, 1, 2), -1.0), jnp.full((2, 1, 1, 1, 2), 3.0)
    xt = interpolate(x0, x1, jnp.array([0.0, 0.25]))
    np.testing.assert_allclose(xt[0], -1.0)                  # t=0: noise
    np.testing.assert_allclose(xt[1], 0.25 * 3 + 0.75 * -1)  # 0
    np.testing.assert_allclose(interpolate(x0, x1, jnp.ones(2)), x1)  # t=1: data
    np.testing.assert_allclose(velocity_target(x0, x1), 4.0)


def test_per_item_loss_hand_computed():
    pred = jnp.array([[1.0, 0.0], [2.0, 0.0], [1.0, 5.0]])
    target = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    loss, mse, cos = per_item_loss(pred, target, vd_weight=1.0)
    # item 0: mse (1+1)/2 = 1, cos 0 -> 2; item 1: mse 0.5, cos 1 -> 0.5;
    # item 2: mse 12.5, cos 1/sqrt(26)
    np.testing.assert_allclose(mse, [1.0, 0.5, 12.5], rtol=1e-6)
    np.testing.assert_allclose(cos, [0.0, 1.0, 1 / np.sqrt(26)], rtol=1e-6)
    np.testing.assert_allclose(loss, [2.0, 0.5, 12.5 + 1 - 1 / np.sqrt(26)], rtol=1e-6)
    loss, _, _ = per_item_loss(pred, target, vd_weight=0.5)
    np.testing.assert_allclose(loss[0], 1.5)
    # mask keeps element 0 only: item 2 -> mse 0, cos 1 -> 0; item 0 -> mse 1, cos 0 (0-norm)
    loss, mse, cos = per_item_loss(pred, target, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(mse, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(loss, [2.0, 1.0, 0.0], atol=1e-6)


def test_bin_by_t():
    s, c = bin_by_t(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([0.05, 0.5, 0.55, 1.0]), 4)
    np.testing.assert_allclose(s, [1.0, 0.0, 5.0, 4.0])
    np.testing.assert_allclose(c, [1, 0, 2, 1])


def _batch(B, key=0, L=6, D=3, F=2):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {"latents": jax.random.normal(k1, (B, 4, F, 4, 4)),
            "cap_feats": jax.random.normal(k2, (B, L, D)) + 5.0,
            "cap_mask": jnp.arange(L)[None].repeat(B, 0) < 4,
            "motion_score": jnp.full((B,), 7.0)}


def _oracle(x1, log=None):
    """The exact conditional velocity x1 - x0 = (x1 - x_t) / (1 - t) for known data x1."""
    def fn(x, t, cap_feats, cap_mask, motion_score, patch_size):
        if log is not None:
            log.append(patch_size)
        return (x1 - x) / (1 - t.reshape(-1, 1, 1, 1, 1))
    return fn


def test_task_loss_with_oracle_is_zero_and_wrong_sign_is_not():
    batch = _batch(8)
    task = TaskSpec("video", "2x2", 4.0)
    assert task.patch_size == (2, 2)
    cfg = LossConfig()
    loss_fn = jax.jit(lambda key, b: task_loss(_oracle(b["latents"]), key, b, task, cfg))
    loss, aux = loss_fn(jax.random.key(0), batch)
    assert float(loss) < 1e-4 and float(aux["cos"]) > 0.9999
    assert float(aux["loss_by_t_count"].sum()) == 8 and aux["loss_by_t_sum"].shape == (10,)
    neg = lambda *a, **k: -_oracle(batch["latents"])(*a, **k)
    loss, aux = task_loss(neg, jax.random.key(0), batch, task, cfg)
    assert float(aux["cos"]) < -0.9999 and float(loss) > 2.0
    # a loss mask hides a region where the prediction is wrong
    bad = lambda x, t, *a, **k: _oracle(batch["latents"])(x, t, *a, **k).at[:, :, 1:].add(9.0)
    masked = dict(batch, loss_mask=(jnp.arange(2) < 1).reshape(1, 1, 2, 1, 1))
    assert float(task_loss(bad, jax.random.key(0), masked, task, cfg)[0]) < 1e-4
    assert float(task_loss(bad, jax.random.key(0), batch, task, cfg)[0]) > 1.0


def test_multitask_loss_sums_weighted_tasks_with_their_patch_sizes():
    tasks = dict(DEFAULT_TASKS, video_2x4=TaskSpec("video", (4, 2), 8.0, weight=0.5))
    assert [t.shift for t in DEFAULT_TASKS.values()] == [1.0, 2.0, 4.0, 8.0]
    batches = {"image_1x2": _batch(4, 1, F=1), "video_2x4": _batch(4, 2)}
    log = []
    pred_zero = lambda x, t, *a, patch_size: (log.append(patch_size), jnp.zeros_like(x))[1]
    total, aux = multitask_loss(pred_zero, jax.random.key(0), batches, tasks, LossConfig())
    assert sorted(log) == [(2, 1), (4, 2)] and set(aux) == set(batches)
    # zero prediction: mse = mean((x1 - x0)^2) ~ 2 (unit data and noise), cos = 0
    for a in aux.values():
        assert float(a["cos"]) == 0.0 and 1.5 < float(a["mse"]) < 2.5
    np.testing.assert_allclose(total, aux["image_1x2"]["loss"] + 0.5 * aux["video_2x4"]["loss"],
                               rtol=1e-6)


def test_zero_prediction_trains_on_mse_alone_and_others_keep_the_official_cosine():
    # the model's final layer starts at zero, so the first step of a run (and of each
    # stage's new patch size) predicts exactly 0: torch's cosine gradient there is
    # target_hat / eps (1e8), a grad_norm spike with no information; ours is MSE's alone
    target = jnp.array([[3.0, 4.0]])
    loss_of = lambda p: per_item_loss(p, target)[0].sum()
    g = jax.grad(loss_of)(jnp.zeros((1, 2)))
    np.testing.assert_allclose(g, -target, rtol=1e-6)  # d mse = 2 (p - t) / 2
    np.testing.assert_allclose(loss_of(jnp.zeros((1, 2))), 12.5 + 1.0)  # mse + (1 - 0)
    # any non-zero prediction: torch.cosine_similarity's value and gradient
    p = jnp.array([[1e-3, -2e-3]])
    cos = float(per_item_loss(p, target)[2][0])
    np.testing.assert_allclose(cos, (3e-3 - 8e-3) / (np.sqrt(5e-6) * 5.0), rtol=1e-5)
    grad_cos = jax.grad(lambda p: per_item_loss(p, target)[2].sum())(p)
    unit_p, unit_t = p / jnp.linalg.norm(p), target / 5.0
    expected = (unit_t - cos * unit_p) / jnp.linalg.norm(p)
    np.testing.assert_allclose(grad_cos, expected, rtol=1e-4)
