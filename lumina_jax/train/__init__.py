"""Train state, the jitted sharded train step, and (later) the loop and checkpoints."""
