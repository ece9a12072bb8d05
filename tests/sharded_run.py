"""Train the tiny model a few steps on a given mesh and print a JSON report.

Used by tests/test_parallel.py in subprocesses (forced CPU devices, or several local
processes through launch/local.sh). Data is a fixed synthetic global batch; each
process loads only its own rows.
"""

import argparse
import json
import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lumina_jax.cli import fewer_gc_passes
from lumina_jax.diffusion.loss import DEFAULT_TASKS, LossConfig, TaskSpec
from lumina_jax.model import get_preset, token_count
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.parallel.distributed import maybe_initialize
from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
from lumina_jax.train.step import TrainStep, batch_keys, global_batch, host_rows

# One task per run: each task's gradient is a compile of its own, and summing a stage's
# task gradients is the same code on any mesh (the tiny runs' joint stage trains three).
TASKS = {"video": {"video_2x2": DEFAULT_TASKS["video_2x2"]},
         "image": {"image_1x2": DEFAULT_TASKS["image_1x2"]},
         "v2a": {"audio": TaskSpec("audio", (4, 1), 1.0)}}


def synthetic_batches(cfg, global_batch_size, names, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name, frames in (("image_1x2", 1), ("video_2x2", 4)):
        if name not in names:
            continue
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


def synthetic_v2a_batches(cfg, global_batch_size, names=("audio",), seed=0):
    """Audio latents [B, 1, 1, 32, 16], 9 frames of features, per-step sync features."""
    rng = np.random.default_rng(seed)
    b = global_batch_size
    mask = np.arange(8)[None] < rng.integers(3, 9, (b, 1))
    return {"audio": {
        "latents": rng.standard_normal((b, cfg.in_channels, 1, 32, 16), dtype=np.float32),
        "cap_feats": rng.standard_normal((b, 8, cfg.cap_feat_dim), dtype=np.float32),
        "cap_mask": mask,
        "frames": rng.standard_normal((b, 9, cfg.frame_dim), dtype=np.float32),
        "sync": rng.uniform(0, 1, (b, 32, cfg.sync_dim)).astype(np.float32)}}


def full_length_gathers(hlo: str, tokens: set[int], head_dim: int) -> list[str]:
    """All-gathers in compiled HLO that produce a [.., N, .., head_dim] array at a full
    token count N (what gathering q, k or v over the sequence axis looks like)."""
    found = []
    for line in hlo.splitlines():
        if " all-gather(" not in line and " all-gather-start(" not in line:
            continue
        for dims in re.findall(r"\w+\[([\d,]+)\]", line.split("=", 1)[1].split(" all-gather")[0]):
            shape = [int(d) for d in dims.split(",")]
            if len(shape) >= 3 and shape[-1] == head_dim and tokens & set(shape[:-1]):
                found.append(line.strip()[:200] + " " + " ".join(
                    re.findall(r'op_name="[^"]*"', line))[:300])
    return found


KERNEL_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def export_step(step, state, batches, key, platform: str) -> dict:
    """`jax.export` one task's sharded gradient step for `platform` (kernels for it)."""
    from jax import export

    from lumina_jax.ops.attention import kernels_for

    name = "video_2x2"
    abstract = lambda tree: jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
    args = (abstract(state["params"]), abstract(state["params"]), abstract(batches[name]),
            jax.ShapeDtypeStruct((), np.int32), key)
    # A fresh jit of the step's gradient: the step's own one is already traced with the
    # CPU (interpret-mode) kernels, and jit reuses a trace.
    params, replicated = step.state_shardings["params"], NamedSharding(step.mesh, P())
    fn = jax.jit(step._grad_fn(name), in_shardings=(params, params, None, replicated,
                                                    replicated))
    with kernels_for(platform):
        exp = export.export(fn, platforms=[platform], disabled_checks=[
            export.DisabledSafetyCheck.custom_call(KERNEL_CALLS[platform])])(*args)
    text = exp.mlir_module()
    return {"devices": exp.nr_devices, "kernel_calls": text.count(KERNEL_CALLS[platform]),
            "all_to_alls": text.count("all_to_all")}


def run(mesh_spec: str, rules_name: str, n_devices: int, steps: int, batch: int,
        attention: str = "auto", export_platforms=(), kind: str = "video") -> dict:
    """`kind`: the task trained, video (video_2x2), image (image_1x2) or v2a."""
    if kind == "v2a":  # Lumina-V2A: same train step, audio latents + frame/sync conditioning
        cfg = get_preset("v2a_tiny", dim=64, n_heads=4, n_kv_heads=2, cap_feat_dim=32,
                         frame_dim=12, sync_dim=8, attention_impl=attention)
        make = synthetic_v2a_batches
    else:
        cfg = get_preset("tiny", n_heads=4, n_kv_heads=2, attention_impl=attention)
        make = synthetic_batches
    tasks = TASKS[kind]
    sizes = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in mesh_spec.split(",")}
    devices = jax.devices()[:n_devices] if n_devices else None
    mesh, rules = make_mesh(sizes, devices=devices), get_rules(rules_name)
    optim = OptimConfig(lr=1e-3, ema_every=1)
    layout = state_layout(cfg, mesh, rules, make_optimizer(optim))
    state = layout.init()
    step = TrainStep(cfg, optim, LossConfig(), tasks, mesh, rules, layout)
    rows = host_rows(mesh, rules, batch)
    batches = {name: global_batch({f: v[rows] for f, v in b.items()}, mesh, rules,
                                  batch_keys(cfg))
               for name, b in make(cfg, batch, tasks).items()}
    key = jax.random.key(42)
    step.compile(state, batches, key)
    hlo = "\n".join(e.as_text() for k, e in step._executables.items() if k != "update")
    tokens = {token_count(*b["latents"].shape[2:], tasks[n].patch_size)
              for n, b in batches.items()}
    exports = {p: export_step(step, state, batches, key, p) for p in export_platforms}
    losses, grad_norms = [], []
    for _ in range(steps):
        state, metrics = step(state, batches, key)
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    specs = {jax.tree_util.keystr(path): [a if a is None or isinstance(a, str) else list(a)
                                          for a in leaf.sharding.spec]
             for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    device0 = jax.local_devices()[0]
    per_device = sum(s.data.nbytes for leaf in jax.tree.leaves((state["params"], state["opt_state"]))
                     for s in leaf.addressable_shards if s.device == device0)
    return {"losses": losses, "grad_norms": grad_norms, "specs": specs,
            "param_opt_bytes_device0": per_device, "report": step.report(batches),
            "qkv_gathers": full_length_gathers(hlo, tokens, cfg.head_dim),
            "all_to_alls": hlo.count(" all-to-all("), "exports": exports}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True,
                    help="MESH/RULES[/N_DEVICES][/ATTENTION][/export][/image|/v2a], e.g. "
                         "fsdp=4,tensor=2/fsdp_tp or fsdp=2,sequence=4/fsdp_sp/pallas/export "
                         "(export: also jax.export it for --export's platforms; image: the "
                         "image task instead of video; v2a: the Lumina-V2A model); repeatable")
    ap.add_argument("--export", nargs="*", default=(), metavar="PLATFORM",
                    help="platforms (cuda, tpu) to jax.export the runs marked /export for")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    fewer_gc_passes()
    maybe_initialize()
    reports = {}
    for spec in args.run:
        mesh_spec, rules_name, *more = spec.split("/")
        n = next((int(m) for m in more if m.isdigit()), 0)
        kind = next((m for m in more if m in TASKS), "video")
        impl = next((m for m in more if not m.isdigit() and m != "export" and m not in TASKS),
                    "auto")
        reports[spec] = run(mesh_spec, rules_name, n, args.steps, args.batch, impl,
                            args.export if "export" in more else (), kind)
    if jax.process_index() == 0:
        print("REPORT " + json.dumps(reports))


if __name__ == "__main__":
    main()
