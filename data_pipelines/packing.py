"""Sequence packing (`Task.packing`): clips of any aspect ratio and duration in rows of one
fixed token budget, so a task compiles one train step whatever its bucket mix.

Each clip is patchified here (numpy; packing needs its token count and grid anyway) as
`NextDiT.patchify` does -- tokens frame-major, features (pf, ph, pw, c); an image at
pF > 1 is repeated to pF frames first, as `NextDiT.__call__` does -- and placed whole
into a row by first-fit over a lookahead of clips, in the order they were drawn. Buckets
are mixed per clip at random (`RandomMixIterDataset`): Grain's `IterDataset.mix`
interleaves its streams in a fixed cycle, which would put clips of neighbouring (similar)
buckets side by side and leave rows badly filled.

Batch contract of a packed task (S = `pack_clips`, N = `pack_tokens`, Lc =
`pack_caption_tokens` or S x the caption length):

  latents          float32 [B, N, pF*p*p*C]  patch tokens of the row's clips, then zeros
  positions        int32   [B, N, 3]         each token's (frame, row, col) in its clip's grid
  segment_ids      int32   [B, N]            1..S: the token's clip in the row; 0 = padding
  frames           int32   [B, S]            per clip: latent frames (1 = an image; 0 = empty)
  motion_score     float32 [B, S]            per clip (-1 = dropped; padding slots -1)
  cap_feats        float32 [B, Lc, D]        the clips' valid caption tokens, one after another
  cap_segment_ids  int32   [B, Lc]           the clip of each caption token; 0 = padding
  source, path, buckets   str [B, S]         per clip ('' = empty slot)
  padding          float                     fraction of the batch's tokens that are padding
  num_clips        int                       clips in the batch
  media, bucket ('packed'), num_skipped      as unpacked batches

Resumable: the iterator state is the parent's state before the oldest clip still waiting
in the lookahead buffer, plus which clips drawn since then are still waiting; a restore
redraws those clips (a deterministic stream) and keeps the waiting ones, so the next
batches are exactly those an uninterrupted run makes.
"""

from __future__ import annotations

import copy
from typing import Sequence

import grain
import numpy as np

from data_pipelines import buckets as bk
from data_pipelines import encoders
from data_pipelines.manifest import DataError


