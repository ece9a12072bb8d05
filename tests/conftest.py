"""Suite-wide settings. Most of the suite's time is XLA:CPU compiling tiny models (every
bucket shape of every task is a compile); cheaper LLVM codegen halves that without
changing what is computed. Subprocesses inherit it; a test that sets XLA_FLAGS itself
keeps its own."""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
