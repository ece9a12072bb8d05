"""Experiment configs: ml_collections Python files, command-line overrides, validation.

`default_config()` holds the fields every experiment has; `configs/*.py` start from it.
`load_config("configs/x.py:arg", ["--config.optim.lr=2e-4", ...])` imports the file,
calls `get_config(arg)`, applies each override (type-checked against the existing value;
an unknown key is an error) and returns a locked ConfigDict. `build(config)` turns it
into the typed Experiment everything downstream reads (model, optimiser, loss, stages
with their data tasks, run settings, checkpointing, sampling, evaluation), so every
mistake surfaces before any compute.

Loading a config imports no JAX (only ml_collections and this module): the model, loss
and mesh modules load inside `build`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ml_collections

from lumina_jax.errors import UserError
from lumina_jax.model.config import ModelConfig, get_preset

if TYPE_CHECKING:
    from lumina_jax.diffusion.loss import LossConfig, TaskSpec

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The recipe's AdamW (REFERENCE §3) with optional warmup and cosine decay."""
    lr: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0          # cosine: steps from the end of warmup to `min_lr_ratio*lr`
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-15
    weight_decay: float = 0.0
    clip_norm: float = 2.0
    ema_decay: float = 0.99
    ema_every: int = 10

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimConfig.schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if self.schedule == "cosine" and self.decay_steps <= 0:
            raise ValueError("OptimConfig.decay_steps must be > 0 for the cosine schedule")
        if self.ema_every < 1 or not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError("OptimConfig: ema_every must be >= 1 and ema_decay in [0, 1]")


# A negative prompt of this value gives the negative branch each prompt itself: the
# branches then differ only in motion score, and cfg amplifies just that (motion guidance).
PROMPT_ITSELF = "{prompt}"


def default_config() -> ml_collections.ConfigDict:
    """Fields every experiment config has; `configs/*.py` start from this."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data_dir = ""  # substituted for "{data_dir}" in data source paths; may hold "{workdir}"
    # "module:function" called with the config before training when data is missing
    # (e.g. data_pipelines.miniature:prepare_for_config makes the runlocal data set).
    c.prepare_data = ""
    # A preset plus per-field overrides; None keeps the preset's value.
    c.model = ml_collections.ConfigDict(
        {"preset": "demo", **{f.name: None for f in dataclasses.fields(ModelConfig)}})
    c.optim = ml_collections.ConfigDict(dataclasses.asdict(OptimConfig()))
    c.loss = ml_collections.ConfigDict({"vd_weight": 1.0, "time_sampling": "uniform",
                                        "logit_mean": 0.0, "logit_std": 1.0, "n_t_bins": 10})
    c.stages = []
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1})
    c.dcn = ml_collections.ConfigDict()
    c.rules = "fsdp"
    # Save every `every` steps; keep the latest `keep`, and with keep_every > 0 also every
    # step divisible by it, for good (milestones for later evaluation or export).
    c.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3, "keep_every": 0,
                                              "async_save": True})
    c.log_every = 10
    # Stop with an error after this many consecutive non-finite steps (0 = never; their
    # updates are skipped either way and counted in skipped_steps).
    c.max_nonfinite_steps = 0
    c.peak_flops_per_device = 0.0
    c.profile_steps = ""
    # JAX's persistent compilation cache ("" = off): a restart loads its executables.
    c.compilation_cache_dir = "{workdir}/compilation_cache"
    # CPU only: split the host into this many devices (0 = as JAX starts; for meshes
    # tried on one machine, like configs/lumina_video_2b.py:runlocal).
    c.cpu_devices = 0
    # Appended to $XLA_FLAGS before JAX starts (e.g. cheaper CPU codegen for tiny runs).
    c.xla_flags = ""
    # In-loop validation (train/evaluate.py): flow loss of fixed batches at these t with
    # fixed noise, every `every` steps and at the end (0: at the end only; -1: never);
    # `sources` maps a task name to a held-out prepared folder (else the task's own data,
    # drawn with a fixed seed). From samples (the sampler settings of config.sample):
    # `judge` "demo" scores the demo's prompts from pixels, `judge_motion` lists motion
    # scores for its motion-control check; `fvd_clips` > 0 computes FVD against that many
    # clips of `fvd_source` (a prepared folder, e.g. "{data_dir}/heldout").
    c.eval = ml_collections.ConfigDict({"every": 0, "t_values": [0.1, 0.3, 0.5, 0.7, 0.9],
                                        "batches": 2, "sources": {}, "judge": "",
                                        "judge_motion": [], "fvd_clips": 0, "fvd_source": ""})
    c.sample = ml_collections.ConfigDict({
        "every": 0, "prompts": [], "frames": 8, "height": 32, "width": 32, "seed": 0, "fps": 8.0,
        "caption_encoder": "minilm", "system_prompt": "", "negative_prompt": "",
        "settings": {}, "preset": "",
        # "" = decode like the run's latents were encoded (the last stage's encoder)
        "latent_decoder": "", "latent_decoder_path": "", "caption_encoder_path": ""})
    return c


class ConfigError(UserError, ValueError):
    """A config field is wrong; raised before any compute starts."""


def call_python_file(path: str, function: str, *args, error: type[Exception] = ConfigError):
    """Import a Python file (a config or sweep file) and return `function(*args)`."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise error(f"file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"lumina_file_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise error(f"{path}: the file must define {function}()")
    return getattr(module, function)(*args)


