"""Multi-scale Next-DiT: shapes, init, parameter count, RoPE, conditioning, scan."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumina_jax.model import NextDiT, count_params, get_preset, patchify, unpatchify
from lumina_jax.model.layers import apply_rope
from lumina_jax.model.rope import grid_tables

CFG = get_preset("tiny")


def randomize(model: NextDiT, seed: int = 0, std: float = 0.2) -> NextDiT:
    """Give every parameter random non-zero values (init zeroes several layers)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def inputs(cfg=CFG, b=2, frames=4, hw=(16, 16), cap_len=8, n_valid=(8, 5), seed=1):
    ks = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(ks[0], (b, cfg.in_channels, frames, *hw))
    cap = jax.random.normal(ks[1], (b, cap_len, cfg.cap_feat_dim))
    mask = jnp.arange(cap_len)[None] < jnp.asarray(n_valid)[:, None]
    t = jax.random.uniform(ks[2], (b,))
    motion = jnp.linspace(0.5, 4.0, b)
    return x, t, cap, mask, motion


@nnx.jit(static_argnames="patch_size")
def forward(model, x, t, cap, mask, motion, patch_size):
    return model(x, t, cap, mask, motion, patch_size=patch_size)


@pytest.fixture(scope="module")
def random_model():
    return randomize(NextDiT(CFG, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("patch_size", CFG.patch_sizes)
@pytest.mark.parametrize("frames", [1, 4])
def test_output_shape_and_zero_init(patch_size, frames):
    model = NextDiT(CFG, rngs=nnx.Rngs(0))
    x, t, cap, mask, motion = inputs(frames=frames)
    out = forward(model, x, t, cap, mask, motion, patch_size)
    assert out.shape == x.shape
    assert float(jnp.max(jnp.abs(out))) == 0.0  # zero-initialised final layers


@pytest.mark.parametrize("patch_size", CFG.patch_sizes)
def test_random_model_output_shape_and_nonzero(random_model, patch_size):
    x, t, cap, mask, motion = inputs(frames=1)
    out = forward(random_model, x, t, cap, mask, motion, patch_size)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out)) > 1e-3


def test_image_with_temporal_patch_is_the_repeated_image(random_model):
    """An image fed with pF=2 equals a 2-frame clip of that image, first frame kept."""
    x, t, cap, mask, motion = inputs(frames=1)
    img = forward(random_model, x, t, cap, mask, motion, (2, 2))
    clip = forward(random_model, jnp.repeat(x, 2, axis=2), t, cap, mask, motion, (2, 2))
    np.testing.assert_array_equal(np.asarray(img), np.asarray(clip[:, :, :1]))


def test_parameter_count_2b_gqa_without_allocating():
    assert count_params(get_preset("2B_GQA")) == 1_771_364_672


def test_patchify_layout_and_inverse():
    x = jnp.arange(2 * 3 * 4 * 4 * 8, dtype=jnp.float32).reshape(2, 3, 4, 4, 8)
    tok = patchify(x, p=2, pf=2)
    assert tok.shape == (2, 2 * 2 * 4, 2 * 2 * 2 * 3)
    # token (f=1, h=0, w=2) is index 1*2*4 + 0*4 + 2; feature (pf=1, ph=0, pw=1, c=2)
    # is index ((1*2 + 0)*2 + 1)*3 + 2; it holds x[b, c=2, f=1*2+1, h=0*2+0, w=2*2+1].
    np.testing.assert_array_equal(tok[1, 10, 17], x[1, 2, 3, 0, 5])
    np.testing.assert_array_equal(unpatchify(tok, (2, 2, 4), 2, 2, 3), x)


def test_rope_table_matches_formula_and_is_shared_across_patch_sizes():
    cfg = get_preset("2B_GQA")  # head_dim 144 -> parts 36/54/54
    assert cfg.rope_dims == (36, 54, 54)
    fine_cos, fine_sin = grid_tables(cfg, (6, 8, 10))   # e.g. a 1x2 token grid
    coarse_cos, _ = grid_tables(cfg, (3, 4, 5))          # a 2x4 grid of the same clip
    fine_cos = np.asarray(fine_cos).reshape(6, 8, 10, 72)
    coarse_cos = np.asarray(coarse_cos).reshape(3, 4, 5, 72)
    np.testing.assert_array_equal(coarse_cos, fine_cos[:3, :4, :5])
    # Independent formula for token (f, h, w) = (2, 5, 7).
    f, h, w = 2, 5, 7
    angles = []
    for pos, d in zip((f, h, w), cfg.rope_dims):
        angles.append(pos / 256.0 ** (np.arange(0, d, 2) / d))
    angles = np.concatenate(angles)
    np.testing.assert_allclose(np.asarray(fine_sin).reshape(6, 8, 10, 72)[f, h, w],
                               np.sin(angles), atol=1e-5)
    np.testing.assert_allclose(fine_cos[f, h, w], np.cos(angles), atol=1e-5)


