"""Throughput and data wait of the training loop, between two log lines.

The loop keeps one step in flight: it reads the next batch while the device runs the current step,
dispatches the next step, then waits for the current one. Without that bound, dispatch is
asynchronous and the host runs ahead of the device by up to a log interval; its time in next() then
reads as data wait even where the input pipeline is faster than the device (the host waits for
batches it will not need for seconds), and the batches queued on the device hold its memory.

Data wait counts the time spent in next() and in the batch's copy to the devices only where the
step in flight had already finished when the batch came: while that step still runs, the wait
overlaps it and costs the device nothing (an in-process pipeline that decodes in next() is not
input-bound as long as the device is slower). So
the share is 0 for a run the pipeline keeps fed; where it is not, it is an upper bound of the
device's idle share (the wait may begin before the step in flight ends).
"""
from __future__ import annotations

import contextlib
import time

import jax


def _done(tree) -> bool:
    """Whether every array of `tree` has been computed (without waiting for it)."""
    return all(leaf.is_ready() for leaf in jax.tree_util.tree_leaves(tree)
               if hasattr(leaf, "is_ready"))


class StepClock:
    """Feeds and dispatches the steps of the training loop and times them (see the module)."""

    def __init__(self):
        self.in_flight = None  # the metrics of the step the device runs, if any
        self.restart()

    def restart(self) -> None:
        """Starts a new interval (after a log line, or after the compiling first step)."""
        self.start = time.perf_counter()
        self.steps = 0
        self.waited = 0.0
        self.paused_s = 0.0

    def next_batch(self, iterator, prepare=None):
        """next(iterator), then `prepare` of it (the copy to the devices): the device waits for
        both once the step in flight is done, so both count."""
        t = time.perf_counter()
        batch = next(iterator)
        if prepare is not None:
            batch = prepare(batch)
        waited = time.perf_counter() - t
        if self.in_flight is None or _done(self.in_flight):
            self.waited += waited
        return batch

    def dispatch(self, train_step, state, batch):
        """Runs `train_step(state, batch)`, then waits for the step dispatched before it."""
        state, metrics = train_step(state, batch)
        if self.in_flight is not None:
            jax.block_until_ready(self.in_flight)
        self.in_flight = metrics
        self.steps += 1
        return state, metrics

    @contextlib.contextmanager
    def paused(self):
        """Time spent outside the steps (checkpoints, evaluations): not part of the throughput.
        The pause starts once the step in flight is done: until then the device runs a step."""
        jax.block_until_ready(self.in_flight)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def rates(self, global_batch: int) -> tuple[float, float, float]:
        """(images per second, data-wait share, seconds per step) of the interval so far; call
        after waiting for its last step."""
        elapsed = max(time.perf_counter() - self.start - self.paused_s, 1e-9)
        per_step = elapsed / max(self.steps, 1)
        return (global_batch / per_step if self.steps else 0.0), self.waited / elapsed, per_step
