"""Orbax checkpoints of the whole run: train state, every host's data iterator state.

Layout: `<workdir>/checkpoints/<step>/{state, data, meta}`. `data` is Grain's per-process
JSON (`process_i-of-n.json`), so each host resumes its own stream exactly. Restoring
takes target shardings, so a checkpoint loads onto a different mesh or device count.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp


class DataStreams:
    """The named data iterators of a stage, checkpointed as one JSON object by Grain's
    Orbax handler (which takes bytes from iterators that are not Grain's own)."""

    def __init__(self, iterators: dict):
        self.iterators = iterators

    def get_state(self) -> bytes:
        return json.dumps({name: it.get_state() for name, it in self.iterators.items()},
                          indent=1).encode()

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


def abstract_state(abstract, shardings):
    """ShapeDtypeStructs carrying the target shardings (shardings is a prefix tree)."""
    return jax.tree.map(
        lambda s, sub: jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub),
        shardings, abstract)


class Checkpointer:
    def __init__(self, directory: str, keep: int, every: int, async_save: bool = True):
        self.every = every
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 enable_async_checkpointing=async_save))

    def save(self, step: int, state, streams: DataStreams | None, meta: dict,
             force: bool = False) -> bool:
        """Save every `every` steps (or when forced); `streams=None` saves no data state."""
        if not force and step % self.every:
            return False
        if step in self.manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if streams is not None:
            items["data"] = grain.checkpoint.CheckpointSave(streams)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, target, restore_data, only_step: int | None = None):
        """(step, state, meta, data_dir) from the newest checkpoint that restores.

        A checkpoint that fails (corrupt or truncated files) is reported and the one
        before it is tried. `restore_data(meta)` returns a DataStreams for that step's
        stage (or None: fresh streams); its iterator state is restored too. Returns None when no
        checkpoint restores.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps if only_step is None else [s for s in steps if s == only_step]:
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                streams = restore_data(meta)
                items = {"state": ocp.args.StandardRestore(target)}
                if streams is not None:
                    items["data"] = grain.checkpoint.CheckpointRestore(streams)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                return step, restored["state"], meta, streams
            except Exception as e:  # noqa: BLE001 - any failure means: try an older one
                msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                print(f"WARNING: checkpoint {step} failed to restore ({type(e).__name__}: "
                      f"{msg}); falling back to the previous one", flush=True)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
