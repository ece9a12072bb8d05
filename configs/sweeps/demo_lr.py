"""Learning-rate x warm-up sweep of the CPU demo (4 runs), then its summary table and plot.

    lumina-jax sweep --config configs/demo.py:quick --sweep configs/sweeps/demo_lr.py \
        --workdir workdirs/demo_lr --config.data_dir=workdirs/demo_data
    lumina-jax sweep --summarize workdirs/demo_lr

Runs are named after their overrides (workdirs/demo_lr/lr=0.001,warmup_steps=2, ...).
`--print-commands --launcher 'sbatch launch/slurm.sbatch'` prints one cluster job per run.
"""


def get_sweep():
    return {
        # Every combination of these values is one run.
        "grid": {"optim.lr": [1e-3, 3e-4], "optim.warmup_steps": [2, 8]},
        # Each entry here multiplies the grid; e.g. [{"rules": "dp"}, {"rules": "fsdp"}].
        "list": [],
    }
