"""The V2A demo data (bouncing shapes whose sound follows the picture) and its scores."""

import json
import os

import av
import numpy as np
import pytest
from data_fixtures import decoded_frames

from data_pipelines import v2a_demo as V

SR = 16000
N_CLIPS = 8


def read_wave(path: str, sample_rate: int = SR, seconds: float | None = None) -> np.ndarray:
    """Decodes the AAC track (mono float32 at sample_rate), placed by its timestamps."""
    with av.open(path) as c:
        stream = c.streams.audio[0]
        rs = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, start = [], None
        for frame in c.decode(stream):
            if start is None:
                start = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            chunks += [o.to_ndarray().reshape(-1) for o in rs.resample(frame)]
        chunks += [o.to_ndarray().reshape(-1) for o in rs.resample(None)]
    wave = np.concatenate(chunks)
    lead = int(round(start * sample_rate))
    wave = np.concatenate([np.zeros(lead, np.float32), wave]) if lead > 0 else wave[-lead:]
    return wave if seconds is None else wave[: int(round(seconds * sample_rate))]


def lowest_row(frame: np.ndarray) -> int:
    mask = np.abs(frame.astype(int) - V.BACKGROUND).max(-1) > 60
    rows = np.flatnonzero(mask.any(1))
    return int(rows.max()) if len(rows) else -1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2a")
    path = V.generate(str(folder), N_CLIPS, seed=3)
    with open(path, encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh]
    return folder, recs


def clips(n=24, seed=11, **kw):
    return [V.make_clip(np.random.default_rng((seed, i)), **kw) for i in range(n)]


# ---- files --------------------------------------------------------------------------


