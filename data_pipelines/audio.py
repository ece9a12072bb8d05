"""Audio for Lumina-V2A: waveform I/O, log-mel spectrograms, audio latents, vocoders,
visual/text/sync conditioning features, and muxing audio into a video file.

One `AudioSettings` describes the whole audio path; prepare, the model and the `v2a`
command all read it from the prepared folder's metadata, so they agree.

The log-mel (the value scale of AudioLDM's and HiFi-GAN's mel features, though their
n_mels/hop differ, so a vocoder or VAE must be trained at these settings): magnitude (not
power) STFT with a periodic Hann window of n_fft, centred frames (n_fft // 2 zeros on
each side), Slaney mel scale with Slaney (area) normalisation, then the NATURAL log
clamped at 1e-5 (ln 1e-5 = -11.51 is silence).
Frame count rule: `num_frames(n) = n // hop + 1` for n samples; going back, T frames are
`num_samples(T) = (T - 1) * hop` samples (the inverse of the rule: both vocoders return
that many, and `log_mel` of it gives T frames again).

Latent codecs, vocoders and conditioning encoders are looked up by name (`get_*`), one
process-wide instance per (name, path), like `encoders.py`. `make_random_*` write the
real architectures at a tiny random size (no download) for CPU runs and tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
from fractions import Fraction

import av
import cv2
import numpy as np

from data_pipelines.encoders import _mark_random, get_caption_encoder, minilm_path, round_up
from data_pipelines.video import DecodeError, check_file, rgb_converter

LOG_FLOOR = 1e-5  # mel magnitudes are clamped here before the log


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 256          # 62.5 mel frames per second
    n_mels: int = 32
    fmin: float = 0.0
    fmax: float = 8000.0

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples: int) -> int:
        """Mel frames of a wave of `num_samples` (centred STFT)."""
        return int(num_samples) // self.hop + 1

    def frames(self, seconds: float) -> int:
        """Mel frames of `seconds` of audio."""
        return self.num_frames(round(seconds * self.sample_rate))

    def num_samples(self, num_frames: int) -> int:
        """Samples a vocoder returns for `num_frames` mel frames."""
        return (int(num_frames) - 1) * self.hop


def num_frames(num_samples: int, s: AudioSettings = AudioSettings()) -> int:
    """Mel frames of a wave of `num_samples`: num_samples // hop + 1."""
    return s.num_frames(num_samples)


# ---- waveform I/O --------------------------------------------------------------------

def read_audio(path: str, sample_rate: int) -> np.ndarray:
    """The first audio stream of `path` as float32 mono in [-1, 1] at `sample_rate`
    (PyAV's resampler downmixes and resamples), cut to the stream's stated duration.
    DecodeError if there is none or it does not decode."""
    check_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise DecodeError(f"no audio stream in {path}")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(f"cannot decode the audio of {path}: {e}") from e
    if not chunks or not sum(len(c) for c in chunks):
        raise DecodeError(f"no decodable audio in {path}")
    wave = np.concatenate(chunks)
    if stream.duration and stream.time_base:  # AAC pads its last frame with silence
        wave = wave[: round(float(stream.duration * stream.time_base) * sample_rate)]
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


# ---- log-mel and Griffin-Lim -----------------------------------------------------------

