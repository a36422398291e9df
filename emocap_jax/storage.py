"""Paths anywhere: local files, `gs://` buckets and the other fsspec schemes, through one layer.

A path is a local path (or `file://...`) or a URL (`gs://bucket/run`, `s3://...`, `memory://...`).
Local paths go through `os` and `open`, exactly as before this module existed; URLs go through
fsspec (gcsfs for `gs://`, s3fs for `s3://`, its in-memory filesystem for `memory://`). Orbax
(checkpoints, exports) takes `orbax_path(path)`, an etils `epath.Path`: Orbax writes its metadata
through epath (fsspec again, without TensorFlow) and its arrays through TensorStore's own `gs://`
driver.

What each kind of storage guarantees, and what the writers here rely on:

* Local files are written under a temporary name, fsynced and renamed into place (`AtomicWriter`),
  so a file at its final name is always complete.
* Object stores (`gs://`, `s3://`, Azure) have no rename, but an object only appears once its
  upload is complete: `AtomicWriter` writes the object directly and cancels the upload on abort.
* Other fsspec filesystems (`memory://`, ...) get the local scheme: a temporary name, then a move.

`RangeReader` reads byte ranges of one file: `os.pread` locally, ranged GETs (`cat_file(path, start,
end)`) on a URL, so a random-access read of one record never fetches the whole shard.

Cloud Storage emulators (tests): gcsfs and google-cloud-storage follow STORAGE_EMULATOR_HOST,
TensorStore (Orbax's arrays) TENSORSTORE_GCS_HTTP_URL with GOOGLE_AUTH_TOKEN_FOR_TESTING; gcsfs's
bucket-type probe (gRPC, which an emulator does not serve) is off with
GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false. See tests/test_gcs.py.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import re
import shutil
import threading
from typing import Any, Optional

import fsspec
from etils import epath

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Stores where a written object appears only once its upload completes (no rename needed).
_COMMIT_ON_CLOSE = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss"})
# Schemes etils epath (and so Orbax) can open besides local paths.
_EPATH_SCHEMES = frozenset({"gs", "s3", "az", "hf"})
# fsspec options per scheme: listings are not cached, so a file another process (or host) wrote
# since this one last looked is seen.
_OPTIONS: dict[str, dict[str, Any]] = {"gs": {"use_listings_cache": False},
                                       "gcs": {"use_listings_cache": False},
                                       "s3": {"use_listings_cache": False}}


def scheme(path) -> Optional[str]:
    """The URL scheme of `path` ("gs", "s3", "memory", ...), or None for a local path."""
    match = _SCHEME.match(fspath(path))
    return match.group(1).lower() if match else None


def is_url(path) -> bool:
    """True for a path that is not on the local filesystem (gs://, s3://, memory://, ...)."""
    return scheme(path) is not None


def fspath(path) -> str:
    """`path` as a string: str, os.PathLike (pathlib, epath.Path of a bucket); `file://` dropped."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = text.decode()
    return text[len("file://"):] if text.startswith("file://") else text


def join(base, *parts: str) -> str:
    """`base / part / ...` for a local path or a URL (always "/" in a URL)."""
    base = fspath(base)
    if not is_url(base):
        return os.path.join(base, *parts)
    out = base
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


def dirname(path) -> str:
    path = fspath(path)
    if not is_url(path):
        return os.path.dirname(path)
    prefix = _SCHEME.match(path).group(0)
    return prefix + posixpath.dirname(path[len(prefix):].rstrip("/"))


def basename(path) -> str:
    path = fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path) -> str:
    """A local path made absolute; a URL as it is."""
    path = fspath(path)
    return path if is_url(path) else os.path.abspath(path)


def filesystem(path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, the path in its terms) of a URL. fsspec keeps one instance per process
    and options, and makes a new one after a fork (Grain's worker processes)."""
    path = fspath(path)
    return fsspec.core.url_to_fs(path, **_OPTIONS.get(scheme(path) or "", {}))


def exists(path) -> bool:
    if not is_url(path):
        return os.path.exists(fspath(path))
    fs, p = filesystem(path)
    return fs.exists(p)


def isfile(path) -> bool:
    if not is_url(path):
        return os.path.isfile(fspath(path))
    fs, p = filesystem(path)
    return fs.isfile(p)


def isdir(path) -> bool:
    """A local directory, or a URL prefix holding at least one object (object stores have no
    empty folders)."""
    if not is_url(path):
        return os.path.isdir(fspath(path))
    fs, p = filesystem(path)
    return fs.isdir(p)


def listdir(path) -> list[str]:
    """Names (not paths) of the entries of a folder, sorted."""
    if not is_url(path):
        return sorted(os.listdir(fspath(path)))
    fs, p = filesystem(path)
    return sorted({posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)} - {""})


def makedirs(path) -> None:
    """Creates a folder and its parents (a no-op on object stores, which have no folders)."""
    if not is_url(path):
        os.makedirs(fspath(path), exist_ok=True)
        return
    fs, p = filesystem(path)
    if scheme(path) not in _COMMIT_ON_CLOSE:
        fs.makedirs(p, exist_ok=True)


def getsize(path) -> int:
    if not is_url(path):
        return os.path.getsize(fspath(path))
    fs, p = filesystem(path)
    return int(fs.size(p))


