"""The training loop's images/s and data-wait share (emocap_jax/step_clock.py), against a stand-in
device that runs each step for a fixed time, one after the other, and input pipelines of known
speed. The loop below is train.py's: next batch, dispatch, log every few steps."""
import itertools
import time

import jax

from emocap_jax.step_clock import StepClock

BATCH = 32


class Pending:
    """A step's result on the stand-in device: ready once the device has run the step."""

    def __init__(self, ready_at):
        self.ready_at = ready_at

    def is_ready(self):
        return time.perf_counter() >= self.ready_at

    def block_until_ready(self):
        time.sleep(max(0.0, self.ready_at - time.perf_counter()))
        return self


class Device:
    def __init__(self, step_s):
        self.step_s, self.free_at, self.queued_max = step_s, 0.0, 0

    def train_step(self, state, batch):  # returns at once, as a dispatched XLA computation does
        now = time.perf_counter()
        start = max(now, self.free_at)
        self.free_at = start + self.step_s
        # Steps dispatched and not finished, this one included.
        self.queued_max = max(self.queued_max, round((self.free_at - now) / self.step_s + 0.49))
        return state, {"loss": Pending(self.free_at)}


def paced(period_s):
    """A prefetching pipeline that has batch i ready period_s * i after it starts (its buffer
    holds every batch made ahead): next() waits only where the loop is ahead of it."""
    start = time.perf_counter()
    for i in itertools.count():
        time.sleep(max(0.0, start + i * period_s - time.perf_counter()))
        yield i


def in_process(work_s):
    """A pipeline with no workers: next() does work_s of host work for every batch."""
    while True:
        time.sleep(work_s)
        yield 0


def run(device, batches, steps, between=None, prepare=None):
    """train.py's loop: the compiling first step is left out, then `steps` steps, one log line."""
    clock = StepClock()
    state = None
    for step in range(1, steps + 2):
        batch = clock.next_batch(batches, prepare)
        state, metrics = clock.dispatch(device.train_step, state, batch)
        if step == 1:
            jax.block_until_ready(metrics)
            clock.restart()
        if between and step == 3:
            with clock.paused():
                between()
    jax.block_until_ready(metrics)
    return clock.rates(BATCH)


def test_a_pipeline_twice_as_fast_as_the_device_is_no_data_wait():
    """The loop does not run ahead of the device: with up to a log interval of steps dispatched,
    the host waited for batches the pipeline paced out, and that read as 50% data wait."""
    device = Device(0.2)
    images_per_s, wait, per_step = run(device, paced(0.1), steps=6)
    assert wait < 0.1, wait
    assert 0.2 <= per_step < 0.3, per_step
    assert images_per_s == BATCH / per_step
    assert device.queued_max <= 2  # the step running and the one dispatched behind it


def test_host_work_in_next_while_the_step_runs_is_no_data_wait():
    """An in-process pipeline decodes inside next(), while the device runs the step in flight:
    the device never waits for it."""
    images_per_s, wait, per_step = run(Device(0.2), in_process(0.1), steps=6)
    assert wait < 0.1, wait
    assert 0.2 <= per_step < 0.3, per_step


def test_an_input_bound_loop_reports_its_wait():
    """A pipeline three times slower than the device sets the pace; the device idles 2/3 of the
    time and the share reported is at least that (an upper bound: it includes the wait that
    overlapped the end of the step in flight)."""
    images_per_s, wait, per_step = run(Device(0.1), paced(0.3), steps=4)
    assert 2 / 3 - 0.05 <= wait <= 1.0, wait
    assert 0.29 <= per_step < 0.4, per_step  # the pipeline's pace (its clock starts first)


def test_a_checkpoint_between_log_lines_is_not_step_time():
    images_per_s, wait, per_step = run(Device(0.1), paced(0.0), steps=6,
                                       between=lambda: time.sleep(0.6))
    assert 0.1 <= per_step < 0.15, per_step  # 0.2 s a step if the 0.6 s were counted
    assert wait < 0.1, wait


def test_a_slow_copy_to_the_devices_is_data_wait():
    """The copy of a batch to the devices (train.py's to_global_batch) comes after next(): when it
    takes longer than the step, the device waits for it, and that shows as data wait, as in the
    bench's pipeline-fed row."""
    def copy(batch):
        time.sleep(0.3)
        return batch

    images_per_s, wait, per_step = run(Device(0.1), paced(0.0), steps=4, prepare=copy)
    assert 2 / 3 - 0.05 <= wait <= 1.0, wait
    assert 0.29 <= per_step < 0.4, per_step
