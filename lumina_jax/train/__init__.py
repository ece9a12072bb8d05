"""Training: config, state, the sharded train step, the loop, checkpoints, metrics,
samples, in-loop evaluation and the scale plan."""
