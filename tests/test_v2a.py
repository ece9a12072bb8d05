"""Lumina-V2A end to end: the model, prepared clips and their resumable stream, and the
three commands (prepare --v2a, train configs/v2a_demo.py:tiny with a resume, v2a)."""

import json
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import made_once
from flax import nnx
from train_helpers import COMPILE_CACHE, ROOT, per_step

from data_pipelines import make_iterator, task_from_dict
from lumina_jax.model import build_model, get_preset

V2A_CONFIG = str(ROOT / "configs" / "v2a_demo.py") + ":tiny"


@pytest.fixture(scope="session")
def v2a_clips(tmp_path_factory, worker_id):
    """Six demo clips with sound, prepared (the folder has clips/ and prepared/)."""
    def make(folder):
        from data_pipelines import v2a_demo

        v2a_demo.generate(str(folder / "clips"), 6, seed=3)
        proc = subprocess.run(
            [sys.executable, "-m", "lumina_jax.cli", "prepare", "--v2a", "--input",
             str(folder / "clips" / "clips.jsonl"), "--output", str(folder / "prepared")],
            capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    return made_once(tmp_path_factory, worker_id, "v2a_clips", make)


def _inputs(cfg, b=2, steps=16, mels=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(x=jnp.asarray(rng.standard_normal((b, cfg.in_channels, 1, steps, mels)),
                              jnp.float32),
                t=jnp.full((b,), 0.3), cap_feats=jnp.asarray(
                    rng.standard_normal((b, 5, cfg.cap_feat_dim)), jnp.float32),
                cap_mask=jnp.arange(5)[None] < jnp.array([[5], [2]]),
                frames=jnp.asarray(rng.standard_normal((b, 7, cfg.frame_dim)), jnp.float32),
                sync=jnp.asarray(rng.uniform(0, 1, (b, steps, cfg.sync_dim)), jnp.float32))


@pytest.mark.slow
def test_model_is_conditioned_on_frames_sync_and_text():
    cfg = get_preset("v2a_tiny")
    model = build_model(cfg, seed=1)
    # zero-initialised outputs and gates hide every condition at init: randomise them
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape),
                                   state))
    inp = _inputs(cfg)
    forward = nnx.jit(lambda m, inp: m(**inp, patch_size=(4, 1)))  # one compile
    out = forward(model, inp)
    assert out.shape == inp["x"].shape and bool(jnp.all(jnp.isfinite(out)))
    for name in ("frames", "sync", "cap_feats"):
        changed = dict(inp, **{name: inp[name] + 1.0})
        delta = jnp.abs(forward(model, changed) - out).max()
        assert delta > 1e-3, name
    # sync is per token: changing only the last time steps moves those tokens most
    late = dict(inp, sync=inp["sync"].at[:, 12:].add(3.0))
    delta = jnp.abs(forward(model, late) - out).mean(axis=(0, 1, 2, 4))
    assert delta[12:].mean() > 2 * delta[:12].mean(), delta
    with pytest.raises(ValueError, match="sync must be"):
        model(**dict(inp, sync=inp["sync"][:, :8]), patch_size=(4, 1))


def test_prepared_clips_stream_resumes_and_drops_conditions(v2a_clips):
    meta = json.loads((v2a_clips / "prepared" / "prepared.json").read_text())
    assert meta["kind"] == "v2a" and meta["num_examples"] == 6
    examples = [json.loads(line) for line in
                (v2a_clips / "prepared" / "examples.jsonl").read_text().splitlines()]
    assert all(ex["bounce_times"] and ex["colour"] for ex in examples)  # truth kept
    task = task_from_dict({"media": "audio", "batch_size": 4, "caption_len": 16,
                           "visual_keep_prob": 0.5, "sources": {
                               "demo": {"path": str(v2a_clips / "prepared")}}})
    it = make_iterator(task, 0, 1)
    first = next(it)
    assert first["latents"].shape == (4, 1, 1, 120, 32)  # 1.92 s of 16 kHz / hop 256
    assert first["frames"].shape == (4, 31, 192) and first["sync"].shape == (4, 120, 32)
    assert first["cap_feats"].shape == (4, 16, 384) and first["cap_mask"].dtype == bool
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    it2 = make_iterator(task, 0, 1)
    it2.set_state(state)
    for a in after:
        b = next(it2)
        for k in ("latents", "frames", "sync", "cap_feats"):
            np.testing.assert_array_equal(a[k], b[k])
    dropped = [np.all(x["frames"] == 0, axis=(1, 2)) for x in [first, *after]]
    assert 0 < np.concatenate(dropped).mean() < 1  # some clips lose their video
    # two hosts split the clips
    paths = {h: {p for _ in range(4) for p in next(make_iterator(
        task_from_dict({**{"media": "audio", "batch_size": 1}, "sources": {
            "demo": {"path": str(v2a_clips / "prepared")}}}), h, 2))["path"]}
        for h in (0, 1)}
    assert not paths[0] & paths[1]


