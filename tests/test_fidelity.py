"""Details where the official code differs from the obvious reading (REFERENCE.md §7)."""

import os
import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumina_jax.export import export_params, import_params
from lumina_jax.model import get_preset

sys.path.insert(0, os.path.dirname(__file__))
from test_export import ST, flat_values, random_params  # noqa: E402


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def test_caption_pooling_layernorm_uses_eps_1e5_whatever_norm_eps():
    cfg = get_preset("tiny", norm_eps=1e-6)
    model = random_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    # Pooled features of variance ~1e-5, where eps 1e-5 and 1e-6 differ by ~25%.
    cap = (3e-3 * rng.normal(size=(2, 8, cfg.cap_feat_dim))).astype(np.float32)
    mask = np.arange(8)[None] < np.array([[5], [8]])
    t, motion = np.array([0.3, 0.8], np.float32), np.array([-1.0, -1.0], np.float32)
    got = np.asarray(model.condition(*map(jnp.asarray, (t, cap, mask, motion))))
    # Motion dropped -> zero motion embedding, so condition = t_emb + cap_emb.
    t_emb = np.asarray(model.t_embedder(jnp.asarray(t) * cfg.t_scale), np.float64)
    pooled = (cap * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    norm, lin = model.cap_embedder_norm, model.cap_embedder_linear
    p = lambda v: np.asarray(v[...], np.float64)

    def expected(eps):
        normed = layer_norm(pooled.astype(np.float64), p(norm.weight), p(norm.bias), eps)
        return t_emb + normed @ p(lin.kernel) + p(lin.bias)

    np.testing.assert_allclose(got, expected(1e-5), rtol=1e-4, atol=1e-4)
    assert np.abs(got - expected(1e-6)).max() > 100 * np.abs(got - expected(1e-5)).max()


def test_import_strips_orig_mod_anywhere_in_a_key(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    cfg = get_preset("tiny")
    model = random_params(cfg, seed=4)
    export_params(model, cfg, str(tmp_path), pth=False)
    sd = safetensors_torch.load_file(str(tmp_path / ST))
    # Blocks compiled one by one (`layers.3._orig_mod.attention.wq.weight`), and a whole
    # compiled model around them.
    compiled = {"_orig_mod." + re.sub(r"^layers\.(\d+)\.", r"layers.\1._orig_mod.", k): v
                for k, v in sd.items()}
    assert "_orig_mod.layers.1._orig_mod.attention.wq.weight" in compiled
    torch.save(compiled, str(tmp_path / "compiled.pth"))
    safetensors_torch.save_file(compiled, str(tmp_path / "compiled.safetensors"))
    want = flat_values(nnx.state(model, nnx.Param))
    for name in ("compiled.pth", "compiled.safetensors"):
        got = flat_values(import_params(str(tmp_path / name), cfg))
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (name, k)
