"""The training loop: curriculum stages, exact resume, preemption, metrics, samples.

Read top to bottom: build the experiment from the config (all validation first), make
the mesh and the sharded state (or restore the newest good checkpoint), then run steps.
The stage is a function of the step, so a resume lands in the right stage with its data
streams restored to the exact next batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import imageio.v3 as iio
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lumina_jax.errors import UserError
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.parallel.distributed import maybe_initialize
from lumina_jax.train import guard
from lumina_jax.train import samples as sampling
from lumina_jax.train.checkpoint import Checkpointer, DataStreams
from lumina_jax.train.config import ConfigError, EvalConfig, Experiment, build, call_function
from lumina_jax.train.evaluate import Evaluator, evaluator_lines
from lumina_jax.train.metrics import MetricWriter, device_peak_flops
from lumina_jax.train.state import model_graphdef, run_optimizer, skipped_steps, state_layout
from lumina_jax.train.step import (TrainStep, batch_keys, enable_compilation_cache,
                                   global_batch)


def make_streams(exp: Experiment, stage_index: int) -> DataStreams:
    """One resumable, per-host-sharded iterator per task of the stage."""
    from data_pipelines import make_iterator

    n = jax.process_count()
    return DataStreams({
        task.name: make_iterator(dataclasses.replace(task.data,
                                                     batch_size=task.data.batch_size // n))
        for task in exp.stages[stage_index].tasks})


def check_batch_sizes(exp: Experiment) -> None:
    """Every global batch splits evenly over the processes (before any compute). A batch
    that does not divide over the mesh's batch axes stays replicated (a warning)."""
    n = jax.process_count()
    for i, stage in enumerate(exp.stages):
        for task in stage.tasks:
            if task.data.batch_size % n:
                raise ConfigError(
                    f"config.stages[{i}].tasks.{task.name}.data.batch_size="
                    f"{task.data.batch_size} is not divisible by the {n} processes; use a "
                    f"multiple of {n}")


def rules_of(exp: Experiment):
    rules = exp.run.rules
    return get_rules(rules if isinstance(rules, str) else dict(rules))


def sample_spec(exp: Experiment, prompts=None) -> sampling.SampleSpec | None:
    """The run's sampling spec (config.sample); `prompts` replace the config's. None: no prompts."""
    prompts = tuple(prompts or exp.sample.prompts)
    return dataclasses.replace(exp.sample, prompts=prompts) if prompts else None


def eval_sample_spec(exp: Experiment, eval_cfg: EvalConfig | None = None):
    """The sampling spec the evaluator's judge and FVD (`eval_cfg`, default the run's)
    sample with; None when neither is on (V2A runs need none)."""
    eval_cfg = eval_cfg or exp.eval
    if not (eval_cfg.judge or eval_cfg.fvd_clips > 0):
        return None
    return sample_spec(exp, prompts=["(eval)"])


class Window:
    """Metrics accumulated between two log lines (device values fetched only at log time).
    Tokens and FLOPs come from each step's actual batch shapes; compile time is not
    counted as step time."""

    def __init__(self):
        self.metrics, self.data_wait, self.start = [], 0.0, time.perf_counter()
        self.flops, self.tokens, self.compile_s = 0.0, 0, 0.0

    def summary(self, peak: float) -> dict:
        metrics = jax.device_get(self.metrics)
        n = len(metrics)
        seconds = max(time.perf_counter() - self.start - self.compile_s, 1e-9)
        out = {"loss": float(np.mean([m["loss"] for m in metrics])),  # mean over tasks
               "loss_total": float(np.mean([m["loss_total"] for m in metrics])),
               "grad_norm": float(np.mean([m["grad_norm"] for m in metrics])),
               "lr": float(metrics[-1]["lr"]),
               "nonfinite_steps": int(sum(not m["finite"] for m in metrics)),
               "step_time_s": seconds / n,
               "tokens_per_s": self.tokens / seconds,
               "data_wait_frac": self.data_wait / seconds,
               "mfu": self.flops / seconds / (peak * jax.device_count())}
        for name in sorted({k for m in metrics for k in m["tasks"]}):
            task = [m["tasks"][name] for m in metrics if name in m["tasks"]]
            out[f"loss/{name}"] = float(np.mean([t["loss"] for t in task]))
            if "padding" in task[0]:  # packed rows (data_pipelines/packing.py)
                out[f"padding/{name}"] = float(np.mean([t["padding"] for t in task]))
            sums = np.sum([t["loss_by_t_sum"] for t in task], axis=0)
            counts = np.sum([t["loss_by_t_count"] for t in task], axis=0)
            for b, (s, c) in enumerate(zip(sums, counts)):
                if c:
                    out[f"loss_t{b}/{name}"] = float(s / c)
        return out


