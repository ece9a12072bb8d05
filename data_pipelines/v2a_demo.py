"""Audio-visual demo data for Lumina-V2A, and the measurements that score generated audio.

Each clip is one coloured shape falling under gravity and bouncing on the floor of a dark
frame. The sound follows the picture:
  pitch   a continuous tone whose pitch is set by the colour (TONES_HZ); the caption never
          names the colour, so the pitch can only be learned from the pixels;
  timing  a broadband impact (noise burst, fast attack, ~40 ms exponential decay) at each
          floor contact, at the exact contact time from the physics (not frame-quantised).

Measurements (work on any waveform, e.g. a vocoder's output):
  detect_onsets   spectral flux of a compressed-log STFT in ONSET_BAND_HZ (above the tone
                  fundamentals), adaptive threshold, peak picking with a minimum gap;
  match_onsets    one-to-one greedy matching of detected to true onsets within a tolerance;
  dominant_tone   which colour's fundamental carries the most power;
  score_clips     the pooled scores a benchmark prints.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from data_pipelines import audio
from data_pipelines.demo import SHAPES, _draw

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
TONES_HZ = {"red": 300.0, "green": 600.0, "blue": 1200.0, "yellow": 2400.0}
CAPTION = "the sound of a bouncing shape"
BACKGROUND = 24

TONE_AMPLITUDE = 0.15
# Odd harmonics only (relative amplitude): 3x and 5x of one colour never land on another
# colour's fundamental (2x and 4x of red would be green and blue).
TONE_HARMONICS = ((1, 1.0), (3, 0.25), (5, 0.1))
IMPACT_AMPLITUDE = 0.6
ONSET_BAND_HZ = (3000.0, 6500.0)

_N_FFT = 128       # 8 ms at 16 kHz: sharp in time; the band is wide, so resolution is moot
_HOP = 32          # 2 ms
_ONSET_DELAY_S = 0.0  # peak-vs-onset offset of the flux; measured ~-0.5 ms, so none


# ---- clips --------------------------------------------------------------------------


def floor_row(size: int) -> int:
    """The image row the shape's lowest pixel row reaches at a floor contact."""
    return size - 1 - max(1, size // 32)


def _bounce_times(h0: float, u0: float, g: float, e: float, seconds: float) -> np.ndarray:
    """Contact times of a ball dropped from height h0 with upward speed u0 (restitution e)."""
    v = math.sqrt(u0 * u0 + 2 * g * h0)  # speed at the first contact
    t = (u0 + v) / g
    out = []
    while t < seconds and v > 1e-6:
        out.append(t)
        v *= e
        t += 2 * v / g
    return np.asarray(out, np.float64)


def _heights(times: np.ndarray, h0, u0, g, e, bounces: np.ndarray) -> np.ndarray:
    """Height above the floor contact position at each of `times` (exact piecewise parabola)."""
    out = np.empty(len(times))
    v1 = math.sqrt(u0 * u0 + 2 * g * h0)
    for i, t in enumerate(times):
        k = int(np.searchsorted(bounces, t, side="right"))  # contacts at or before t
        if k == 0:
            out[i] = h0 + u0 * t - 0.5 * g * t * t
        else:
            dt = t - bounces[k - 1]
            up = v1 * e**k
            out[i] = up * dt - 0.5 * g * dt * dt
    return np.maximum(out, 0.0)


def _sample_physics(rng: np.random.Generator, seconds: float, size: int):
    r = round(size / 8)
    floor_c = floor_row(size) - r                       # centre row at a contact
    top = r + max(2, size // 32)                        # highest allowed centre row
    span = floor_c - top                                # max height above the contact
    for _ in range(10_000):
        e = rng.uniform(0.85, 0.95)
        g = rng.uniform(2.0, 12.0) * size               # px / s^2
        h0 = rng.uniform(0.25, 1.0) * span
        u0 = rng.uniform(-0.5, 0.5) * math.sqrt(2 * g * span)
        if h0 + max(u0, 0) ** 2 / (2 * g) > span:
            continue
        b = _bounce_times(h0, u0, g, e, seconds + 1.0)
        inside = b[b < seconds]
        if not 2 <= len(inside) <= 5:
            continue
        if inside[0] < 0.1 or inside[-1] > seconds - 0.1:
            continue
        if np.any(np.diff(inside) < 0.15):
            continue
        return dict(r=r, floor_c=floor_c, e=e, g=g, h0=h0, u0=u0), inside
    raise RuntimeError("could not sample bouncing physics")  # pragma: no cover


def _impact(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One broadband impact: noise with a random spectral tilt, ~1 ms attack, exp decay."""
    tau = rng.uniform(0.008, 0.012)                     # -> ~35-55 ms to -40 dB
    n = int(6 * tau * sample_rate)
    noise = rng.uniform(-1.0, 1.0, n)
    tilt = rng.uniform(-0.5, 0.5)                       # one-pole tilt: +low / -high
    noise = noise + tilt * np.concatenate([[0.0], noise[:-1]])
    noise /= np.max(np.abs(noise)) + 1e-9
    t = np.arange(n) / sample_rate
    attack = np.minimum(1.0, t / 0.001)
    return IMPACT_AMPLITUDE * rng.uniform(0.85, 1.15) * attack * np.exp(-t / tau) * noise


def tone(tone_hz: float, n: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    """The steady colour tone (fundamental plus weak odd harmonics below Nyquist), faded in/out."""
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for k, a in TONE_HARMONICS:
        if k * tone_hz < 0.45 * sample_rate:
            out += a * np.sin(2 * np.pi * k * tone_hz * t + k * phase)
    # 10 ms raised-cosine fades: an abrupt start or end of the tone would be a broadband click.
    m = min(n // 2, int(0.01 * sample_rate))
    if m:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        out[:m] *= ramp
        out[n - m :] *= ramp[::-1]
    return TONE_AMPLITUDE * out


def render_audio(
    rng: np.random.Generator,
    n: int,
    sample_rate: int,
    tone_hz: float | None,
    bounce_times,
    normalise: bool = True,
) -> np.ndarray:
    """float32 [n]: the tone (None: no tone) plus an impact at each of `bounce_times`."""
    wave = np.zeros(n)
    if tone_hz is not None:
        wave += tone(tone_hz, n, sample_rate, rng.uniform(0, 2 * np.pi))
    for tb in bounce_times:
        hit = _impact(rng, sample_rate)
        i = int(round(tb * sample_rate))
        if i >= n or i + len(hit) <= 0:
            continue
        j0 = max(0, -i)
        seg = hit[j0 : n - i]
        wave[i + j0 : i + j0 + len(seg)] += seg
    peak = np.max(np.abs(wave)) if n else 0.0
    if normalise and peak > 0.9:
        wave *= 0.9 / peak
    return wave.astype(np.float32)


def make_clip(
    rng: np.random.Generator,
    seconds: float = 2.0,
    fps: float = 16.0,
    size: int = 64,
    sample_rate: int = 16000,
    colour: str | None = None,
    shape: str | None = None,
) -> dict:
    """One bouncing-shape clip with its soundtrack (see the module docstring).

    Returns frames uint8 [F, size, size, 3] (frame f shows time f / fps), wave float32
    [round(seconds * sample_rate)], bounce_times (s, sorted, exact), colour, shape, tone_hz,
    caption, plus floor_row (the lowest shape row at a contact) and physics (the sampled
    parameters, pixels and seconds).
    """
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    phys, bounces = _sample_physics(rng, seconds, size)
    r = phys["r"]
    lo, hi = r + 3, size - 1 - r - 3                   # centre columns clear of the walls
    x0 = rng.uniform(lo, hi)
    room = (hi - x0) if rng.random() < 0.5 else -(x0 - lo)
    vx = room * rng.uniform(0.2, 0.8) / seconds         # slow drift, never reaching a wall
    n_frames = int(round(seconds * fps))
    times = np.arange(n_frames) / fps
    heights = _heights(times, phys["h0"], phys["u0"], phys["g"], phys["e"], bounces)
    colour_rgb = COLOURS[colour]
    frames = np.full((n_frames, size, size, 3), BACKGROUND, np.uint8)
    for f in range(n_frames):
        _draw(frames[f], shape, colour_rgb, x0 + vx * times[f], phys["floor_c"] - heights[f], r)
    wave = render_audio(rng, int(round(seconds * sample_rate)), sample_rate, TONES_HZ[colour],
                        bounces)
    return {
        "frames": frames,
        "wave": wave,
        "bounce_times": bounces,
        "colour": colour,
        "shape": shape,
        "tone_hz": float(TONES_HZ[colour]),
        "caption": CAPTION,
        "floor_row": floor_row(size),
        "physics": {**phys, "x0": x0, "vx": vx},
    }


def generate(folder: str, n: int, seed: int = 0, **clip_kwargs) -> str:
    """Writes n clips (clip_00000.mp4 ...) and clips.jsonl under folder; returns its path.

    Colours and shapes are balanced (clip i: colour i % 4, shape (i // 4) % 3); everything
    else comes from np.random.default_rng((seed, i)), so clip i is the same for any n.
    """
    os.makedirs(folder, exist_ok=True)
    seconds = clip_kwargs.get("seconds", 2.0)
    fps = clip_kwargs.get("fps", 16.0)
    sample_rate = clip_kwargs.get("sample_rate", 16000)
    colours = list(COLOURS)
    lines = []
    for i in range(n):
        kw = {"colour": colours[i % len(colours)],
              "shape": SHAPES[(i // len(colours)) % len(SHAPES)], **clip_kwargs}
        clip = make_clip(np.random.default_rng((seed, i)), **kw)
        name = f"clip_{i:05d}.mp4"
        audio.write_av(os.path.join(folder, name), clip["frames"], fps, clip["wave"],
                       sample_rate)
        lines.append({
            "path": name,
            "caption": clip["caption"],
            "colour": clip["colour"],
            "shape": clip["shape"],
            "tone_hz": clip["tone_hz"],
            "bounce_times": [float(t) for t in clip["bounce_times"]],
            "seconds": float(seconds),
            "fps": float(fps),
        })
    path = os.path.join(folder, "clips.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(rec) + "\n" for rec in lines)
    return path


# ---- measurements -------------------------------------------------------------------


def onset_flux(wave, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(times s, flux): mean positive change of log(1 + |X| / ref) over ONSET_BAND_HZ bins.

    ref is the magnitude of a -50 dBFS sinusoid, so a silent or near-silent band (codec
    noise floor) contributes ~nothing. Frames are centred; the flux of frames whose window
    reaches past either end is 0, so the start and end of a steady sound are not onsets.
    """
    x = np.asarray(wave, np.float64).reshape(-1)
    n_fft = max(16, int(round(_N_FFT * sample_rate / 16000)))
    hop = max(1, int(round(_HOP * sample_rate / 16000)))
    if len(x) < 2:
        return np.zeros(0), np.zeros(0)
    pad = n_fft // 2
    xp = np.pad(x, pad, mode="reflect") if len(x) > pad else np.pad(x, pad)
    n_frames = 1 + (len(xp) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    win = np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(xp[idx] * win, axis=1))
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lo, hi = ONSET_BAND_HZ
    band = (freqs >= lo) & (freqs <= min(hi, 0.45 * sample_rate))
    ref = 10 ** (-50 / 20) * win.sum() / 2
    logm = np.log1p(mag[:, band] / ref)
    flux = np.zeros(n_frames)
    if band.any() and n_frames > 1:
        flux[1:] = np.maximum(logm[1:] - logm[:-1], 0.0).mean(axis=1)
    # Frames whose window reaches into the padding see a reflected (kinked) signal.
    edge = -(-pad // hop)
    flux[:edge] = 0.0
    flux[max(0, n_frames - edge) :] = 0.0
    times = np.arange(n_frames) * hop / sample_rate
    return times, flux


def detect_onsets(wave, sample_rate: int, min_gap: float = 0.1, delta: float = 0.25,
                  window: float = 0.25) -> np.ndarray:
    """Onset times (s) of broadband impacts; a steady tone or silence gives none.

    Peaks of onset_flux that are the maximum within +-min_gap/2 and exceed the moving median
    over +-window s by more than max(delta, 4 x the clip's median absolute deviation);
    then, strongest first, peaks closer than min_gap to a stronger one are dropped.
    """
    times, flux = onset_flux(wave, sample_rate)
    if len(flux) < 3:
        return np.zeros(0)
    dt = times[1] - times[0]
    w = max(1, int(round(window / dt)))
    padded = np.pad(flux, w, mode="edge")
    med = np.median(sliding_window_view(padded, 2 * w + 1), axis=1)
    mad = np.median(np.abs(flux - np.median(flux)))
    thr = med + max(delta, 4 * mad)
    k = max(1, int(round(min_gap / 2 / dt)))
    local_max = flux == np.max(sliding_window_view(np.pad(flux, k, mode="edge"), 2 * k + 1),
                               axis=1)
    cand = np.flatnonzero(local_max & (flux > thr))
    chosen: list[int] = []
    for c in cand[np.argsort(-flux[cand], kind="stable")]:
        if all(abs(times[c] - times[o]) >= min_gap for o in chosen):
            chosen.append(c)
    return np.sort(times[np.asarray(chosen, int)] - _ONSET_DELAY_S) if chosen else np.zeros(0)


def match_onsets(detected, truth, tolerance: float = 0.1) -> dict:
    """One-to-one greedy matching (closest pairs first) of detected to true onset times.

    detected_fraction: matched / len(truth) (nan without truth); median_error_ms: median
    |error| of the matched pairs (nan if none); false_positives: unmatched detections.
    Also returns matched, n_truth and errors_ms (for pooling).
    """
    d = np.asarray(detected, np.float64).reshape(-1)
    t = np.asarray(truth, np.float64).reshape(-1)
    dist = np.abs(d[:, None] - t[None, :])
    pairs = np.argwhere(dist <= tolerance)
    order = np.argsort(dist[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_d, used_t, errors = set(), set(), []
    for i, j in pairs[order]:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            errors.append(1000.0 * dist[i, j])
    return {
        "detected_fraction": len(errors) / len(t) if len(t) else float("nan"),
        "median_error_ms": float(np.median(errors)) if errors else float("nan"),
        "false_positives": int(len(d) - len(errors)),
        "matched": len(errors),
        "n_truth": int(len(t)),
        "errors_ms": errors,
    }


def tone_powers(wave, sample_rate: int, candidates_hz=TONES_HZ, bandwidth_hz: float = 40.0
                ) -> dict:
    """Mean power spectral density within +-bandwidth_hz/2 of each candidate fundamental.

    A fixed width in Hz (not a fraction of the pitch) keeps white noise unbiased.
    """
    x = np.asarray(wave, np.float64).reshape(-1)
    if len(x) == 0:
        return {k: 0.0 for k in candidates_hz}
    psd = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sample_rate)
    out = {}
    for name, hz in candidates_hz.items():
        sel = np.abs(freqs - hz) <= bandwidth_hz / 2
        if not sel.any():
            sel = np.abs(freqs - hz) == np.min(np.abs(freqs - hz))
        out[name] = float(psd[sel].mean())
    return out


def dominant_tone(wave, sample_rate: int, candidates_hz=TONES_HZ) -> str:
    """The candidate (colour) whose fundamental has the most power over the whole clip."""
    p = tone_powers(wave, sample_rate, candidates_hz)
    return max(p, key=p.get)


def score_clips(items, tolerance: float = 0.1) -> dict:
    """Pooled scores over [(wave, sample_rate, true_bounce_times, true_colour), ...].

    detected_fraction (matched / all true onsets), median_error_ms (over all matched
    pairs), false_positives_per_clip, pitch_accuracy, n_clips, n_onsets.
    """
    matched = n_truth = fps_ = correct = 0
    errors: list[float] = []
    for wave, sr, truth, colour in items:
        m = match_onsets(detect_onsets(wave, sr), truth, tolerance)
        matched += m["matched"]
        n_truth += m["n_truth"]
        fps_ += m["false_positives"]
        errors += m["errors_ms"]
        correct += dominant_tone(wave, sr) == colour
    n = len(items)
    return {
        "detected_fraction": matched / n_truth if n_truth else float("nan"),
        "median_error_ms": float(np.median(errors)) if errors else float("nan"),
        "false_positives_per_clip": fps_ / n if n else float("nan"),
        "pitch_accuracy": correct / n if n else float("nan"),
        "n_clips": n,
        "n_onsets": n_truth,
    }