def test_rope_is_interleaved():
    """Pair (x[2i], x[2i+1]) rotates as one complex number by angle_i."""
    d = 8
    x = jnp.zeros((1, 1, 1, d)).at[..., 2].set(1.0)  # real part of pair 1
    angle = 0.3
    cos = jnp.ones((1, d // 2)).at[0, 1].set(np.cos(angle))
    sin = jnp.zeros((1, d // 2)).at[0, 1].set(np.sin(angle))
    out = np.asarray(apply_rope(x, cos, sin))[0, 0, 0]
    np.testing.assert_allclose(out, [0, 0, np.cos(angle), np.sin(angle), 0, 0, 0, 0], atol=1e-7)


def test_caption_padding_does_not_change_output(random_model):
    x, t, cap, mask, motion = inputs(cap_len=8, n_valid=(8, 5))
    ref = forward(random_model, x, t, cap, mask, motion, (2, 1))
    garbage = 100.0 * jax.random.normal(jax.random.key(9), (2, 16, CFG.cap_feat_dim))
    padded = garbage.at[:, :8].set(jnp.where(mask[..., None], cap, garbage[:, :8]))
    padded_mask = jnp.arange(16)[None] < jnp.array([8, 5])[:, None]
    out = forward(random_model, x, t, padded, padded_mask, motion, (2, 1))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    # The check can fail: unmasking the garbage changes the output.
    leaky = forward(random_model, x, t, padded, jnp.ones_like(padded_mask), motion, (2, 1))
    assert float(jnp.max(jnp.abs(leaky - ref))) > 1e-3


def test_motion_conditioning(random_model):
    x, t, cap, mask, _ = inputs()
    run = lambda m, motion: forward(m, x, t, cap, mask, jnp.asarray(motion), (2, 2))
    low, high = run(random_model, [1.0, 1.0]), run(random_model, [5.0, 5.0])
    assert float(jnp.max(jnp.abs(low - high))) > 1e-3
    dropped = run(random_model, [-1.0, -7.0])
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(run(random_model, [-3.0, -1.0])))
    # "Dropped" equals a model whose motion embedder contributes nothing.
    no_motion = randomize(NextDiT(CFG, rngs=nnx.Rngs(0)))
    last = no_motion.motion_embedder.mlp_2
    last.kernel[...] = jnp.zeros_like(last.kernel[...])
    last.bias[...] = jnp.zeros_like(last.bias[...])
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(run(no_motion, [2.0, 3.0])),
                               atol=1e-6)


def _hlo_for(n_layers, scan_unroll=1):
    # xla attention: the chunked path has loops of its own.
    cfg = get_preset("tiny", n_layers=n_layers, scan_unroll=scan_unroll, attention_impl="xla")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NextDiT(cfg, rngs=nnx.Rngs(0))))
    x, t, cap, mask, motion = inputs(cfg)

    def f(state, *args):
        return nnx.merge(graphdef, state)(*args, patch_size=(2, 1))

    return jax.jit(f).lower(state, x, t, cap, mask, motion).as_text()


def _n_dots(text):
    return len(re.findall(r"stablehlo\.dot_general", text))


def test_layers_are_scanned_not_unrolled():
    """The compiled forward holds one block body whatever the depth."""
    two, four = _hlo_for(2), _hlo_for(4)
    assert _n_dots(two) == _n_dots(four)
    assert "stablehlo.while" in four


def test_scan_unroll_unrolls_and_keeps_values():
    assert "stablehlo.while" in _hlo_for(4, scan_unroll=2)  # two blocks per iteration
    assert "stablehlo.while" not in _hlo_for(4, scan_unroll=4)
    x, t, cap, mask, motion = inputs()
    out = lambda cfg: randomize(NextDiT(cfg, rngs=nnx.Rngs(0)))(
        x, t, cap, mask, motion, patch_size=(2, 2))
    np.testing.assert_allclose(np.asarray(out(get_preset("tiny", scan_unroll=2))),
                               np.asarray(out(CFG)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_values_and_gradients(remat):
    x, t, cap, mask, motion = inputs()

    def loss_and_grad(cfg):
        model = randomize(NextDiT(cfg, rngs=nnx.Rngs(0)))
        loss = lambda m: jnp.mean(m(x, t, cap, mask, motion, patch_size=(2, 2)) ** 2)
        return nnx.jit(nnx.value_and_grad(loss))(model)

    (l0, g0), (l1, g1) = loss_and_grad(CFG), loss_and_grad(get_preset("tiny", remat=remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


def test_bf16_compute_with_fp32_params(random_model):
    cfg = get_preset("tiny", dtype="bfloat16")
    model = NextDiT(cfg, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(random_model, nnx.Param))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    x, t, cap, mask, motion = inputs()
    out = forward(model, x, t, cap, mask, motion, (2, 1))
    ref = forward(random_model, x, t, cap, mask, motion, (2, 1))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert 0 < rel < 0.05


def test_every_parameter_has_logical_axes():
    model = nnx.eval_shape(lambda: NextDiT(CFG, rngs=nnx.Rngs(0)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.value.ndim, (path, axes)
        assert (axes[0] == "layers") == (path[0] == "layers"), (path, axes)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert tuple(specs["layers"]["attention"]["wq"]["kernel"].value) == ("layers", "embed", "heads")


def test_bad_inputs_are_rejected_with_clear_errors():
    model = NextDiT(CFG, rngs=nnx.Rngs(0))
    x, t, cap, mask, motion = inputs()
    with pytest.raises(ValueError, match="patch_size"):
        model(x, t, cap, mask, motion, patch_size=(8, 1))
    with pytest.raises(ValueError, match="divisible by pF"):
        model(x[:, :, :3], t, cap, mask, motion, patch_size=(2, 2))
    with pytest.raises(ValueError, match="cap_feats"):
        model(x, t, cap[..., :5], mask, motion, patch_size=(2, 1))
    with pytest.raises(ValueError, match="n_kv_heads"):
        get_preset("tiny", n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("7B")
