"""Train the tiny model a few steps on a given mesh and print a JSON report.

Used by tests/test_parallel.py in subprocesses (forced CPU devices, or several local
processes through launch/local.sh). Data is a fixed synthetic global batch; each
process loads only its own rows.
"""

import argparse
import json

import jax
import numpy as np

from lumina_jax.diffusion.loss import DEFAULT_TASKS, LossConfig
from lumina_jax.model import get_preset
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.parallel.distributed import maybe_initialize
from lumina_jax.train.state import OptimConfig, create_sharded_state, make_optimizer
from lumina_jax.train.step import TrainStep, global_batch, host_rows

TASKS = {k: DEFAULT_TASKS[k] for k in ("image_1x2", "video_2x2")}


def synthetic_batches(cfg, global_batch_size, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name, frames in (("image_1x2", 1), ("video_2x2", 4)):
        mask = np.arange(8)[None] < rng.integers(3, 9, (global_batch_size, 1))
        batches[name] = {
            "latents": rng.standard_normal((global_batch_size, cfg.in_channels, frames, 8, 8),
                                           dtype=np.float32),
            "cap_feats": rng.standard_normal((global_batch_size, 8, cfg.cap_feat_dim),
                                             dtype=np.float32),
            "cap_mask": mask,
            "motion_score": rng.uniform(0, 5, global_batch_size).astype(np.float32),
        }
    return batches


def run(mesh_spec: str, rules_name: str, n_devices: int, steps: int, batch: int) -> dict:
    cfg = get_preset("tiny", n_heads=4, n_kv_heads=2)
    sizes = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in mesh_spec.split(",")}
    devices = jax.devices()[:n_devices] if n_devices else None
    mesh, rules = make_mesh(sizes, devices=devices), get_rules(rules_name)
    optim = OptimConfig(lr=1e-3, ema_every=1)
    state, shardings = create_sharded_state(cfg, make_optimizer(optim), 0, mesh, rules)
    step = TrainStep(cfg, optim, LossConfig(), TASKS, mesh, rules, shardings)
    rows = host_rows(mesh, rules, batch)
    batches = {name: global_batch({f: v[rows] for f, v in b.items()}, mesh, rules)
               for name, b in synthetic_batches(cfg, batch).items()}
    key = jax.random.key(42)
    step.compile(state, batches, key)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batches, key)
        losses.append(float(metrics["loss"]))
    specs = {jax.tree_util.keystr(path): [a if a is None or isinstance(a, str) else list(a)
                                          for a in leaf.sharding.spec]
             for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    device0 = jax.local_devices()[0]
    per_device = sum(s.data.nbytes for leaf in jax.tree.leaves((state["params"], state["opt_state"]))
                     for s in leaf.addressable_shards if s.device == device0)
    return {"losses": losses, "specs": specs, "param_opt_bytes_device0": per_device,
            "report": step.report(batches)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True,
                    help="MESH/RULES[/N_DEVICES], e.g. fsdp=4,tensor=2/fsdp_tp; repeatable")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    maybe_initialize()
    reports = {}
    for spec in args.run:
        mesh_spec, rules_name, *n = spec.split("/")
        reports[spec] = run(mesh_spec, rules_name, int(n[0]) if n else 0, args.steps, args.batch)
    if jax.process_index() == 0:
        print("REPORT " + json.dumps(reports))


if __name__ == "__main__":
    main()
