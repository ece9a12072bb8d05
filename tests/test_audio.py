"""data_pipelines/audio.py: log-mel <-> waveform, audio latents, vocoders, conditioning
encoders, sync features and writing/muxing audio into video (tiny random models, CPU)."""

import av
import numpy as np
import pytest

from data_pipelines import audio as A
from data_pipelines.video import DecodeError, write_video

S = A.AudioSettings()
SR = S.sample_rate


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * SR)) / SR)).astype(np.float32)


def dominant_hz(wave: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave))) * SR / len(wave))


def mel_spacing_hz(freq: float) -> float:
    """Distance between the mel filter peaks around `freq` (one mel band)."""
    peaks = np.sort(np.argmax(A.mel_filters(S), axis=0) * SR / S.n_fft)
    i = np.searchsorted(peaks, freq)
    return float(peaks[i] - peaks[i - 1])


def test_mel_round_trip_and_identity_latents():
    wave = tone(1000, 0.5)
    wave[len(wave) // 2] += 0.9  # an impulse
    mel = A.log_mel(wave, S)
    assert mel.shape == (S.num_frames(len(wave)), S.n_mels) == (len(wave) // S.hop + 1, 32)
    assert mel.dtype == np.float32 and mel.min() >= np.log(1e-5) - 1e-4
    assert S.frames(0.5) == A.num_frames(8000, S) == 32 and S.num_samples(32) == 31 * S.hop

    rec = A.griffin_lim(mel, S)
    assert rec.dtype == np.float32 and len(rec) == S.num_samples(len(mel))
    mel2 = A.log_mel(rec, S)
    assert mel2.shape == mel.shape
    loud = mel > mel.max() - 6  # bins within e^6 of the peak
    err = np.abs(mel2 - mel)[loud].mean()
    assert err < 0.5, err  # measured 0.40-0.41 nats (seeds 0-4); 0.70 with no iterations
    assert abs(dominant_hz(rec) - 1000) < mel_spacing_hz(1000)
    # The impulse frame stays broadband: its high bands stay far above the tone's frames.
    centre = len(wave) // 2 // S.hop
    assert mel2[centre, -8:].mean() > mel2[2, -8:].mean() + 3

    codec = A.get_audio_latent_encoder("identity")
    assert (codec.channels, codec.time_factor, codec.mel_factor) == (1, 1, 1)
    z = codec.encode(mel)
    assert z.shape == (1, *mel.shape) and z.dtype == np.float32
    np.testing.assert_allclose(codec.decode(z), mel, atol=1e-5)
    # The documented anchors of MEL_MEAN / MEL_STD.
    assert abs(codec.encode(A.log_mel(np.zeros(SR), S)).mean() + 1.0) < 0.05
    assert 0.9 < codec.encode(A.log_mel(tone(1000, 1.0, amp=1.0), S)).max() < 1.2
    with pytest.raises(ValueError, match="unknown audio latent encoder"):
        A.get_audio_latent_encoder("nope")


def test_audioldm_vae(tmp_path):
    with pytest.raises(ValueError, match="--audio-vae-path"):
        A.get_audio_latent_encoder("audioldm")
    codec = A.get_audio_latent_encoder("audioldm", A.make_random_audioldm_vae(str(tmp_path)))
    assert codec.name == "audioldm"
    assert (codec.channels, codec.time_factor, codec.mel_factor) == (8, 2, 2)
    mel = np.random.default_rng(0).normal(-5, 3, (16, 32)).astype(np.float32)
    z = codec.encode(mel)
    assert z.shape == (8, 8, 16) and z.dtype == np.float32 and np.isfinite(z).all()
    out = codec.decode(z)
    assert out.shape == (16, 32) and out.dtype == np.float32
    with pytest.raises(ValueError, match="multiples of 2"):
        codec.encode(mel[:15])


def test_vocoders(tmp_path):
    mel = A.log_mel(tone(440, 0.3), S)
    assert len(A.get_vocoder("griffinlim", s=S).vocode(mel)) == S.num_samples(len(mel))
    with pytest.raises(ValueError, match="--vocoder-path"):
        A.get_vocoder("hifigan")
    voc = A.get_vocoder("hifigan", A.make_random_hifigan(str(tmp_path / "ok")), S)
    wave = voc.vocode(mel)
    assert wave.dtype == np.float32 and wave.shape == (S.num_samples(len(mel)),)
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1
    wrong = A.make_random_hifigan(str(tmp_path / "wrong"), n_mels=24)
    with pytest.raises(ValueError, match="--vocoder-path.*model_in_dim.*24.*32"):
        A.get_vocoder("hifigan", wrong, S)


def test_clip_encoders(tmp_path):
    for get in (A.get_visual_encoder, A.get_text_encoder):
        with pytest.raises(ValueError, match="--clip-path"):
            get("clip")
        with pytest.raises(ValueError, match="unknown"):
            get("nope")
    path = A.make_random_clip(str(tmp_path))
    vis = A.get_visual_encoder("clip", path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 20, 28, 3), dtype=np.uint8)
    frames[2] = 255 - frames[0]
    emb = vis.encode(frames)
    assert emb.shape == (3, vis.dim) == (3, 16) and emb.dtype == np.float32
    assert np.abs(emb[0] - emb[2]).max() > 1e-4  # depends on the frame

    text = A.get_text_encoder("clip", path)
    short, long = text.encode(["a dog barks", "rain on a tin roof at night, then thunder"])
    (fs, ns), (fl, nl) = short, long
    assert fs.dtype == np.float32 and fs.shape == (8, 32) and nl > ns > 2
    assert fl.shape == (-(-nl // 8) * 8, 32)
    assert np.abs(fs[:ns]).sum(1).min() > 0 and not fs[ns:].any()
    assert np.abs(fl[0] - fl[1]).max() > 1e-4  # token-level, not one pooled vector


def test_pixels_and_sync_features():
    enc = A.get_visual_encoder("pixels")
    frames = np.zeros((8, 24, 32, 3), np.uint8)
    frames[5:7] = 255  # the scene is white for frames 5 and 6 (black again at 7)
    feats = enc.encode(frames)
    assert feats.shape == (8, enc.dim) == (8, 192) and feats.dtype == np.float32
    assert (feats[:5] == -1).all() and (feats[5:7] == 1).all() and (feats[7] == -1).all()

    # 8 fps video, 12 steps of 0.1 s: step i looks at frame min(7, floor((i + 0.5) * 0.8)),
    # i.e. frames 0 1 2 2 3 4 5 6 6 7 7 7: white at steps 6-8, changes at steps 6 and 9-11.
    sync = A.sync_features(frames, fps=8.0, num_steps=12, step_seconds=0.1)
    assert sync.shape == (12, A.SYNC_DIM) == (12, 32) and sync.dtype == np.float32
    gray, diff = sync[:, :16], sync[:, 16:]
    white = np.isin(np.arange(12), [6, 7, 8])
    np.testing.assert_allclose(gray[~white], 0)
    np.testing.assert_allclose(gray[white], 1, atol=1e-6)
    changed = [6, 9, 10, 11]
    np.testing.assert_allclose(diff[changed], 1, atol=1e-6)
    np.testing.assert_allclose(np.delete(diff, changed, axis=0), 0)


def streams(path):
    with av.open(path) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        return len(c.streams.video), len(c.streams.audio), n, (v.height, v.width)


def test_write_read_and_mux_audio(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 31, 45, 3), dtype=np.uint8)
    src = str(tmp_path / "src.mp4")
    A.write_av(src, frames, 8.0, tone(440, 1.5), SR)
    assert streams(src) == (1, 1, 12, (32, 46))  # odd sizes padded to even
    wave = A.read_audio(src, SR)
    assert wave.dtype == np.float32 and abs(len(wave) - 1.5 * SR) < S.hop
    assert abs(dominant_hz(wave) - 440) < 2 * SR / len(wave)
    assert abs(A.read_audio(src, 8000).shape[0] - 1.5 * 8000) < S.hop  # resampled

    # A longer wave is trimmed to the 1.5 s video, and stays aligned with it.
    out = str(tmp_path / "out.mp4")
    new = tone(1000, 3.0) * np.linspace(1, 0.2, 3 * SR, dtype=np.float32)
    A.mux_audio(src, new, SR, out)
    assert streams(out) == (1, 1, 12, (32, 46))
    back = A.read_audio(out, SR)
    assert abs(len(back) - 1.5 * SR) < S.hop
    assert abs(dominant_hz(back) - 1000) < 2 * SR / len(back)
    ref = new[: len(back)]
    assert np.dot(back, ref) / np.sqrt(np.dot(back, back) * np.dot(ref, ref)) > 0.9
    # A shorter one is padded with silence.
    A.mux_audio(src, tone(1000, 0.5), SR, out)
    back = A.read_audio(out, SR)
    assert abs(len(back) - 1.5 * SR) < S.hop
    assert np.abs(back[: SR // 2 - 1000]).max() > 0.3
    assert np.abs(back[SR // 2 + 1000 :]).max() < 0.02

    silent = str(tmp_path / "silent.mp4")
    write_video(silent, frames[:, :30, :44], 8.0)
    with pytest.raises(DecodeError, match="no audio stream.*silent.mp4"):
        A.read_audio(silent, SR)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(DecodeError, match="junk.mp4"):
        A.read_audio(str(junk), SR)