def remove(path, missing_ok: bool = False) -> None:
    """Deletes one file."""
    try:
        if not is_url(path):
            os.remove(fspath(path))
            return
        fs, p = filesystem(path)
        if not fs.isfile(p):
            raise FileNotFoundError(f"{fspath(path)}: no such file")
        fs.rm_file(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path) -> None:
    """Deletes a folder and everything below it; nothing there is not an error."""
    if not is_url(path):
        shutil.rmtree(fspath(path), ignore_errors=True)
        return
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def open(path, mode: str = "rb", **kwargs):  # pylint: disable=redefined-builtin
    """A file object: builtins.open locally, fsspec's file on a URL. Text modes are UTF-8 unless
    `encoding` says otherwise. Writing here is not atomic: see `AtomicWriter`."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    if not is_url(path):
        return builtins.open(fspath(path), mode, **kwargs)
    fs, p = filesystem(path)
    return fs.open(p, mode, **kwargs)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Writes a whole file atomically (see AtomicWriter)."""
    with AtomicWriter(path) as f:
        f.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


class AtomicWriter:
    """A binary file that appears at `path` complete or not at all.

    Locally: written to `path.tmp-<pid>`, fsynced, renamed. On an object store: the object itself,
    which the store publishes only when the upload completes; `abort()` cancels the upload. On
    other fsspec filesystems: a temporary name, then a move. `block_size` (object stores) bounds
    the bytes buffered in memory before a part is uploaded.
    """

    def __init__(self, path, *, fsync: bool = True, block_size: Optional[int] = None):
        self.path = fspath(path)
        self._scheme = scheme(self.path)
        self._fsync = fsync
        direct = self._scheme in _COMMIT_ON_CLOSE
        self.tmp_path = self.path if direct else f"{self.path}.tmp-{os.getpid()}"
        if self._scheme is None:
            self._file = builtins.open(self.tmp_path, "wb")
        else:
            fs, p = filesystem(self.tmp_path)
            kwargs = {"block_size": block_size} if block_size and direct else {}
            self._file = fs.open(p, "wb", **kwargs)
        self.closed = False

    def write(self, data) -> int:
        return self._file.write(data)

    def close(self) -> None:
        """Completes the file at `path`. Idempotent. When it fails (a full disk shows in the
        flush or fsync), the temporary file is removed and the failure raised."""
        if self.closed:
            return
        self.closed = True
        try:
            self._complete()
        except BaseException:
            if self.tmp_path != self.path:
                # Clean-up is best effort: the error raised stays the one that stopped close.
                with contextlib.suppress(Exception):
                    self._drop_temporary()
            raise

    def _complete(self) -> None:
        if self._scheme is None:
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp_path, self.path)
            return
        self._file.close()
        if self.tmp_path != self.path:
            fs, tmp = filesystem(self.tmp_path)
            fs.mv(tmp, filesystem(self.path)[1])

    def abort(self) -> None:
        """Drops what was written; `path` is left as it was. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.tmp_path == self.path:  # an object store's upload
            discard = getattr(self._file, "discard", None)
            if discard is not None:
                discard()
            # gcsfs's discard leaves a file whose upload never started open, and its finaliser
            # would then upload it: mark it closed so nothing is sent.
            self._file.closed = True
            return
        self._drop_temporary()

    def _drop_temporary(self) -> None:
        # Closing flushes what is buffered, which fails again on a full disk; the descriptor is
        # closed all the same, and the file is to be removed anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        remove(self.tmp_path, missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def replace_tree(source, target, last: Optional[str] = None) -> None:
    """Moves the folder `source` to `target`, replacing what was there. Locally a rename. On a URL
    (no folder rename there): the old `target` is emptied (its `last` file first, so a reader that
    waits for `last` never sees a mix), then `source`'s files are copied, `last` after the rest,
    and `source` is deleted."""
    source, target = fspath(source), fspath(target)
    if not is_url(source):
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(source, target)
        return
    if last is not None:
        remove(join(target, last), missing_ok=True)
    rmtree(target)
    fs, src = filesystem(source)
    dst = filesystem(target)[1]
    files = sorted(fs.find(src))
    rel = [posixpath.relpath(f, src) for f in files]
    order = sorted(range(len(files)), key=lambda i: rel[i] == last)
    for i in order:
        fs.copy(files[i], posixpath.join(dst, rel[i]))
    rmtree(source)


def orbax_path(path) -> epath.Path:
    """What Orbax takes: an absolute local path, or a URL etils epath opens (gs://, s3://, ...)."""
    path = fspath(path)
    s = scheme(path)
    if s is not None and s not in _EPATH_SCHEMES:
        raise ValueError(f"{path}: checkpoints and exported parameters (Orbax) go to a local "
                         f"path or to {', '.join(sorted(s + '://' for s in _EPATH_SCHEMES))}, "
                         f"not {s}://")
    return epath.Path(absolute(path))


class RangeReader:
    """Random-access reads of one file: `os.pread` on a local file (no shared file position, so
    thread-safe), a ranged GET on a URL. Pickles as its path and reopens in the new process."""

    def __init__(self, path):
        self.path = fspath(path)
        self._remote = is_url(self.path)
        self._fd: Optional[int] = None
        self._fs: Optional[fsspec.AbstractFileSystem] = None
        self._fs_path = ""
        self._pid: Optional[int] = None
        self._size: Optional[int] = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._remote:
                self._fs, self._fs_path = filesystem(self.path)
                self._size = int(self._fs.size(self._fs_path))
            else:
                self._fd = os.open(self.path, os.O_RDONLY)
                self._size = os.fstat(self._fd).st_size
            self._pid = pid

    @property
    def size(self) -> int:
        self._open()
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes from `offset`; fewer only where the file ends."""
        self._open()
        end = min(offset + size, self._size)
        if end <= offset:
            return b""
        if self._remote:
            return self._fs.cat_file(self._fs_path, start=offset, end=end)
        chunks = []
        while offset < end:
            chunk = os.pread(self._fd, end - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._fs = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"RangeReader({self.path!r})"
