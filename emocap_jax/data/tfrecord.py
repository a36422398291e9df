"""TFRecord files in pure Python: framing, checksums, atomic writing, random access.

The on-disk format is TensorFlow's, byte for byte, so files written here are read by
`tf.data.TFRecordDataset` and vice versa. Each record is

        uint64 length            (little endian)
        uint32 masked_crc32c(length bytes)
        bytes  data[length]
        uint32 masked_crc32c(data)

TensorFlow is never imported: CRC-32C comes from `google_crc32c`. Unlike Grain's own
TFRecord reader, every reader here checks the checksums (unless asked not to) and names the
file and byte offset of the first bad record, so a corrupt shard fails loudly instead of
feeding garbage to training.

`TFRecordFile` gives random access (`len`, `[i]`) for a Grain `MapDataset` data source: it
indexes the file once by reading only the 12-byte record headers, and reads each record with one
`storage.RangeReader` read (`os.pread` on a local file, a ranged GET on `gs://` and the other
fsspec URLs), which keeps no shared file position, so it is safe to call from several threads
and survives pickling into Grain worker processes (the handle is reopened lazily there). The
checksums are checked the same way wherever the bytes come from.

Every path here may be local or a URL (`emocap_jax.storage`); writers publish a file only when it
is complete (`storage.AtomicWriter`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import Optional

import google_crc32c
import numpy as np

import emocap_jax.storage as storage

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of the length bytes
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size  # 12
FOOTER_SIZE = _CRC.size  # 4
INDEX_SUFFIX = ".index"


class CorruptRecordError(ValueError):
    """A TFRecord file is damaged: bad length CRC, bad data CRC or a truncated record."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.reason = reason
        super().__init__(
            f"corrupt TFRecord file {self.path} at byte offset {self.offset}: {reason}")

    def __reduce__(self):
        # Grain workers send exceptions back to the main process by pickling them.
        return (type(self), (self.path, self.offset, self.reason))


def crc32c(data: bytes) -> int:
    """Plain (unmasked) CRC-32C (Castagnoli) of `data`."""
    return google_crc32c.value(data)


def mask_crc(crc: int) -> int:
    """TensorFlow's CRC masking: rotate right by 15 bits and add a constant (mod 2**32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C stored in TFRecord files."""
    return mask_crc(google_crc32c.value(data))


def frame_record(data: bytes) -> bytes:
    """One record's complete bytes on disk (header, payload, footer)."""
    length_bytes = _LENGTH.pack(len(data))
    return b"".join((
        length_bytes,
        _CRC.pack(masked_crc32c(length_bytes)),
        data,
        _CRC.pack(masked_crc32c(data)),
    ))


