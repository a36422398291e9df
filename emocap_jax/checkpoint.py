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

import grain
import jax
import orbax.checkpoint as ocp

import emocap_jax.storage as storage

log = logging.getLogger(__name__)


class TrainCheckpointer:
    def __init__(self, directory, keep: int = 3, async_save: bool = True,
                 replica_parallel: bool = False):
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
        )
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state, data_iterator):
        """Restores the train state (with the shardings of `abstract_state`) and sets
        `data_iterator` to where it was at `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ))
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
