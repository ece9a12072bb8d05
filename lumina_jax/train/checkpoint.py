"""Orbax checkpoints of the whole run: train state, every host's data iterator state.

Layout: `<workdir>/checkpoints/<step>/{state, data, meta, checksums.json}`. `data` is
Grain's per-process JSON (`process_i-of-n.json`), so each host resumes its own stream
exactly. Restoring takes target shardings, so a checkpoint loads onto a different mesh or
device count; readers (sample, eval, export) restore only part of `state` (params and EMA:
Orbax's partial restore skips the optimiser's arrays unread).

Integrity: once a save has finished, `checksums.json` records every file's size and CRC32;
a restore checks them first, so flipped or truncated bytes count as a corrupt checkpoint,
never as weights. When an older step restores where a newer one failed, the newer one
cannot be a config mismatch (the same target loaded), so it is moved aside to
`<step>.corrupt` and saved again when training reaches that step.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKSUMS = "checksums.json"


def file_checksums(folder: Path) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file under `folder` (but the record itself)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CHECKSUMS:
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            out[str(path.relative_to(folder))] = [path.stat().st_size, crc]
    return out


def checksum_problem(folder: Path) -> str | None:
    """Why `folder`'s files differ from its checksums.json (None: they match, or a step
    saved before checksums existed / killed before its record was written)."""
    record = folder / CHECKSUMS
    if not record.is_file():
        return None
    expected = json.loads(record.read_text())
    actual = file_checksums(folder)
    for name, (size, crc) in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name][0] != size:
            return f"{name} has {actual[name][0]} bytes, {size} were saved"
        if actual[name][1] != crc:
            return f"{name} does not match its checksum (its bytes changed after the save)"
    return None


class DataStreams:
    """The named data iterators of a stage, checkpointed as one JSON object by Grain's
    Orbax handler (which takes bytes from iterators that are not Grain's own)."""

    def __init__(self, iterators: dict):
        self.iterators = iterators
        self.pinned: bytes | None = None

    def get_state(self) -> bytes:
        if self.pinned is not None:
            return self.pinned
        return json.dumps({name: it.get_state() for name, it in self.iterators.items()},
                          indent=1).encode()

    def pin(self, state: bytes) -> None:
        """Checkpoint `state` from now on (the position before a fetch that was
        interrupted, since the iterators themselves may be half-way through it)."""
        self.pinned = state

    def set_state(self, state: bytes) -> None:
        state = json.loads(state)
        if set(state) != set(self.iterators):
            raise ValueError(f"checkpointed data streams {sorted(state)} differ from this "
                             f"stage's tasks {sorted(self.iterators)}")
        for name, it in self.iterators.items():
            it.set_state(state[name])

    def start_prefetch(self) -> None:  # called by Grain's handler after a restore
        for it in self.iterators.values():
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def layout_problem(folder: Path, target, partial: bool = False) -> str | None:
    """How the arrays saved in `folder` (a step's `state`) differ from `target`'s paths
    and shapes, read from the checkpoint's metadata alone (no array is loaded).
    `partial`: only the saved items that `target` has are compared (a reader's)."""
    def name(key):
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

    def shapes(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in flat}

    absl = logging.getLogger("absl")  # quiet "no _CHECKPOINT_METADATA" in an item folder
    level, _ = absl.level, absl.setLevel(logging.ERROR)
    try:
        saved = shapes(ocp.StandardCheckpointer().metadata(folder).item_metadata)
    finally:
        absl.setLevel(level)
    wanted = shapes(target)
    if partial:
        saved = {n: s for n, s in saved.items() if n.split("/")[0] in target}
    for name in sorted(set(saved) | set(wanted)):
        if name not in wanted:
            return f"the checkpoint has {name}, which this config's model lacks"
        if name not in saved:
            return f"this config's model has {name}, which the checkpoint lacks"
        if saved[name] != wanted[name]:
            return (f"{name} is {saved[name]} in the checkpoint but {wanted[name]} in this "
                    f"config's model")
    return None


class Checkpointer:
    """Orbax saves every `every` steps and keeps the latest `keep` (None: all) plus, with
    `keep_every` > 0, every step divisible by it for good; we add checksums and the
    fallback past a corrupt step."""

    def __init__(self, directory: str, keep: int | None, every: int, async_save: bool = True,
                 keep_every: int = 0):
        self.directory = Path(os.path.abspath(directory))
        keep_policies = [ocp.checkpoint_managers.preservation_policy.LatestN(keep)]
        if keep_every:
            keep_policies.append(
                ocp.checkpoint_managers.preservation_policy.EveryNSteps(keep_every))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                    keep_policies),
                enable_async_checkpointing=async_save))
        self._unsealed: list[int] = []  # saved steps whose checksums are not written yet
        self.failures: dict[int, str] = {}  # step -> why it did not restore (last restore)

    def save(self, step: int, state, streams: DataStreams | None, meta: dict,
             force: bool = False) -> bool:
        """Save if Orbax's interval says so (or when forced); `streams=None` saves no data
        state. False if nothing was saved (off-interval, or this step is already saved)."""
        if step in self.manager.all_steps() or not (force or self.manager.should_save(step)):
            return False
        self._seal()  # Orbax waits for the previous save here anyway
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if streams is not None:
            items["data"] = grain.checkpoint.CheckpointSave(streams)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._unsealed.append(step)
        return True

    def _seal(self) -> None:
        """Wait for the saves in flight, then record their checksums (process 0)."""
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                folder = self.directory / str(step)
                if folder.is_dir():  # not already dropped by `keep`
                    tmp = folder / (CHECKSUMS + ".tmp")
                    tmp.write_text(json.dumps(file_checksums(folder)))
                    os.replace(tmp, folder / CHECKSUMS)
        self._unsealed = []

    def wait(self) -> None:
        self._seal()
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, target, restore_data=None, only_step: int | None = None,
                       move_corrupt: bool = True, partial: bool = False):
        """(step, state, meta, streams) from the newest checkpoint that restores.

        A checkpoint that fails (checksum mismatch, corrupt or truncated files, a target
        it does not fit) is reported and the one before it is tried; why each failed is
        left in `failures`. `restore_data(meta)` returns a DataStreams for that step's
        stage (or None: fresh streams); its iterator state is restored too (no
        `restore_data`: none is). Returns None when no checkpoint restores.

        Readers like `sample` pass `move_corrupt=False` (nothing is renamed) and
        `partial=True`: only the items of `target` are read (e.g. step, params and EMA),
        the rest of the state (the optimiser's moments) is skipped, unread.
        """
        self.failures = {}
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps if only_step is None else [s for s in steps if s == only_step]:
            try:
                problem = checksum_problem(self.directory / str(step))
                if problem:
                    raise OSError(f"checksum mismatch: {problem}")
                problem = layout_problem(self.directory / str(step) / "state", target, partial)
                if problem:
                    raise ValueError(f"does not fit the config: {problem}")
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                streams = restore_data(meta) if restore_data else None
                items = {"state": ocp.args.PyTreeRestore(
                    target, ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True) if partial else ocp.args.StandardRestore(target)}
                if streams is not None:
                    items["data"] = grain.checkpoint.CheckpointRestore(streams)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - any failure means: try an older one
                msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                self.failures[step] = f"{type(e).__name__}: {msg}"
                print(f"WARNING: checkpoint {step} failed to restore ({self.failures[step]}); "
                      f"trying the previous one", flush=True)
                continue
            if move_corrupt:
                self._move_aside(sorted(self.failures))
            return step, restored["state"], meta, streams
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Rename corrupt steps to `<step>.corrupt` (kept for inspection, no longer a
        step, so training saves that step again)."""
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                folder, n = self.directory / str(step), 0
                target = folder.with_name(f"{step}.corrupt")
                while target.exists():
                    n += 1
                    target = folder.with_name(f"{step}.corrupt{n}")
                os.rename(folder, target)
                print(f"WARNING: moved corrupt checkpoint {step} aside to {target}; it will "
                      f"be saved again when training reaches step {step}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("lumina_jax_checkpoint_move_aside")
        self.manager.reload()

    def close(self) -> None:
        self.wait()
        self.manager.close()