def test_generate_writes_av_files_and_index(dataset):
    folder, recs = dataset
    assert len(recs) == N_CLIPS
    assert sorted(os.listdir(folder)) == sorted([r["path"] for r in recs] + ["clips.jsonl"])
    for r in recs:
        assert set(r) == {"path", "caption", "colour", "shape", "tone_hz", "bounce_times",
                          "seconds", "fps"}
        assert r["tone_hz"] == V.TONES_HZ[r["colour"]] and r["shape"] in V.SHAPES
        assert not any(c in r["caption"] for c in V.COLOURS)  # pitch must come from pixels
        assert r["bounce_times"] == sorted(r["bounce_times"]) and r["seconds"] == 2.0
        with av.open(str(folder / r["path"])) as c:
            (vs,), (aus,) = c.streams.video, c.streams.audio
            assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
            assert aus.codec_context.name == "aac" and aus.codec_context.sample_rate == SR
            assert aus.codec_context.channels == 1 and float(vs.average_rate) == 16.0
            assert (vs.codec_context.width, vs.codec_context.height) == (64, 64)
            assert sum(1 for _ in c.decode(vs)) == 32
    assert sorted(r["colour"] for r in recs) == sorted(list(V.COLOURS) * (N_CLIPS // 4))


def test_generate_is_deterministic(dataset, tmp_path):
    _, recs = dataset
    again = [json.loads(x) for x in open(V.generate(str(tmp_path / "a"), 3, seed=3))]
    other = [json.loads(x) for x in open(V.generate(str(tmp_path / "b"), 3, seed=4))]
    key = lambda rs: [(r["colour"], r["shape"], r["bounce_times"]) for r in rs]  # noqa: E731
    assert key(again) == key(recs[:3])
    assert [r["bounce_times"] for r in other] != [r["bounce_times"] for r in again]
    a, b = (V.make_clip(np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["wave"], b["wave"])


def test_clip_contract():
    counts = set()
    for c in clips(60, seed=5):
        f, w, b = c["frames"], c["wave"], c["bounce_times"]
        assert f.shape == (32, 64, 64, 3) and f.dtype == np.uint8
        assert w.shape == (32000,) and w.dtype == np.float32 and np.abs(w).max() <= 0.9 + 1e-6
        assert 2 <= len(b) <= 5 and np.all(np.diff(b) >= 0.15)
        assert b[0] >= 0.1 and b[-1] <= 1.9
        assert 0.85 <= c["physics"]["e"] <= 0.95
        colour_px = f[np.abs(f.astype(int) - V.BACKGROUND).max(-1) > 60]
        assert np.abs(np.median(colour_px, 0) - V.COLOURS[c["colour"]]).max() < 20
        counts.add(len(b))
    assert counts >= {2, 3, 4}
    # The fundamental dominates the tone (harmonics included).
    for colour, hz in V.TONES_HZ.items():
        p = V.tone_powers(V.tone(hz, SR, SR), SR, {"f1": hz, "f3": 3 * hz, "f5": 5 * hz})
        assert p["f1"] > 10 * max(p["f3"], p["f5"] if 5 * hz < 0.45 * SR else 0.0), colour


# ---- scores on the real audio ---------------------------------------------------------


def test_real_audio_scores_near_perfect(dataset):
    folder, recs = dataset
    items = [(read_wave(str(folder / r["path"]), SR, r["seconds"]), SR, r["bounce_times"],
              r["colour"]) for r in recs]
    assert all(len(w) == 32000 for w, *_ in items)
    s = V.score_clips(items)
    assert s["detected_fraction"] >= 0.95, s
    assert s["median_error_ms"] <= 20, s
    assert s["false_positives_per_clip"] <= 0.25, s
    assert s["pitch_accuracy"] == 1.0, s
    # And resampled (22.05 kHz), the measurements still hold.
    r = recs[0]
    w = read_wave(str(folder / r["path"]), 22050, r["seconds"])
    m = V.match_onsets(V.detect_onsets(w, 22050), r["bounce_times"])
    assert m["detected_fraction"] == 1.0 and m["median_error_ms"] <= 20, m
    assert V.dominant_tone(w, 22050) == r["colour"]


# ---- the scores can fail --------------------------------------------------------------


def test_steady_tone_and_silence_give_no_onsets():
    rng = np.random.default_rng(0)
    n_onsets = 0
    for hz in V.TONES_HZ.values():
        for _ in range(3):
            n_onsets += len(V.detect_onsets(V.render_audio(rng, 32000, SR, hz, []), SR))
    assert n_onsets <= 1
    assert len(V.detect_onsets(np.zeros(32000), SR)) == 0
    assert len(V.detect_onsets(np.zeros(10), SR)) == 0


def test_shifted_impacts_are_not_matched():
    cs = clips()
    items, chance, n = [], 0, 0
    for i, c in enumerate(cs):
        shifted = c["bounce_times"] + 0.3
        wave = V.render_audio(np.random.default_rng(i), 32000, SR, c["tone_hz"], shifted)
        items.append((wave, SR, c["bounce_times"], c["colour"]))
        # True onsets that some (later) true onset, shifted, lands near by coincidence.
        chance += sum(np.min(np.abs(shifted - t)) <= 0.1 for t in c["bounce_times"])
        n += len(c["bounce_times"])
    s = V.score_clips(items)
    assert s["detected_fraction"] <= chance / n + 0.05 and s["detected_fraction"] < 0.25, s
    assert s["pitch_accuracy"] == 1.0  # the picture's pitch is still right
    aligned = V.score_clips([(c["wave"], SR, c["bounce_times"], c["colour"]) for c in cs])
    assert aligned["detected_fraction"] >= 0.95 and aligned["false_positives_per_clip"] <= 0.1


def test_wrong_colour_tone_gives_wrong_pitch():
    names = list(V.TONES_HZ)
    items = []
    for i, c in enumerate(clips(8)):
        wrong = names[(names.index(c["colour"]) + 1 + i % 3) % 4]
        wave = V.render_audio(np.random.default_rng(i), 32000, SR, V.TONES_HZ[wrong],
                              c["bounce_times"])
        assert V.dominant_tone(wave, SR) == wrong
        items.append((wave, SR, c["bounce_times"], c["colour"]))
    s = V.score_clips(items)
    assert s["pitch_accuracy"] == 0.0 and s["detected_fraction"] >= 0.95


def test_white_noise_scores_badly():
    cs = clips(40)
    items = [(np.random.default_rng(i).normal(0, 0.3, 32000).astype(np.float32), SR,
              c["bounce_times"], c["colour"]) for i, c in enumerate(cs)]
    s = V.score_clips(items)
    assert s["pitch_accuracy"] <= 0.5, s
    # Whatever it detects is unspecific: many unmatched detections, or few matches.
    assert s["false_positives_per_clip"] >= 1.0 or s["detected_fraction"] <= 0.5, s


def test_match_onsets_is_one_to_one_and_greedy():
    m = V.match_onsets([0.50, 0.52, 1.0], [0.51, 0.55], tolerance=0.1)
    # Closest pair first: 0.50 / 0.52 are both 10 ms from 0.51; 0.52 then takes 0.55.
    assert m["matched"] == 2 and m["false_positives"] == 1 and m["detected_fraction"] == 1.0
    assert m["median_error_ms"] == pytest.approx(20.0)
    m = V.match_onsets([0.7], [0.5], tolerance=0.1)
    assert m["detected_fraction"] == 0.0 and np.isnan(m["median_error_ms"])
    assert m["false_positives"] == 1
    assert np.isnan(V.match_onsets([], [])["detected_fraction"])
    assert V.match_onsets([], [0.5])["detected_fraction"] == 0.0


# ---- the picture shows the bounce ---------------------------------------------------------


def test_video_touches_floor_at_bounce_times(dataset):
    # Rendered finely in time, the shape is on the floor at each bounce time.
    for c in clips(18, fps=100.0):
        rows = [lowest_row(f) for f in c["frames"]]
        assert max(rows) <= c["floor_row"]  # never below the floor
        for t in c["bounce_times"]:
            f = int(round(t * 100.0))
            assert c["floor_row"] - rows[f] <= 2, (t, rows[f - 3 : f + 4])
        # ... and well above it half way between bounces.
        for t0, t1 in zip(c["bounce_times"][:-1], c["bounce_times"][1:]):
            assert c["floor_row"] - rows[int(round(50 * (t0 + t1)))] >= 4
    # At 16 fps in the encoded files, the nearest frame is as far from the floor as the
    # impact speed allows in under half a frame (plus rounding).
    folder, recs = dataset
    for i, r in enumerate(recs):
        c = V.make_clip(np.random.default_rng((3, i)), colour=r["colour"], shape=r["shape"])
        assert np.allclose(c["bounce_times"], r["bounce_times"])
        frames, p = decoded_frames(folder / r["path"]), c["physics"]
        v1 = np.sqrt(p["u0"] ** 2 + 2 * p["g"] * p["h0"])
        for k, t in enumerate(r["bounce_times"]):
            f = int(round(t * 16.0))
            if f >= len(frames):
                continue
            bound = v1 * p["e"] ** k * abs(f / 16.0 - t) + 1.5
            assert 0 <= c["floor_row"] - lowest_row(frames[f]) <= bound
