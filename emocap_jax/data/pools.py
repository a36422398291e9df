"""The start method of the converters' worker pools (synthetic corpus, caption manifest).

"fork" is fast and works from a REPL or a piped script, but forking a process that runs native
thread pools can deadlock the children on a lock one of those threads held: JAX (XLA), Grain,
torch and TensorFlow start such pools, and training converts its corpus in the process that runs
JAX (`train.prepare_data`). There the pools are spawned instead; spawned workers re-import the
caller's main module, so a script that converts with workers > 1 after importing JAX needs an
`if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import multiprocessing
import sys

# Runtimes that start native thread pools on import: forking a process that holds them can deadlock.
THREADED_RUNTIMES = ("jax", "jaxlib", "torch", "tensorflow", "grain")


def pool_context() -> multiprocessing.context.BaseContext:
    """"fork" when it is safe, "spawn" once a threaded runtime is loaded (see the module)."""
    if "fork" in multiprocessing.get_all_start_methods() and \
            not any(name in sys.modules for name in THREADED_RUNTIMES):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
