"""`lumina-jax plan`: per-device memory and FLOPs of a config's train step on a mesh.

    lumina-jax plan --config configs/lumina_video_2b.py --mesh fsdp=256 --accelerator v5p

For every curriculum stage, every task at its largest bucket (largest-area resolution
bucket, a window of `max_frames // 4` CogVideoX latents truncated to the temporal patch
(24 for 96 frames), 1/8 the pixel size; Gemma captions of `caption_len` tokens) and the
global batch of the config. The step compiles one gradient per task shape plus one
update; the peak is the state and gradient accumulator plus the largest of those. Two methods:

  * `compiled`: the real jitted train step lowered and compiled for N fake CPU devices
    (`--xla_force_host_platform_device_count=N`, in a subprocess) with the config's
    remat and dtypes; `compiled.memory_analysis()` gives arguments / temporaries per
    device. Attention runs inside shard_map with the same specs and Ulysses all-to-alls
    as on the accelerator (ops/sharded.py), so the sharding and communication match;
    only the kernel differs: XLA:CPU cannot compile the Triton/Mosaic kernels, so the
    chunked XLA path (tiled, linear in memory like them) stands in for them. Their own
    lowering for CUDA and TPU is checked by `jax.export` in tests/test_parallel.py. See
    CPU_PLAN_XLA_FLAGS for the one pass the compile turns off. XLA:CPU still computes
    bf16 elementwise work in fp32, so the figure is an upper bound for bf16 accelerators.
  * `analytic`: `jax.eval_shape` of the sharded state (exact params / optimiser / EMA
    bytes per device) plus an activation estimate for the remat policy. Used for the
    smallest-mesh search (the largest axis doubles, then `sequence` once each chip
    holds one item; scaled by the compiled/analytic activation ratio), and where
    compiling is too big or fails.

Params/optimiser/EMA come from the state's shard shapes in both methods.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

from lumina_jax.errors import UserError

GIB = 2**30
ACCELERATORS = {"v5e": 16 * GIB, "h100": 80 * GIB, "v5p": 95 * GIB}
ACCELERATOR_NAMES = {"v5e": "TPU v5e", "h100": "H100", "v5p": "TPU v5p"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# XLA:CPU has no native bf16 slicing: it upcasts the scan's saved bf16 layer inputs, and
# loop-invariant code motion then hoists a whole fp32 [layers, B, N, dim] copy out of the
# backward loop (+19 GiB for 2B stage 4). GPU/TPU slice bf16 natively, so the plan's
# CPU compile turns those two passes off to stay representative of them.
CPU_PLAN_XLA_FLAGS = ("--xla_disable_hlo_passes=while-loop-invariant-code-motion,"
                      "while-loop-expensive-invariant-code-motion")


class PlanError(UserError, ValueError):
    """The config cannot be planned (e.g. no mesh fits)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="per-device memory and FLOPs of each training stage on a mesh; which "
                     "accelerators it fits",
        description="Per-device memory (params, optimiser, EMA, activations) and step FLOPs "
                    "of every curriculum stage of a config on a mesh, which accelerators that "
                    "fits, and the smallest mesh that fits each. Each stage is printed as "
                    "soon as it is planned (a compile can take minutes).")
    p.add_argument("--config", required=True, help="configs/x.py or configs/x.py:arg")
    p.add_argument("--mesh", default="", help="e.g. fsdp=256 or data=2,fsdp=128 "
                                              "(default: the config's mesh)")
    p.add_argument("--devices", type=int, default=0,
                   help="number of devices (default: the product of the mesh sizes)")
    p.add_argument("--accelerator", choices=sorted(ACCELERATORS), default=None,
                   help="report fit and smallest mesh for this one (default: all three)")
    p.add_argument("--stage", type=int, default=0, help="1-based stage; 0 = all stages")
    p.add_argument("--method", choices=("compiled", "analytic"), default="compiled",
                   help="compiled (default): compile the real train step for fake CPU "
                        "devices and read its memory (minutes for large models); analytic: "
                        "shapes and an activation estimate (seconds)")
    p.add_argument("--timeout", type=int, default=480, help="seconds per compile")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run, accepts_overrides=True)


# ------------------------------------------------------------------ shapes and arithmetic

