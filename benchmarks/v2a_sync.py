"""Lumina-V2A synchronisation and pitch on the held-out demo clips.

    python benchmarks/v2a_sync.py --checkpoint workdirs/v2a [--clips 32]

For each held-out clip (OUTPUT/heldout of `prepare --demo-v2a`) the run's model generates
the sound from the clip's frames and sync features (EMA weights, the config's v2a
sampler settings), decoded to a waveform by the Griffin-Lim vocoder; the onsets detected
in it are matched to the true bounce times (tolerance 100 ms) and its dominant tone to the
colour's. The same scores are printed for the untrained model (the run's step-0 init: it
can fail) and for the real audio through the same path (log-mel -> latents -> Griffin-Lim:
the ceiling of what the model could reach). Prints one RESULT line (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import audio, shards, v2a_demo  # noqa: E402
from lumina_jax import v2a  # noqa: E402
from lumina_jax.train.loop import load_run  # noqa: E402
from lumina_jax.train.state import init_state  # noqa: E402


def heldout(folder: str, n: int):
    """(conditions batch, true latents, examples) of the first n held-out records."""
    import grain

    meta, examples = shards.read_prepared(folder)
    source = grain.sources.ArrayRecordDataSource(
        [os.path.join(folder, s) for s in meta["shards"]])
    records = [shards.unpack(source[i]) for i in range(min(n, len(examples)))]
    length = max(int(r["cap_len"]) for r in records)
    cond = {"frames": np.stack([r["frames"] for r in records]).astype(np.float32),
            "sync": np.stack([r["sync"] for r in records]).astype(np.float32),
            "cap_feats": np.stack([np.pad(r["cap_feats"][:length].astype(np.float32),
                                          ((0, length - min(length, len(r["cap_feats"]))),
                                           (0, 0))) for r in records]),
            "cap_mask": np.stack([np.arange(length) < int(r["cap_len"]) for r in records])}
    latents = np.stack([r["latents"] for r in records]).astype(np.float32)
    return meta, cond, latents, examples[: len(records)]


def score(latents: np.ndarray, meta: dict, examples: list[dict]) -> dict:
    sr = meta["audio"]["sample_rate"]
    items = []
    for lat, ex in zip(latents, examples):
        _, wave = v2a.decode_audio(lat, meta)
        items.append((wave, sr, np.asarray(ex["bounce_times"]), ex["colour"]))
    return v2a_demo.score_clips(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="V2A training workdir")
    ap.add_argument("--heldout", default=None,
                    help="prepared held-out folder (default: <the run's data_dir>/heldout)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="clips generated at once")
    args = ap.parse_args()

    exp, state = load_run(args.checkpoint, args.step)
    folder = args.heldout or os.path.join(exp.run.data_dir, "heldout")
    meta, cond, real, examples = heldout(folder, args.clips)
    null = audio.get_text_encoder(meta["caption_encoder"], meta["caption_encoder_path"])
    ((null_feats, null_len),) = null.encode([""])
    neg = v2a.unconditional(cond, null_feats, null_len)
    settings = v2a.V2ASettings(**{k: v for k, v in exp.v2a.items()
                                  if k in ("num_steps", "cfg", "seed")})
    untrained = jax.jit(lambda: init_state(exp.model, seed=exp.run.seed)["ema"])()

    def generate(params):
        out = []
        for i in range(0, len(examples), args.batch):
            part = lambda d: {k: v[i:i + args.batch] for k, v in d.items()}
            out.append(v2a.generate(exp.model, params, part(cond), part(neg),
                                    real.shape[1:], settings))
        return np.concatenate(out)

    start = time.perf_counter()
    trained = score(generate(state["ema"]), meta, examples)
    seconds = time.perf_counter() - start
    result = {"step": int(state["step"]), "clips": len(examples), "sampler": vars(settings),
              "trained": trained, "untrained": score(generate(untrained), meta, examples),
              "real_audio_ceiling": score(real, meta, examples),
              "generate_and_score_s": round(seconds, 1)}
    frame_ms = 1000.0 / meta["fps"]
    result["goals"] = {
        "detected_fraction>=0.8": trained["detected_fraction"] >= 0.8,
        f"median_error_ms<={frame_ms:g} (one video frame)":
            bool(trained["median_error_ms"] <= frame_ms),
        "pitch_accuracy>=0.8": trained["pitch_accuracy"] >= 0.8}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
