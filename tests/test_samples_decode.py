"""Samples are saved as raw latents first, then decoded (identity or the CogVideoX VAE)
to mp4 + GIF; a failing decoder never loses the latents."""

import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from data_fixtures import decoded_frames
from flax import nnx

from lumina_jax.train.samples import SampleSpec, generate, save_samples

sys.path.insert(0, os.path.dirname(__file__))
from test_export import random_params  # noqa: E402

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from data_pipelines.encoders import make_random_cogvideox_vae

    return make_random_cogvideox_vae(str(tmp_path_factory.mktemp("vae")))


def spec_for(latents, **kw):
    n, _, f, h, w = latents.shape
    return SampleSpec(prompts=tuple(f"clip {i}" for i in range(n)), frames=f, height=h,
                      width=w, seed=7, **kw)


def assert_npz(path, latents, spec):
    with np.load(path) as z:
        np.testing.assert_array_equal(z["latents"], latents)
        assert tuple(z["prompts"]) == spec.prompts and int(z["seed"]) == spec.seed


# diffusers decodes latents in batches of 2 and doubles the frame count twice; the odd
# frame of an odd-length first batch is not doubled: F' even -> 4F', odd -> 4F' - 3.
@pytest.mark.parametrize("latent_frames, frames", [(2, 8), (3, 9)])
def test_vae_decode_writes_npz_then_8x_spatial_mp4s(vae, tmp_path, latent_frames, frames):
    latents = np.random.default_rng(0).normal(size=(2, 16, latent_frames, 4, 6))
    spec = spec_for(latents.astype(np.float32), latent_decoder="cogvideox",
                    latent_decoder_path=vae)
    paths, decoded = save_samples(latents, spec, str(tmp_path), prefix="step1_")
    assert paths[0] == str(tmp_path / "step1_latents.npz")
    assert_npz(paths[0], latents, spec)
    assert [os.path.basename(p) for p in paths[1:]] == ["step1_00_clip_0.mp4",
                                                        "step1_01_clip_1.mp4"]
    assert decoded.shape == (2, frames, 32, 48, 3) and decoded.dtype == np.uint8
    for p in paths[1:]:
        assert decoded_frames(p).shape == (frames, 32, 48, 3)
        assert os.path.exists(p[:-4] + ".gif")


def test_missing_decoder_keeps_the_latents_and_says_where(tmp_path):
    latents = np.zeros((1, 16, 2, 4, 6), np.float32)
    missing = str(tmp_path / "no_vae_here")
    spec = spec_for(latents, latent_decoder="cogvideox", latent_decoder_path=missing)
    with pytest.raises(RuntimeError) as err:
        save_samples(latents, spec, str(tmp_path / "out"))
    npz = str(tmp_path / "out" / "latents.npz")
    assert npz in str(err.value) and missing in str(err.value)
    assert_npz(npz, latents, spec)
    assert sorted(os.listdir(tmp_path / "out")) == ["latents.npz"]


def test_identity_decode_is_the_old_pixel_mapping(tmp_path):
    rng = np.random.default_rng(1)
    latents = rng.uniform(-1.2, 1.2, size=(2, 3, 3, 4, 6)).astype(np.float32)
    paths, decoded = save_samples(latents, spec_for(latents), str(tmp_path))
    # The former to_frames: [-1, 1] -> [0, 255], rounded, channels last.
    old = np.moveaxis(np.clip((latents + 1.0) * 127.5, 0, 255).round().astype(np.uint8), 1, -1)
    np.testing.assert_array_equal(decoded, old)
    assert decoded_frames(paths[1]).shape == (3, 4, 6, 3)
    # Images are written as png.
    paths, _ = save_samples(latents[:, :, :1], spec_for(latents[:, :, :1]), str(tmp_path / "img"))
    assert [os.path.splitext(p)[1] for p in paths] == [".npz", ".png", ".png"]
    np.testing.assert_array_equal(iio.imread(paths[1]), old[0, 0])
    # 16-channel latents cannot be pixels: an error, the latents kept.
    with pytest.raises(RuntimeError, match="takes 3 channels; the latents have 16"):
        save_samples(np.zeros((1, 16, 2, 4, 6), np.float32),
                     spec_for(np.zeros((1, 16, 2, 4, 6))), str(tmp_path / "bad"))
    assert os.path.exists(tmp_path / "bad" / "latents.npz")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from data_pipelines.encoders import make_random_gemma2

    return make_random_gemma2(str(tmp_path_factory.mktemp("gemma")), hidden_size=64)


