"""Several JAX processes as one run: joining them, telling them apart, stopping them together.

* `initialize(coordinator_address, num_processes, process_id)` joins a multi-process run. With the
  three values (the `--coordinator_address --num_processes --process_id` flags of
  `python -m emocap_jax.main` and `python -m emocap_jax.evaluate`) it starts any cluster, one
  machine included; without them it joins only where the environment says the run has several
  processes and JAX finds the rest itself (a TPU pod slice, a SLURM job step of several tasks,
  JAX_COORDINATOR_ADDRESS), and a single-process run needs nothing. CPU processes exchange
  collectives through gloo.
* A peer that dies ends the others, never a hang. A survivor in (or entering) a collective with
  it sees the collective fail at once: `exit_when_a_peer_is_gone` turns that into one line,
  "error: another process of this run is gone ...", and exit status 1, without waiting in JAX's
  shutdown barrier for the dead peer. A survivor elsewhere (compiling, in a host barrier) is ended
  by the coordination service: the coordinator's death at once, any other process's when its
  heartbeats stop for `heartbeat_timeout_seconds`; that survivor ends with status 134 and
  "Terminating process because the JAX distributed service detected fatal errors. This most likely
  indicates that another task died" (from JAX, on stderr).
* `Preemption`: SIGTERM (a TPU maintenance event, a scheduler's notice) stops training after a
  step. With several processes the step is agreed through JAX's preemption sync point (the notice
  of any one process reaches all; they stop at the same step), so they save the same checkpoint.
* `fetch` brings a global array tree to every host's memory (a collective where the arrays span
  processes), and `process_tag` names the process in log lines.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys

import jax
# Private, for want of a public equivalent in jax==0.10.2: jax.distributed exports only
# initialize, is_initialized and shutdown. Its state holds this process's index and the number of
# processes before the backend starts (jax.process_index() would start it, and these are read
# before data preparation forks), and its client has a barrier with a timeout that needs no
# backend (multihost_utils.sync_global_devices is a device collective: it starts the backend,
# has no timeout, and on CPU gloo fails when the processes reach it over 30 s apart).
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from emocap_jax.cli_errors import UsageError

log = logging.getLogger(__name__)

# JAX's default. Shorter ends a run whose peer died sooner, but on a starved machine (measured: 2
# cores at load 15-20) 30 s declared live processes dead while they compiled.
DEFAULT_HEARTBEAT_TIMEOUT_S = 100


def _multi_process_environment() -> bool:
    """True where the environment describes a multi-process run JAX can join on its own."""
    env = os.environ
    multi_host_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    slurm_tasks = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in env
    coordinator = env.get("JAX_COORDINATOR_ADDRESS") or env.get("EMOCAP_COORDINATOR_ADDRESS")
    return bool(multi_host_tpu or slurm_tasks or coordinator
                or env.get("EMOCAP_DISTRIBUTED") == "1")


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None, heartbeat_timeout_seconds: int | None = None) -> None:
    """The three flags come together and make sense, or a UsageError says what is wrong."""
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if 0 < len(missing) < 3:
        raise UsageError(f"{', '.join(missing)} missing: a multi-process run needs "
                         f"--coordinator_address=HOST:PORT, --num_processes=N and "
                         f"--process_id=I together (or none of them where JAX finds the cluster "
                         f"itself: TPU pod slices, SLURM)")
    if heartbeat_timeout_seconds is not None and heartbeat_timeout_seconds < 1:
        raise UsageError(f"--heartbeat_timeout_seconds must be >= 1, got "
                         f"{heartbeat_timeout_seconds}")
    if missing:
        return
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}", coordinator_address):
        raise UsageError(f"--coordinator_address={coordinator_address}: expected HOST:PORT "
                         f"(process 0's host, e.g. 10.0.0.2:12345 or 127.0.0.1:12345)")
    if num_processes < 1:
        raise UsageError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process_id={process_id} is not in [0, --num_processes="
                         f"{num_processes})")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               heartbeat_timeout_seconds: int | None = None) -> None:
    """Joins the run's processes (see the module docstring); a no-op on a single process and
    when already joined. Must run before JAX starts its backend (the first jax.devices())."""
    check_flags(coordinator_address, num_processes, process_id, heartbeat_timeout_seconds)
    if jax.distributed.is_initialized():
        return
    explicit = coordinator_address is not None
    if explicit and num_processes == 1:
        return
    if not explicit and not _multi_process_environment():
        return
    # Collectives between CPU devices of different processes (the CPU backend's default has
    # none). Device collectives of GPUs and TPUs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"heartbeat_timeout_seconds": heartbeat_timeout_seconds or
              DEFAULT_HEARTBEAT_TIMEOUT_S}
    if explicit:
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)


def process_tag() -> str:
    """"process I/N " in a multi-process run, "" otherwise. Read from the distributed client's
    state, not jax.process_index(): that would start the JAX backend, and log lines come before
    it starts (data preparation forks worker processes first)."""
    index, count = process_and_count()
    return f"process {index}/{count} " if count > 1 else ""


def process_and_count() -> tuple[int, int]:
    """(this process's index, the number of processes), without starting the JAX backend."""
    if not jax.distributed.is_initialized():
        return 0, 1
    state = jax_distributed.global_state  # jax==0.10.2's record of the joined processes
    return int(state.process_id), int(state.num_processes)


def host_barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Waits until every process has reached the barrier `name`, through the coordination
    service: it starts no JAX backend, so it may come before data preparation forks worker
    processes. A process that dies meanwhile ends the others (see the module docstring)."""
    _, count = process_and_count()
    if count > 1:
        jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


# What a CPU (gloo) collective says when the process at the other end is gone. (On GPUs and TPUs
# the coordination service's heartbeat ends the survivors instead, see the module docstring.)
_PEER_GONE = re.compile(r"gloo.*(closed by peer|reset by peer|broken pipe|connection refused)",
                        re.IGNORECASE | re.DOTALL)

PEER_GONE_EXIT_STATUS = 1


def is_peer_gone_error(error: BaseException) -> bool:
    """True for the error of a collective whose other end (another process) has died."""
    return isinstance(error, jax.errors.JaxRuntimeError) and bool(_PEER_GONE.search(str(error)))


@contextlib.contextmanager
def exit_when_a_peer_is_gone():
    """Around a multi-process run's work: when a collective fails because another process died,
    say so in one line and exit at once with status 1. Leaving normally would first wait in JAX's
    shutdown barrier for the dead process, until the heartbeat timeout, and then abort with
    several screens of coordination-service errors. Other errors propagate unchanged."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if process_and_count()[1] == 1 or not is_peer_gone_error(e):
            raise
        first_line = " ".join(str(e).split("\n", 1)[0].split())
        print(f"error: {process_tag()}stops: another process of this run is gone (a collective "
              f"with it failed: {first_line}). Restart every process; training resumes from "
              f"the last checkpoint.", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(PEER_GONE_EXIT_STATUS)  # not sys.exit: that waits in the shutdown barrier


def fetch(tree):
    """A tree of (possibly global, sharded) jax.Arrays as NumPy arrays on every host. Where the
    arrays span processes this is a collective: every process must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


class Preemption:
    """SIGTERM asks the loop to stop after a step, which it then checkpoints.

    One process: a Python SIGTERM handler sets a flag. Several: JAX's preemption service (started
    by jax.distributed.initialize) catches SIGTERM on each process and `stop_after(step)` returns
    True on all of them at the same step, the first one every process reaches after any of them
    was signalled; no Python handler is installed then, since it would replace JAX's. Call
    `stop_after` once per step, with every step, on every process.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi = jax.process_count() > 1
        if self._multi:
            return
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some notebook runners)
            self._previous = None

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint after this step")
        self.requested = True

    def stop_after(self, step: int) -> bool:
        if self._multi and not self.requested and \
                multihost_utils.reached_preemption_sync_point(step):
            log.warning("SIGTERM (preemption notice) on a process of the run: every process "
                        "stops after step %d and saves it", step)
            self.requested = True
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class LogFormatter(logging.Formatter):
    """Prefixes each line with the process that speaks ("process 1/2 ...") in a multi-process
    run."""

    def format(self, record: logging.LogRecord) -> str:
        return process_tag() + super().format(record)


def main_process_or_warning(record: logging.LogRecord) -> bool:
    """Log filter: process 0 says everything, the other processes only warnings and errors (one
    run, one log; a peer's trouble still shows, with its process named)."""
    return record.levelno >= logging.WARNING or process_and_count()[0] == 0