def train(config: ml_collections.ConfigDict, workdir: str, restart: bool = False) -> dict:
    """Train (or resume) the run in `workdir`. `restart` moves an earlier run's checkpoints,
    metrics and samples aside to `before-restart-<time>/` and starts from step 0."""
    config.data_dir = config.data_dir.format(workdir=workdir)
    exp = build(config, check_data=False)  # config errors before anything
    if exp.run.cpu_devices:  # before the backend starts; affects only the CPU platform
        jax.config.update("jax_num_cpu_devices", exp.run.cpu_devices)
    if exp.run.xla_flags:  # read when the backend starts, which has not happened yet
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {exp.run.xla_flags}".strip()
    if not exp.run.prepare_data:  # (else checked once prepared)
        exp = build(config)
    maybe_initialize()
    lead = jax.process_index() == 0
    lock = guard.WorkdirLock(workdir)
    if lead:
        os.makedirs(workdir, exist_ok=True)
        lock.acquire()
    stop = guard.StopRequests()
    guard.quiet_follow_on_errors()
    try:
        return _train(config, exp, workdir, restart, lead, stop)
    except UserError:
        raise
    except Exception as e:
        problem = guard.disk_problem(e)
        if problem is None:
            raise
        raise guard.disk_error(problem, f"training in {workdir} cannot write") from None
    finally:
        stop.close()
        lock.release()