def patchify(latents: np.ndarray, p: int, pf: int) -> tuple[np.ndarray, np.ndarray]:
    """One clip `[C, F, H, W]` -> tokens `[n, pF*p*p*C]` float32 and their grid positions
    `[n, 3]` int32 (frame, row, col), as `NextDiT.patchify` lays a batch out."""
    c, f, h, w = latents.shape
    if f == 1 and pf > 1:  # an image fed to a temporal patch: repeated, as the model does
        latents = np.repeat(latents, pf, axis=1)
        f = pf
    grid = (f // pf, h // p, w // p)
    x = latents.reshape(c, grid[0], pf, grid[1], p, grid[2], p)
    tokens = x.transpose(1, 3, 5, 2, 4, 6, 0).reshape(-1, pf * p * p * c)
    positions = np.stack(np.meshgrid(*map(np.arange, grid), indexing="ij"), -1).reshape(-1, 3)
    return tokens.astype(np.float32), positions.astype(np.int32)


def caption_limit(task) -> int:
    """Valid caption tokens a clip keeps (the unpacked batch's truncation)."""
    return task.caption_len or encoders.round_up(task.max_caption_len)


def caption_budget(task) -> int:
    return task.pack_caption_tokens or task.pack_clips * caption_limit(task)


def largest_grid(task) -> tuple[int, int, int]:
    """The largest token grid (frames, rows, cols) a clip of the task can have: the
    longest window in the largest resolution bucket."""
    codec = encoders.LATENT_ENCODERS[task.latent_encoder]
    p, pf = task.patch_size
    frames = 1
    if task.media == "video":
        frames = bk.window_length(10**9, task.max_frames, codec.temporal,
                                  task.temporal_multiple, task.frame_buckets)
    sizes = bk.resolution_buckets(task.resolution, task.multiple, task.max_aspect)
    side = codec.spatial * p
    return (-(-frames // pf), max(h for h, _ in sizes) // side, max(w for _, w in sizes) // side)


def check_packing(task) -> None:
    """ValueError('<field>: ...') if a packed task cannot run (called by check_task)."""
    def need(ok, field, problem):
        if not ok:
            raise ValueError(f"{field}: {problem}")

    p, pf = task.patch_size
    need(p >= 1 and pf >= 1, "patch_size", f"must be two positive ints (got {task.patch_size})")
    need(task.pack_clips >= 1, "pack_clips", f"must be >= 1 (got {task.pack_clips})")
    need(task.pack_caption_tokens >= 0, "pack_caption_tokens",
         f"must be >= 0 (0: pack_clips x the caption length; got {task.pack_caption_tokens})")
    spatial = encoders.LATENT_ENCODERS[task.latent_encoder].spatial
    need(task.multiple % (spatial * p) == 0, "patch_size",
         f"p={p} must divide the latent bucket sides (multiple={task.multiple} px / "
         f"{spatial}x {task.latent_encoder} compression)")
    ft, ht, wt = largest_grid(task)
    sizes = bk.resolution_buckets(task.resolution, task.multiple, task.max_aspect)
    most = ft * max(h * w for h, w in sizes) // (spatial * p) ** 2
    need(task.pack_tokens >= most, "pack_tokens",
         f"a row must hold the largest clip: {most} tokens (grid {ft}x{ht}x{wt} at patch "
         f"size {task.patch_size}); got {task.pack_tokens}: raise pack_tokens to >= {most}")
    need(caption_budget(task) >= caption_limit(task), "pack_caption_tokens",
         f"{task.pack_caption_tokens} caption tokens per row cannot hold one caption of up to "
         f"{caption_limit(task)} tokens: raise pack_caption_tokens (or 0 for the default)")


def first_fit(sizes: Sequence[tuple[int, int]], rows: int, tokens: int, clips: int,
              caption_tokens: int) -> list[int | None]:
    """The row of each (tokens, caption tokens) clip in order, first row with room
    (None: no row has room; the clip waits for the next batch)."""
    free = [[tokens, caption_tokens, clips] for _ in range(rows)]
    out = []
    for n, c in sizes:
        row = next((r for r, (ft, fc, fk) in enumerate(free) if n <= ft and c <= fc and fk),
                   None)
        if row is not None:
            free[row][0] -= n
            free[row][1] -= c
            free[row][2] -= 1
        out.append(row)
    return out


class Patchify:
    """map transform: an example's latents `[C, F, H, W]` -> its tokens and positions."""

    def __init__(self, task):
        self.task = task

    def __call__(self, ex: dict) -> dict:
        p, pf = self.task.patch_size
        ex = dict(ex)
        ex["frames"] = ex["latents"].shape[1]
        ex["tokens"], ex["positions"] = patchify(ex.pop("latents"), p, pf)
        return ex


class EncodeCaption:
    """Raw path, main process: one example's caption text -> features (cached per text)."""

    def __init__(self, task):
        self.task = task

    def __call__(self, ex: dict) -> dict:
        enc = encoders.get_caption_encoder(self.task.caption_encoder,
                                           max_len=self.task.max_caption_len)
        ex = dict(ex)
        (ex["cap_feats"], ex["cap_len"]), = enc.encode([ex.pop("caption")])
        return ex


def collate(rows: list[list[dict]], task) -> dict:
    """Rows of examples (each with tokens, positions, frames, cap_feats, cap_len,
    motion_score, source, path, bucket, skipped_files) -> the packed batch dict."""
    b, n, s, lc = len(rows), task.pack_tokens, task.pack_clips, caption_budget(task)
    first = rows[0][0]
    latents = np.zeros((b, n, first["tokens"].shape[1]), np.float32)
    positions = np.zeros((b, n, 3), np.int32)
    segment_ids = np.zeros((b, n), np.int32)
    cap_feats = np.zeros((b, lc, first["cap_feats"].shape[-1]), np.float32)
    cap_segment_ids = np.zeros((b, lc), np.int32)
    motion = np.full((b, s), -1.0, np.float32)
    frames = np.zeros((b, s), np.int32)
    meta = {k: [[""] * s for _ in range(b)] for k in ("source", "path", "buckets")}
    limit = caption_limit(task)
    for r, row in enumerate(rows):
        at = cap_at = 0
        for j, ex in enumerate(row):
            k = len(ex["tokens"])
            latents[r, at:at + k] = ex["tokens"]
            positions[r, at:at + k] = ex["positions"]
            segment_ids[r, at:at + k] = j + 1
            at += k
            k = min(int(ex["cap_len"]), limit)
            cap_feats[r, cap_at:cap_at + k] = ex["cap_feats"][:k]
            cap_segment_ids[r, cap_at:cap_at + k] = j + 1
            cap_at += k
            motion[r, j] = ex["motion_score"]
            frames[r, j] = ex["frames"]
            for key, field in (("source", "source"), ("path", "path"), ("buckets", "bucket")):
                meta[key][r][j] = ex[field]
    return {
        "latents": latents, "positions": positions, "segment_ids": segment_ids,
        "frames": frames, "motion_score": motion, "cap_feats": cap_feats,
        "cap_segment_ids": cap_segment_ids,
        **{k: np.asarray(v) for k, v in meta.items()},
        "padding": float(np.mean(segment_ids == 0)),
        "num_clips": sum(map(len, rows)),
        "media": task.media, "bucket": "packed",
        "skipped_files": [f for row in rows for ex in row for f in ex["skipped_files"]],
    }


class PackIterDataset(grain.IterDataset):
    """Examples (patchified, captions encoded) -> packed batches of `task.batch_size` rows."""

    def __init__(self, parent, task):
        super().__init__(parent)
        self.task = task

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self.task)


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, task):
        super().__init__(parent)
        self.task = task
        # Twice the clips a batch can take: the choice fills rows with a few % padding
        # (benchmarks/packing.py); clips that fit nowhere wait for the next batch.
        self._lookahead = 2 * task.batch_size * task.pack_clips
        self._drawn: list[list] = []  # [parent state before it, example or None if packed]

    def _draw(self) -> None:
        state = copy.deepcopy(self._parent.get_state())
        ex = next(self._parent)
        n, c = len(ex["tokens"]), min(int(ex["cap_len"]), caption_limit(self.task))
        if n > self.task.pack_tokens:
            raise DataError(f"{ex['path']} ({ex['bucket']}) has {n} tokens at patch size "
                            f"{self.task.patch_size}, more than a packed row holds: raise "
                            f"data.pack_tokens (now {self.task.pack_tokens}) to >= {n}")
        if c > caption_budget(self.task):
            raise DataError(f"{ex['path']} has {c} caption tokens, more than a packed row "
                            f"holds: raise data.pack_caption_tokens (now "
                            f"{caption_budget(self.task)}) to >= {c}")
        self._drawn.append([state, ex])

    def _waiting(self) -> list:
        return [d for d in self._drawn if d[1] is not None]

    def __next__(self):
        task = self.task
        for _ in range(self._lookahead - len(self._waiting())):
            self._draw()
        waiting = self._waiting()
        sizes = [(len(ex["tokens"]), min(int(ex["cap_len"]), caption_limit(task)))
                 for _, ex in waiting]
        # First-fit in draw order: the oldest clips go first, so none waits more than a
        # few batches (and the replay after a restore stays short). (First-fit decreasing
        # fills token-bound rows better but starves small clips and, where pack_clips
        # binds, leaves the small ones together in half-empty rows.)
        rows: list[list[dict]] = [[] for _ in range(task.batch_size)]
        for entry, row in zip(waiting, first_fit(sizes, task.batch_size, task.pack_tokens,
                                                 task.pack_clips, caption_budget(task))):
            if row is not None:
                rows[row].append(entry[1])
                entry[1] = None
        self._trim()
        return collate(rows, task)

    def _trim(self) -> None:
        """Forget packed clips older than the oldest waiting one (the restore anchor)."""
        while self._drawn and self._drawn[0][1] is None:
            self._drawn.pop(0)

    def get_state(self):
        if not self._drawn:
            return {"parent": self._parent.get_state(), "waiting": []}
        return {"parent": self._drawn[0][0], "waiting": [d[1] is not None for d in self._drawn]}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._drawn = []
        for waiting in state["waiting"]:
            self._draw()
            if not waiting:
                self._drawn[-1][1] = None
        self._trim()


class RandomMixIterDataset(grain.IterDataset):
    """Named streams mixed by drawing each element's stream at random with the given
    weights; the draw for position i is seeded by (seed, i), so the state is the position
    and the streams' states."""

    def __init__(self, parents: dict, weights: dict, seed: int):
        self._names = sorted(parents)
        super().__init__([parents[n] for n in self._names])
        w = np.asarray([weights[n] for n in self._names], np.float64)
        self._cdf, self._seed = np.cumsum(w / w.sum()), seed

    def __iter__(self):
        return _RandomMixIterator([p.__iter__() for p in self._parents], self._names,
                                  self._cdf, self._seed)


class _RandomMixIterator(grain.DatasetIterator):
    def __init__(self, parents, names, cdf, seed):
        super().__init__(parents)
        self._names, self._cdf, self._seed, self._index = names, cdf, seed, 0

    def __next__(self):
        u = np.random.default_rng([self._seed, self._index]).random()
        self._index += 1
        return next(self._parents[min(int(np.searchsorted(self._cdf, u, side="right")),
                                      len(self._cdf) - 1)])

    def get_state(self):
        return {"index": self._index,
                "parents": {n: p.get_state() for n, p in zip(self._names, self._parents)}}

    def set_state(self, state):
        self._index = state["index"]
        for name, parent in zip(self._names, self._parents):
            parent.set_state(state["parents"][name])