class TFRecordWriter:
    """Writes a TFRecord file atomically.

    Locally, records go to `path + ".tmp-<pid>"`; `close()` flushes, fsyncs and renames it to
    `path`, so a file at `path` is always complete. On an object store (`gs://`) the object is
    uploaded as it is written and published by `close()` (`storage.AtomicWriter`). Used as a
    context manager, an exception inside the block drops what was written and leaves no file at
    `path`. `block_size`: bytes buffered before a part is uploaded (object stores only).
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True,
                 block_size: Optional[int] = None):
        self.path = storage.fspath(path)
        self._file: Optional[storage.AtomicWriter] = storage.AtomicWriter(
            self.path, fsync=fsync, block_size=block_size)
        self.tmp_path = self._file.tmp_path
        self._position = 0
        self.offsets: list[int] = []  # byte offset of every record written, for a precomputed index

    @property
    def num_records(self) -> int:
        return len(self.offsets)

    def write(self, data: bytes) -> int:
        """Appends one record; returns its byte offset in the file."""
        if self._file is None:
            raise ValueError(f"TFRecordWriter for {self.path} is already closed")
        record = frame_record(bytes(data))
        self._file.write(record)
        offset = self._position
        self.offsets.append(offset)
        self._position += len(record)
        return offset

    def close(self) -> None:
        """Finishes the file and moves it into place. Idempotent."""
        if self._file is None:
            return
        self._file.close()
        self._file = None

    def abort(self) -> None:
        """Drops everything written; leaves no file at `path`. Idempotent."""
        if self._file is not None:
            self._file.abort()
            self._file = None

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _parse_header(path: str, offset: int, header: bytes, verify: bool) -> int:
    """Checks a 12-byte header and returns the payload length."""
    if len(header) < HEADER_SIZE:
        raise CorruptRecordError(
            path, offset, f"truncated record header ({len(header)} of {HEADER_SIZE} bytes)")
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc32c(header[:8]) != length_crc:
        raise CorruptRecordError(path, offset, "length checksum mismatch")
    return length


def _check_payload(path: str, offset: int, length: int, body: bytes, verify: bool) -> bytes:
    """Checks payload + footer bytes read after a header and returns the payload."""
    if len(body) < length + FOOTER_SIZE:
        raise CorruptRecordError(
            path, offset,
            f"truncated record (payload of {length} bytes + {FOOTER_SIZE}-byte checksum "
            f"expected, {len(body)} bytes left in file)")
    data = body[:length]
    if verify:
        (data_crc,) = _CRC.unpack_from(body, length)
        if masked_crc32c(data) != data_crc:
            raise CorruptRecordError(path, offset, "data checksum mismatch")
    return data


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yields (byte offset, payload) for every record of a TFRecord file, in order."""
    path = storage.fspath(path)
    file_size = storage.getsize(path)
    with storage.open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(HEADER_SIZE)
            if not header:
                return
            length = _parse_header(path, offset, header, verify)
            # Without verification a garbage length could ask for exabytes: bound it first.
            body_size = min(length + FOOTER_SIZE, file_size - offset - HEADER_SIZE)
            body = f.read(body_size)
            yield offset, _check_payload(path, offset, length, body, verify)
            offset += HEADER_SIZE + length + FOOTER_SIZE


def build_index(path: str | os.PathLike, verify: bool = True) -> np.ndarray:
    """Byte offsets of all records, found by reading only the record headers.

    Raises CorruptRecordError on a bad length checksum (when `verify`) or when a record runs past
    the end of the file, so truncation is caught before training starts. The file is read forward
    through a buffered file object (on a URL, large read-ahead blocks rather than a request per
    header).
    """
    path = storage.fspath(path)
    offsets = []
    file_size = storage.getsize(path)
    with storage.open(path, "rb") as f:
        offset = 0
        while offset < file_size:
            f.seek(offset)
            header = f.read(HEADER_SIZE)
            length = _parse_header(path, offset, header, verify)
            end = offset + HEADER_SIZE + length + FOOTER_SIZE
            if end > file_size:
                raise CorruptRecordError(
                    path, offset,
                    f"truncated record (needs {end - offset} bytes, "
                    f"{file_size - offset} left in file)")
            offsets.append(offset)
            offset = end
    return np.asarray(offsets, dtype=np.int64)


def index_path_for(path: str | os.PathLike) -> str:
    """Where the precomputed offset index of a TFRecord file lives (beside it)."""
    return storage.fspath(path) + INDEX_SUFFIX


def write_index(path: str | os.PathLike, offsets: Sequence[int]) -> str:
    """Writes the record offsets of TFRecord file `path` to its sidecar index, atomically.

    The index is raw little-endian uint64, one per record. Readers on slow storage (network
    file systems) use it to skip the header scan.
    """
    index_path = index_path_for(path)
    storage.write_bytes(index_path, np.asarray(offsets, dtype="<u8").tobytes())
    return index_path


def read_index(path: str | os.PathLike) -> np.ndarray:
    """Reads the sidecar index written by `write_index` for TFRecord file `path`."""
    index_path = index_path_for(path)
    raw = storage.read_bytes(index_path)
    if len(raw) % 8:
        raise ValueError(f"index file {index_path} has {len(raw)} bytes, not a multiple of 8")
    return np.frombuffer(raw, dtype="<u8").astype(np.int64)