def call_function(spec: str, *args):
    """Call "package.module:function" with args (a config's named hook)."""
    module, sep, function = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), function) if sep else None
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {spec!r} ({e})") from None
    if fn is None:
        raise ConfigError(f"{spec!r} must look like package.module:function")
    return fn(*args)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    config = call_python_file(path, "get_config", arg or None)
    for item in overrides:
        apply_override(config, item)
    config.lock()
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply `--config.a.b=value` (or `a.b=value`); lists are indexed by number.

    Not ml_collections' config_flags: in 1.1.0 it refuses list fields (sample.prompts, the
    stages list a sweep overrides whole), wants `stages[1].steps` instead of the
    `stages.1.steps` our docs and sweeps use, and reports an unknown key as a bare
    AttributeError; it also needs absl's global flag parsing in every command."""
    key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} must look like --config.a.b=value")
    *parents, leaf = key.split(".")
    node: Any = config
    for part in parents:
        node = _child(node, part, key)
    old = _child(node, leaf, key)
    value = _parse(raw, old, key)
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value


def _child(node, part, key):
    try:
        if isinstance(node, (list, tuple)):
            return node[int(part)]
        if part not in node:
            raise KeyError(part)
        return node[part]
    except (KeyError, ValueError, IndexError, TypeError):
        raise ConfigError(f"unknown config key {key!r} (no {part!r} there); see the config "
                          "file for the available fields") from None


