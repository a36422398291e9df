"""The path layer (emocap_jax.storage) on local paths and on fsspec's in-memory filesystem
(`memory://`, a stand-in for a bucket that needs no server), and the TFRecord shards read through
it with ranged reads. The same code against a Cloud Storage emulator: tests/test_gcs.py."""
import json
import os
import pathlib
import pickle
import uuid

import fsspec
import numpy as np
import pytest
from etils import epath

from emocap_jax import storage
from emocap_jax.data import example_codec, shard_writer, tfrecord
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.data.tfrecord import CorruptRecordError


@pytest.fixture
def mem():
    """A fresh folder of the in-memory filesystem, removed afterwards."""
    root = f"memory://t{uuid.uuid4().hex[:12]}"
    yield root
    storage.rmtree(root)


@pytest.fixture
def cat_calls(monkeypatch):
    """Every ranged read (path, start, end) made on the in-memory filesystem."""
    fs = fsspec.filesystem("memory")
    calls = []
    original = fs.cat_file

    def spy(path, start=None, end=None, **kwargs):
        calls.append((path, start, end))
        return original(path, start=start, end=end, **kwargs)

    monkeypatch.setattr(fs, "cat_file", spy)
    return calls


def test_path_helpers_for_local_paths_and_urls(tmp_path):
    assert storage.scheme("gs://b/x") == "gs" and storage.scheme(tmp_path) is None
    assert storage.is_url("memory://a") and not storage.is_url(str(tmp_path))
    assert storage.fspath(epath.Path("gs://bucket/run")) == "gs://bucket/run"
    assert storage.fspath("file:///tmp/x") == "/tmp/x"
    assert storage.join("gs://b/run/", "eval", "report.md") == "gs://b/run/eval/report.md"
    assert storage.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    assert storage.dirname("gs://b/run/export/") == "gs://b/run"
    assert storage.basename("gs://b/run/export/") == "export"
    assert storage.absolute("gs://b/run") == "gs://b/run"
    assert storage.absolute("rel") == str(pathlib.Path.cwd() / "rel")
    assert str(storage.orbax_path("gs://b/run/checkpoints")) == "gs://b/run/checkpoints"
    with pytest.raises(ValueError, match="memory://x/ck.*not memory://"):
        storage.orbax_path("memory://x/ck")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_files_and_folders_round_trip(where, tmp_path, mem):
    root = str(tmp_path) if where == "local" else mem
    folder = storage.join(root, "a", "b")
    storage.makedirs(folder)
    storage.write_text(storage.join(folder, "x.json"), '{"k": 1}')
    storage.write_bytes(storage.join(folder, "y.bin"), b"\x00\x01")
    assert storage.isdir(folder) and storage.isfile(storage.join(folder, "x.json"))
    assert storage.listdir(folder) == ["x.json", "y.bin"]
    assert json.loads(storage.read_text(storage.join(folder, "x.json"))) == {"k": 1}
    assert storage.getsize(storage.join(folder, "y.bin")) == 2
    with storage.open(storage.join(folder, "x.json"), "r") as f:
        assert f.read() == '{"k": 1}'
    storage.remove(storage.join(folder, "y.bin"))
    with pytest.raises(FileNotFoundError, match="y.bin"):
        storage.remove(storage.join(folder, "y.bin"))
    storage.remove(storage.join(folder, "y.bin"), missing_ok=True)
    storage.rmtree(storage.join(root, "a"))
    assert not storage.exists(folder)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_atomic_writer_abort_keeps_the_old_file_and_leaves_no_temporary(where, tmp_path, mem):
    root = str(tmp_path) if where == "local" else mem
    path = storage.join(root, "file.bin")
    storage.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with storage.AtomicWriter(path) as f:
            f.write(b"new, half written")
            raise RuntimeError("crash")
    assert storage.read_bytes(path) == b"old"
    assert storage.listdir(root) == ["file.bin"]
    with storage.AtomicWriter(path) as f:
        f.write(b"new")
    assert storage.read_bytes(path) == b"new"
    assert storage.listdir(root) == ["file.bin"]


def test_atomic_writer_whose_close_fails_leaves_no_temporary(tmp_path, monkeypatch):
    # A full disk shows in the flush or fsync of close(): the temporary used to stay behind,
    # and a later abort() did nothing (the writer counted as closed).
    path = tmp_path / "file.bin"
    storage.write_bytes(path, b"old")
    writer = storage.AtomicWriter(path)
    writer.write(b"new")

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    writer.abort()
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]
    assert path.read_bytes() == b"old"


