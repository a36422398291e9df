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

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config_json: str, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(json.loads(config_json)),
            **{DATA_FORMAT_ITEM: ocp.args.JsonSave(DATA_FORMAT)},
        )
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def saved_config(self, step: int):
        """The run config saved with `step` (a dict, as config.to_json_best_effort wrote it), or
        None where the step has none."""
        if not (self.directory / str(step) / "config").exists():
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))
        return restored["config"]

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
        if (step_dir / DATA_FORMAT_ITEM).exists():
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ))
            return restored["state"]
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
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
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays: the restore target."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)
