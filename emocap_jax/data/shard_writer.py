"""A dataset directory of TFRecord shards, written atomically and described by metadata.json.

Layout of a finished dataset directory:

    data-00000-of-00016.tfrecord          tf.train.Example records (see example_codec)
    data-00000-of-00016.tfrecord.index    record byte offsets, little-endian uint64
    ...
    rejected.jsonl                        one {"line", "id", "reason"} per input not written
    metadata.json                         schema_version, counts, shard list, labels, extras,
                                          the tokenizer of the stored token ids (if any)

Records go to shards round-robin in input order, so converting the same input twice gives
byte-identical shards. Every file is written under a temporary name and renamed into place;
`metadata.json` is written last and is the commit point: a directory without it is an
unfinished conversion and `load_metadata` refuses it.

The directory may be local or a URL (`gs://bucket/data/train`, see `emocap_jax.storage`). On an
object store each shard is uploaded as it is written (in parts of at most `_UPLOAD_BUFFER /
num_shards` bytes, so the memory held does not grow with the shard count) and appears when
complete; `metadata.json` is still the last object written.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import resource
from collections.abc import Sequence
from typing import Any

import emocap_jax.storage as storage
from emocap_jax.data import example_codec
from emocap_jax.data import tfrecord

METADATA_FILE = "metadata.json"
REJECTED_FILE = "rejected.jsonl"
_RESERVED_KEYS = frozenset({
    "schema_version", "created_by", "num_records", "num_rejected", "shards", "classes",
    "label_counts", "tokenizer",
})
# Bytes all the shards of one writer buffer together before uploading a part (object stores);
# each shard's part is at least the 256 KiB that Cloud Storage's resumable uploads require.
_UPLOAD_BUFFER = 256 * 2**20
_MIN_PART, _MAX_PART = 2**18, 16 * 2**20


def shard_name(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _write_text_atomically(path: str, text: str) -> None:
    storage.write_text(path, text)


def _part_size(num_shards: int) -> int:
    part = min(_MAX_PART, max(_MIN_PART, _UPLOAD_BUFFER // num_shards))
    return part // _MIN_PART * _MIN_PART


def _ensure_open_file_limit(needed: int) -> None:
    """All shards stay open at once; raise the soft descriptor limit if it is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def existing_dataset_files(output_dir: str | os.PathLike, prefix: str = "data") -> list[str]:
    """The names of a dataset's files (shards, their indexes, metadata.json) already in
    `output_dir`, finished or not, which a writer without overwrite refuses to replace."""
    output_dir = storage.fspath(output_dir)
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{5}}-of-\d{{5}}\.tfrecord(\.index)?")
    names = storage.listdir(output_dir) if storage.isdir(output_dir) else []
    return sorted(name for name in names if name == METADATA_FILE or pattern.fullmatch(name))


def existing_dataset_message(output_dir: str, existing: Sequence[str]) -> str:
    return (f"{output_dir} already holds a dataset ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); choose another directory or overwrite")