def test_atomic_writer_abort_removes_a_temporary_whose_buffer_cannot_be_flushed(tmp_path):
    writer = storage.AtomicWriter(tmp_path / "file.bin")
    writer.write(b"buffered")
    real = writer._file  # pylint: disable=protected-access

    class FullDisk:
        """The file object as a full disk leaves it: closing flushes the buffer, which fails."""
        def close(self):
            real.close()
            raise OSError(28, "No space left on device")
    writer._file = FullDisk()  # pylint: disable=protected-access
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_replace_tree_on_a_url_publishes_the_commit_file_last(mem, monkeypatch):
    src, dst = storage.join(mem, "export.tmp"), storage.join(mem, "export")
    storage.write_text(storage.join(dst, "model_config.json"), "old")
    storage.write_text(storage.join(dst, "params", "stale"), "old")
    storage.write_text(storage.join(src, "model_config.json"), "new")
    storage.write_text(storage.join(src, "params", "a"), "A")
    storage.write_text(storage.join(src, "params", "z"), "Z")
    fs = fsspec.filesystem("memory")
    copied = []
    original = fs.copy
    monkeypatch.setattr(fs, "copy", lambda a, b, **kw: (copied.append(b), original(a, b, **kw)))
    storage.replace_tree(src, dst, last="model_config.json")
    assert copied[-1].endswith("export/model_config.json") and len(copied) == 3
    assert not storage.exists(src)
    assert storage.listdir(dst) == ["model_config.json", "params"]
    assert storage.listdir(storage.join(dst, "params")) == ["a", "z"]
    assert storage.read_text(storage.join(dst, "model_config.json")) == "new"


def _records(n):
    return [example_codec.FaceRecord(id=f"r{i}", images=[bytes([i]) * (50 + 37 * i)],
                                     global_caption=f"caption {i}", label="happy", label_id=0)
            for i in range(n)]


def test_shards_on_a_url_read_each_record_with_one_ranged_read(tmp_path, mem, cat_calls):
    records = _records(11)
    for root in (str(tmp_path / "local"), storage.join(mem, "ds")):
        with shard_writer.ShardedRecordWriter(root, num_shards=3, classes=["happy"]) as writer:
            for record in records:
                writer.add(record)
    local = ShardedTFRecordSource(shard_writer.shard_paths(tmp_path / "local"))
    remote = ShardedTFRecordSource(shard_writer.shard_paths(storage.join(mem, "ds")))
    assert len(remote) == len(local) == 11
    assert sorted(storage.listdir(storage.join(mem, "ds"))) == sorted(
        storage.listdir(tmp_path / "local"))
    cat_calls.clear()
    for i in range(len(remote)):
        assert remote[i] == local[i]
        path, _, offset = remote.locate(i)
        size = len(tfrecord.frame_record(local[i]))
        # One request per record, for exactly its bytes (never the whole shard).
        assert cat_calls[-1] == (storage.filesystem(path)[1], offset, offset + size)
    assert len(cat_calls) == 11
    # The source pickles into Grain's worker processes as paths and reads the same there.
    copy = pickle.loads(pickle.dumps(remote))
    assert [copy[i] for i in range(11)] == [local[i] for i in range(11)]


def test_flipped_byte_on_a_url_is_named_by_url_and_offset(mem):
    path = storage.join(mem, "one.tfrecord")
    with tfrecord.TFRecordWriter(path) as writer:
        for payload in (b"first", b"second record", b"third"):
            writer.write(payload)
    data = bytearray(storage.read_bytes(path))
    bad = writer.offsets[1] + tfrecord.HEADER_SIZE + 2
    data[bad] ^= 0xFF
    storage.write_bytes(path, bytes(data))
    shard = tfrecord.TFRecordFile(path)  # scanned through the URL: headers are intact
    assert list(shard.offsets) == writer.offsets
    assert shard[0] == b"first" and shard[2] == b"third"
    with pytest.raises(CorruptRecordError) as e:
        shard[1]
    assert e.value.path == path and e.value.offset == writer.offsets[1]
    assert f"{path} at byte offset {writer.offsets[1]}: data checksum mismatch" in str(e.value)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_record_longer_than_its_index_span_is_read_whole(where, tmp_path, mem):
    """A wrong side index (offsets that split a record) costs a second read, not wrong bytes."""
    root = str(tmp_path) if where == "local" else mem
    path = storage.join(root, "one.tfrecord")
    with tfrecord.TFRecordWriter(path) as writer:
        writer.write(b"x" * 100)
    shard = tfrecord.TFRecordFile(path, offsets=[0, 5])
    assert shard[0] == b"x" * 100
    with pytest.raises(CorruptRecordError, match="length checksum"):
        shard[1]