def _train(config, exp: Experiment, workdir: str, restart: bool, lead: bool,
           stop: guard.StopRequests) -> dict:
    if exp.run.prepare_data:  # the hook reads the config's data sections
        call_function(exp.run.prepare_data, config)
        exp = build(config)
    run = exp.run
    if run.compilation_cache_dir:
        enable_compilation_cache(run.compilation_cache_dir.format(workdir=workdir))
    try:
        mesh = make_mesh(run.mesh, run.dcn or None)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    rules = rules_of(exp)
    check_batch_sizes(exp)
    layout = state_layout(exp.model, mesh, rules, run_optimizer(exp), run.seed)

    keys = batch_keys(exp.model)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if lead:
        if restart and (moved := guard.move_run_aside(workdir, "restart")):
            print(f"--restart: moved the earlier run's files to {moved}", flush=True)
        guard.probe_writable(ckpt_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lumina_jax_workdir_ready")
    ckpt = Checkpointer(ckpt_dir, exp.checkpoint.keep, exp.checkpoint.every,
                        exp.checkpoint.async_save, exp.checkpoint.keep_every)
    restored = ckpt.restore_latest(
        layout.target(),
        lambda meta: make_streams(exp, meta["stage"]) if meta["stage"] >= 0 else None)
    if restored:
        step, state, meta, streams = restored
        streams_stage = meta["stage"] if streams is not None else -1
        print(f"resumed from step {step} in {workdir}", flush=True)
    elif ckpt.failures:  # checkpoints exist but none fits: never train over them
        ckpt.close()
        by_reason = {}
        for s, why in sorted(ckpt.failures.items()):
            by_reason.setdefault(why, []).append(str(s))
        reasons = "; ".join(f"step{'s' * (len(s) > 1)} {', '.join(s)}: {why}"
                            for why, s in by_reason.items())
        raise UserError(
            f"{ckpt_dir} has checkpoints but none restores ({reasons}). Nothing was changed. "
            f"If the config differs from the run's ({workdir}/config.json), fix it (e.g. the "
            f"--config.model.* overrides); or train in a new --workdir; or pass --restart to "
            f"move this run's files aside and start again from step 0")
    else:
        step, streams, streams_stage = 0, None, -1
        state = layout.init()
    if lead:
        guard.record_config(workdir, config.to_json_best_effort(indent=1), step)

    writer = MetricWriter(workdir, start_step=step)
    # single process only, like sampling (the fixed batches are this host's arrays)
    evaluator = (Evaluator(exp, exp.eval, model_graphdef(exp.model), keys,
                           eval_sample_spec(exp), os.path.join(workdir, "eval"))
                 if jax.process_count() == 1 and exp.eval.every >= 0 else None)
    peak = device_peak_flops(run.peak_flops_per_device)
    spec = sample_spec(exp)
    key = jax.random.key(run.seed)
    profile = list(run.profile_steps)
    last, nonfinite_run = {}, 0
    train_step = None  # one per stage; they share the optimiser update's executable
    if lead:
        print(run_header(exp, workdir, mesh, step, spec), flush=True)
    bar = tqdm(total=exp.total_steps, initial=step, disable=not lead, unit="step",
               dynamic_ncols=True)

    def save(force=False):
        if ckpt.save(step, state, streams, {"step": step, "stage": streams_stage},
                     force=force) and lead:
            log(f"saved checkpoint {step} ({'async, ' if exp.checkpoint.async_save else ''}"
                f"{ckpt_dir}/{step})")

    def log(line: str) -> None:  # above the progress bar, not inside it
        bar.write(line)

    def stop_now(why: str) -> dict:
        save(force=True)
        if lead:
            bar.write(f"{why}: saved step {step}; exiting")
        return last

    try:
        while step < exp.total_steps:
            stage_index, start = exp.stage_at(step)
            stage = exp.stages[stage_index]
            if streams_stage != stage_index:
                streams, streams_stage = make_streams(exp, stage_index), stage_index
            tasks = {t.name: t.spec for t in stage.tasks}
            train_step = TrainStep(exp.model, exp.optim, exp.loss, tasks, mesh, rules, layout,
                                   update=train_step and train_step.update)
            if lead:
                bar.write(f"stage {stage_index + 1}/{len(exp.stages)} '{stage.name}': steps "
                          f"{start}..{start + stage.steps}, tasks {sorted(tasks)}; compiling "
                          f"each new batch shape as it arrives")
            window = Window()
            while step < start + stage.steps:
                t0 = time.perf_counter()
                # where the data stood after the last step (only a single process interrupts
                # a data wait, see guard.StopRequests)
                position = streams.get_state() if jax.process_count() == 1 else None
                stop.waiting_for_data = True
                try:
                    local = {name: next(it) for name, it in streams.iterators.items()}
                except guard.Interrupted:
                    streams.pin(position)
                    return stop_now(stop.name)
                finally:
                    stop.waiting_for_data = False
                data_wait = time.perf_counter() - t0
                batches = {name: global_batch(b, mesh, rules, keys) for name, b in local.items()}
                seen = len(train_step.compiles)
                new = train_step.uncompiled(batches)
                if new and lead:
                    log(f"compiling stage {stage_index + 1}: {len(new)} new executable"
                        f"{'s' * (len(new) > 1)} ({', '.join(new)}) ...")
                train_step.compile(state, batches, key)
                for c in train_step.compiles[seen:]:
                    window.compile_s += c.seconds
                    if lead:
                        bar.write(f"compiled {c.what} {list(c.latents) if c.latents else ''} in "
                                  f"{c.seconds:.1f}s")
                if seen == 0 and lead:
                    bar.write(train_step.report(batches))
                if step in profile[:1]:
                    jax.profiler.start_trace(os.path.join(workdir, "profile"))
                state, metrics = train_step(state, batches, key)
                step += 1
                if step in profile[1:2]:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                window.metrics.append(metrics)
                window.data_wait += data_wait
                window.flops += train_step.model_flops(batches)
                window.tokens += train_step.tokens(  # real tokens: packing's padding excluded
                    batches, {n: b["padding"] for n, b in local.items() if "padding" in b})
                bar.update(1)
                stage_done = step == start + stage.steps
                if itstime(step, run.log_every, start + stage.steps):
                    nonfinite_run = _check_finite(window, nonfinite_run, run.max_nonfinite_steps,
                                                  step, ckpt)
                    last = window.summary(peak)
                    last["skipped_clips"] = int(sum(b.get("num_skipped", 0)
                                                    for b in local.values()))
                    last["skipped_steps"] = int(skipped_steps(state))
                    last["stage"] = stage_index
                    last.update({f"shape/{n}": "x".join(map(str, b["latents"].shape))
                                 for n, b in local.items()})  # this step's buckets
                    if stage_done:
                        last["compiles"] = len(train_step.compiles)
                        last["compile_s"] = round(sum(c.seconds for c in train_step.compiles), 3)
                        if lead:
                            n = last["compiles"]
                            shapes = sum(c.what != "update" for c in train_step.compiles)
                            what = (f"{shapes} task shape{'s' * (shapes != 1)}"
                                    + (" + the update" if shapes < n else ""))
                            bar.write(f"stage {stage_index + 1} '{stage.name}': {n} "
                                      f"executable{'s' * (n != 1)} ({what}) compiled or "
                                      f"loaded from the cache in {last['compile_s']:.1f}s")
                    writer.scalars(step, last)
                    # the mean over the stage's tasks (comparable across stages)
                    bar.set_postfix(task_loss=f"{last['loss']:.4f}", refresh=False)
                    window = Window()
                save(force=step == exp.total_steps)  # the last step before its samples
                if spec and itstime(step, exp.sample_every, exp.total_steps):
                    _write_samples(exp, state, spec, workdir, step, writer)
                if evaluator and itstime(step, exp.eval.every, exp.total_steps):
                    _evaluate(evaluator, state, stage, step, writer, log)
                if stop.agreed():
                    return stop_now(stop.name or "stop requested by another process")
        if lead:
            from lumina_jax.sweep import plot_losses

            plot = os.path.join(workdir, "metrics.png")
            plot_losses(os.path.dirname(os.path.abspath(workdir)),
                        [os.path.basename(os.path.abspath(workdir))], plot)
            print(f"loss and validation curves: {plot}", flush=True)
    finally:  # the one exit path (end, stop, error): async saves finish, files close
        ckpt.close()
        writer.close()
        bar.close()
    return last


def itstime(step: int, every: int, last_step: int) -> bool:
    """Whether a cadence fires after `step`: every `every` steps (<= 0: never) and at
    `last_step` (the end of the stage or run), so nothing is done twice at the end."""
    return (every > 0 and step % every == 0) or step == last_step


def run_header(exp: Experiment, workdir: str, mesh, step: int, spec) -> str:
    """What a run is about to do and where everything goes, printed before step one."""
    from lumina_jax.model import count_params

    m, run, ckpt = exp.model, exp.run, exp.checkpoint
    devices = jax.devices()
    lines = [
        f"run {workdir}: config {os.path.join(workdir, 'config.json')} (resolved; earlier "
        f"ones in config_history/)",
        f"model: preset {exp.model_preset} ({m.kind}), {count_params(m):,} parameters, dim "
        f"{m.dim}, {m.n_layers} layers, attention {m.attention_impl}, remat {m.remat}",
        f"devices: {len(devices)} x {devices[0].platform} in {jax.process_count()} "
        f"process(es); mesh {dict(mesh.shape)}, rules {run.rules}",
        f"steps: {exp.total_steps} in {len(exp.stages)} stage(s)"
        + (f", resuming at step {step}" if step else ""),
    ]
    start = 0
    for i, stage in enumerate(exp.stages):
        tasks = []
        for t in stage.tasks:
            d = t.data
            shape = ("audio clips" if t.spec.media == "audio" else
                     f"{d.resolution}px" + (f", {d.max_frames} frames at {d.fps:g} fps"
                                            if t.spec.media == "video" else ""))
            p, pf = t.spec.patch_size
            tasks.append(f"{t.name} (global batch {d.batch_size}, {shape}, patch {pf}x{p}, "
                         f"shift {t.spec.shift:g})")
        lines.append(f"  stage {i + 1} '{stage.name}' steps {start}..{start + stage.steps}: "
                     + "; ".join(tasks))
        start += stage.steps
    milestones = f", and every {ckpt.keep_every}th for good" if ckpt.keep_every else ""
    lines.append(f"checkpoints: {os.path.join(workdir, 'checkpoints')} (every {ckpt.every} "
                 f"steps, keep {ckpt.keep}{milestones}); metrics: "
                 f"{os.path.join(workdir, 'metrics.jsonl')}"
                 f" and {os.path.join(workdir, 'tensorboard')} (every {run.log_every} steps)")
    if spec:
        when = f"every {exp.sample_every} steps and " if exp.sample_every else ""
        lines.append(f"samples: {os.path.join(workdir, 'samples')} ({when}at the end)")
    lines.append("progress: task_loss = mean loss over the stage's tasks (the log line has "
                 "each task's loss/<task>)")
    return "\n".join(lines)


class Diverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def _check_finite(window: Window, run: int, limit: int, step: int, ckpt: Checkpointer) -> int:
    """Consecutive non-finite steps so far (updates are skipped on those); raise once
    `limit` (> 0) is reached, rather than skipping to the end of the run."""
    for finite in jax.device_get([m["finite"] for m in window.metrics]):
        run = 0 if finite else run + 1
    if limit and run >= limit:
        ckpt.close()
        steps = ckpt.steps()
        raise Diverged(
            f"{run} consecutive steps up to step {step} had a non-finite loss or gradient "
            f"(their updates were skipped; config.max_nonfinite_steps={limit}). The "
            f"checkpoints ({steps[-1] if steps else 'none'} is the newest) hold the last finite "
            f"state: lower config.optim.lr or check the data, then resume")
    return run


def local_layout(exp: Experiment, opt=None, seed: int = 0):
    """The state layout of a run read or written outside training (sample, eval, export,
    import): split FSDP-style over this process's devices, each holding 1/n of it."""
    with warnings.catch_warnings():  # a dim the devices do not divide stays whole
        warnings.simplefilter("ignore")
        return state_layout(exp.model, make_mesh({"fsdp": -1}, devices=jax.local_devices()),
                            get_rules("fsdp"), opt, seed)


def load_run(workdir: str, step: int | None = None):
    """(experiment, {step, params, ema}) restored from a training workdir (latest or given
    step): only what sampling, eval and export read, not the optimiser state, sharded as
    `local_layout`."""
    config = ml_collections.ConfigDict(json.loads(
        open(os.path.join(workdir, "config.json")).read()))
    exp = build(config, check_data=False)
    layout = local_layout(exp)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=None, every=1)
    restored = ckpt.restore_latest(layout.target(), only_step=step, move_corrupt=False,
                                   partial=True)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no restorable checkpoint{'' if step is None else f' {step}'} "
                                f"in {workdir}/checkpoints")
    return exp, restored[1]