class ShardedRecordWriter:
    """Writes FaceRecords round-robin into `num_shards` TFRecord files plus metadata.

    Args:
      output_dir: created if missing.
      num_shards: number of shard files (use many more than hosts x data workers).
      prefix: shard file name prefix.
      metadata: extra JSON-serialisable entries for metadata.json (must not use reserved keys).
      classes: the class order of `label_id`, recorded in metadata.json; when given, every
        record with label_id >= 0 must satisfy classes[label_id] == label.
      created_by: recorded in metadata.json (the tool that made the dataset).
      overwrite: allow replacing an existing dataset in `output_dir`; otherwise an existing
        one is an error. Stale shards of the old dataset are removed on close.
      tokenizer: when given (an `emocap_jax.tokenizers.Tokenizer`), every record is written with
        the token ids of its sentences (`example_codec.with_token_ids`) and metadata.json records
        `tokenizer.identity()` under "tokenizer", so the training pipeline need not tokenize.
        Without one, token ids a record carries are dropped: ids are only kept in a dataset that
        names the tokenizer they came from.
    """

    def __init__(self, output_dir: str | os.PathLike, num_shards: int, prefix: str = "data",
                 metadata: dict[str, Any] | None = None, *,
                 classes: Sequence[str] | None = None,
                 created_by: str = "emocap_jax.data.shard_writer",
                 overwrite: bool = False, tokenizer=None):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix):
            raise ValueError(f"shard prefix {prefix!r} must be a plain file-name stem")
        extra = dict(metadata or {})
        clashes = sorted(_RESERVED_KEYS & set(extra))
        if clashes:
            raise ValueError(f"metadata keys {clashes} are reserved by the shard writer")
        json.dumps(extra)  # fail now, not after hours of conversion
        self.output_dir = storage.fspath(output_dir)
        self.num_shards = num_shards
        self.prefix = prefix
        self.classes = list(classes) if classes is not None else None
        self.created_by = created_by
        self.tokenizer = tokenizer
        self._tokenizer_identity = tokenizer.identity() if tokenizer is not None else None
        self._extra = extra
        self._label_counts: collections.Counter[str] = collections.Counter()
        self._rejected: list[dict[str, Any]] = []
        self._num_records = 0
        self._closed = False

        storage.makedirs(self.output_dir)
        existing = self._existing_dataset_files()
        if existing and not overwrite:
            raise FileExistsError(existing_dataset_message(self.output_dir, existing))
        # Un-commit the old dataset first, so a crash below never leaves old metadata that
        # describes a mix of old and new shards.
        storage.remove(storage.join(self.output_dir, METADATA_FILE), missing_ok=True)

        if not storage.is_url(self.output_dir):
            _ensure_open_file_limit(num_shards + 64)
        self.shard_files = [shard_name(prefix, i, num_shards) for i in range(num_shards)]
        self._writers: list[tfrecord.TFRecordWriter] = []
        part = _part_size(num_shards)
        try:
            for name in self.shard_files:
                self._writers.append(tfrecord.TFRecordWriter(
                    storage.join(self.output_dir, name), block_size=part))
        except BaseException:
            self.abort()
            raise

    def _existing_dataset_files(self) -> list[str]:
        return existing_dataset_files(self.output_dir, self.prefix)

    def _remove_stale_files(self) -> None:
        """Deletes shards of an overwritten dataset and temporary files of crashed runs."""
        stale = re.compile(
            rf"{re.escape(self.prefix)}-\d{{5}}-of-\d{{5}}\.tfrecord(\.index)?\.tmp-(\d+)")
        for name in self._existing_dataset_files():
            if name != METADATA_FILE and \
                    name.removesuffix(tfrecord.INDEX_SUFFIX) not in self.shard_files:
                storage.remove(storage.join(self.output_dir, name))
        for name in storage.listdir(self.output_dir):
            match = stale.fullmatch(name)
            if match and int(match.group(2)) != os.getpid():
                storage.remove(storage.join(self.output_dir, name))

    @property
    def num_records(self) -> int:
        return self._num_records

    @property
    def num_rejected(self) -> int:
        return len(self._rejected)

    def _check_label(self, record: example_codec.FaceRecord) -> None:
        if self.classes is None or record.label_id < 0:
            return
        if record.label_id >= len(self.classes):
            raise ValueError(
                f"record {record.id!r}: label_id {record.label_id} is out of range for "
                f"{len(self.classes)} classes")
        if record.label and self.classes[record.label_id] != record.label:
            raise ValueError(
                f"record {record.id!r}: label {record.label!r} does not match "
                f"classes[{record.label_id}] = {self.classes[record.label_id]!r}")

    def add(self, record: example_codec.FaceRecord) -> None:
        """Encodes and writes one record to the next shard in round-robin order."""
        if self._closed:
            raise ValueError(f"ShardedRecordWriter for {self.output_dir} is closed")
        self._check_label(record)
        if self.tokenizer is not None:
            record = example_codec.with_token_ids(record, self.tokenizer)
        elif record.has_tokens:
            record = dataclasses.replace(record, global_tokens=None, summary_tokens=None,
                                         local_tokens=None)
        data = example_codec.encode_record(record)
        self._writers[self._num_records % self.num_shards].write(data)
        self._num_records += 1
        if record.label:
            self._label_counts[record.label] += 1

    def reject(self, line: int | None, id: str | None,  # pylint: disable=redefined-builtin
               reason: str) -> None:
        """Records an input entry that was not written (its line number, id if known, why)."""
        if self._closed:
            raise ValueError(f"ShardedRecordWriter for {self.output_dir} is closed")
        self._rejected.append({"line": line, "id": id, "reason": reason})

    def update_metadata(self, entries: dict[str, Any]) -> None:
        """Adds extra metadata.json entries known only during writing (e.g. rejection stats)."""
        clashes = sorted(_RESERVED_KEYS & set(entries))
        if clashes:
            raise ValueError(f"metadata keys {clashes} are reserved by the shard writer")
        json.dumps(entries)
        self._extra.update(entries)

    def close(self) -> dict[str, Any]:
        """Finishes all shards, writes rejected.jsonl and (last) metadata.json; returns metadata.

        If that fails, the temporary files of the shards not yet finished are removed and the
        failure is raised; no metadata.json is written, so the directory stays an unfinished
        dataset (shards finished before the failure stay under their names).
        """
        if self._closed:
            raise ValueError(f"ShardedRecordWriter for {self.output_dir} is already closed")
        try:
            return self._finish()
        except BaseException as error:
            self._discard(error)
            raise

    def _finish(self) -> dict[str, Any]:
        shards = []
        for name, writer in zip(self.shard_files, self._writers):
            writer.close()
            tfrecord.write_index(writer.path, writer.offsets)
            shards.append({"file": name, "num_records": writer.num_records})
        self._closed = True
        self._remove_stale_files()

        rejected_text = "".join(
            json.dumps(entry, ensure_ascii=False) + "\n" for entry in self._rejected)
        _write_text_atomically(storage.join(self.output_dir, REJECTED_FILE), rejected_text)

        metadata: dict[str, Any] = {
            "schema_version": example_codec.SCHEMA_VERSION,
            "created_by": self.created_by,
            "num_records": self._num_records,
            "num_rejected": len(self._rejected),
            "shards": shards,
            "label_counts": dict(sorted(self._label_counts.items())),
        }
        if self.classes is not None:
            metadata["classes"] = self.classes
        if self._tokenizer_identity is not None:
            metadata["tokenizer"] = self._tokenizer_identity
        metadata.update(self._extra)
        _write_text_atomically(storage.join(self.output_dir, METADATA_FILE),
                               json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
        return metadata

    def abort(self) -> None:
        """Removes every temporary shard file; writes no metadata."""
        self._discard()

    def _discard(self, error: BaseException | None = None) -> None:
        """Aborts every shard writer, even after one fails to remove its file. While `error` is
        being handled, those failures become notes on it, so it stays the error raised;
        otherwise the first is raised."""
        failures = []
        for writer in self._writers:
            try:
                writer.abort()
            except Exception as e:  # pylint: disable=broad-except
                failures.append(e)
        self._closed = True
        if error is None and failures:
            raise failures[0]
        for failure in failures:
            error.add_note(f"and a temporary shard file could not be removed: {failure!r}")

    def __enter__(self) -> ShardedRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard(exc)
        elif not self._closed:
            self.close()


def datasets_below(folder: str | os.PathLike) -> list[str]:
    """The finished datasets (folders holding metadata.json) one or two levels below `folder`, as
    paths relative to it, sorted: what a converter's output folder holds (`train`, `val`;
    `fold1/train`, ...). Empty for a dataset itself, a file or a missing path."""
    if not storage.isdir(folder) or storage.isfile(storage.join(folder, METADATA_FILE)):
        return []
    found = []
    for name in storage.listdir(folder):
        sub = storage.join(folder, name)
        if storage.isfile(storage.join(sub, METADATA_FILE)):
            found.append(name)
        elif storage.isdir(sub):
            found += [f"{name}/{inner}" for inner in storage.listdir(sub)
                      if storage.isfile(storage.join(sub, inner, METADATA_FILE))]
    return found


def not_a_dataset_reason(dataset_dir: str | os.PathLike) -> str | None:
    """Why `dataset_dir` is not a dataset, in words naming it, when it is a file, a folder of
    datasets (a converter's output folder, named with the datasets in it) or a caption corpus not
    yet converted (a manifest.jsonl and its images: `data_prep.synthetic`'s output); None
    otherwise."""
    where = storage.fspath(dataset_dir)
    if storage.isfile(where):
        return (f"{where} is a file, not a dataset directory (give the folder holding "
                f"{METADATA_FILE} and the shards)")
    manifest = storage.join(where, "manifest.jsonl")
    if storage.isdir(where) and storage.isfile(manifest):
        return (f"{where} holds a caption corpus (manifest.jsonl and its images), not a "
                f"converted dataset: convert it with `python -m data_prep.captions --manifest "
                f"{manifest} --root {where} --output DIR` and give DIR")
    below = datasets_below(where)
    if below:
        return (f"{where} is not a dataset directory but holds the datasets "
                f"{', '.join(below)} (a converter's output folder): give one of them, e.g. "
                f"{storage.join(where, below[0])}")
    return None


def load_metadata(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads a finished dataset's metadata.json (refuses unfinished or newer-schema datasets, and
    a file that is not a dataset description: ValueError naming it). A path that is not a
    dataset is FileNotFoundError naming it: a file, a folder of datasets (naming them), or an
    unfinished or missing one."""
    path = storage.join(dataset_dir, METADATA_FILE)
    if not storage.isfile(path):
        reason = not_a_dataset_reason(dataset_dir)
        if reason:
            raise FileNotFoundError(reason)
        raise FileNotFoundError(
            f"{path} not found: {storage.fspath(dataset_dir)} is not a finished dataset directory "
            "(wrong path, or the conversion did not complete)")
    try:
        metadata = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): a damaged or hand-edited dataset "
                         "description") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is not a JSON object (it holds a {type(metadata).__name__})")
    shards = metadata.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{path} has no 'shards' list: it does not describe a dataset")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
            raise ValueError(f"{path}: shards[{i}] has no 'file' name (got {shard!r:.80})")
    version = metadata.get("schema_version")
    if not isinstance(version, int) or version > example_codec.SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version!r} is not supported by this code "
            f"(it reads up to {example_codec.SCHEMA_VERSION})")
    return metadata


def shard_paths(dataset_dir: str | os.PathLike) -> list[str]:
    """Full paths of a dataset's shards, in order; every listed shard must exist."""
    dataset_dir = storage.fspath(dataset_dir)
    metadata = load_metadata(dataset_dir)
    paths = [storage.join(dataset_dir, shard["file"]) for shard in metadata["shards"]]
    missing = [p for p in paths if not storage.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} shards listed in "
            f"{storage.join(dataset_dir, METADATA_FILE)} are missing: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return paths