def parse_mesh(spec: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, spec.split(",")):
        name, sep, value = item.partition("=")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise PlanError(f"--mesh item {item!r} must look like axis=size, e.g. fsdp=256")
    return sizes


def resolve_mesh(sizes: dict[str, int], devices: int) -> tuple[dict[str, int], int]:
    from lumina_jax.parallel.mesh import resolve_axis_sizes

    if devices <= 0:
        if any(s == -1 for s in sizes.values()):
            raise PlanError(f"mesh {sizes} has a -1 axis: give --devices N or fixed sizes")
        devices = math.prod(sizes.values()) if sizes else 1
    try:
        return resolve_axis_sizes(sizes, devices, "--mesh"), devices
    except ValueError as e:
        raise PlanError(str(e)) from None


def largest_bucket(data, patch_size) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of a task's largest bucket.

    Video windows hold max_frames // T latents (T the encoder's temporal factor; latent
    0 of a VAE clip is dropped before the window) truncated to a multiple of pF: 24 for
    96 frames of CogVideoX latents.
    """
    from data_pipelines.encoders import LATENT_ENCODERS

    enc = LATENT_ENCODERS[data.latent_encoder]
    p, pf = patch_size
    h, w = largest_pixels(data)
    if data.media == "image" or data.max_frames <= 1:
        lat_f = 1
    else:
        lat_f = max(pf, data.max_frames // enc.temporal // pf * pf)
    return lat_f, h // enc.spatial, w // enc.spatial


def largest_pixels(data) -> tuple[int, int]:
    from data_pipelines.buckets import resolution_buckets

    buckets = resolution_buckets(data.resolution, data.multiple, data.max_aspect)
    return max(buckets, key=lambda hw: (hw[0] * hw[1], hw[1]))


def stage_tasks(exp, stage_index: int, channels: int) -> dict:
    """{task: {batch, latents (C,F,H,W), cap_len, patch, tokens}} at the largest bucket."""
    from lumina_jax.model import token_count

    out = {}
    for task in exp.stages[stage_index].tasks:
        p, pf = task.spec.patch_size
        f, h, w = largest_bucket(task.data, (p, pf))
        tokens = token_count(f, h, w, (p, pf))
        out[task.name] = {"batch": task.data.batch_size, "latents": (channels, f, h, w),
                          "cap_len": task.data.caption_len or task.data.max_caption_len,
                          "patch": (p, pf), "tokens": tokens,
                          "pixels": (task.data.max_frames, *largest_pixels(task.data))}
    return out


def state_bytes_per_device(model_cfg, optim_cfg, mesh_sizes: dict[str, int], rules) -> dict:
    """Exact per-device bytes of params / optimiser / EMA from the state's shard shapes
    (abstract: nothing is allocated; uses an abstract mesh, no devices needed)."""
    import warnings

    import jax
    from jax.sharding import AbstractMesh, AxisType

    from lumina_jax.parallel.mesh import MESH_AXES
    from lumina_jax.train.state import make_optimizer, state_layout

    mesh = AbstractMesh(tuple(mesh_sizes[a] for a in MESH_AXES), MESH_AXES,
                        axis_types=(AxisType.Auto,) * len(MESH_AXES))
    with warnings.catch_warnings():  # indivisible dims stay replicated (counted so)
        warnings.simplefilter("ignore")
        target = state_layout(model_cfg, mesh, rules, make_optimizer(optim_cfg)).target()
    nbytes = lambda tree: sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                              for a in jax.tree.leaves(tree))
    return {"params": nbytes(target["params"]), "optimizer": nbytes(target["opt_state"]),
            "ema": nbytes(target["ema"])}


def activation_estimate(model_cfg, tasks: dict, n_batch_shards: int,
                        n_token_shards: int = 1) -> int:
    """Rough per-device activation bytes of the summed multi-task step.

    remat != none: every layer keeps its input [b, N, dim] for every task, plus one
    layer's recomputed forward/backward working set for the largest task. remat none:
    every layer keeps ~(12 dim + 3 ffn) values per token. Attention is flash/chunked
    (linear in N). Gradients (fp32, sharded like params) are counted by the caller.
    """
    c = model_cfg
    act = DTYPE_BYTES[c.dtype]
    per_token_layer = (12 * c.dim + 3 * c.ffn_dim) * act
    kept, working = 0, 0
    for t in tasks.values():
        b = max(1, t["batch"] // n_batch_shards)
        n = -(-t["tokens"] // n_token_shards)
        if c.remat == "none":
            kept += c.n_layers * b * n * per_token_layer
        else:
            kept += c.n_layers * b * n * c.dim * act
            working = max(working, 2 * b * n * per_token_layer)
        # embedder input/output, final layer, loss in fp32 (latent-sized, several copies)
        kept += 6 * b * math.prod(t["latents"]) * 4
    return kept + working


def axes_size(axes, mesh_sizes: dict[str, int]) -> int:
    """Devices along mesh axes given as a spec entry: None, a name or a tuple of names."""
    axes = () if not axes else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh_sizes.get(a, 1) for a in axes)


def shards_of(rules, logical: str, mesh_sizes: dict[str, int]) -> int:
    """How many ways the rules split the logical activation axis on this mesh."""
    return axes_size(rules.get(logical), mesh_sizes)


def growth_meshes(mesh_sizes: dict[str, int], rules, global_batch: int, steps: int = 14):
    """Candidate meshes, smallest first, for the smallest-mesh search: the largest axis
    starts at 1 and doubles; once the batch axes split the global batch one item per
    shard, a `sequence` axis (if the rules split tokens over it) doubles instead."""
    grow = max(mesh_sizes, key=lambda a: (mesh_sizes[a], a == "fsdp"))  # ties: fsdp
    token_axis = rules.get("act_tokens")
    current = {**mesh_sizes, grow: 1}
    out = [dict(current)]
    for _ in range(steps):
        current = dict(current)
        if (token_axis == "sequence" and
                shards_of(rules, "act_batch", current) * 2 > global_batch):
            current["sequence"] = current.get("sequence", 1) * 2
        else:
            current[grow] *= 2
        out.append(current)
    return out


def mesh_text(mesh_sizes: dict[str, int]) -> str:
    return ",".join(f"{a}={s}" for a, s in mesh_sizes.items() if s > 1) or "single device"


# ------------------------------------------------------------------ the two methods

def analytic_stage(exp, stage_index: int, mesh_sizes: dict[str, int], rules) -> dict:
    from lumina_jax.model.flops import train_step_flops

    tasks = stage_tasks(exp, stage_index, exp.model.in_channels)
    state = state_bytes_per_device(exp.model, exp.optim, mesh_sizes, rules)
    n_dev = math.prod(mesh_sizes.values())
    acts = activation_estimate(exp.model, tasks, shards_of(rules, "act_batch", mesh_sizes),
                               shards_of(rules, "act_tokens", mesh_sizes))
    flops = sum(train_step_flops(exp.model, t["tokens"], t["cap_len"],
                                 t["patch"][1] * t["patch"][0] ** 2 * t["latents"][0], t["batch"])
                for t in tasks.values())
    grads = state["params"] if exp.model.param_dtype == "float32" else 2 * state["params"]
    total = sum(state.values()) + grads + acts
    return {"method": "analytic", "tasks": tasks, **state, "activations": acts,
            "gradients": grads, "total": total, "flops_per_device": flops / n_dev,
            "flops_total": flops}


def compiled_stage(config_spec: str, overrides, stage_index: int, mesh_sizes: dict[str, int],
                   timeout: int) -> dict:
    """Compile the real step for N fake CPU devices in a subprocess."""
    n = math.prod(mesh_sizes.values())
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {CPU_PLAN_XLA_FLAGS} "
                         f"--xla_force_host_platform_device_count={n}".strip())
    job = json.dumps({"config": config_spec, "overrides": list(overrides),
                      "stage": stage_index, "mesh": mesh_sizes})
    proc = subprocess.run([sys.executable, "-m", "lumina_jax.train.plan", "--worker", job],
                          env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("PLAN "):
            return json.loads(line[5:])
    raise RuntimeError(f"compile worker failed (rc {proc.returncode}): "
                       f"{proc.stderr.strip().splitlines()[-3:]}")


def _worker(job: dict) -> dict:
    import warnings

    import jax
    import jax.numpy as jnp

    from lumina_jax.parallel import make_mesh
    from lumina_jax.train.config import build, load_config
    from lumina_jax.train.loop import rules_of
    from lumina_jax.train.state import run_optimizer, state_layout
    from lumina_jax.train.step import TrainStep, batch_sharding

    warnings.simplefilter("ignore")
    config = load_config(job["config"], job["overrides"])
    exp = build(config, check_data=False)
    rules = rules_of(exp)
    mesh = make_mesh(job["mesh"])
    layout = state_layout(exp.model, mesh, rules, run_optimizer(exp))
    stage = exp.stages[job["stage"]]
    specs = {t.name: t.spec for t in stage.tasks}
    step = TrainStep(exp.model, exp.optim, exp.loss, specs, mesh, rules, layout)
    tasks = stage_tasks(exp, job["stage"], exp.model.in_channels)
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                    sharding=batch_sharding(mesh, rules, shape))
    batches = {name: {"latents": sds((t["batch"], *t["latents"]), jnp.float32),
                      "cap_feats": sds((t["batch"], t["cap_len"], exp.model.cap_feat_dim),
                                       jnp.float32),
                      "cap_mask": sds((t["batch"], t["cap_len"]), jnp.bool_),
                      "motion_score": sds((t["batch"],), jnp.float32)}
               for name, t in tasks.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    compiles = step.compile(layout.target(), batches, key)
    peak = step.peak_bytes()
    return {"argument": peak["state_and_grads"], "output": 0, "alias": 0,
            "temp": peak["peak"] - peak["state_and_grads"],
            "code": sum(c.memory.generated_code_size_in_bytes for c in compiles),
            "xla_flops_per_device": sum(c.flops for c in compiles)}


def plan_stage(exp, config_spec, overrides, stage_index, mesh_sizes, rules, method, timeout):
    out = analytic_stage(exp, stage_index, mesh_sizes, rules)
    if method == "compiled":
        try:
            c = compiled_stage(config_spec, overrides, stage_index, mesh_sizes, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            out["compile_error"] = str(e)[:300]
        else:
            batch = sum(4 * t["batch"] * (math.prod(t["latents"]) + t["cap_len"] *
                                          (exp.model.cap_feat_dim + 1) + 1)
                        for t in out["tasks"].values()) // math.prod(mesh_sizes.values())
            out.update(method="compiled", compiled=c, analytic_activations=out["activations"],
                       activations=c["temp"],  # temporaries: activations, grads, update
                       total=c["argument"] + c["output"] - c["alias"] + c["temp"],
                       batch_bytes_approx=batch)
    return out


# ------------------------------------------------------------------ the command

def run(args) -> int:
    """Print the plan: the header at once, then each stage as soon as it is planned (or the
    whole JSON at the end with --json)."""
    emit = None if args.json else (lambda text: print(text, flush=True))
    try:
        text = plan(args, emit=emit)
    except PlanError as e:
        print(f"lumina-jax plan: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(text)
    return 0


CALIBRATION_NOTE = """\
note: "activations xK" in the smallest-mesh lines: K = the stage's compiled temporaries /
its analytic activation estimate. The smallest-mesh search compiles nothing: it adds up the
analytic estimate on each candidate mesh with the activations multiplied by K, so it
matches the compile (x1.00: not calibrated, with --method analytic or a failed compile)."""


def plan(args, emit=None) -> str:
    """The plan as text (or JSON with args.json). `emit`, if given, is called with each
    part of the text as soon as it is known: the header, then one block per stage."""
    from lumina_jax.train.loop import rules_of
    from lumina_jax.train.config import ConfigError, build, load_config

    overrides = list(getattr(args, "overrides", []) or [])
    try:
        config = load_config(args.config, overrides)
        exp = build(config, check_data=False)
    except ConfigError as e:
        raise PlanError(str(e)) from None
    sizes = parse_mesh(args.mesh) if args.mesh else {k: int(v) for k, v in exp.run.mesh.items()}
    mesh_sizes, n_dev = resolve_mesh(sizes, args.devices)
    rules = rules_of(exp)
    stages = range(len(exp.stages)) if not args.stage else [args.stage - 1]
    if args.stage and not 0 < args.stage <= len(exp.stages):
        raise PlanError(f"--stage {args.stage}: the config has {len(exp.stages)} stages")
    accels = [args.accelerator] if args.accelerator else list(ACCELERATORS)
    c = exp.model
    lines = [f"plan: {args.config}, model dim {c.dim} x {c.n_layers} layers ({c.n_heads} heads, "
             f"{c.kv_heads} kv), params {c.param_dtype}, compute {c.dtype}, remat {c.remat}; "
             f"mesh {', '.join(f'{a}={s}' for a, s in mesh_sizes.items() if s > 1) or 'single'}"
             f" ({n_dev} devices), rules "
             f"{exp.run.rules if isinstance(exp.run.rules, str) else 'custom'}"]
    if emit:
        emit(lines[0])
    report = []
    for si in stages:
        if args.method == "compiled":
            print(f"stage {si + 1}/{len(exp.stages)}: compiling the train step for {n_dev} fake "
                  f"CPU devices (at most --timeout {args.timeout}s)...", file=sys.stderr,
                  flush=True)
        first = len(lines)
        r = plan_stage(exp, args.config, overrides, si, mesh_sizes, rules, args.method,
                       args.timeout)
        # Smallest mesh: the analytic estimate over growing meshes (see growth_meshes),
        # its activations scaled to match the compile where there is one.
        calib = (r["activations"] / r["analytic_activations"]) if r["method"] == "compiled" else 1
        r["activation_calibration"] = calib
        cands = growth_meshes(mesh_sizes, rules, min(t["batch"] for t in r["tasks"].values()))
        totals = []
        for m in cands:
            a = analytic_stage(exp, si, m, rules)
            totals.append(a["total"] + (calib - 1) * a["activations"])
        r["fits"] = {a: r["total"] <= ACCELERATORS[a] for a in accels}
        r["smallest_mesh"] = {
            a: next((mesh_text(m) for m, tot in zip(cands, totals) if tot <= ACCELERATORS[a]),
                    None) for a in accels}
        r["stage"] = exp.stages[si].name
        report.append(r)
        g = lambda b: f"{b / GIB:.2f} GiB"
        lines.append(f"\nstage {si + 1} '{r['stage']}' ({r['method']}"
                     + (f"; compile failed: {r['compile_error']}" if "compile_error" in r else "")
                     + ")")
        for name, t in r["tasks"].items():
            f, h, w = t["pixels"]
            lines.append(f"  {name}: global batch {t['batch']}, {f} frames {h}x{w} px (HxW) "
                         f"-> latents "
                         f"{t['latents']}, {t['tokens']:,} tokens/item, caption {t['cap_len']}")
        lines.append(f"  per device: params {g(r['params'])}, optimizer {g(r['optimizer'])}, "
                     f"EMA {g(r['ema'])}, " + (
                         f"temporaries (activations, grads, update) {g(r['activations'])}"
                         if r["method"] == "compiled" else
                         f"gradients {g(r['gradients'])}, activations (estimate) "
                         f"{g(r['activations'])}"))
        if r["method"] == "compiled":
            cm = r["compiled"]
            lines.append(f"  compiled: arguments {g(cm['argument'])}, outputs {g(cm['output'])} "
                         f"(aliased {g(cm['alias'])}), temporaries {g(cm['temp'])}, "
                         f"XLA flops/device {cm['xla_flops_per_device']:.3g} (scan bodies "
                         "counted once)")
        lines.append(f"  total per device {g(r['total'])}; model FLOPs per step "
                     f"{r['flops_total']:.4g} ({r['flops_per_device']:.4g} per device)")
        for a in accels:
            m = r["smallest_mesh"][a]
            lines.append(f"  {ACCELERATOR_NAMES[a]} ({ACCELERATORS[a] // GIB} GiB): "
                         f"{'fits' if r['fits'][a] else 'does NOT fit'}; smallest mesh that "
                         f"fits (analytic, activations x{r['activation_calibration']:.2f}): "
                         f"{m or 'none up to ' + mesh_text(cands[-1])}")
        if emit:
            emit("\n".join(lines[first:]))
    lines.append("\n" + CALIBRATION_NOTE)
    if emit:
        emit(lines[-1])
    if args.json:
        return json.dumps({"mesh": mesh_sizes, "devices": n_dev, "stages": report}, default=str)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print("PLAN " + json.dumps(_worker(json.loads(sys.argv[2]))), flush=True)
    else:
        parser = argparse.ArgumentParser(prog="lumina-jax")
        register(parser.add_subparsers())
        ns, extra = parser.parse_known_args()
        ns.overrides = [a for a in extra if a.startswith("--config.")]
        sys.exit(ns.func(ns))
