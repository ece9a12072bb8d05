"""Export/import against the official PyTorch state_dict layout (REFERENCE.md §2).

The oracle is lumina_jax/export/torch_nextdit.py, an independent PyTorch model written from
REFERENCE.md; it must load our exported files with strict=True and agree numerically.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumina_jax.export import export_params, import_params, layout, model_args
from lumina_jax.model import NextDiT, get_preset

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from lumina_jax.export.torch_nextdit import MultiScaleNextDiT  # noqa: E402

ST, PTH = "consolidated.00-of-01.safetensors", "consolidated.00-of-01.pth"
EMA_ST, EMA_PTH = "consolidated_ema.00-of-01.safetensors", "consolidated_ema.00-of-01.pth"


def reference_shapes(dim, n_layers, n_heads, kv_heads, c, cap, ffn):
    """REFERENCE.md §2, transcribed by hand."""
    hd, a = dim // n_heads, min(dim, 1024)
    kv = kv_heads * hd
    sd = {}
    for p, pf in ((2, 1), (2, 2), (4, 2)):
        k, feat = f"{p}-{pf}", pf * p * p * c
        sd |= {f"all_x_embedder.{k}.weight": (dim, feat), f"all_x_embedder.{k}.bias": (dim,),
               f"all_final_layer.{k}.linear.weight": (feat, dim),
               f"all_final_layer.{k}.linear.bias": (feat,),
               f"all_final_layer.{k}.adaLN_modulation.1.weight": (dim, a),
               f"all_final_layer.{k}.adaLN_modulation.1.bias": (dim,)}
    for emb in ("t_embedder", "motion_embedder"):
        sd |= {f"{emb}.mlp.0.weight": (a, 256), f"{emb}.mlp.0.bias": (a,),
               f"{emb}.mlp.2.weight": (a, a), f"{emb}.mlp.2.bias": (a,)}
    sd |= {"cap_embedder.0.weight": (cap,), "cap_embedder.0.bias": (cap,),
           "cap_embedder.1.weight": (a, cap), "cap_embedder.1.bias": (a,), "pad_token": (dim,)}
    for i in range(n_layers):
        at = f"layers.{i}.attention."
        sd |= {at + "wq.weight": (dim, dim), at + "wk.weight": (kv, dim),
               at + "wv.weight": (kv, dim), at + "wk_y.weight": (kv, cap),
               at + "wv_y.weight": (kv, cap), at + "wo.weight": (dim, dim),
               at + "gate": (n_heads,), at + "q_norm.weight": (dim,), at + "q_norm.bias": (dim,)}
        for n in ("k_norm", "ky_norm"):
            sd |= {at + n + ".weight": (kv,), at + n + ".bias": (kv,)}
        ly = f"layers.{i}."
        sd |= {ly + "feed_forward.w1.weight": (ffn, dim), ly + "feed_forward.w2.weight": (dim, ffn),
               ly + "feed_forward.w3.weight": (ffn, dim),
               ly + "adaLN_modulation.1.weight": (4 * dim, a), ly + "adaLN_modulation.1.bias": (4 * dim,),
               ly + "attention_y_norm.weight": (cap,)}
        for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            sd[ly + n + ".weight"] = (dim,)
    return sd


def test_layout_2b_gqa_matches_reference():
    cfg = get_preset("2B_GQA")  # abstract shapes only: nothing of 7 GB is allocated
    ours = {e.name: e.shape for e in layout(cfg)}
    ref = reference_shapes(2304, 24, 16, 8, 16, 2304, 6144)
    assert len(ours) == 583 == len(ref)
    assert ours == ref
    assert sum(int(np.prod(s)) for s in ours.values()) == 1_771_364_672
    # The oracle, built on the meta device from our model_args, has exactly this layout.
    with torch.device("meta"):
        tm = MultiScaleNextDiT(**model_args(cfg)["model_kwargs"])
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == ref
    assert model_args(cfg)["model"] == "MultiScaleNextDiT_2B_GQA"
    # Non-GQA and 4B presets: same per-layer structure.
    assert len(layout(get_preset("2B"))) == 583
    assert len(layout(get_preset("4B_GQA"))) == 31 + 23 * 32


def random_params(cfg, seed):
    """A model whose every parameter is random and non-zero (init zeroes several).

    Built from abstract shapes, so no time goes into the real initialisers.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: NextDiT(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(abstract):
        shape, name = var.get_value().shape, path[-1]
        if name == "kernel":  # fan-in scaling keeps activations O(1)
            v = rng.normal(size=shape) / np.sqrt(shape[-2])
        elif name == "weight":  # norm scales
            v = 1.0 + 0.2 * rng.normal(size=shape)
        else:  # biases, gates, pad_token
            v = 0.5 * rng.normal(size=shape)
        flat.append((path, var.copy(jnp.asarray(v, cfg.jnp_dtype("param_dtype")))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@nnx.jit(static_argnames="patch_size")
def forward(model, x, t, cap, mask, motion, patch_size=(2, 1)):
    return model(x, t, cap, mask, motion, patch_size=patch_size)


def inputs(cfg, frames, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, cfg.in_channels, frames, 8, 8)).astype(np.float32)
    cap = rng.normal(size=(2, 8, cfg.cap_feat_dim)).astype(np.float32)
    mask = np.arange(8)[None] < np.array([[5], [8]])  # item 0 has a padded caption
    t = np.array([0.3, 0.8], np.float32)
    motion = np.array([-1.0, 2.5], np.float32)  # item 0: motion score dropped
    return x, t, cap, mask, motion


def torch_model_from(out_dir, name=ST):
    with open(os.path.join(out_dir, "model_args.json")) as f:
        tm = MultiScaleNextDiT(**json.load(f)["model_kwargs"])
    tm.load_state_dict(safetensors_torch.load_file(os.path.join(out_dir, name)), strict=True)
    return tm.eval()


CASES = [((2, 1), 1), ((2, 1), 3), ((2, 2), 1), ((2, 2), 4), ((4, 2), 1), ((4, 2), 4)]


@pytest.mark.parametrize("kv_heads", [2, None], ids=["gqa", "mha"])
def test_forward_matches_torch(tmp_path, kv_heads):
    cfg = get_preset("tiny", n_kv_heads=kv_heads)
    model = random_params(cfg, seed=1)
    export_params(model, cfg, str(tmp_path), pth=False)
    tm = torch_model_from(str(tmp_path))
    worst, scale = 0.0, 0.0
    for patch, frames in CASES:
        x, t, cap, mask, motion = inputs(cfg, frames)
        ours = np.asarray(forward(model, *map(jnp.asarray, (x, t, cap, mask, motion)),
                                  patch_size=patch))
        with torch.no_grad():
            ref = tm(*map(torch.from_numpy, (x, t, cap, mask, motion)), patch_size=patch).numpy()
        assert ours.shape == ref.shape == x.shape
        assert np.abs(ref).max() > 0.1  # non-trivial output
        diff = np.abs(ours - ref).max()
        worst, scale = max(worst, diff), max(scale, np.abs(ref).max())
        np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max(), rtol=0,
                                   err_msg=f"patch {patch} frames {frames}")
    print(f"max |jax - torch| ({'gqa' if kv_heads else 'mha'}): {worst:.3g} "
          f"(max |out| {scale:.3g})")


def flat_values(state):
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


def test_export_files_and_bit_exact_round_trip(tmp_path):
    cfg = get_preset("tiny")
    model, ema = random_params(cfg, seed=2), random_params(cfg, seed=3)
    params = nnx.state(model, nnx.Param)
    out = str(tmp_path)
    export_params(params, cfg, out, ema_params=nnx.state(ema, nnx.Param))
    for name in (ST, PTH, EMA_ST, EMA_PTH, "model_args.json", "model_args.pth"):
        assert os.path.exists(os.path.join(out, name)), name

    # Files: fp32, 77 tensors (31 + 23 * 2 layers), .pth identical to .safetensors.
    st = safetensors_torch.load_file(os.path.join(out, ST))
    pth = torch.load(os.path.join(out, PTH), weights_only=True)
    assert len(st) == 31 + 23 * cfg.n_layers and list(pth) == list(layout_names(cfg))
    for k, v in st.items():
        assert v.dtype == torch.float32 and torch.equal(v, pth[k]), k
    args = torch.load(os.path.join(out, "model_args.pth"), weights_only=False)
    assert args.model_kwargs == model_args(cfg)["model_kwargs"]
    assert (args.patch_sizes, args.f_patch_sizes) == ([2, 2, 4], [1, 2, 2])
    # The EMA file holds the EMA weights and loads strictly too.
    tm_ema = torch_model_from(out, EMA_ST)
    assert np.array_equal(tm_ema.layers[1].attention.wq.weight.detach().numpy(),
                          np.asarray(ema.layers.attention.wq.kernel[...][1]).T)

    # JAX -> torch file -> JAX is bit-exact, from either format.
    want = flat_values(params)
    for path in (os.path.join(out, ST), os.path.join(out, PTH), out):
        got = flat_values(import_params(path, cfg))
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (path, k)
    assert np.array_equal(flat_values(import_params(os.path.join(out, EMA_PTH), cfg))[
        ("pad_token",)], np.asarray(ema.pad_token[...]))

    # A file written by torch itself (torch.compile's "_orig_mod." prefix) imports too,
    # and the imported state drives our model.
    tm = torch_model_from(out)
    prefixed = {"_orig_mod." + k: v for k, v in tm.state_dict().items()}
    torch.save(prefixed, os.path.join(out, "compiled.pth"))
    safetensors_torch.save_file(prefixed, os.path.join(out, "compiled.safetensors"))
    for name in ("compiled.pth", "compiled.safetensors"):
        got = flat_values(import_params(os.path.join(out, name), cfg))
        assert all(np.array_equal(got[k], want[k]) for k in want), name
    fresh = random_params(cfg, seed=9)
    nnx.update(fresh, import_params(out, cfg))
    batch = tuple(map(jnp.asarray, inputs(cfg, 1)))
    np.testing.assert_array_equal(np.asarray(forward(fresh, *batch)),
                                  np.asarray(forward(model, *batch)))


def layout_names(cfg):
    return [e.name for e in layout(cfg)]


def test_import_rejects_mismatched_files(tmp_path):
    cfg = get_preset("tiny")
    out = str(tmp_path)
    export_params(random_params(cfg, seed=0), cfg, out, pth=False)
    path = os.path.join(out, ST)

    # Another config: the first bad key is named with expected vs found shapes.
    with pytest.raises(ValueError, match=r"first bad key 'all_final_layer.2-1.linear.bias': "
                                         r"expected shape \(24,\), found \(16,\)"):
        import_params(path, get_preset("tiny", in_channels=6))
    with pytest.raises(ValueError, match=r"46 missing keys.*layers.2."):
        import_params(path, get_preset("tiny", n_layers=4))

    sd = safetensors_torch.load_file(path)
    sd["extra.weight"] = torch.zeros(3)
    del sd["pad_token"]
    safetensors_torch.save_file(sd, os.path.join(out, "bad.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing keys, e.g. \['pad_token'\]; "
                                         r"1 unexpected keys, e.g. \['extra.weight'\]"):
        import_params(os.path.join(out, "bad.safetensors"), cfg)


def test_bf16_params_export_fp32_and_import_bf16(tmp_path):
    cfg = get_preset("tiny", param_dtype="bfloat16")
    params = nnx.state(random_params(cfg, seed=4), nnx.Param)
    out = str(tmp_path)
    export_params(params, cfg, out, pth=False)
    st = safetensors_torch.load_file(os.path.join(out, ST))
    assert all(v.dtype == torch.float32 for v in st.values())
    want = flat_values(params)
    # bf16 -> fp32 file -> bf16 is exact; a bf16 safetensors file is accepted too.
    safetensors_torch.save_file({k: v.bfloat16() for k, v in st.items()},
                                os.path.join(out, "bf16.safetensors"))
    for path in (os.path.join(out, ST), os.path.join(out, "bf16.safetensors")):
        got = flat_values(import_params(path, cfg))
        for k in want:
            assert got[k].dtype == jnp.bfloat16 and np.array_equal(got[k], want[k]), (path, k)
