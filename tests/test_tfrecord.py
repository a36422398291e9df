"""TFRecord framing, checksums and corruption reports; the Example codec; the shard writer."""
import dataclasses
import importlib.util
import json
import os
import pathlib
import pickle
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from emocap_jax import storage
from emocap_jax.data import example_codec, shard_writer, tfrecord
from emocap_jax.data.example_codec import FaceRecord
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.data.tfrecord import CorruptRecordError


def reference_masked_crc(crc: int) -> int:
    """TensorFlow's masking written out plainly (tensorflow/core/lib/hash/crc32c.h)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)) * 40, b"", os.urandom(100_003), b"z"]


def write_payloads(path, payloads=PAYLOADS):
    with tfrecord.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    return writer.offsets


# ---------------------------------------------------------------- checksums and format


def test_crc32c_matches_published_check_values():
    # CRC-32C check value and RFC 3720 (iSCSI) appendix B.4 vectors.
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
    assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfrecord.crc32c(bytes(range(32))) == 0x46DD794E


def test_masked_crc_matches_reference_formula():
    rng = random.Random(0)
    crcs = [0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFF, 0xE3069283] + [rng.getrandbits(32)
                                                                  for _ in range(1000)]
    for crc in crcs:
        assert tfrecord.mask_crc(crc) == reference_masked_crc(crc)
    for data in [b"", b"123456789", bytes(8), os.urandom(777)]:
        assert tfrecord.masked_crc32c(data) == reference_masked_crc(tfrecord.crc32c(data))
    # A record with an empty payload, spelled out byte by byte.
    length_crc = reference_masked_crc(tfrecord.crc32c(bytes(8)))
    expected = bytes(8) + length_crc.to_bytes(4, "little") + \
        reference_masked_crc(0).to_bytes(4, "little")
    assert tfrecord.frame_record(b"") == expected


def _grain_tfrecord_fixture():
    spec = importlib.util.find_spec("grain")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("grain is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "_src/python/testdata" \
        / "morris_sequence_first_5.tfrecord"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_byte_identical_to_a_file_written_by_tensorflow(tmp_path):
    # Grain ships a small TFRecord file written by TensorFlow: its checksums must verify here,
    # and re-writing its payloads must reproduce it byte for byte.
    tf_file = _grain_tfrecord_fixture()
    records = list(tfrecord.iter_records(tf_file, verify=True))
    assert [payload for _, payload in records] == [b"1", b"1 1", b"2 1", b"1 2 1 1",
                                                   b"1 1 1 2 2 1"]
    ours = tmp_path / "ours.tfrecord"
    write_payloads(ours, [payload for _, payload in records])
    assert ours.read_bytes() == tf_file.read_bytes()


# ---------------------------------------------------------------- round trips


def test_round_trip_iter_and_random_access(tmp_path):
    path = tmp_path / "r.tfrecord"
    offsets = write_payloads(path)
    assert path.is_file()
    assert not list(tmp_path.glob("*.tmp-*"))

    records = list(tfrecord.iter_records(path))
    assert [payload for _, payload in records] == PAYLOADS
    assert [offset for offset, _ in records] == offsets
    expected_size = sum(16 + len(p) for p in PAYLOADS)
    assert path.stat().st_size == expected_size

    source = tfrecord.TFRecordFile(path)
    assert len(source) == len(PAYLOADS)
    assert list(source.offsets) == offsets
    for i in [3, 0, 6, 1, 5, 2, 4]:
        assert source[i] == PAYLOADS[i]
    assert source[-1] == PAYLOADS[-1]
    assert source[np.int64(2)] == PAYLOADS[2]
    with pytest.raises(IndexError, match="out of range"):
        source[len(PAYLOADS)]

    precomputed = tfrecord.TFRecordFile(path, offsets=offsets)
    assert [precomputed[i] for i in range(len(precomputed))] == PAYLOADS

    tfrecord.write_index(path, offsets)
    assert list(tfrecord.read_index(path)) == offsets


def test_random_access_file_survives_pickling(tmp_path):
    path = tmp_path / "r.tfrecord"
    write_payloads(path)
    source = tfrecord.TFRecordFile(path)
    assert source[2] == PAYLOADS[2]  # opens the handle before pickling
    clone = pickle.loads(pickle.dumps(source))
    assert len(clone) == len(source)
    assert [clone[i] for i in range(len(clone))] == PAYLOADS
    source.close()
    assert clone[5] == PAYLOADS[5]


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tfrecord"
    write_payloads(path, [])
    assert path.stat().st_size == 0
    assert list(tfrecord.iter_records(path)) == []
    assert len(tfrecord.TFRecordFile(path)) == 0


# ---------------------------------------------------------------- corruption


def _flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_payload_byte_is_named_by_file_and_offset(tmp_path):
    path = tmp_path / "bad.tfrecord"
    offsets = write_payloads(path)
    bad = 3
    _flip_byte(path, offsets[bad] + 12 + 100)

    with pytest.raises(CorruptRecordError) as info:
        list(tfrecord.iter_records(path))
    assert info.value.offset == offsets[bad]
    assert str(path) in str(info.value)
    assert f"byte offset {offsets[bad]}" in str(info.value)
    assert "data checksum" in str(info.value)

    source = tfrecord.TFRecordFile(path)  # the header scan does not read payloads
    assert source[bad - 1] == PAYLOADS[bad - 1] and source[bad + 1] == PAYLOADS[bad + 1]
    with pytest.raises(CorruptRecordError, match=f"byte offset {offsets[bad]}: data checksum"):
        source[bad]

    # verify=False hands back the damaged bytes: the checks above are what catch it.
    unchecked = tfrecord.TFRecordFile(path, verify=False)[bad]
    assert unchecked != PAYLOADS[bad] and len(unchecked) == len(PAYLOADS[bad])


def test_flipped_length_byte_fails_the_index_scan(tmp_path):
    path = tmp_path / "bad.tfrecord"
    offsets = write_payloads(path)
    _flip_byte(path, offsets[2])  # low byte of record 2's length
    with pytest.raises(CorruptRecordError, match=f"byte offset {offsets[2]}: length checksum"):
        tfrecord.TFRecordFile(path)
    with pytest.raises(CorruptRecordError, match="length checksum") as info:
        list(tfrecord.iter_records(path))
    assert info.value.offset == offsets[2]
    # With a precomputed index, the record read itself still checks its header.
    source = tfrecord.TFRecordFile(path, offsets=offsets)
    assert source[1] == PAYLOADS[1]
    with pytest.raises(CorruptRecordError, match="length checksum"):
        source[2]


@pytest.mark.parametrize("cut", [1, 4, 20])
def test_truncated_file_is_reported(tmp_path, cut):
    path = tmp_path / "cut.tfrecord"
    offsets = write_payloads(path)
    last = offsets[-2]  # the 100 KB record; the final record is dropped entirely
    path.write_bytes(path.read_bytes()[:last + cut])

    seen = []
    with pytest.raises(CorruptRecordError, match="truncated") as info:
        for offset, payload in tfrecord.iter_records(path):
            seen.append(payload)
    assert info.value.offset == last and str(path) in str(info.value)
    assert seen == PAYLOADS[:-2]

    with pytest.raises(CorruptRecordError, match=f"byte offset {last}: truncated"):
        tfrecord.TFRecordFile(path)
    with pytest.raises(CorruptRecordError, match="truncated"):
        tfrecord.TFRecordFile(path, verify=False)
    with pytest.raises(CorruptRecordError, match="truncated"):
        tfrecord.TFRecordFile(path, verify=False, offsets=offsets[:-1])[-1]


@pytest.mark.parametrize("keep, problem", [
    (slice(0, 5), "ends at byte"),             # the last records left out of the index
    (slice(0, 0), "list no record"),           # an empty index of a non-empty file
    (slice(1, None), "starts at byte"),        # the first record left out
    ([0, 1, 1, 2, 3, 4, 5, 6], "not after record 1"),  # a record listed twice
])
def test_an_index_that_does_not_cover_the_file_is_refused(tmp_path, keep, problem):
    """Offsets that leave records of the file out (a stale or cut .index beside a shard) or list
    one twice are refused when the file is opened, naming the index and the file: before, the
    records they left out were silently never read, and a repeated one was read twice."""
    path = tmp_path / "r.tfrecord"
    offsets = write_payloads(path)
    given = offsets[keep] if isinstance(keep, slice) else [offsets[i] for i in keep]
    tfrecord.write_index(path, given)
    with pytest.raises(ValueError, match=problem) as info:
        ShardedTFRecordSource([path])
    assert str(path) + tfrecord.INDEX_SUFFIX in str(info.value)
    with pytest.raises(ValueError, match=problem):
        tfrecord.TFRecordFile(path, offsets=given)


def test_an_index_that_skips_a_record_fails_the_read_of_its_neighbour(tmp_path):
    """An index that leaves out a record in the middle gives its predecessor the span of two
    records; that read fails naming the file and offset, instead of the left-out record
    vanishing."""
    path = tmp_path / "r.tfrecord"
    offsets = write_payloads(path)
    gapped = offsets[:2] + offsets[3:]
    source = tfrecord.TFRecordFile(path, offsets=gapped)
    assert [source[i] for i in (0, 2, 3, 4, 5)] == [PAYLOADS[i] for i in (0, 3, 4, 5, 6)]
    with pytest.raises(CorruptRecordError, match=f"offset {offsets[1]}: .*index") as info:
        source[1]
    assert info.value.path == str(path)


def test_corrupt_record_error_pickles_with_its_fields():
    error = CorruptRecordError("/data/x.tfrecord", 1234, "data checksum mismatch")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.offset, clone.reason) == ("/data/x.tfrecord", 1234,
                                                        "data checksum mismatch")
    assert str(clone) == str(error)


def test_writer_leaves_nothing_on_exception(tmp_path):
    path = tmp_path / "w.tfrecord"
    with pytest.raises(RuntimeError):
        with tfrecord.TFRecordWriter(path) as writer:
            writer.write(b"abc")
            assert not path.exists()  # nothing that looks complete while writing
            assert os.path.exists(writer.tmp_path)
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- Example codec


def full_record(rec_id="clip_ß_001"):
    return FaceRecord(
        id=rec_id,
        images=[b"\xff\xd8frame0", b"", b"\xff\xd8frame2" * 100],
        image_format="jpeg",
        global_caption="Ce visage montre une joie intense 😀.",
        local_captions=["The eyes are narrowed.", "Les coins de la bouche sont relevés.",
                        "眉毛上扬"],
        summary="Happy: AU6 and AU12 are strong.",
        label="happily surprised",
        label_id=3,
        aus={"AU12": 0.75, "AU6": 0.5, "AU26": 1.0},
        group="movie_42",
    )


def test_codec_round_trip_all_fields():
    record = full_record()
    data = example_codec.encode_record(record)
    assert example_codec.decode_record(data) == record
    assert example_codec.encode_record(record) == data  # deterministic bytes


def test_codec_round_trip_defaults_and_float32_intensity():
    record = FaceRecord(id="x", images=[b"img"])
    assert example_codec.decode_record(example_codec.encode_record(record)) == record
    decoded = example_codec.decode_record(example_codec.encode_record(
        FaceRecord(id="y", images=[b"i"], aus={"AU1": 0.1})))
    assert decoded.aus["AU1"] == pytest.approx(0.1, abs=1e-7)  # stored as float32


def test_codec_writes_the_documented_feature_keys():
    example = example_codec.Example.FromString(example_codec.encode_record(full_record()))
    kinds = {key: feature.WhichOneof("kind") for key, feature in example.features.feature.items()}
    assert kinds == {
        "id": "bytes_list", "image": "bytes_list", "image/format": "bytes_list",
        "caption/global": "bytes_list", "caption/local": "bytes_list",
        "caption/summary": "bytes_list", "label": "bytes_list", "label_id": "int64_list",
        "au/names": "bytes_list", "au/intensity": "float_list", "group": "bytes_list",
    }
    for key in kinds:
        assert f"`{key}`" in example_codec.__doc__


def test_codec_reads_examples_missing_optional_features():
    example = example_codec.Example()
    example.features.feature["id"].bytes_list.value.append(b"foreign")
    example.features.feature["image"].bytes_list.value.append(b"png-bytes")
    decoded = example_codec.decode_record(example.SerializeToString())
    assert decoded == FaceRecord(id="foreign", images=[b"png-bytes"])

    no_image = example_codec.Example()
    no_image.features.feature["id"].bytes_list.value.append(b"lonely")
    with pytest.raises(ValueError, match="'lonely'.*no 'image'"):
        example_codec.decode_record(no_image.SerializeToString())


def test_codec_rejects_bad_fields_naming_the_record():
    with pytest.raises(TypeError, match="'r1'.*summary must be str"):
        example_codec.encode_record(FaceRecord(id="r1", images=[b"x"], summary=None))
    with pytest.raises(ValueError, match="'r2'.*at least one image"):
        example_codec.encode_record(FaceRecord(id="r2", images=[]))
    with pytest.raises(TypeError, match="'r3'.*images\\[0\\]"):
        example_codec.encode_record(FaceRecord(id="r3", images=["not bytes"]))
    with pytest.raises(ValueError, match="'r4'.*not valid Unicode"):
        example_codec.encode_record(FaceRecord(id="r4", images=[b"x"], label="\ud800"))


def test_codec_import_is_light_and_shares_the_tfds_proto():
    code = (
        "import sys\n"
        "import emocap_jax.data.example_codec as codec\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert 'tensorflow_datasets' not in sys.modules, 'pulled in all of tfds'\n"
        "from tensorflow_datasets.proto import tf_example_pb2\n"
        "assert tf_example_pb2.Example is codec.Example\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    repo = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- shard writer


def make_records(n):
    return [FaceRecord(id=f"r{i:02d}", images=[bytes([i]) * (i + 1)], label=["a", "b"][i % 2],
                       label_id=i % 2, global_caption=f"global {i}", summary=f"summary {i}")
            for i in range(n)]


def read_dataset(dataset_dir):
    return [[example_codec.decode_record(payload) for _, payload in tfrecord.iter_records(p)]
            for p in shard_writer.shard_paths(dataset_dir)]


def test_shard_writer_round_robin_metadata_and_rejections(tmp_path):
    out = tmp_path / "ds"
    records = make_records(10)
    with shard_writer.ShardedRecordWriter(out, 4, metadata={"source": "unit test"},
                                          classes=["a", "b"]) as writer:
        for record in records:
            writer.add(record)
        writer.reject(7, "bad_id", "bad_image: truncated")
        writer.reject(9, None, "malformed_json: Expecting value")

    shards = read_dataset(out)
    assert [[r.id for r in shard] for shard in shards] == [
        ["r00", "r04", "r08"], ["r01", "r05", "r09"], ["r02", "r06"], ["r03", "r07"]]
    assert shards[1][1] == records[5]

    metadata = shard_writer.load_metadata(out)
    assert metadata["schema_version"] == example_codec.SCHEMA_VERSION
    assert metadata["num_records"] == 10 and metadata["num_rejected"] == 2
    assert metadata["shards"] == [
        {"file": f"data-{i:05d}-of-00004.tfrecord", "num_records": n}
        for i, n in enumerate([3, 3, 2, 2])]
    assert metadata["classes"] == ["a", "b"]
    assert metadata["label_counts"] == {"a": 5, "b": 5}
    assert metadata["source"] == "unit test"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"line": 7, "id": "bad_id", "reason": "bad_image: truncated"},
                        {"line": 9, "id": None, "reason": "malformed_json: Expecting value"}]
    for path in shard_writer.shard_paths(out):  # sidecar indexes agree with a fresh scan
        np.testing.assert_array_equal(tfrecord.read_index(path), tfrecord.build_index(path))
    assert not list(out.glob("*.tmp-*"))


def test_shard_writer_is_deterministic(tmp_path):
    for name in ["one", "two"]:
        with shard_writer.ShardedRecordWriter(tmp_path / name, 3) as writer:
            for record in make_records(7):
                writer.add(record)
    for a, b in zip(shard_writer.shard_paths(tmp_path / "one"),
                    shard_writer.shard_paths(tmp_path / "two")):
        assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()


def test_shard_writer_crash_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with shard_writer.ShardedRecordWriter(out, 3) as writer:
            writer.add(make_records(1)[0])
            raise RuntimeError("conversion crashed")
    assert list(out.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a finished dataset"):
        shard_writer.load_metadata(out)


def _converted_output_folder(root):
    """What `data_prep.benchmarks --val-fraction` writes: OUT/train and OUT/val, one dataset each."""
    for split in ("train", "val"):
        with shard_writer.ShardedRecordWriter(root / split, 1) as writer:
            writer.add(make_records(1)[0])
    return root


def test_load_metadata_of_a_converters_output_folder_names_the_datasets_in_it(tmp_path):
    # `--config.data.train_dir=data/faces` for data/faces/train: the folder is no dataset, but the
    # one the user meant is in it; the error names it instead of suggesting a conversion.
    out = _converted_output_folder(tmp_path / "faces")
    with pytest.raises(FileNotFoundError) as error:
        shard_writer.load_metadata(out)
    message = str(error.value)
    assert f"{out} is not a dataset directory" in message
    assert "holds the datasets train, val" in message
    assert str(out / "train") in message
    assert shard_writer.datasets_below(out) == ["train", "val"]
    assert shard_writer.datasets_below(out / "train") == []


def test_load_metadata_of_a_file_says_it_is_a_file(tmp_path):
    out = _converted_output_folder(tmp_path / "faces")
    metadata = out / "val" / shard_writer.METADATA_FILE
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(metadata))} is a file, not a "
                                                "dataset directory"):
        shard_writer.load_metadata(metadata)


def _no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["index", "fsync", "metadata"])
def test_shard_writer_whose_close_fails_leaves_no_temporaries(tmp_path, monkeypatch, failing):
    # close() raising in __exit__ used to leave the unfinished shards' temporaries behind.
    out = tmp_path / "ds"
    calls = []
    if failing == "index":  # the second shard's index
        real_index = tfrecord.write_index
        monkeypatch.setattr(tfrecord, "write_index", lambda path, offsets: (
            calls.append(path), _no_space() if len(calls) == 2 else real_index(path, offsets))[1])
    elif failing == "fsync":  # the third shard's data
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (
            calls.append(fd), _no_space() if len(calls) == 5 else real_fsync(fd))[1])
    else:
        monkeypatch.setattr(shard_writer, "_write_text_atomically", lambda path, text: (
            _no_space() if path.endswith(shard_writer.METADATA_FILE) else
            storage.write_text(path, text)))
    with pytest.raises(OSError, match="No space left on device"):
        with shard_writer.ShardedRecordWriter(out, 4) as writer:
            for record in make_records(8):
                writer.add(record)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    with pytest.raises(FileNotFoundError, match="not a finished dataset"):
        shard_writer.load_metadata(out)


def test_shard_writer_cleanup_failure_does_not_hide_the_close_error(tmp_path, monkeypatch):
    real_abort = tfrecord.TFRecordWriter.abort

    def abort_then_fail(self):
        real_abort(self)
        raise PermissionError(13, "Permission denied", self.tmp_path)
    monkeypatch.setattr(tfrecord, "write_index", _no_space)
    monkeypatch.setattr(tfrecord.TFRecordWriter, "abort", abort_then_fail)
    with pytest.raises(OSError, match="No space left on device") as raised:
        with shard_writer.ShardedRecordWriter(tmp_path / "ds", 3) as writer:
            writer.add(make_records(1)[0])
    # Every shard writer's abort is still tried after one fails, and each failure is a note on
    # the error that stopped close(), which stays the one raised.
    notes = raised.value.__notes__
    assert len(notes) == 3 and all("Permission denied" in n for n in notes)


def test_shard_paths_names_missing_shards(tmp_path):
    out = tmp_path / "ds"
    with shard_writer.ShardedRecordWriter(out, 3) as writer:
        writer.add(make_records(1)[0])
    (out / "data-00001-of-00003.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 shards.*data-00001-of-00003.tfrecord"):
        shard_writer.shard_paths(out)


@pytest.mark.parametrize("text, problem", [
    ('{"schema_version": 1, "shards": [', "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"schema_version": 1}', "no 'shards' list"),
    ('{"schema_version": 1, "shards": [{"num_records": 1}]}', "shards[0] has no 'file'"),
    ('{"schema_version": 1, "shards": ["data.tfrecord"]}', "shards[0] has no 'file'"),
])
def test_a_damaged_metadata_file_is_named(tmp_path, text, problem):
    """A hand-edited or damaged metadata.json is a ValueError naming the file and what is wrong
    with it; before, a JSONDecodeError, KeyError or AttributeError named neither."""
    with shard_writer.ShardedRecordWriter(tmp_path, 2) as writer:
        writer.add(make_records(1)[0])
    (tmp_path / "metadata.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        shard_writer.shard_paths(tmp_path)
    assert str(tmp_path / "metadata.json") in str(info.value)


def test_shard_writer_refuses_or_replaces_an_existing_dataset(tmp_path):
    out = tmp_path / "ds"
    with shard_writer.ShardedRecordWriter(out, 4) as writer:
        for record in make_records(5):
            writer.add(record)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        shard_writer.ShardedRecordWriter(out, 2)
    with shard_writer.ShardedRecordWriter(out, 2, overwrite=True) as writer:
        writer.add(make_records(1)[0])
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    assert shard_writer.load_metadata(out)["num_records"] == 1


def test_shard_writer_checks_labels_and_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        shard_writer.ShardedRecordWriter(tmp_path / "a", 2, metadata={"num_records": 3})
    writer = shard_writer.ShardedRecordWriter(tmp_path / "b", 2, classes=["a", "b"])
    with pytest.raises(ValueError, match="'bad'.*label 'b' does not match classes\\[0\\]"):
        writer.add(FaceRecord(id="bad", images=[b"x"], label="b", label_id=0))
    with pytest.raises(ValueError, match="'far'.*label_id 5 is out of range"):
        writer.add(FaceRecord(id="far", images=[b"x"], label_id=5))
    writer.abort()


# ---------------------------------------------------------------- stored token ids


def test_codec_round_trips_token_ids_and_documents_their_keys():
    from emocap_jax.tokenizers import get_tokenizer

    record = example_codec.with_token_ids(
        dataclasses.replace(full_record(), local_captions=["The eyes are narrowed.", "", "眉毛上扬"]),
        get_tokenizer("clip"))
    assert record.has_tokens and record.local_tokens[1] == []
    data = example_codec.encode_record(record)
    assert example_codec.decode_record(data) == record
    example = example_codec.Example.FromString(data)
    for key in example_codec.TOKEN_KEYS:
        assert example.features.feature[key].WhichOneof("kind") == "int64_list"
        assert f"`{key}`" in example_codec.__doc__
    assert not example_codec.decode_record(example_codec.encode_record(full_record())).has_tokens


def test_codec_rejects_inconsistent_token_ids_naming_the_record():
    base = FaceRecord(id="t1", images=[b"x"], local_captions=["a", "b"])
    with pytest.raises(ValueError, match="'t1'.*together"):
        example_codec.encode_record(dataclasses.replace(base, global_tokens=[1]))
    with pytest.raises(ValueError, match="'t1'.*1 local_tokens rows for 2"):
        example_codec.encode_record(dataclasses.replace(
            base, global_tokens=[1], summary_tokens=[], local_tokens=[[2]]))
    with pytest.raises(ValueError, match="'t1'.*non-negative ints"):
        example_codec.encode_record(dataclasses.replace(
            base, global_tokens=[-1], summary_tokens=[], local_tokens=[[2], []]))
    good = example_codec.Example.FromString(example_codec.encode_record(dataclasses.replace(
        base, global_tokens=[1], summary_tokens=[], local_tokens=[[2, 3], [4]])))
    lengths = good.features.feature["tokens/local/lengths"].int64_list.value
    lengths[0] = 1  # 1 + 1 ids described, 3 stored
    with pytest.raises(ValueError, match="'t1'.*do not split the 3 tokens/local ids"):
        example_codec.decode_record(good.SerializeToString())
    del good.features.feature["tokens/summary"]
    with pytest.raises(ValueError, match="'t1'.*tokens/summary"):
        example_codec.decode_record(good.SerializeToString())


def test_shard_writer_stores_ids_with_the_tokenizer_identity(tmp_path):
    from emocap_jax.tokenizers import get_tokenizer

    tok = get_tokenizer("clip")
    records = make_records(6)
    with shard_writer.ShardedRecordWriter(tmp_path / "tok", 2, tokenizer=tok) as writer:
        for record in records:
            writer.add(record)
        metadata = writer.close()
    assert metadata["tokenizer"] == tok.identity()
    assert shard_writer.load_metadata(tmp_path / "tok")["tokenizer"] == tok.identity()
    written = [r for shard in read_dataset(tmp_path / "tok") for r in shard]
    assert {r.id: r for r in written} == {r.id: example_codec.with_token_ids(r, tok)
                                          for r in records}
    # Without a tokenizer, ids a record carries are dropped (no metadata says whose they are).
    with shard_writer.ShardedRecordWriter(tmp_path / "plain", 2) as writer:
        for record in written:
            writer.add(record)
        metadata = writer.close()
    assert "tokenizer" not in metadata
    assert not any(r.has_tokens for shard in read_dataset(tmp_path / "plain") for r in shard)
    with pytest.raises(ValueError, match="reserved"):
        shard_writer.ShardedRecordWriter(tmp_path / "c", 2, metadata={"tokenizer": {}})