def gemma_spec(gemma, vae="", **kw):
    return SampleSpec(prompts=("a red fox", "waves at night"), frames=2, height=4, width=6,
                      caption_encoder="gemma", caption_encoder_path=gemma,
                      latent_decoder="cogvideox", latent_decoder_path=vae, **kw)


@pytest.mark.slow
def test_gemma_captions_to_vae_frames_end_to_end(vae, gemma, tmp_path):
    from lumina_jax.model import get_preset

    cfg = get_preset("tiny", in_channels=16, cap_feat_dim=64)
    params = nnx.state(random_params(cfg, seed=0), nnx.Param)
    spec = gemma_spec(gemma, vae, negative_prompt="blurry",
                      settings={"num_steps": 2, "cfg": 3.0})
    latents = generate(cfg, params, spec, progress=False)
    assert latents.shape == (2, 16, 2, 4, 6) and np.isfinite(latents).all()
    assert np.abs(latents[0] - latents[1]).max() > 0  # different seeds and prompts
    paths, decoded = save_samples(latents, spec, str(tmp_path))
    assert decoded.shape == (2, 8, 32, 48, 3)
    assert [os.path.splitext(p)[1] for p in paths] == [".npz", ".mp4", ".mp4"]


def test_system_prompt_goes_before_the_negative_prompt_too(gemma, monkeypatch):
    from lumina_jax.model import get_preset
    from lumina_jax.train import samples

    seen = {}

    def fake_sample(velocity_fn, noise, feats, mask, settings, **kw):
        seen.update(kw, feats=feats)
        return noise

    monkeypatch.setattr(samples, "sample", fake_sample)  # the ODE itself is not under test
    cfg = get_preset("tiny", in_channels=16, cap_feat_dim=64)
    spec = gemma_spec(gemma, system_prompt="SYS: ", negative_prompt="blurry",
                      settings={"cfg": 3.0})
    generate(cfg, nnx.state(random_params(cfg, seed=0), nnx.Param), spec, progress=False)
    pos, _ = samples.encode_prompts(["SYS: a red fox", "SYS: waves at night"], "gemma", gemma)
    neg, _ = samples.encode_prompts(["SYS: blurry"], "gemma", gemma)
    np.testing.assert_array_equal(np.asarray(seen["feats"]), pos)
    np.testing.assert_array_equal(np.asarray(seen["neg_cap_feats"]), neg[0])


def test_sample_spec_decodes_like_the_run_and_fills_data_dir():
    import pathlib

    from lumina_jax.train.config import build, load_config
    from lumina_jax.train.loop import sample_spec

    config_file = pathlib.Path(__file__).parents[1] / "configs" / "lumina_video_2b.py"
    config = load_config(str(config_file), ["--config.data_dir=/data/x",
                                            "--config.sample.latent_decoder_path={data_dir}/vae"])
    exp = build(config, check_data=False)
    spec = sample_spec(exp, prompts=["a boat"])
    assert spec.latent_decoder == "cogvideox" and spec.latent_decoder_path == "/data/x/vae"
    assert spec.prompts == ("a boat",) and spec.caption_encoder_path == ""
    config.sample.prompts = []
    assert sample_spec(build(config, check_data=False)) is None  # no prompts: no samples


def test_each_sample_command_gets_a_new_folder(tmp_path):
    from lumina_jax.cli import _new_folder

    base = str(tmp_path / "samples" / "step0000010_20250101-120000")
    folders = [_new_folder(base) for _ in range(3)]
    assert folders == [base, base + "_2", base + "_3"] and all(map(os.path.isdir, folders))
