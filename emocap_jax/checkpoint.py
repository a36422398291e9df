"""Training checkpoints: one Orbax CheckpointManager step holds everything needed to continue
exactly: the train state (parameters, optimiser state, step), the Grain iterator state, and the
run config. Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it),
so a run killed mid-save resumes from the previous complete step. The directory may be local or
a bucket (`gs://...`): Orbax writes there through etils epath and TensorStore, and on an object
store marks a complete step with a commit file instead of a rename.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

import emocap_jax.storage as storage
from emocap_jax.cli_errors import UsageError

log = logging.getLogger(__name__)

# What the data iterator's saved position counts. Checkpoints written before 2026-12-01 have no
# `data_format` item: their training pipeline made batches out of Grain's per-record elements,
# so each `next_index` in the state counted records; it now counts whole batches (steps).
DATA_FORMAT = {"position_unit": "batch"}
DATA_FORMAT_ITEM = "data_format"


def record_positions_to_batches(state: Any, local_batch_size: int) -> Any:
    """A data-iterator state saved when positions counted records -> the same place in batches.

    Every `next_index` (the in-process iterator's, and each worker's inside Grain's
    multiprocessing state) becomes next_index // local_batch_size: a worker made whole batches
    of its slice then as now, so the quotient is the number of batches it had made. The
    interleaving fields (which worker is next) keep their meaning."""
    if isinstance(state, dict):
        return {key: (value // local_batch_size if key == "next_index" and isinstance(value, int)
                      else record_positions_to_batches(value, local_batch_size))
                for key, value in state.items()}
    if isinstance(state, list):
        return [record_positions_to_batches(value, local_batch_size) for value in state]
    return state


class TrainCheckpointer:
    def __init__(self, directory, keep: int = 3, async_save: bool = True,
                 replica_parallel: bool = False):
        # Orbax's max_to_keep=0 keeps none: every save deletes every step, the one just written
        # included, so a killed or preempted run had nothing to resume from.
        if keep is None or int(keep) < 1:
            raise UsageError(f"config.train.keep_checkpoints={keep!r}: keep at least 1 checkpoint "
                             f"(the latest is what a resumed run continues from)")
        self.directory = storage.orbax_path(directory)
        # Orbax's replica-parallel writes split replicated arrays across their replicas, which
        # compiles a slicing program per parameter shape (about 20 s at the first save of a small
        # model on CPU). Worth it only for large replicated arrays on many hosts.
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=replica_parallel),
            override=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing = None  # the step of the save that may still be in flight
        self._failed = False  # a failed save was reported: closing does not raise it again

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config_json: str, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(json.loads(config_json)),
            **{DATA_FORMAT_ITEM: ocp.args.JsonSave(DATA_FORMAT)},
        )
        self._wait()  # Orbax's save waits for the previous one too; here its failure is named
        self._writing = step
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._write_failure(step, e) from e
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def saved_config(self, step: int):
        """The run config saved with `step` (a dict, as config.to_json_best_effort wrote it), or
        None where the step has none."""
        if not (self.directory / str(step) / "config").exists():
            return None
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore()))
        except Exception as e:
            raise self._read_failure(step, e) from e
        return restored["config"]

    def check_step(self, step: int) -> None:
        """A UsageError naming `step`'s folder when it has no train state (emptied, or a copy or
        sync cut short): Orbax's own error is a KeyError traceback, raised only once the input
        pipeline and the model are built. (Another missing item fails the restore, which
        names the step too.)"""
        step_dir = self.directory / str(step)
        if not (step_dir / "state").exists():
            raise UsageError(f"checkpoint step {step} ({step_dir}) lacks its state (a copy or "
                             f"sync cut short, or a damaged disk); {self._fallback(step)}")

    def _fallback(self, step: int) -> str:
        """What to do with a damaged `step`: set it aside to resume from the one before."""
        earlier = [s for s in self.manager.all_steps() if s < step]
        where = f"resume from step {max(earlier)}" if earlier else "start the run again"
        return f"move {self.directory / str(step)} out of {self.directory} to {where}"

    def _read_failure(self, step: int, error: Exception) -> UsageError:
        return UsageError(f"checkpoint step {step} ({self.directory / str(step)}) cannot be "
                          f"read: {_first_line(error)}; if it is damaged (a copy cut short, a "
                          f"full disk), {self._fallback(step)}")

    def _write_failure(self, step, error: Exception) -> Exception:
        """A save that the storage refused (a full disk, no permission, an unreachable bucket)
        as one line naming the step and the newest complete one; any other error as it is."""
        if not (isinstance(error, OSError)
                or any(code in str(error) for code in _STORAGE_FAILURES)):
            return error
        self._failed = True
        complete = [int(p.name) for p in self.directory.iterdir()
                    if p.name.isdigit() and int(p.name) != step] if self.directory.exists() else []
        newest = (f"step {max(complete)} is the newest complete checkpoint: free space (or give "
                  f"the run access) and run the same command to resume from it" if complete else
                  "no complete checkpoint was written yet")
        return UsageError(f"checkpoint step {step} could not be written to {self.directory}: "
                          f"{_first_line(error)}; {newest}")

    def _wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failure(self._writing, e) from e

    def restore(self, step: int, abstract_state, data_iterator, local_batch_size: int):
        """Restores the train state (with the shardings of `abstract_state`) and sets
        `data_iterator` (this process's, `local_batch_size` rows a step) to where it was at
        `step`. A checkpoint from before DATA_FORMAT counted records: its position is converted
        (`record_positions_to_batches`) and the batches from there on are made the current way
        (the same records each epoch, grouped as the current pipeline groups them).

        A restore that fails on one array (a corrupt or missing chunk) may also print a few
        "RuntimeError: Event loop is closed" tracebacks, without a caller: Orbax runs each
        restore on an event loop of its own and closes it as soon as the first read fails, while
        TensorStore's other reads are still in flight; their completions are then posted to the
        closed loop from TensorStore's threads. It happens inside `manager.restore`, before
        control comes back here (closing the manager earlier or later changes nothing), and the
        restore's own error is still the one raised."""
        step_dir = self.directory / str(step)
        try:
            if (step_dir / DATA_FORMAT_ITEM).exists():
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ))
                return restored["state"]
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:
            raise self._read_failure(step, e) from e
        path = step_dir / "data" / (f"process_{jax.process_index()}-of-"
                                    f"{jax.process_count()}.json")
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"checkpoint step {step}: cannot read the data iterator's state "
                             f"{path}: {e}") from e
        data_iterator.set_state(record_positions_to_batches(saved, local_batch_size))
        log.warning("checkpoint step %d was written before the input pipeline counted its "
                    "position in batches: continuing at the same step (records of an epoch "
                    "are grouped into batches the current way from here on)", step)
        return restored["state"]

    def wait(self):
        self._wait()

    def close(self):
        """Waits for the last save and closes the manager. A save failure already reported (the
        loop's next save raised it) is not raised again from the loop's `finally`."""
        reported = self._failed
        try:
            self._wait()
        except Exception:
            if not reported:
                self.manager.close()
                raise
        try:
            self.manager.close()
        except Exception:
            if not reported:
                raise


# What TensorStore's errors (ValueError) say when the storage refused a write.
_STORAGE_FAILURES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE",
                     "No space left on device")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays: the restore target."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