def _parse(raw: str, old: Any, key: str) -> Any:
    if isinstance(old, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if old is None or isinstance(value, type(old)) or (isinstance(old, float)
                                                       and isinstance(value, int)):
        return float(value) if isinstance(old, float) else value
    if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(old)(value)
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    raise ConfigError(f"--config.{key}={raw!r}: expected a {type(old).__name__} "
                      f"like the current value {old!r}")


@dataclasses.dataclass(frozen=True)
class StageTask:
    name: str
    spec: TaskSpec          # media, patch size, time shift (loss side)
    data: Any               # data_pipelines.Task (global batch size; sources resolved)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    tasks: tuple[StageTask, ...]
    lr: float | None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3
    keep_every: int = 0  # > 0: also keep every step divisible by it, for good
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """In-loop evaluation (train/evaluate.py); see default_config's comment."""
    every: int = 0
    t_values: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    batches: int = 2
    sources: dict = dataclasses.field(default_factory=dict)  # task -> prepared folder
    judge: str = ""
    judge_motion: tuple[float, ...] = ()
    fvd_clips: int = 0
    fvd_source: str = ""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run executes: seed, mesh and sharding rules, cadences, profiling, caches."""
    seed: int
    mesh: dict
    dcn: dict
    rules: Any                  # a RULE_PRESETS name or {logical axis: mesh axes}
    log_every: int
    max_nonfinite_steps: int
    peak_flops_per_device: float
    profile_steps: tuple[int, ...]
    compilation_cache_dir: str  # may hold "{workdir}"
    data_dir: str
    prepare_data: str           # "module:function" that makes missing data, or ""
    cpu_devices: int            # these two act only if applied before JAX's backend starts
    xla_flags: str


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run reads, typed. `config` is kept only to be written to the run's
    config.json (and read back by `load_run`)."""
    model: ModelConfig
    model_preset: str
    optim: OptimConfig
    loss: LossConfig
    stages: tuple[Stage, ...]
    run: RunConfig
    checkpoint: CheckpointConfig
    sample: Any                 # samples.SampleSpec (prompts may be empty: no samples)
    sample_every: int
    eval: EvalConfig
    v2a: dict                   # v2a.V2ASettings fields and the vocoder (V2A runs)
    config: ml_collections.ConfigDict

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, first step of that stage) for a global step."""
        start = 0
        for i, stage in enumerate(self.stages):
            if step < start + stage.steps:
                return i, start
            start += stage.steps
        return len(self.stages) - 1, start - self.stages[-1].steps


def _dataclass(cls, fields: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - names
    if unknown:
        raise ConfigError(f"config.{where}: unknown field(s) {sorted(unknown)}; allowed: "
                          f"{sorted(names)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{where}: {e}") from None


def _resolve_source(source: dict, data_dir: str, where: str, check: bool) -> dict:
    """Fill `{data_dir}` into a source path and check that the path exists."""
    path = str(source.get("path", "")).format(data_dir=data_dir)
    if check and (not path or not pathlib.Path(path).exists()):
        raise ConfigError(f"config.{where}.path: {path!r} does not exist (data_dir="
                          f"{data_dir!r}); prepare the data first, e.g. `lumina-jax prepare "
                          f"--demo --output {data_dir or 'DIR'}`, or set --config.data_dir")
    return {**source, "path": path}


def _data_task(data: dict, spec: TaskSpec, model: ModelConfig, c: dict, stage_index: int,
               where: str, check_data: bool):
    """A stage task's data dict -> the typed data_pipelines.Task, every field checked."""
    from data_pipelines import check_task, task_from_dict

    if not data.get("sources"):
        raise ConfigError(f"config.{where}.data.sources is empty")
    data["sources"] = {src: _resolve_source(dict(v), c.get("data_dir", ""),
                                            f"{where}.data.sources.{src}", check_data)
                       for src, v in data["sources"].items()}
    data["media"] = spec.media
    if spec.media != "audio":
        # Windows of frames are truncated to a multiple of the task's temporal patch.
        data.setdefault("temporal_multiple", spec.patch_size[1] if spec.media == "video" else 1)
    data.setdefault("seed", int(c.get("seed", 0)) + 1000 * stage_index)
    if data.get("packing"):  # packed clips are patchified by the pipeline, at the task's size
        data.setdefault("patch_size", spec.patch_size)
        if tuple(data["patch_size"]) != tuple(spec.patch_size):
            raise ConfigError(f"config.{where}.data.patch_size={tuple(data['patch_size'])} "
                              f"differs from the task's patch_size={spec.patch_size}; leave "
                              f"it out (packing uses the task's)")
    try:
        task = task_from_dict(data)
        if check_data:
            check_task(task)
    except (ValueError, TypeError, FileNotFoundError) as e:
        # Messages from data_pipelines start with the field name ("batch_size: ...").
        sep = "." if re.match(r"^[a-z_]+[:\[ ]", str(e)) else ": "
        raise ConfigError(f"config.{where}.data{sep}{e}") from None
    if getattr(task, "packing", False):
        _check_packed_grid(task, model, where)
    if check_data:
        _check_prepared_dims(task, model, where)
    return task


def _check_packed_grid(task, model: ModelConfig, where: str) -> None:
    """Packed RoPE tables are gathered from traced positions, which cannot raise: the
    largest clip the task can make must fit model.axes_lens here instead."""
    from data_pipelines.packing import largest_grid

    grid = largest_grid(task)
    if any(n > limit for n, limit in zip(grid, model.axes_lens)):
        raise ConfigError(f"config.{where}.data: the largest clip's token grid {grid} (frames, "
                          f"rows, cols) exceeds config.model.axes_lens={model.axes_lens}; raise "
                          f"axes_lens or lower resolution / max_frames")


def _check_prepared_dims(task, model: ModelConfig, where: str) -> None:
    """Prepared latents and caption features must fit the model's input sizes."""
    from data_pipelines import shards

    for src in task.sources:
        if not shards.is_prepared(src.path):
            continue
        meta = json.loads((pathlib.Path(src.path) / shards.PREPARED_META).read_text())
        encoder = meta.get("latent_encoder") or meta.get("audio_latent_encoder")
        for field, model_field in (("latent_channels", "in_channels"),
                                   ("cap_feat_dim", "cap_feat_dim"), ("frame_dim", "frame_dim"),
                                   ("sync_dim", "sync_dim")):
            have, want = meta.get(field), getattr(model, model_field)
            if have is not None and int(have) != want:
                raise ConfigError(
                    f"config.{where}.data.sources.{src.name}: {src.path} was prepared with "
                    f"{field}={have} ({encoder} latents, "
                    f"{meta.get('caption_encoder')} captions) but config.model.{model_field}="
                    f"{want}; prepare with matching encoders or set --config.model."
                    f"{model_field}={have}")


