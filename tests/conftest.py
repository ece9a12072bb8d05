"""Suite-wide settings. Most of the suite's time is XLA:CPU compiling tiny models (every
bucket shape of every task is a compile); cheaper LLVM codegen halves that without
changing what is computed. Subprocesses inherit it (`with_xla_flags` adds more)."""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def with_xla_flags(*flags: str) -> dict:
    """os.environ with `flags` appended to XLA_FLAGS (for a subprocess)."""
    return {**os.environ, "XLA_FLAGS": " ".join([os.environ["XLA_FLAGS"], *flags])}
