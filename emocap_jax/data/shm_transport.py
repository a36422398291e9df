"""Batches from Grain worker processes to the trainer through recycled shared-memory blocks.

Grain 0.2.18's `mp_prefetch` puts every batch a worker makes into a *new* shared-memory segment
that the trainer unlinks once it has read it. New tmpfs pages are allocated and zeroed on first
touch, and on this project's 2-core VM that costs ~200 us per 224 px image (37 page faults of
~5 us): as much as a fifth of all the work per image. Here the trainer process creates a few
blocks per worker once; a worker stacks its batch straight into a free block of its own and sends
only a small `PackedBatch` handle through Grain's queue; the trainer copies the arrays out (a
memcpy into memory it reuses) and marks the block free again. The pages are touched once per run.

Lifecycle: the trainer owns the blocks (creates them, unlinks them when the `BatchBlocks` object
is garbage collected or the process exits; Python's resource tracker unlinks them if it dies).
A worker that finds none of its blocks free (elements discarded by a `set_state`, or an element
that does not fit) returns the plain batch, which Grain ships its usual way: slower, never wrong.
Block byte 0 is the flag: 1 while a batch is in it, 0 once the trainer has copied it out. A
worker's reader threads pack batches side by side, so finding a free block and marking it busy
happen under one lock: without it two threads could claim the same block and one batch would
overwrite the other (two runs of one seed then parted at a random step).
"""

from __future__ import annotations

import threading
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

_HEADER = 64
_ALIGN = 64
_FREE, _BUSY = 0, 1

# Set in each worker process by the pipeline's worker_init_fn (`set_worker_index`).
_WORKER_INDEX: int | None = None


def set_worker_index(index: int) -> None:
    global _WORKER_INDEX  # pylint: disable=global-statement
    _WORKER_INDEX = int(index)


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def block_bytes(array_bytes: list[int]) -> int:
    """Block size that holds arrays of these sizes (header and alignment included)."""
    return _HEADER + sum(_aligned(n) for n in array_bytes)


class PackedBatch:
    """What travels through Grain's queue instead of the arrays: block name and array layout.
    (A plain class, so Grain's tree utilities treat it as one leaf.)"""

    __slots__ = ("name", "layout")

    def __init__(self, name: str, layout: tuple):
        self.name = name
        self.layout = layout  # ((key, shape, dtype str, byte offset), ...)

    def __getstate__(self):
        return (self.name, self.layout)

    def __setstate__(self, state):
        self.name, self.layout = state


def _release(blocks: list[shared_memory.SharedMemory]) -> None:
    for shm in blocks:
        try:
            shm.close()
            shm.unlink()
        except (OSError, BufferError):
            pass


class BatchBlocks:
    """Trainer side: `blocks_per_worker` blocks of `size` bytes for each of `num_workers`."""

    def __init__(self, num_workers: int, blocks_per_worker: int, size: int):
        self.size = int(size)
        self._blocks: dict[str, shared_memory.SharedMemory] = {}
        self.names: list[list[str]] = []
        try:
            for _ in range(num_workers):
                names = []
                for _ in range(blocks_per_worker):
                    shm = shared_memory.SharedMemory(create=True, size=self.size)
                    shm.buf[0] = _FREE
                    self._blocks[shm.name] = shm
                    names.append(shm.name)
                self.names.append(names)
        except BaseException:
            _release(list(self._blocks.values()))
            raise
        self._finalizer = weakref.finalize(self, _release, list(self._blocks.values()))
        self.packed = 0  # batches that came through the blocks
        self.plain = 0   # batches that came the usual way (no free block in their worker)

    def packer(self) -> BlockPacker:
        """The picklable batch function for the workers."""
        return BlockPacker(self.names, self.size)

    def unpack(self, element: Any) -> Any:
        """A PackedBatch -> dict of arrays copied out of its block (then freed); else unchanged."""
        if not isinstance(element, PackedBatch):
            self.plain += 1
            return element
        shm = self._blocks[element.name]
        out = {}
        for key, shape, dtype, offset in element.layout:
            view = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf, offset=offset)
            out[key] = view.copy()
            del view
        shm.buf[0] = _FREE
        self.packed += 1
        return out

    def close(self) -> None:
        self._finalizer()


def stack_batch(values: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([np.asarray(v[key]) for v in values]) for key in values[0]}


class BlockPacker:
    """Worker side: a Grain `batch_fn` that stacks the elements into a free block of this
    worker's and returns its PackedBatch (the plain stacked batch when none is free)."""

    def __init__(self, names: list[list[str]], size: int):
        self._names = names
        self._size = size
        self._blocks: list[shared_memory.SharedMemory] | None = None
        self._claim = threading.Lock()

    def __getstate__(self):
        return {"_names": self._names, "_size": self._size}

    def __setstate__(self, state):
        self.__init__(state["_names"], state["_size"])

    def _own_blocks(self) -> list[shared_memory.SharedMemory]:
        if self._blocks is None:
            if _WORKER_INDEX is None or _WORKER_INDEX >= len(self._names):
                self._blocks = []
            else:
                self._blocks = [_attach(name) for name in self._names[_WORKER_INDEX]]
        return self._blocks

    def __call__(self, values: list[dict[str, np.ndarray]]) -> Any:
        layout, offset = [], _HEADER
        for key in values[0]:
            first = np.asarray(values[0][key])
            shape, dtype = (len(values), *first.shape), first.dtype
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if dtype.hasobject or offset + nbytes > self._size:
                return stack_batch(values)
            layout.append((key, shape, dtype.str, offset))
            offset += _aligned(nbytes)
        with self._claim:  # the worker's reader threads pack side by side
            block = next((b for b in self._own_blocks() if b.buf[0] == _FREE), None)
            if block is None:
                return stack_batch(values)
            block.buf[0] = _BUSY
        for key, shape, dtype, offset in layout:
            out = np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=offset)
            np.stack([np.asarray(v[key]) for v in values], out=out)
            del out
        return PackedBatch(block.name, tuple(layout))


def _attach(name: str) -> shared_memory.SharedMemory:
    # Attaching registers the name with the resource tracker that Grain's spawned workers share
    # with the trainer; it keeps one entry per name, which the trainer's unlink removes.
    return shared_memory.SharedMemory(name=name)
