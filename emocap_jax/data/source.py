"""A Grain random-access data source over many TFRecord shards with one global index space.

Record `i` of the dataset is record `i - start[s]` of shard `s`, where `start` holds the
cumulative record counts of the shards in the order given. Shards are indexed from their
`.index` side files when present (written by the shard writer), otherwise by scanning the record
headers once, so opening a dataset of hundreds of shards reads a few bytes per record at most. A
side index must describe its whole shard (its last record's header is read to check that it ends
where the file does): one that leaves records out is an error, not a shorter shard.
Shards may be local files or URLs (`gs://...`, see `emocap_jax.storage`): a record is then read
with one ranged request for its bytes, and checked as a local one is.

Every read checks the record's checksums (unless `verify=False`). What happens on a corrupt record
is the caller's choice:

* `on_corrupt="raise"` (default): `CorruptRecordError`, naming the file and byte offset,
  propagates. Grain's worker processes pickle the exception back to the main process with its
  original type and message, so it surfaces unchanged from `next(iterator)`.
* `on_corrupt="skip"`: the record reads as `None`, a warning naming the file and offset is logged
  and the record is counted in `num_skipped`. The training pipeline puts a blank row marked
  `valid` False in its place (`pipeline._TrainBatch`), which the losses leave out; dropping it
  instead would shorten that process's step (or, with no readable row, its run) and put it out
  of step with the others.

The counter lives in the process that read the record. With `worker_count=0` that is the main
process; with Grain worker processes each worker holds its own copy of the source, so the
main-process object stays at 0 and the skips are visible only in the workers' log warnings.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections.abc import Sequence

import numpy as np

import emocap_jax.storage as storage
from emocap_jax.data import tfrecord
from emocap_jax.data.tfrecord import CorruptRecordError

_LOG = logging.getLogger(__name__)

ON_CORRUPT_CHOICES = ("raise", "skip")
# Keep the first few skipped records for error reports without letting a badly damaged
# shard grow the list without bound.
_MAX_SKIPPED_KEPT = 100
# Shards opened at once when they are URLs.
_OPEN_THREADS = 16


def _open_shard(path: str, verify: bool) -> tfrecord.TFRecordFile:
    """Opens one shard, from its side index when it exists and agrees with the file."""
    index_path = tfrecord.index_path_for(path)
    if storage.exists(index_path):
        offsets = tfrecord.read_index(path)
        size = storage.getsize(path)
        if len(offsets) and int(offsets[-1]) + tfrecord.HEADER_SIZE + tfrecord.FOOTER_SIZE > size:
            raise ValueError(
                f"index file {index_path} does not match {path}: its last record offset "
                f"{int(offsets[-1])} lies beyond the end of the {size}-byte file "
                "(stale index? delete it to rescan the shard)")
        # TFRecordFile refuses an index that leaves records out (one header read).
        return tfrecord.TFRecordFile(path, verify=verify, offsets=offsets,
                                     offsets_from=f"the offsets in index file {index_path}")
    return tfrecord.TFRecordFile(path, verify=verify)


class ShardedTFRecordSource:
    """Random access to the serialised records of several TFRecord shards (a Grain data source).

    Args:
        paths: the shard files, in the order that defines the global record index.
        verify: check record checksums on every read.
        on_corrupt: "raise" (propagate `CorruptRecordError`) or "skip" (return None, log, count).

    `source[i]` returns the record's payload bytes (a serialised tf.train.Example), or None for a
    skipped corrupt record. The object pickles cheaply into worker processes: file handles are
    reopened lazily there.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], verify: bool = True,
                 on_corrupt: str = "raise"):
        if on_corrupt not in ON_CORRUPT_CHOICES:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT_CHOICES}, got {on_corrupt!r}")
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("paths must be a list of shard files, not a single path")
        self.paths = [storage.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("ShardedTFRecordSource needs at least one shard")
        self.verify = verify
        self.on_corrupt = on_corrupt
        if any(storage.is_url(p) for p in self.paths):
            # On a bucket each shard costs a few round trips (index, size): open them together.
            with concurrent.futures.ThreadPoolExecutor(_OPEN_THREADS) as pool:
                self._shards = list(pool.map(lambda p: _open_shard(p, verify), self.paths))
        else:
            self._shards = [_open_shard(p, verify) for p in self.paths]
        counts = np.asarray([len(s) for s in self._shards], dtype=np.int64)
        # starts[s] = global index of shard s's first record; starts[-1] = total.
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._lock = threading.Lock()
        self.num_skipped = 0
        self.skipped: list[tuple[str, int, str]] = []

    @property
    def shard_sizes(self) -> list[int]:
        return [len(s) for s in self._shards]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _resolve(self, index: int) -> tuple[int, int]:
        """(shard number, index within the shard) of global record `index`."""
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {index} out of range for {n} records "
                             f"in {len(self.paths)} shards")
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        return shard, i - int(self._starts[shard])

    def locate(self, index: int) -> tuple[str, int, int]:
        """(shard path, index within the shard, byte offset) of global record `index`."""
        shard, local = self._resolve(index)
        return self.paths[shard], local, int(self._shards[shard].offsets[local])

    def __getitem__(self, index: int) -> bytes | None:
        shard, local = self._resolve(index)
        try:
            return self._shards[shard][local]
        except CorruptRecordError as e:
            if self.on_corrupt == "raise":
                raise
            self._count_skip(e)
            return None

    def _count_skip(self, error: CorruptRecordError) -> None:
        with self._lock:
            self.num_skipped += 1
            if len(self.skipped) < _MAX_SKIPPED_KEPT:
                self.skipped.append((error.path, error.offset, error.reason))
        _LOG.warning("skipping corrupt record (pid %d, %d skipped so far in this process): %s",
                     os.getpid(), self.num_skipped, error)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        # Grain prints data sources in its statistics and error notes: keep it one short line.
        return (f"ShardedTFRecordSource({len(self.paths)} shards, {len(self)} records, "
                f"first={self.paths[0]!r}, verify={self.verify}, on_corrupt={self.on_corrupt!r})")