def test_range_reader_pickles_and_clips_at_the_end(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(100)))
    reader = pickle.loads(pickle.dumps(storage.RangeReader(path)))
    assert reader.size == 100
    assert reader.read(98, 10) == bytes([98, 99]) and reader.read(100, 5) == b""


def test_missing_dataset_and_shard_errors_name_the_url(mem):
    with pytest.raises(FileNotFoundError, match=f"{mem}/nothing/metadata.json not found"):
        shard_writer.load_metadata(storage.join(mem, "nothing"))
    with shard_writer.ShardedRecordWriter(storage.join(mem, "ds"), num_shards=2) as writer:
        for record in _records(3):
            writer.add(record)
    storage.remove(storage.join(mem, "ds", "data-00001-of-00002.tfrecord"))
    with pytest.raises(FileNotFoundError, match=f"{mem}/ds/data-00001-of-00002.tfrecord"):
        shard_writer.shard_paths(storage.join(mem, "ds"))


def test_shard_writer_on_a_url_refuses_then_replaces_a_dataset(mem):
    out = storage.join(mem, "ds")
    with shard_writer.ShardedRecordWriter(out, num_shards=3) as writer:
        for record in _records(4):
            writer.add(record)
    with pytest.raises(FileExistsError, match=out):
        shard_writer.ShardedRecordWriter(out, num_shards=2)
    with shard_writer.ShardedRecordWriter(out, num_shards=2, overwrite=True) as writer:
        for record in _records(2):
            writer.add(record)
    assert storage.listdir(out) == sorted([
        "data-00000-of-00002.tfrecord", "data-00000-of-00002.tfrecord.index",
        "data-00001-of-00002.tfrecord", "data-00001-of-00002.tfrecord.index",
        "metadata.json", "rejected.jsonl"])
    assert shard_writer.load_metadata(out)["num_records"] == 2


@pytest.mark.parametrize("name", ["openclip_tiny_gelu", "hf_clip_tiny"])
def test_load_reads_a_peer_checkpoint_from_a_url(fixtures_dir, mem, name):
    """A peer checkpoint folder (and its weights file alone) at a URL loads as the local one."""
    import emocap_jax  # here: loads JAX, which the other tests of this file do not need

    folder = storage.join(mem, name)
    for path in sorted((fixtures_dir / name).iterdir()):
        storage.write_bytes(storage.join(folder, path.name), path.read_bytes())
    local = emocap_jax.load(fixtures_dir / name)
    weights = "model.safetensors" if name.startswith("hf") else "open_clip_model.safetensors"
    for url in (folder, storage.join(folder, weights)):
        remote = emocap_jax.load(url)
        assert remote.config == local.config
        assert remote.description["weights"] == storage.join(folder, weights)
        tokens = np.load(fixtures_dir / name / "inputs.npz")["tokens"][:2]
        np.testing.assert_array_equal(remote.encode_text(tokens), local.encode_text(tokens))
    with pytest.raises(FileNotFoundError, match=f"{mem}/absent"):
        emocap_jax.load(storage.join(mem, "absent"))


@pytest.fixture
def copies(monkeypatch):
    """Every file copied off the in-memory filesystem to a local path (get / get_file)."""
    fs = fsspec.filesystem("memory")
    calls = []
    get, get_file = fs.get, fs.get_file

    def spy_get(rpath, lpath, *args, **kwargs):
        calls.append(rpath)
        return get(rpath, lpath, *args, **kwargs)

    def spy_get_file(rpath, lpath, *args, **kwargs):
        calls.append(rpath)
        return get_file(rpath, lpath, *args, **kwargs)

    monkeypatch.setattr(fs, "get", spy_get)
    monkeypatch.setattr(fs, "get_file", spy_get_file)
    return calls