@functools.lru_cache(maxsize=8)
def mel_filters(s: AudioSettings) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] Slaney-scale, Slaney-normalised triangles."""
    from transformers.audio_utils import mel_filter_bank  # pylint: disable=import-outside-toplevel

    return mel_filter_bank(
        num_frequency_bins=s.n_fft // 2 + 1, num_mel_filters=s.n_mels, min_frequency=s.fmin,
        max_frequency=s.fmax, sampling_rate=s.sample_rate, norm="slaney", mel_scale="slaney")


@functools.lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    from transformers.audio_utils import window_function  # pylint: disable=import-outside-toplevel

    return window_function(n_fft, "hann", periodic=True)


def log_mel(wave: np.ndarray, s: AudioSettings = AudioSettings()) -> np.ndarray:
    """float32 [num_frames(len(wave)), n_mels]: ln(max(1e-5, mel magnitude))."""
    from transformers.audio_utils import spectrogram  # pylint: disable=import-outside-toplevel

    wave = np.asarray(wave, np.float64).reshape(-1)
    if not len(wave):
        raise ValueError("log_mel of an empty wave")
    mel = spectrogram(
        wave, _window(s.n_fft), frame_length=s.n_fft, hop_length=s.hop, power=1.0,
        center=True, pad_mode="constant", mel_filters=mel_filters(s), mel_floor=LOG_FLOOR,
        log_mel="log")
    return np.ascontiguousarray(mel.T, dtype=np.float32)


def _stft(wave: np.ndarray, s: AudioSettings) -> np.ndarray:
    """Complex [T, n_fft // 2 + 1], the same frames as `log_mel` (vectorised)."""
    pad = np.pad(wave, s.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(pad, s.n_fft)[:: s.hop]
    return np.fft.rfft(frames * _window(s.n_fft), axis=-1)


def _istft(spec: np.ndarray, s: AudioSettings) -> np.ndarray:
    """Least-squares inverse of `_stft` (windowed overlap-add): num_samples(T) samples."""
    win = _window(s.n_fft)
    frames = np.fft.irfft(spec, n=s.n_fft, axis=-1) * win
    length = (len(spec) - 1) * s.hop + s.n_fft
    out, norm = np.zeros(length), np.zeros(length)
    for t, frame in enumerate(frames):
        out[t * s.hop : t * s.hop + s.n_fft] += frame
        norm[t * s.hop : t * s.hop + s.n_fft] += win**2
    out /= np.maximum(norm, 1e-8)
    start = s.n_fft // 2
    return out[start : start + s.num_samples(len(spec))]


def griffin_lim(logmel: np.ndarray, s: AudioSettings = AudioSettings(), n_iter: int = 32,
                seed: int = 0) -> np.ndarray:
    """A waveform (float32, num_samples(T)) whose log-mel approximates `logmel` [T, M].

    The linear magnitude is the filterbank's pseudo-inverse applied to the mel magnitude,
    clipped at 0; the phase comes from fast Griffin-Lim (momentum 0.99, as torchaudio)
    started from seeded random phases. No training needed: the offline vocoder.
    """
    logmel = np.asarray(logmel, np.float64)
    if logmel.ndim != 2 or logmel.shape[1] != s.n_mels:
        raise ValueError(f"griffin_lim takes a log-mel [T, {s.n_mels}], got {logmel.shape}")
    inv = np.linalg.pinv(mel_filters(s).T)                     # [F, M]
    mag = np.maximum(np.exp(logmel) @ inv.T, 0.0)               # [T, F]
    rng = np.random.default_rng(seed)
    angles = np.exp(2j * np.pi * rng.random(mag.shape))
    prev, alpha = 0.0, 0.99 / 1.99
    for _ in range(n_iter):
        rebuilt = _stft(_istft(mag * angles, s), s)
        angles = rebuilt - alpha * prev
        angles /= np.abs(angles) + 1e-16
        prev = rebuilt
    return np.clip(_istft(mag * angles, s), -1.0, 1.0).astype(np.float32)


# ---- audio latents -----------------------------------------------------------------------

# The identity codec's normalisation, measured with `log_mel` on 1 s synthetic signals:
# silence is ln 1e-5 = -11.51 everywhere, a full-scale sine (100 Hz .. 1 kHz) peaks at
# about +1.7 in its band, white noise of 0.1 RMS spans -3.1 .. -1.7. Mean and std put
# silence at -1.0 and the loudest band of a full-scale sine at about +1.03 (noise at 0.1
# RMS lands near +0.4); tests/test_audio.py checks these anchors.
MEL_MEAN = -5.0
MEL_STD = 6.5


class IdentityAudioLatents:
    """The log-mel itself, standardised: [1, T, M] = (logmel - MEL_MEAN) / MEL_STD."""

    name, channels, time_factor, mel_factor = "identity", 1, 1, 1

    def __init__(self, path: str = ""):
        del path

    def encode(self, logmel: np.ndarray) -> np.ndarray:
        return ((np.asarray(logmel, np.float32) - MEL_MEAN) / MEL_STD)[None]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 3 or latents.shape[0] != 1:
            raise ValueError(f"identity audio latents are [1, T, M], got {latents.shape}")
        return latents[0] * np.float32(MEL_STD) + np.float32(MEL_MEAN)


def _need_path(path: str, flag: str, what: str) -> str:
    if not path:
        raise ValueError(f"the {what} needs a local weights folder: pass {flag} "
                         f"(nothing is downloaded)")
    if not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r}: no such folder ({what} weights)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return path


class AudioLDMLatents:
    """AudioLDM-style VAE (diffusers AutoencoderKL on the log-mel as a 1-channel image
    [1, 1, T, M]): posterior mean times config.scaling_factor; decode inverts."""

    name = "audioldm"

    def __init__(self, path: str = ""):
        import torch  # pylint: disable=import-outside-toplevel
        from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel

        path = _need_path(path, "--audio-vae-path", "audioldm audio VAE")
        self._torch = torch
        self.vae = AutoencoderKL.from_pretrained(path).eval()
        cfg = self.vae.config
        if cfg.in_channels != 1 or cfg.out_channels != 1:
            raise ValueError(f"--audio-vae-path {path!r}: the VAE must have 1 input and 1 "
                             f"output channel (a log-mel image), got {cfg.in_channels}/"
                             f"{cfg.out_channels}")
        self.channels = int(cfg.latent_channels)
        self.time_factor = self.mel_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling = float(cfg.scaling_factor)

    def encode(self, logmel: np.ndarray) -> np.ndarray:
        """[T, M] -> float32 [C, T / f, M / f]; T and M must be multiples of f."""
        logmel = np.asarray(logmel, np.float32)
        f = self.time_factor
        if logmel.ndim != 2 or logmel.shape[0] % f or logmel.shape[1] % f:
            raise ValueError(f"the audioldm VAE needs a log-mel [T, M] with T and M "
                             f"multiples of {f}, got {logmel.shape}")
        with self._torch.no_grad():
            z = self.vae.encode(self._torch.from_numpy(logmel)[None, None]).latent_dist.mean
        return (z[0].numpy() * self.scaling).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[C, T', M'] -> float32 [T' f, M' f]."""
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 3 or latents.shape[0] != self.channels:
            raise ValueError(f"audioldm latents are [{self.channels}, T', M'], got "
                             f"{latents.shape}")
        z = self._torch.from_numpy(latents / self.scaling)[None]
        with self._torch.no_grad():
            return self.vae.decode(z).sample[0, 0].float().numpy()


AUDIO_LATENT_ENCODERS = ("identity", "audioldm")
_AUDIO_LATENT_CLASSES = {"identity": IdentityAudioLatents, "audioldm": AudioLDMLatents}
_instances: dict[tuple, object] = {}


def _get(kind: str, classes: dict, name: str, path: str, *args):
    if name not in classes:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(classes)}")
    key = (kind, name, path, *args)
    if key not in _instances:
        _instances[key] = classes[name](path, *args)
    return _instances[key]


def get_audio_latent_encoder(name: str, path: str = ""):
    """Process-wide instance per (name, path)."""
    return _get("audio latent encoder", _AUDIO_LATENT_CLASSES, name, path)


def make_random_audioldm_vae(folder: str, seed: int = 0) -> str:
    """A diffusers AutoencoderKL (1 -> 8 latent channels, factor 2) at a tiny random size."""
    import torch  # pylint: disable=import-outside-toplevel
    from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                  layers_per_block=1, norm_num_groups=4, sample_size=64).save_pretrained(folder)
    return _mark_random(folder)


# ---- vocoders ------------------------------------------------------------------------------

class GriffinLimVocoder:
    """Griffin-Lim (no weights): offline, fast, phasey."""

    name = "griffinlim"

    def __init__(self, path: str = "", s: AudioSettings = AudioSettings()):
        del path
        self.s = s

    def vocode(self, logmel: np.ndarray) -> np.ndarray:
        return griffin_lim(logmel, self.s)


class HifiGanVocoder:
    """transformers SpeechT5HifiGan. Its input is our natural-log magnitude mel as is
    (the AudioLDM convention). If the folder's config has `normalize_before`, the model
    itself standardises with the `mean`/`scale` buffers saved in the folder, which must
    then be statistics of these features. Output is trimmed to num_samples(T)."""

    name = "hifigan"

    def __init__(self, path: str = "", s: AudioSettings = AudioSettings()):
        import torch  # pylint: disable=import-outside-toplevel
        from transformers import SpeechT5HifiGan  # pylint: disable=import-outside-toplevel

        path = _need_path(path, "--vocoder-path", "hifigan vocoder")
        self._torch, self.s = torch, s
        with _quiet_transformers():
            self.model = SpeechT5HifiGan.from_pretrained(path).eval()
        cfg = self.model.config
        hop = math.prod(cfg.upsample_rates)
        for what, got, want in (("model_in_dim (mel bands)", cfg.model_in_dim, s.n_mels),
                                ("upsampling (hop)", hop, s.hop),
                                ("sampling_rate", cfg.sampling_rate, s.sample_rate)):
            if got != want:
                raise ValueError(f"--vocoder-path {path!r}: the vocoder's {what} is {got}, "
                                 f"but the audio settings need {want}")

    def vocode(self, logmel: np.ndarray) -> np.ndarray:
        logmel = np.asarray(logmel, np.float32)
        if logmel.ndim != 2 or logmel.shape[1] != self.s.n_mels:
            raise ValueError(f"hifigan takes a log-mel [T, {self.s.n_mels}], got {logmel.shape}")
        with self._torch.no_grad():
            wave = self.model(self._torch.from_numpy(logmel)).float().numpy()
        return wave[: self.s.num_samples(len(logmel))].astype(np.float32)


VOCODERS = ("griffinlim", "hifigan")
_VOCODER_CLASSES = {"griffinlim": GriffinLimVocoder, "hifigan": HifiGanVocoder}


def get_vocoder(name: str, path: str = "", s: AudioSettings = AudioSettings()):
    """Process-wide instance per (name, path, settings)."""
    return _get("vocoder", _VOCODER_CLASSES, name, path, s)


def make_random_hifigan(folder: str, n_mels: int = 32, seed: int = 0) -> str:
    """SpeechT5HifiGan at a tiny random size: 4x4x4x4 = 256 upsampling (the hop)."""
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import (  # pylint: disable=import-outside-toplevel
        SpeechT5HifiGan, SpeechT5HifiGanConfig)

    torch.manual_seed(seed)
    config = SpeechT5HifiGanConfig(
        model_in_dim=n_mels, sampling_rate=16000, upsample_initial_channel=32,
        upsample_rates=(4, 4, 4, 4), upsample_kernel_sizes=(8, 8, 8, 8),
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),), normalize_before=False)
    with _quiet_transformers():
        SpeechT5HifiGan(config).save_pretrained(folder)
    return _mark_random(folder)


# ---- visual and text conditioning ------------------------------------------------------

class PixelsVisualEncoder:
    """Each frame as 8x8 RGB in [-1, 1], flattened (192): the V2A model learns its own
    frame encoder on top; needs no weights."""

    name, dim = "pixels", 192

    def __init__(self, path: str = ""):
        del path

    def encode(self, frames: np.ndarray) -> np.ndarray:
        small = [cv2.resize(np.asarray(f), (8, 8), interpolation=cv2.INTER_AREA) for f in frames]
        return (np.stack(small).reshape(len(frames), -1).astype(np.float32) / 127.5 - 1.0)


@contextlib.contextmanager
def _quiet_transformers():
    """Loading half of a CLIPModel folder (the vision or the text tower) makes transformers
    print a long report of the other half's 'unexpected' keys; they are expected here."""
    from transformers.utils import logging  # pylint: disable=import-outside-toplevel

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _clip_processor_class(transformers):
    # The PIL backend: the default CLIPImageProcessor of transformers 5 wants torchvision.
    if hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def _clip_image_processor(path: str):
    import transformers  # pylint: disable=import-outside-toplevel

    return _clip_processor_class(transformers).from_pretrained(path)


class ClipVisualEncoder:
    """CLIP image embeddings (projection output), one per frame: [F, projection_dim]."""

    name = "clip"

    def __init__(self, path: str = ""):
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel

        path = _need_path(path, "--clip-path", "clip visual encoder")
        self._torch = torch
        with _quiet_transformers():
            self.processor = _clip_image_processor(path)
            self.model = transformers.CLIPVisionModelWithProjection.from_pretrained(path).eval()
        self.dim = int(self.model.config.projection_dim)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(frames), 32):
            pixels = self.processor(images=list(frames[i : i + 32]), return_tensors="pt")
            with self._torch.no_grad():
                out.append(self.model(pixel_values=pixels["pixel_values"]).image_embeds.numpy())
        return np.concatenate(out).astype(np.float32)