def test_train_resume_v2a_command_and_export_refusal(v2a_clips, tmp_path):
    def cli(*args, timeout=600):
        return subprocess.run([sys.executable, "-m", "lumina_jax.cli", *args],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    workdir = tmp_path / "run"
    common = ["--config", V2A_CONFIG, "--workdir", str(workdir),
              f"--config.data_dir={v2a_clips}",
              f"--config.compilation_cache_dir={COMPILE_CACHE}"]
    proc = cli("train", *common, "--config.stages.0.steps=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = cli("train", *common)  # 4 steps: resumes at 2
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resumed from step 2" in proc.stdout + proc.stderr
    records = per_step(workdir)
    assert sorted(records) == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in
                                                   records.values())
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if "eval/loss/audio" in line]
    assert [e["step"] for e in evals] == [2, 4]  # every 2 steps, resumed run included
    assert all(np.isfinite(e["eval/loss_t0.5/audio"]) for e in evals)
    assert "eval at step 4 (fixed training batches, EMA weights" in proc.stdout + proc.stderr

    video = v2a_clips / "clips" / "clip_00000.mp4"
    out = tmp_path / "with_sound.mp4"
    proc = cli("v2a", "--checkpoint", str(workdir), "--video", str(video), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "checkpoint step 4" in proc.stdout
    with av.open(str(out)) as c:
        kinds = sorted(s.type for s in c.streams)
        frames = c.streams.video[0].frames
    with av.open(str(video)) as c:
        assert frames == c.streams.video[0].frames
    assert kinds == ["audio", "video"]
    assert (tmp_path / "with_sound.mel.png").stat().st_size > 1000
    again = cli("v2a", "--checkpoint", str(workdir), "--video", str(video), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr  # nothing overwritten

    refused = cli("export", "--checkpoint", str(workdir), "--out", str(tmp_path / "export"))
    assert refused.returncode == 2 and "v2a run" in refused.stderr


def test_external_encoders_at_tiny_random_weights_fit_the_model(v2a_clips, tmp_path):
    """prepare --v2a with the AudioLDM-style VAE and CLIP (vision + text), then a model
    sized from prepared.json trains on the batch and the HiFi-GAN vocoder decodes it."""
    from data_pipelines import audio
    from data_pipelines.v2a import prepare_v2a, window_steps
    from lumina_jax.diffusion.loss import TaskSpec, task_loss
    from lumina_jax.v2a import decode_audio

    vae = audio.make_random_audioldm_vae(str(tmp_path / "vae"))
    clip = audio.make_random_clip(str(tmp_path / "clip"))
    hifigan = audio.make_random_hifigan(str(tmp_path / "hifigan"))
    meta = prepare_v2a(str(v2a_clips / "clips" / "clips.jsonl"), str(tmp_path / "prepared"),
                       audio_latent_encoder="audioldm", audio_latent_encoder_path=vae,
                       visual_encoder="clip", visual_encoder_path=clip,
                       caption_encoder="clip", caption_encoder_path=clip)
    assert meta["num_examples"] == 6 and meta["time_factor"] == meta["mel_factor"] == 2
    batch = next(make_iterator(task_from_dict({"media": "audio", "batch_size": 2, "sources": {
        "demo": {"path": str(tmp_path / "prepared")}}}), 0, 1))
    steps = window_steps(2.0, audio.AudioSettings(), 2)  # 2 s -> 126 mel frames -> 56 steps
    assert steps == 56 and batch["latents"].shape == (2, meta["latent_channels"], 1, steps, 16)
    cfg = get_preset("v2a_tiny", in_channels=meta["latent_channels"],
                     frame_dim=meta["frame_dim"], cap_feat_dim=meta["cap_feat_dim"])
    model = build_model(cfg)
    batch = {k: jnp.asarray(batch[k]) for k in ("latents", *model.inputs)}
    loss, _ = task_loss(model, jax.random.key(0), batch, TaskSpec("audio", (4, 1), 1.0))
    assert np.isfinite(float(loss))
    mel, wave = decode_audio(np.asarray(batch["latents"][0]), meta, "hifigan", hifigan)
    assert mel.shape == (2 * steps, 32)
    assert len(wave) == audio.AudioSettings().num_samples(2 * steps)