def test_remote_run_without_export_fails_fast_copying_nothing(mem, copies, tmp_path):
    """A training run on a bucket with no export/ yet (and its checkpoints, its config.json) get
    the message a local one gets, naming the URL, before anything is copied; a Hub folder on a
    bucket copies only the weights file that loads and its config."""
    import re

    import emocap_jax  # here: loads JAX, which the other tests of this file do not need
    from emocap_jax.convert import ConversionError

    run = storage.join(mem, "run")
    storage.write_text(storage.join(run, "config.json"),
                       json.dumps({"model": {}, "train": {"num_steps": 500}}))
    for step in (100, 300):
        storage.write_bytes(storage.join(run, "checkpoints", str(step), "state", "data"), b"x" * 4096)
    no_export = (re.escape(f"{run} is a training workdir with no export/ yet (newest checkpoint: "
                           f"step 300 of 500): a run writes {run}/export") + ".*"
                 + re.escape(f"--workdir={run}`"))
    for path in (run, run + "/", storage.join(run, "checkpoints"),
                 storage.join(run, "checkpoints", "300"), storage.join(run, "config.json")):
        with pytest.raises(ConversionError, match=no_export):
            emocap_jax.load(path)
    with pytest.raises(FileNotFoundError, match=no_export):
        emocap_jax.load(run, source="emocap")
    assert copies == []
    # The same run folder locally: the same message, with the local path.
    local = tmp_path / "run"
    (local / "checkpoints" / "300").mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({"model": {}, "train": {"num_steps": 500}}))
    with pytest.raises(ConversionError, match=re.escape(f"{local} is a training workdir with no "
                                                        f"export/ yet (newest checkpoint: step "
                                                        f"300 of 500)")):
        emocap_jax.load(local)


def test_remote_hub_folder_copies_only_the_weights_that_load(fixtures_dir, mem, copies):
    import emocap_jax  # here: loads JAX, which the other tests of this file do not need

    folder = storage.join(mem, "hub")
    source = fixtures_dir / "openclip_tiny_gelu"
    for name in ("open_clip_model.safetensors", "open_clip_config.json"):
        storage.write_bytes(storage.join(folder, name), (source / name).read_bytes())
    # Files a Hub folder also holds, which the open_clip weights do not need.
    storage.write_bytes(storage.join(folder, "open_clip_pytorch_model.bin"), b"x" * 4096)
    storage.write_bytes(storage.join(folder, "model.safetensors"), b"x" * 4096)
    model = emocap_jax.load(folder)
    assert model.description["weights"] == storage.join(folder, "open_clip_model.safetensors")
    assert sorted(storage.basename(c) for c in copies) == ["open_clip_config.json",
                                                           "open_clip_model.safetensors"]


def test_evaluation_report_on_a_url_matches_the_local_one(tmp_path, mem):
    """write_result / write_report into a URL folder: the same files, with the same content."""
    from emocap_jax.evaluate import report  # here: loads matplotlib, only this test needs it

    result = {"benchmark": "rafdb", "title": "RAF-DB", "group": "static FER",
              "protocol": "zero_shot", "metric": "uar", "value": 0.875, "checkpoint": "ck",
              "data": "d", "devices": 8, "seconds": 1.0, "folds": [{}],
              "report": {"num_examples": 8, "uar": 0.875, "war": 0.875, "macro_f1": 0.87,
                         "classes": ["a", "b"], "per_class_recall": {"a": 0.75, "b": 1.0},
                         "confusion_matrix": [[3, 1], [0, 4]]},
              "predictions": [{"id": "x", "label": "a", "prediction": "b"}]}
    out = storage.join(mem, "eval")
    for folder in (str(tmp_path), out):
        written = report.write_result(folder, result)
        report.write_result(folder, dict(result, checkpoint="other", benchmark="jaffe"))
        summary = report.write_report(folder, "ck")
        assert summary["num_results"] == 1 and len(summary["left_out"]) == 1
    assert written["result"] == storage.join(out, "results", "rafdb__zero_shot.json")
    assert summary["markdown"] == storage.join(out, "report.md")
    for name in ("report.csv", "results/rafdb__zero_shot.json",
                 "predictions/rafdb__zero_shot.csv", "confusion/rafdb__zero_shot.json"):
        assert storage.read_bytes(storage.join(out, name)) == (tmp_path / name).read_bytes(), name
    # report.md says when it was written (to the minute): the rest must agree.
    dated = [storage.read_text(storage.join(out, "report.md")).splitlines(),
             (tmp_path / "report.md").read_text().splitlines()]
    assert len(dated[0]) == len(dated[1])
    assert sum(a != b for a, b in zip(*dated)) <= 1
    assert "| static FER | RAF-DB | zero_shot | UAR | 87.5 | 62.8 | 45.1 |" in dated[0]
    assert storage.read_bytes(storage.join(out, "confusion/rafdb__zero_shot.png"))[:4] == \
        b"\x89PNG"