VISUAL_ENCODERS = ("pixels", "clip")
_VISUAL_CLASSES = {"pixels": PixelsVisualEncoder, "clip": ClipVisualEncoder}


def get_visual_encoder(name: str, path: str = ""):
    """Process-wide instance per (name, path)."""
    return _get("visual encoder", _VISUAL_CLASSES, name, path)


class ClipTextEncoder:
    """CLIP text model's last hidden states (after its final layer norm), token-level:
    `encode(texts)` -> [(float32 [L, D], n)] in the caption encoders' format (L = n rounded
    up to 8, zero rows past n; at most max_position_embeddings tokens)."""

    name = "clip"

    def __init__(self, path: str = ""):
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel

        path = _need_path(path, "--clip-path", "clip text encoder")
        self._torch = torch
        with _quiet_transformers():
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            self.model = transformers.CLIPTextModel.from_pretrained(path).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_len = int(self.model.config.max_position_embeddings)
        self._cache: dict[str, tuple[np.ndarray, int]] = {}

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        todo = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_len,
                                 return_tensors="pt")
            with self._torch.no_grad():  # only these two: CLIP takes no token_type_ids
                hidden = self.model(input_ids=tok["input_ids"],
                                    attention_mask=tok["attention_mask"]).last_hidden_state
            for text, h, n in zip(chunk, hidden.float().numpy(), tok["attention_mask"].sum(1)):
                n = int(n)
                feats = np.zeros((round_up(n), self.dim), np.float32)
                feats[:n] = h[:n]
                self._cache[text] = (feats, n)
        return [self._cache[t] for t in texts]


