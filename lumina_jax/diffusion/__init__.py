"""Rectified-flow path, time shift and losses; Euler sampler with CFG and schedules."""

from lumina_jax.diffusion.loss import (DEFAULT_TASKS, LossConfig, TaskSpec, bin_by_t,
                                       multitask_loss, per_item_loss, task_loss)
from lumina_jax.diffusion.path import (interpolate, sample_time, time_shift,
                                       velocity_target)
from lumina_jax.diffusion.sampler import (SAMPLER_PRESETS, SampleSettings, Step, guide,
                                          euler_steps, nnx_velocity_fn, sample, time_grid)
from lumina_jax.diffusion.schedule import (is_schedule, parse_schedule, parse_patch_size,
                                           value_at)