def import_weights(config: ml_collections.ConfigDict, weights: str, workdir: str) -> str:
    """Write step 0 of a run whose params and EMA are the given PyTorch weights."""
    from lumina_jax.export import import_params

    exp = build(config, check_data=False)
    state = local_layout(exp, run_optimizer(exp), exp.run.seed).init(
        import_params(weights, exp.model))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=None, every=1)
    ckpt.save(0, state, None, {"step": 0, "stage": -1}, force=True)
    ckpt.close()
    return os.path.join(workdir, "checkpoints", "0")


def _evaluate(evaluator, state, stage, step: int, writer, log) -> None:
    """Validation losses of the EMA weights (the ones sampling uses), logged and written."""
    start = time.perf_counter()
    values = evaluator(state["ema"], stage, step)
    writer.scalars(step, values)
    per_task = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in values.items()
                         if k.startswith("eval/loss/"))
    where = ("held-out" if all(evaluator.held_out(t.name) for t in stage.tasks)
             else "fixed training")
    log(f"eval at step {step} ({where} batches, EMA weights, {time.perf_counter() - start:.1f}"
        f"s): loss {per_task}")
    for line in evaluator_lines(values):
        log(f"eval at step {step}: {line}")


def _write_samples(exp: Experiment, state, spec, workdir: str, step: int, writer) -> None:
    """Samples with the EMA weights; single-process runs only (arrays must be addressable)."""
    if jax.process_count() > 1:
        return
    print(f"sampling {len(spec.prompts)} prompt{'s' * (len(spec.prompts) > 1)} at step "
          f"{step} (EMA weights) ...", flush=True)
    latents = sampling.generate(exp.model, state["ema"], spec, progress=False)
    paths, _ = sampling.save_samples(latents, spec, os.path.join(workdir, "samples"),
                                     prefix=f"step{step:07d}_")
    writer.scalars(step, {"samples": json.dumps(paths)})
    sheet = os.path.join(workdir, "samples", f"step{step:07d}_{sampling.CONTACT_SHEET}")
    writer.image(step, "samples/contact_sheet", iio.imread(sheet))
    print(f"samples at step {step}: {sheet} (all frames), {paths[1]} ... ({len(paths) - 1} "
          f"clips; latents in {paths[0]})", flush=True)