TEXT_ENCODERS = ("minilm", "clip")


def get_text_encoder(name: str, path: str = ""):
    """minilm: the caption encoder of encoders.py (offline); clip: ClipTextEncoder."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    if name == "minilm":
        return get_caption_encoder("minilm", path)
    return _get("text encoder", {"clip": ClipTextEncoder}, name, path)


def make_random_clip(folder: str, seed: int = 0) -> str:
    """A CLIPModel (vision + text) at a tiny random size (image 32, patch 8), with the
    packaged MiniLM WordPiece tokenizer (CLIP's BPE tokenizer would need a download) and
    a CLIP image processor config."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, projection_dim=16)
    text = dict(tower, vocab_size=tokenizer.vocab_size, max_position_embeddings=77,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(tower, image_size=32, patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    processor = _clip_processor_class(transformers)(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with _quiet_transformers():
        transformers.CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return _mark_random(folder)


# ---- synchronisation features --------------------------------------------------------

SYNC_DIM = 32


def sync_features(frames: np.ndarray, fps: float, num_steps: int,
                  step_seconds: float) -> np.ndarray:
    """float32 [num_steps, 32] at the audio-latent rate, for onsets to line up with motion.

    Step i (centre t = (i + 0.5) * step_seconds) looks at frame j = min(F - 1,
    floor(t * fps)): its 4x4 grayscale in [0, 1] (16) and the 4x4 mean |frame j -
    frame j-1| over RGB in [0, 1] (16; zeros for j = 0).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or not len(frames):
        raise ValueError(f"sync_features takes frames [F, H, W, 3], got {frames.shape}")
    area = cv2.INTER_AREA
    out = np.zeros((num_steps, SYNC_DIM), np.float32)
    for i in range(num_steps):
        j = min(len(frames) - 1, math.floor((i + 0.5) * step_seconds * fps))
        gray = cv2.cvtColor(np.ascontiguousarray(frames[j]), cv2.COLOR_RGB2GRAY)
        out[i, :16] = cv2.resize(gray, (4, 4), interpolation=area).reshape(-1) / 255.0
        if j > 0:
            diff = np.abs(frames[j].astype(np.float32) - frames[j - 1]).mean(-1)
            out[i, 16:] = cv2.resize(diff, (4, 4), interpolation=area).reshape(-1) / 255.0
    return out


# ---- writing video with audio -----------------------------------------------------------

def _even(img: np.ndarray) -> np.ndarray:
    """H.264 yuv420p needs even sizes: an odd height/width gets one replicated row/column."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(img)


def _write(path: str, frames, fps: float, wave: np.ndarray, sample_rate: int,
           fit_wave: bool) -> int:
    """Encodes RGB frames (an iterable of uint8 [H, W, 3], the size of the first) as H.264
    at a constant `fps`, then `wave` as AAC mono, into `path` (mp4/mkv). With `fit_wave`,
    the wave is trimmed or zero-padded to the video's duration (frames / fps). Returns the
    frame count."""
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.pix_fmt, video.options = "yuv420p", {"crf": "18"}
        audio = out.add_stream("aac", rate=sample_rate, layout="mono")
        # ffmpeg's default AAC coder (twoloop) is ~4x slower and, for these short mono
        # clips, no closer to the input (measured: 30-50 dB SNR with "fast", 23-38 dB).
        audio.bit_rate, audio.options = 64000, {"aac_coder": "fast"}
        for img in frames:
            img = _even(img)
            if count == 0:
                video.height, video.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = count, 1 / rate
            out.mux(video.encode(frame))
            count += 1
        if not count:
            raise ValueError(f"no frames to write to {path}")
        out.mux(video.encode())
        wave = np.clip(np.asarray(wave, np.float32).reshape(-1), -1.0, 1.0)
        if fit_wave:
            n = round(count / float(rate) * sample_rate)
            wave = np.pad(wave[:n], (0, max(0, n - len(wave))))
        if len(wave):
            frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return count


def write_av(path: str, frames: np.ndarray, fps: float, wave: np.ndarray,
             sample_rate: int) -> None:
    """An mp4 with H.264 video of uint8 [F, H, W, 3] and `wave` as AAC mono (as given:
    not fitted to the video). Odd H/W are padded by one replicated row/column."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"write_av takes uint8 frames [F, H, W, 3], got {frames.dtype} "
                         f"{frames.shape}")
    _write(path, frames, fps, wave, sample_rate, fit_wave=False)


def mux_audio(video_path: str, wave: np.ndarray, sample_rate: int, out_path: str) -> None:
    """`out_path` = the frames of `video_path` re-encoded (H.264, display rotation applied,
    constant frame rate at the stream's average rate) plus `wave` as AAC mono, trimmed or
    zero-padded to the video's duration (frame count / fps). The input's own audio is
    dropped. Frames are streamed, so long videos do not fill memory."""
    check_file(video_path)
    try:
        with av.open(video_path) as src:
            if not src.streams.video:
                raise DecodeError(f"no video stream in {video_path}")
            stream = src.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise DecodeError(f"unknown frame rate in {video_path}")
            frames = map(rgb_converter(), src.decode(stream))
            first = next(frames, None)
            if first is None:
                raise DecodeError(f"no decodable frame in {video_path}")
            _write(out_path, itertools.chain([first], frames), float(rate), wave,
                   sample_rate, fit_wave=True)
    except av.FFmpegError as e:
        raise DecodeError(f"cannot re-encode {video_path} into {out_path}: {e}") from e