def build(config: ml_collections.ConfigDict, check_data: bool = True) -> Experiment:
    """Validate the whole config and build typed objects (no JAX computation).

    `check_data=False` skips the data paths (for planning a run on another machine, or
    before `prepare_data` has made them).
    """
    from lumina_jax.diffusion.loss import LossConfig, TaskSpec
    from lumina_jax.parallel import RULE_PRESETS

    c = config.to_dict()
    required = ("model", "optim", "loss", "stages", "mesh", "rules")
    missing = [k for k in required if k not in c]
    if missing:
        raise ConfigError(f"config is missing {missing}")
    model_fields = {k: v for k, v in c["model"].items() if v is not None}
    preset = model_fields.pop("preset", None)
    if preset is None:
        raise ConfigError("config.model.preset is required (e.g. 'demo', '2B_GQA')")
    try:
        model = get_preset(preset, **model_fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from None
    optim = _dataclass(OptimConfig, c["optim"], "optim")
    loss = _dataclass(LossConfig, c["loss"], "loss")
    if isinstance(c["rules"], str) and c["rules"] not in RULE_PRESETS:
        raise ConfigError(f"config.rules={c['rules']!r}; choose one of {sorted(RULE_PRESETS)}")
    stages = []
    for i, s in enumerate(c["stages"]):
        where = f"stages[{i}]"
        if not s.get("tasks"):
            raise ConfigError(f"config.{where} has no tasks")
        if int(s.get("steps", 0)) <= 0:
            raise ConfigError(f"config.{where}.steps must be > 0")
        tasks = []
        for name, t in s["tasks"].items():
            t = dict(t)
            data = dict(t.pop("data", {}))
            spec = _dataclass(TaskSpec, t, f"{where}.tasks.{name}")
            if (spec.media == "audio") != (model.kind == "v2a"):
                raise ConfigError(f"config.{where}.tasks.{name}.media={spec.media!r} does not fit "
                                  f"config.model.kind={model.kind!r} (audio tasks train a v2a "
                                  f"model, image/video tasks a video model)")
            if tuple(spec.patch_size) not in model.patch_sizes:
                raise ConfigError(f"config.{where}.tasks.{name}.patch_size={spec.patch_size} is "
                                  f"not in model.patch_sizes {model.patch_sizes}")
            tasks.append(StageTask(name, spec, _data_task(
                data, spec, model, c, i, f"{where}.tasks.{name}", check_data)))
        stages.append(Stage(s.get("name", f"stage{i + 1}"), int(s["steps"]), tuple(tasks),
                            s.get("lr")))
    if not stages:
        raise ConfigError("config.stages is empty")
    _check_run_fields(c, optim, stages)
    return Experiment(model, preset, optim, loss, tuple(stages), _run_config(c),
                      _dataclass(CheckpointConfig, c.get("checkpoint", {}), "checkpoint"),
                      _sample_spec(c, stages), int(c.get("sample", {}).get("every", 0)),
                      _eval_config(c), dict(c.get("v2a", {})), config)


def _run_config(c: dict) -> RunConfig:
    profile = str(c.get("profile_steps", "") or "")
    try:
        steps = tuple(int(s) for s in profile.split(",")) if profile else ()
    except ValueError:
        raise ConfigError(f"config.profile_steps={profile!r}: give step numbers like "
                          "'10,20'") from None
    return RunConfig(seed=int(c.get("seed", 0)), mesh=dict(c["mesh"]),
                     dcn=dict(c.get("dcn") or {}), rules=c["rules"],
                     log_every=int(c.get("log_every", 10)),
                     max_nonfinite_steps=int(c.get("max_nonfinite_steps", 0)),
                     peak_flops_per_device=float(c.get("peak_flops_per_device", 0.0) or 0.0),
                     profile_steps=steps,
                     compilation_cache_dir=str(c.get("compilation_cache_dir", "")),
                     data_dir=str(c.get("data_dir", "")),
                     prepare_data=str(c.get("prepare_data", "")),
                     cpu_devices=int(c.get("cpu_devices", 0)),
                     xla_flags=str(c.get("xla_flags", "")))


def _eval_config(c: dict) -> EvalConfig:
    fields = dict(c.get("eval", {}))
    data_dir = str(c.get("data_dir", ""))
    fields["sources"] = {k: str(v).format(data_dir=data_dir)
                         for k, v in (fields.get("sources") or {}).items()}
    fields["fvd_source"] = str(fields.get("fvd_source", "")).format(data_dir=data_dir)
    for name in ("t_values", "judge_motion"):
        if name in fields:
            fields[name] = tuple(float(v) for v in fields[name] or ())
    return _dataclass(EvalConfig, fields, "eval")


def _sample_spec(c: dict, stages: list[Stage]):
    """config.sample as a samples.SampleSpec ("every" is the experiment's sample_every)."""
    from lumina_jax.train.samples import SampleSpec

    fields = dict(c.get("sample", {}))
    fields.pop("every", None)
    fields["prompts"] = tuple(fields.get("prompts") or ())
    # No decoder named: decode like the latents the run ended on were encoded.
    last_data = stages[-1].tasks[0].data  # (audio tasks have no latent encoder)
    fields["latent_decoder"] = (fields.get("latent_decoder")
                                or getattr(last_data, "latent_encoder", "identity"))
    for name in ("latent_decoder_path", "caption_encoder_path"):
        fields[name] = str(fields.get(name, "")).format(data_dir=c.get("data_dir", ""))
    return _dataclass(SampleSpec, fields, "sample")


def _check_run_fields(c: dict, optim: OptimConfig, stages: list[Stage]) -> None:
    """Cadences, counts, sizes and rates that would otherwise fail after compiling (or
    silently do nothing, like keep=0 leaving no checkpoint)."""
    from lumina_jax.parallel.mesh import MESH_AXES

    def need(ok: bool, field: str, rule: str, value) -> None:
        if not ok:
            raise ConfigError(f"config.{field}={value!r}: {rule}")

    def whole(field: str, value, minimum: int) -> None:
        need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             field, f"must be a whole number >= {minimum}", value)

    ckpt = c.get("checkpoint", {})
    whole("checkpoint.every", ckpt.get("every", 1), 1)
    whole("checkpoint.keep", ckpt.get("keep", 1), 1)
    whole("checkpoint.keep_every", ckpt.get("keep_every", 0), 0)
    whole("log_every", c.get("log_every", 1), 1)
    whole("max_nonfinite_steps", c.get("max_nonfinite_steps", 0), 0)
    whole("sample.every", c.get("sample", {}).get("every", 0), 0)
    evaluation = c.get("eval", {})
    whole("eval.every", evaluation.get("every", 0), -1)
    whole("eval.batches", evaluation.get("batches", 1), 1)
    need(all(0.0 <= float(t) <= 1.0 for t in evaluation.get("t_values", [0.5]))
         and len(evaluation.get("t_values", [0.5])) > 0, "eval.t_values",
         "must be a non-empty list of times in [0, 1]", evaluation.get("t_values"))
    tasks = {t.name for s in stages for t in s.tasks}
    for name, folder in (evaluation.get("sources") or {}).items():
        need(name in tasks, f"eval.sources.{name}", f"is not a task of any stage "
             f"({sorted(tasks)})", folder)
    need(optim.lr > 0, "optim.lr", "must be > 0", optim.lr)
    for i, stage in enumerate(stages):
        if stage.lr is not None:
            need(stage.lr > 0, f"stages[{i}].lr", "must be > 0 (or None: optim.lr)", stage.lr)
        for task in stage.tasks:
            whole(f"stages[{i}].tasks.{task.name}.data.batch_size", task.data.batch_size, 1)
    for name in ("mesh", "dcn"):
        sizes = dict(c.get(name) or {})
        unknown = set(sizes) - set(MESH_AXES)
        need(not unknown, name, f"unknown axes {sorted(unknown)}; use {MESH_AXES}", sizes)
        need(all(isinstance(v, int) and (v >= 1 or v == -1) for v in sizes.values())
             and list(sizes.values()).count(-1) <= 1, name,
             "axis sizes must be whole numbers >= 1, with at most one -1 (the rest of the "
             "devices)", sizes)