class TFRecordFile:
    """Random access to the records of one TFRecord file (a Grain-style data source).

    Args:
        path: the TFRecord file (local or a URL).
        verify: check checksums (length CRCs while indexing, data CRC on every read).
        offsets: a precomputed index (e.g. from `read_index` or `TFRecordWriter.offsets`); when
            given the file is not scanned, and every read still checks its record's header.
        offsets_from: what `offsets` came from, for the error when they do not fit the file.

    With an index, record i spans offsets[i] to offsets[i + 1] (the file's end for the last), so
    each read is one request for exactly those bytes; a header that claims more than that span
    fetches the rest before the checks, which are those of a sequential read.

    An index must describe the whole file, or the records it leaves out are never read: given
    offsets are refused (ValueError) when they do not start at 0, do not increase (a record
    would be read twice), or when the last record (its header is read) ends before the file
    does; a record whose length does not fill its span (a record left out after it) is a
    CorruptRecordError when read, as a record that runs past the end of a truncated file is.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True,
                 offsets: Sequence[int] | np.ndarray | None = None, *,
                 offsets_from: str = "the given record offsets"):
        self.path = storage.fspath(path)
        self.verify = verify
        self._reader = storage.RangeReader(self.path)
        if offsets is None:
            self._offsets = build_index(self.path, verify=verify)
        else:
            self._offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
            try:
                problem = self._uncovered()
            finally:
                # Reopened lazily by the thread or process that reads records (URL shards are
                # opened on a thread pool; fsspec keeps a filesystem instance per thread).
                self._reader.close()
            if problem:
                raise ValueError(f"{offsets_from} do not match {self.path}: {problem} (a stale "
                                 "index? delete it to rescan the file)")

    def _uncovered(self) -> str | None:
        """Why the offsets do not tile the file from its first byte to its last (None if they
        do, as far as their ends show: a gap in the middle shows when its record is read)."""
        offsets, size = self._offsets, self._reader.size
        if not len(offsets):
            return f"they list no record, the file has {size} bytes" if size else None
        if offsets[0] != 0:
            return f"their first record starts at byte {int(offsets[0])}, not 0"
        steps = np.diff(offsets)
        if len(steps) and steps.min() <= 0:  # a record listed twice, or out of order
            i = int(np.argmin(steps))
            return (f"record {i + 1} starts at byte {int(offsets[i + 1])}, not after record {i} "
                    f"(byte {int(offsets[i])})")
        last = int(offsets[-1])
        try:
            length = _parse_header(self.path, last, self._reader.read(last, HEADER_SIZE),
                                   self.verify)
        except CorruptRecordError:
            # A damaged or cut file, not an index that hides records: reading that record
            # raises the CorruptRecordError (which on_corrupt="skip" can skip).
            return None
        end = last + HEADER_SIZE + length + FOOTER_SIZE
        if end < size:
            return (f"their last record (byte {last}) ends at byte {end}, the file at byte "
                    f"{size}: the records after it are not listed")
        return None  # past the end of the file: a truncated record, raised when it is read

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def read_at(self, offset: int, span: Optional[int] = None) -> bytes:
        """Reads and checks the record that starts at byte `offset` (`span`: the bytes to fetch
        at once, when the next record's offset is known)."""
        reader = self._reader
        file_size = reader.size
        first = reader.read(offset, max(span or 0, HEADER_SIZE))
        length = _parse_header(self.path, offset, first[:HEADER_SIZE], self.verify)
        if span is not None and HEADER_SIZE + length + FOOTER_SIZE < span:
            raise CorruptRecordError(
                self.path, offset,
                f"the record takes {HEADER_SIZE + length + FOOTER_SIZE} of the {span} bytes its "
                "index gives it: the index leaves out what follows (a stale index? delete it to "
                "rescan the file)")
        body_size = min(length + FOOTER_SIZE, max(0, file_size - offset - HEADER_SIZE))
        body = first[HEADER_SIZE:HEADER_SIZE + body_size]
        if len(body) < body_size:
            body += reader.read(offset + HEADER_SIZE + len(body), body_size - len(body))
        return _check_payload(self.path, offset, length, body, self.verify)

    def __getitem__(self, index: int) -> bytes:
        n = len(self._offsets)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {index} out of range for {self.path} ({n} records)")
        offset = int(self._offsets[i])
        end = int(self._offsets[i + 1]) if i + 1 < n else self._reader.size
        return self.read_at(offset, span=end - offset)

    def close(self) -> None:
        self._reader.close()

    def __repr__(self) -> str:
        return f"TFRecordFile({self.path!r}, records={len(self)}, verify={self.verify})"
