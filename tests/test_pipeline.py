"""The Grain input pipelines: epoch coverage, exact resume, corruption handling, local-sentence
slots, padded evaluation and global batches, on a small dataset made by emocap_jax.data.manifest."""

import dataclasses
import io
import math
import pickle
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from emocap_jax.data.manifest import convert_manifest
from emocap_jax.data import augment, example_codec, pipeline, tfrecord
from emocap_jax.data.example_codec import FaceRecord, decode_record
from emocap_jax.data.shard_writer import ShardedRecordWriter, shard_paths
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.data.tfrecord import CorruptRecordError
from emocap_jax.tokenizers import SentencePieceTokenizer, get_tokenizer

NUM_RECORDS = 48
NUM_SHARDS = 4
IMAGE_SIZE = 32
CONTEXT = 16
R, K = 8, 4


def _local_sentences(i):
    return [f"region {j} of face {i}" for j in range(i % 11)]  # 0..10: below, at and above R


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    records = {}
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(NUM_RECORDS):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # not square: crops differ
            Image.fromarray(pixels).save(root / "img" / f"{i}.jpg", quality=90)
            entry = {"id": f"face{i:03d}", "image": f"img/{i}.jpg",
                     "global": f"face number {i} looks happy", "local": _local_sentences(i),
                     "summary": f"summary of face {i}", "label": "happy"}
            records[entry["id"]] = entry
            f.write(json.dumps(entry) + "\n")
    out = root / "ds"
    convert_manifest(root / "manifest.jsonl", root, out, num_shards=NUM_SHARDS, workers=1,
                     progress=False)
    return {"dir": str(out), "records": records}


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("clip", CONTEXT)


@pytest.fixture(scope="module")
def id_of_tokens(dataset, tok):
    """Global-sentence token row -> record id (the training batches carry no ids)."""
    ids = list(dataset["records"])
    rows = tok([dataset["records"][i]["global"] for i in ids], context_length=CONTEXT)
    table = {row.tobytes(): rec_id for row, rec_id in zip(rows, ids)}
    assert len(table) == NUM_RECORDS
    return lambda row: table[np.asarray(row, np.int32).tobytes()]


def _config(data_dir, **overrides):
    values = dict(data_dir=data_dir, image_size=IMAGE_SIZE, context_length=CONTEXT,
                  max_local_sentences=R, local_sentences_per_step=K, read_threads=2)
    values.update(overrides)
    return pipeline.TrainPipelineConfig(**values)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(expected, actual):
    assert len(expected) == len(actual)
    for step, (a, b) in enumerate(zip(expected, actual)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {step} field {key}")


def _close(iterator):
    if hasattr(iterator, "close"):
        iterator.close()


def test_train_batches_have_the_documented_fields(dataset, tok):
    batch = next(pipeline.make_train_iterator(_config(dataset["dir"]), tok, 8, 0, 1))
    expected = {"image": ((8, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                "global_tokens": ((8, CONTEXT), np.int32),
                "summary_tokens": ((8, CONTEXT), np.int32),
                "local_tokens": ((8, K, CONTEXT), np.int32),
                "local_mask": ((8, K), np.bool_),
                "label_id": ((8,), np.int32),
                "valid": ((8,), np.bool_)}
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["image"].std() > 10  # real pixels, not zeros
    assert batch["valid"].all()


def test_each_epoch_yields_every_record_once(dataset, tok, id_of_tokens):
    it = pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=2), tok, 8, 0, 1)
    ids = [id_of_tokens(row) for batch in it for row in batch["global_tokens"]]
    assert len(ids) == 2 * NUM_RECORDS
    first, second = ids[:NUM_RECORDS], ids[NUM_RECORDS:]
    assert sorted(first) == sorted(second) == sorted(dataset["records"])
    assert first != second  # each epoch has its own permutation


def test_processes_split_an_epoch_into_disjoint_shares(dataset, tok, id_of_tokens):
    shares = []
    for process_index in range(2):
        it = pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=1), tok, 8,
                                          process_index, 2)
        batches = list(it)
        assert len(batches) == NUM_RECORDS // 8 and batches[0]["image"].shape[0] == 4
        shares.append({id_of_tokens(row) for b in batches for row in b["global_tokens"]})
    assert len(shares[0]) == len(shares[1]) == NUM_RECORDS // 2
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(dataset["records"])


def test_records_left_out_of_the_last_epoch_are_reported(dataset, tok, caplog):
    """With num_epochs, steps are whole global batches: 48 records in batches of 10 make 4
    steps and 8 records of the epoch are never read. That is said once, with the count, when
    the pipeline is made (not left to be discovered in the evaluation numbers)."""
    with caplog.at_level("WARNING", logger="emocap_jax.data.pipeline"):
        it = pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=1), tok, 10, 0, 1)
    rows = sum(b["image"].shape[0] for b in it)
    assert rows == 40
    (warning,) = [r for r in caplog.records if r.name == "emocap_jax.data.pipeline"]
    assert "the last 8 of the 48 records" in warning.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="emocap_jax.data.pipeline"):
        pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=1), tok, 8, 0, 1)
        pipeline.make_train_iterator(_config(dataset["dir"]), tok, 10, 0, 1)  # repeats forever
    assert not [r for r in caplog.records if r.name == "emocap_jax.data.pipeline"]


def test_restored_state_replays_the_same_batches(dataset, tok):
    config = _config(dataset["dir"])
    it = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 5)  # crosses the epoch boundary (6 batches per epoch)
    fresh = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    fresh.set_state(state)
    _assert_batches_equal(expected, _take(fresh, 5))
    # A different seed gives different augmentations and order: the test above can fail.
    other = pipeline.make_train_iterator(config, tok, 8, 0, 1, seed=1)
    other.set_state(state)
    assert not np.array_equal(next(other)["image"], expected[0]["image"])


def test_iterator_state_round_trips_through_orbax(dataset, tok, tmp_path):
    import orbax.checkpoint as ocp

    config = _config(dataset["dir"])
    item = pipeline.ITERATOR_CHECKPOINT_ITEM
    it = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    _take(it, 2)
    manager = ocp.CheckpointManager(
        tmp_path / "ckpt", item_handlers={item: pipeline.iterator_checkpoint_handler()})
    manager.save(2, args=ocp.args.Composite(**{item: pipeline.iterator_save_args(it)}))
    manager.wait_until_finished()
    expected = _take(it, 3)

    fresh = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    restored = ocp.CheckpointManager(
        tmp_path / "ckpt", item_handlers={item: pipeline.iterator_checkpoint_handler()})
    assert restored.latest_step() == 2
    result = restored.restore(2, args=ocp.args.Composite(
        **{item: pipeline.iterator_restore_args(fresh)}))
    _assert_batches_equal(expected, _take(result[item], 3))


def test_worker_processes_cover_the_epoch_and_resume_exactly(dataset, tok, id_of_tokens):
    config = _config(dataset["dir"], num_epochs=1, worker_count=2)
    it = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    try:
        head = _take(it, 2)
        state = it.get_state()
        tail = list(it)
    finally:
        _close(it)
    ids = [id_of_tokens(row) for b in head + tail for row in b["global_tokens"]]
    assert sorted(ids) == sorted(dataset["records"])

    fresh = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    try:
        fresh.set_state(state)
        _assert_batches_equal(tail, list(fresh))
    finally:
        _close(fresh)


def test_batches_do_not_depend_on_the_worker_count(dataset, tok):
    """Each step's batch is made whole from its stream positions: 0, 1 or 2 worker processes
    give the same batches (so do runs that change worker_count between restarts)."""
    runs = []
    for workers in (0, 1, 2):
        it = pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=1,
                                                  worker_count=workers), tok, 8, 0, 1)
        try:
            runs.append(list(it))
        finally:
            _close(it)
    assert len(runs[0]) == NUM_RECORDS // 8
    _assert_batches_equal(runs[0], runs[1])
    _assert_batches_equal(runs[0], runs[2])


def test_stream_order_is_grains_shuffle_and_repeat(dataset):
    """The stream reads the records in the order of Grain's shuffle + repeat (the reference),
    a new permutation each epoch, and ends after num_epochs."""
    import grain

    source = ShardedTFRecordSource(shard_paths(dataset["dir"]))
    reference = grain.MapDataset.source(source).shuffle(seed=123).repeat(3)
    stream = pipeline._ShuffledStream(source, 123, 3)
    assert len(stream) == len(reference) == 3 * NUM_RECORDS
    assert [stream[i] for i in range(len(stream))] == [reference[i] for i in range(len(stream))]
    assert [stream[i] for i in range(NUM_RECORDS)] != \
        [stream[i] for i in range(NUM_RECORDS, 2 * NUM_RECORDS)]
    with pytest.raises(IndexError, match="out of range"):
        stream[3 * NUM_RECORDS]


def test_record_generator_is_grains_random_map_generator():
    """A record's augmentation is drawn from the generator Grain's random_map gives the same
    stream position (Grain's own RngPool is the reference), so the whole-batch maker draws what
    Grain's per-record map drew."""
    from grain._src.python.dataset.transformations.map import RngPool

    seed = pipeline._derived_seed(7, 1)
    at = pipeline._RecordRng(seed).generators()
    pool = RngPool(seed)
    for position in (0, 1, 5, 1234567, 2**40 + 3):
        reference = pool.acquire_rng(position)
        ours = at(position)
        np.testing.assert_array_equal(ours.random(6), reference.random(6))
        np.testing.assert_array_equal(ours.integers(0, 1000, 6), reference.integers(0, 1000, 6))
        pool.release_rng(reference)


def test_local_sentence_slots(dataset, tok, id_of_tokens):
    it = pipeline.make_train_iterator(_config(dataset["dir"], num_epochs=3), tok, 8, 0, 1)
    sampled_slots = {rec_id: set() for rec_id in dataset["records"]}
    for batch in it:
        for row in range(batch["image"].shape[0]):
            rec_id = id_of_tokens(batch["global_tokens"][row])
            sentences = dataset["records"][rec_id]["local"][:R]
            reference = [t.tobytes() for t in tok(sentences, context_length=CONTEXT)] \
                if sentences else []
            mask = batch["local_mask"][row]
            count = min(K, len(sentences))
            np.testing.assert_array_equal(mask, np.arange(K) < count, err_msg=rec_id)
            tokens = batch["local_tokens"][row]
            slots = [reference.index(t.tobytes()) for t in tokens[:count]]  # ValueError: foreign
            assert len(set(slots)) == count, f"{rec_id}: sampled with replacement {slots}"
            sampled_slots[rec_id].update(slots)
            assert not tokens[count:].any(), f"{rec_id}: padded slots are not zero"
            np.testing.assert_array_equal(
                batch["summary_tokens"][row],
                tok([dataset["records"][rec_id]["summary"]], context_length=CONTEXT)[0])
    # Records with more than K valid sentences get different subsets on different epochs.
    for rec_id, slots in sampled_slots.items():
        if len(dataset["records"][rec_id]["local"]) >= R:
            assert len(slots) > K, f"{rec_id} always got the same sentences {sorted(slots)}"


@pytest.fixture(scope="module")
def corrupt(dataset, tmp_path_factory):
    """A copy of the dataset with one payload byte flipped in record 5 of shard 2."""
    out = tmp_path_factory.mktemp("corrupt") / "ds"
    shutil.copytree(dataset["dir"], out)
    path = shard_paths(out)[2]
    offset = int(tfrecord.read_index(path)[5])
    with open(path, "r+b") as f:
        f.seek(offset + tfrecord.HEADER_SIZE + 7)
        byte = f.read(1)
        f.seek(offset + tfrecord.HEADER_SIZE + 7)
        f.write(bytes([byte[0] ^ 0x40]))
    return {"dir": str(out), "path": path, "offset": offset}


def test_corrupt_record_raises_naming_file_and_offset(corrupt, tok):
    it = pipeline.make_train_iterator(_config(corrupt["dir"], num_epochs=1), tok, 8, 0, 1)
    with pytest.raises(CorruptRecordError) as info:
        list(it)
    assert corrupt["path"] in str(info.value)
    assert f"offset {corrupt['offset']}" in str(info.value)
    assert "data checksum" in str(info.value)


def test_corrupt_record_error_crosses_worker_processes(corrupt, tok):
    it = pipeline.make_train_iterator(
        _config(corrupt["dir"], num_epochs=1, worker_count=1), tok, 8, 0, 1)
    try:
        with pytest.raises(CorruptRecordError, match=f"offset {corrupt['offset']}") as info:
            list(it)
        assert info.value.path == corrupt["path"]
    finally:
        _close(it)


def test_skipping_corrupt_records_counts_them(corrupt, tok, id_of_tokens):
    ds, source = pipeline.make_train_dataset(
        _config(corrupt["dir"], num_epochs=1, on_corrupt="skip"), tok, 1, 0, 1)
    ids = [id_of_tokens(b["global_tokens"][0]) for b in ds if b["valid"][0]]
    assert len(ids) == len(set(ids)) == NUM_RECORDS - 1
    assert source.num_skipped == 1
    assert source.skipped[0][:2] == (corrupt["path"], corrupt["offset"])


@pytest.mark.parametrize("worker_count", [0, 1])
def test_a_skipped_record_keeps_its_batch_full(corrupt, tok, id_of_tokens, worker_count):
    """Batches of 8: the corrupt record's row is blank and marked invalid (no copy of another
    record, which the contrastive losses would take for a second class of it), every other
    record comes once, and the epoch keeps its number of steps (what keeps several processes in
    step). The same through the worker processes' shared-memory blocks."""
    ds, source = pipeline.make_train_dataset(
        _config(corrupt["dir"], num_epochs=1, on_corrupt="skip", worker_count=worker_count),
        tok, 8, 0, 1)
    it = iter(ds)
    try:
        batches = list(it)
    finally:
        _close(it)
    assert len(batches) == NUM_RECORDS // 8
    assert all(b["image"].shape[0] == 8 and b["valid"].shape == (8,) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.dtype == bool and valid.sum() == NUM_RECORDS - 1
    ids = [id_of_tokens(row) for b in batches for row, ok in zip(b["global_tokens"], b["valid"])
           if ok]
    assert len(set(ids)) == len(ids) == NUM_RECORDS - 1
    (blank,) = [(b, i) for b in batches for i in np.flatnonzero(~b["valid"])]
    batch, row = blank
    assert not batch["image"][row].any() and not batch["global_tokens"][row].any()
    assert not batch["local_mask"][row].any() and batch["label_id"][row] == -1
    if worker_count == 0:  # the count lives in the process that read the record (see source)
        assert source.num_skipped == 1


def test_a_batch_with_no_readable_record_keeps_every_process_in_step(corrupt, tok):
    """Two processes of one row each: the process whose row is the corrupt record still yields
    every step (its batch masked out), so both run the same number of steps; ending one step
    early left the other waiting in a collective for good."""
    config = _config(corrupt["dir"], num_epochs=1, on_corrupt="skip")
    counts, masked = [], []
    for process in range(2):
        batches = list(pipeline.make_train_dataset(config, tok, 2, process, 2)[0])
        counts.append(len(batches))
        masked += [b for b in batches if not b["valid"].any()]
    assert counts == [NUM_RECORDS // 2] * 2
    (empty,) = masked
    assert empty["valid"].dtype == bool and empty["valid"].shape == (1,)


_UNDECODABLE = {
    "not_an_example": lambda payload: b"\xff\xff not a protocol buffer",
    "unreadable_image": lambda payload: example_codec.encode_record(
        dataclasses.replace(decode_record(payload), images=[b"not an image"])),
}


@pytest.fixture(scope="module", params=sorted(_UNDECODABLE))
def undecodable(request, dataset, tmp_path_factory):
    """A copy of the dataset where record 3 of shard 1 has sound checksums but contents that do
    not decode: not a tf.train.Example at all, or image bytes no decoder reads."""
    out = tmp_path_factory.mktemp("undecodable") / "ds"
    shutil.copytree(dataset["dir"], out)
    path = shard_paths(out)[1]
    payloads = [p for _, p in tfrecord.iter_records(path)]
    payloads[3] = _UNDECODABLE[request.param](payloads[3])
    with tfrecord.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    tfrecord.write_index(path, writer.offsets)
    return {"dir": str(out), "kind": request.param,
            "where": f"{path} (record 3, offset {writer.offsets[3]})"}


def test_a_record_that_cannot_be_decoded_is_named_by_file_and_offset(undecodable, tok):
    """A record with sound checksums that does not decode fails training with a ValueError
    naming its shard, index and byte offset, as a corrupt one does (for one kind also through a
    worker process); before, an unparsable one raised protobuf's DecodeError, which named
    nothing."""
    for worker_count in [0, 1] if undecodable["kind"] == "not_an_example" else [0]:
        it = pipeline.make_train_iterator(
            _config(undecodable["dir"], num_epochs=1, worker_count=worker_count), tok, 8, 0, 1)
        try:
            with pytest.raises(ValueError) as info:
                list(it)
        finally:
            _close(it)
        assert undecodable["where"] in str(info.value), worker_count


def test_eval_names_a_record_that_cannot_be_decoded(undecodable, tok):
    with pytest.raises(ValueError) as info:
        list(pipeline.make_eval_iterator(undecodable["dir"], tok, 4, IMAGE_SIZE, 0, 1))
    assert undecodable["where"] in str(info.value)
    if undecodable["kind"] == "not_an_example":
        assert "not a serialised tf.train.Example" in str(info.value)


def test_source_maps_global_indices_across_shards(dataset, tmp_path):
    source = ShardedTFRecordSource(shard_paths(dataset["dir"]))
    assert len(source) == NUM_RECORDS and source.shard_sizes == [12] * NUM_SHARDS
    path, local, offset = source.locate(12 * 2 + 5)
    assert (path, local) == (shard_paths(dataset["dir"])[2], 5)
    assert offset == tfrecord.read_index(path)[5]
    assert source[29] == tfrecord.TFRecordFile(path)[5]
    with pytest.raises(IndexError, match="out of range"):
        source[NUM_RECORDS]
    # Without the .index side files the shards are scanned: same records, same order.
    copy = tmp_path / "no_index"
    shutil.copytree(dataset["dir"], copy, ignore=shutil.ignore_patterns("*.index"))
    scanned = ShardedTFRecordSource(shard_paths(copy))
    assert [scanned[i] for i in range(NUM_RECORDS)] == [source[i] for i in range(NUM_RECORDS)]


def test_eval_iterator_pads_and_covers_every_record_once(dataset, tok):
    batch_size = 5  # 48 records: 9 full batches and one with 2 padded rows

    def run(process_index=0, process_count=1):
        it = pipeline.make_eval_iterator(dataset["dir"], tok, batch_size, IMAGE_SIZE,
                                         process_index, process_count)
        return list(it)

    batches = run()
    assert len(batches) == 10
    ids = [i for b in batches for i, v in zip(b["id"], b["valid"]) if v]
    in_order = sorted(dataset["records"])  # manifest order; shards were filled round robin
    assert ids == [in_order[j] for shard in range(NUM_SHARDS)
                   for j in range(shard, NUM_RECORDS, NUM_SHARDS)]
    last = batches[-1]
    np.testing.assert_array_equal(last["valid"], [True, True, True, False, False])
    assert not last["image"][3:].any() and (last["label_id"][3:] == -1).all()
    assert list(last["id"][3:]) == ["", ""]
    assert last["image"].dtype == np.uint8
    assert last["image"].shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3)
    rec = dataset["records"][ids[7]]
    row = batches[1]
    np.testing.assert_array_equal(row["global_tokens"][2], tok([rec["global"]], CONTEXT)[0])
    assert row["local_mask"][2].sum() == min(R, len(rec["local"]))
    assert row["local_tokens"].shape == (5, R, CONTEXT)
    _assert_batches_equal(batches, run())  # deterministic

    per_process = [run(p, 2) for p in range(2)]
    assert len(per_process[0]) == len(per_process[1])  # same step count on every process
    ids2 = [i for run_batches in per_process for b in run_batches
            for i, v in zip(b["id"], b["valid"]) if v]
    assert ids2 == ids


def test_eval_batches_do_not_depend_on_the_worker_count(dataset, tok):
    """`make_eval_iterator(worker_count=W)`: worker processes make the same batches, in the same
    order, as the calling process alone."""
    runs = []
    for workers in (0, 2):
        it = pipeline.make_eval_iterator(dataset["dir"], tok, 5, IMAGE_SIZE, 0, 1,
                                         worker_count=workers)
        try:
            runs.append(list(it))
        finally:
            _close(it)
    assert len(runs[0]) == 10
    _assert_batches_equal(runs[0], runs[1])


def test_eval_batches_carry_each_records_group_and_image_digest(tmp_path):
    """`group` is the record's subject ("" when it has none) and `image_digest` the 16-byte
    BLAKE2b of its encoded image bytes: equal exactly for byte copies (rec1 re-uses rec0's
    file), different for the same pixels encoded otherwise; padding rows carry "" and zeros."""
    import hashlib

    def png(value, **save):
        out = io.BytesIO()
        Image.fromarray(np.full((20, 24, 3), value, np.uint8)).save(out, format="PNG", **save)
        return out.getvalue()

    files = [png(10), png(10), png(10, compress_level=0), png(90)]
    groups = ["s1", "s2", "s1", ""]
    with ShardedRecordWriter(tmp_path / "ds", num_shards=1) as writer:
        for n, (data, group) in enumerate(zip(files, groups)):
            writer.add(FaceRecord(id=f"rec{n}", images=[data], image_format="png", label_id=0,
                                  group=group))
    batches = list(pipeline.make_eval_iterator(str(tmp_path / "ds"), None, 3, 16, 0, 1))
    group = [g for b in batches for g in b["group"]]
    digest = np.concatenate([b["image_digest"] for b in batches])
    assert group == groups + ["", ""]
    assert digest.dtype == np.uint8 and digest.shape == (6, 16)
    for row, data in enumerate(files):
        assert digest[row].tobytes() == hashlib.blake2b(data, digest_size=16).digest()
    assert digest[0].tobytes() == digest[1].tobytes() != digest[2].tobytes()
    assert not digest[4:].any()


def test_a_clips_digest_depends_on_its_frames_and_their_boundaries():
    one = example_codec.image_digest([b"ab", b"c"])
    assert len(one) == 16 and one == example_codec.image_digest([b"ab", b"c"])
    assert one != example_codec.image_digest([b"a", b"bc"])
    assert one != example_codec.image_digest([b"c", b"ab"])
    assert one != example_codec.image_digest([b"abc"])


def test_eval_blocks_give_every_process_the_same_batch_count():
    blocks, num_batches = pipeline.eval_blocks(47, 5, 2)
    assert blocks == [(0, 23), (23, 47)] and num_batches == 5
    blocks, num_batches = pipeline.eval_blocks(2, 4, 3)
    assert blocks == [(0, 0), (0, 1), (1, 2)] and num_batches == 1


def test_eval_video_records_sample_frames_uniformly(tmp_path):
    import io

    def png(value):
        out = io.BytesIO()
        Image.fromarray(np.full((20, 24, 3), value, np.uint8)).save(out, format="PNG")
        return out.getvalue()

    frame_counts = [1, 3, 6]
    with ShardedRecordWriter(tmp_path / "video", num_shards=1) as writer:
        for n, count in enumerate(frame_counts):
            writer.add(FaceRecord(id=f"clip{n}", images=[png(10 * k + 5) for k in range(count)],
                                  image_format="png", label_id=n))
    batches = list(pipeline.make_eval_iterator(str(tmp_path / "video"), None, 4, 16, 0, 1,
                                               num_frames=4))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["image"].shape == (4, 4, 16, 16, 3) and "global_tokens" not in batch
    # Centre of each of 4 equal segments: 1 frame -> 0000, 3 -> 0112, 6 -> 0235.
    expected_frames = {"clip0": [0, 0, 0, 0], "clip1": [0, 1, 1, 2], "clip2": [0, 2, 3, 5]}
    for row, rec_id in enumerate(batch["id"][:3]):
        values = batch["image"][row].reshape(4, -1)
        assert (values == values[:, :1]).all()
        np.testing.assert_array_equal(values[:, 0], [10 * k + 5 for k in expected_frames[rec_id]])
    np.testing.assert_array_equal(batch["label_id"], [0, 1, 2, -1])


def test_to_global_batch_shards_numeric_fields_over_the_mesh():
    import jax
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    local = {"image": np.arange(8 * 4 * 4 * 3, dtype=np.uint8).reshape(8, 4, 4, 3),
             "label_id": np.arange(8, dtype=np.int32),
             "valid": np.ones(8, bool),
             "id": np.array([f"x{i}" for i in range(8)], dtype=object)}
    out = pipeline.to_global_batch(local, mesh)
    assert set(out) == {"image", "label_id", "valid"}
    for key, value in out.items():
        assert value.sharding.spec == PartitionSpec("data")
        assert len(value.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(value), local[key])


def test_augmentation_is_a_function_of_the_rng():
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    params = augment.AugmentParams(grayscale_prob=0.5)
    a = augment.augment_image(image, 24, np.random.default_rng(7), params)
    b = augment.augment_image(image, 24, np.random.default_rng(7), params)
    c = augment.augment_image(image, 24, np.random.default_rng(8), params)
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = augment.random_resized_crop_box(40, 50, rng, (0.6, 1.0), (0.75, 4 / 3))
        assert 0 <= left and left + w <= 50 and 0 <= top and top + h <= 40
        assert 0.55 <= w * h / 2000 <= 1.0 and 0.7 <= w / h <= 1.4


@pytest.mark.parametrize("scale, ratio", [((0.6, 1.0), (3 / 4, 4 / 3)),
                                          ((0.35, 0.9), (0.5, 0.8)), ((0.5, 1.0), (1.2, 1.6))])
def test_a_crop_of_a_reduced_decode_is_never_enlarged(scale, ratio):
    """`decode_min_side` is the smallest side a JPEG may be decoded at (libjpeg-turbo's DCT
    scaling) while every crop the sampler can draw still has both sides >= the output size, so
    the resize only ever shrinks. The narrowest crop side (reference: the crop of area fraction
    scale[0] at the most extreme aspect ratio, sides sqrt(a * r) and sqrt(a / r)) bounds it;
    ignoring the ratio gave 290 px for 224 px crops, where 18% of the crops were enlarged from
    as few as 202 px although the full decode had twice the pixels."""
    size = 224
    params = augment.AugmentParams(crop_scale=scale, crop_ratio=ratio)
    side = params.decode_min_side(size)
    rng = np.random.default_rng(0)
    for height, width in ((side, side), (side, side + 57), (side + 91, side)):
        smallest = min(min(augment.random_resized_crop_box(height, width, rng, scale, ratio)[2:])
                       for _ in range(5000))
        assert smallest >= size, (side, height, width, smallest)
    narrowest = side * math.sqrt(scale[0]) * min(math.sqrt(ratio[0]), 1 / math.sqrt(ratio[1]))
    assert size <= narrowest < size + 1  # the bound, and not more than it needs
    # A 600 px JPEG: the DCT-scaled decode keeps both sides >= decode_min_side.
    buf = io.BytesIO()
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(buf, "JPEG")
    decoded = augment.decode_image(buf.getvalue(), "jpeg", side)
    assert min(decoded.shape[:2]) >= side


def _torchvision_crop_params(height, width, scale, ratio, uniform, randint):
    """torchvision.transforms.RandomResizedCrop.get_params (v0.20), line for line, with its
    torch draws replaced by `uniform(lo, hi)` and `randint(lo, hi_exclusive)`; returns
    (top, left, h, w) as torchvision does."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * uniform(scale[0], scale[1])
        aspect_ratio = math.exp(uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = randint(0, height - h + 1)
            j = randint(0, width - w + 1)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


def test_crop_box_is_torchvisions_random_resized_crop():
    """random_resized_crop_box against torchvision's get_params fed the same uniform draws:
    ten tries of area fraction and log-uniform ratio, then the centred fallback (the thin
    images below never fit a try), on square, wide, tall and tiny images."""
    for seed, (height, width), scale, ratio in [
            (0, (40, 48), (0.6, 1.0), (3 / 4, 4 / 3)), (1, (427, 640), (0.08, 1.0), (3 / 4, 4 / 3)),
            (2, (300, 90), (0.35, 0.9), (0.5, 0.8)), (3, (3, 2), (0.5, 1.0), (3 / 4, 4 / 3)),
            (4, (12, 401), (0.6, 1.0), (3 / 4, 4 / 3)), (5, (401, 12), (0.6, 1.0), (3 / 4, 4 / 3)),
            (6, (50, 50), (0.9, 1.0), (2.0, 3.0))]:
        ours_rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(300):
            left, top, w, h = augment.random_resized_crop_box(height, width, ours_rng, scale,
                                                               ratio)
            want = _torchvision_crop_params(
                height, width, scale, ratio, lambda a, b: ref_rng.uniform(a, b),
                lambda a, b: int(ref_rng.integers(a, b)))
            assert (top, left, h, w) == want, (height, width, scale, ratio)
    # The fallback: a 12 x 401 strip is wider than 4/3 -> its full height, 16 px wide, centred.
    assert augment.random_resized_crop_box(12, 401, np.random.default_rng(0), (0.6, 1.0),
                                           (3 / 4, 4 / 3)) == (192, 0, 16, 12)


def test_colour_jitter_matches_pillow_image_enhance():
    """The OpenCV jitter against Pillow's ImageEnhance (torchvision's ColorJitter on PIL images)
    on a photo: the same arithmetic up to rounding (OpenCV rounds where Pillow's blend
    truncates, and computes the luma in 14-bit instead of 16-bit fixed point), so <= 1."""
    from PIL import ImageEnhance

    pixels = _photo("china.jpg")[100:300, 200:440]
    img = Image.fromarray(pixels)
    for factor in (0.0, 0.6, 1.0, 1.4):
        for ours, reference, tolerance in (
                (augment._adjust_brightness, ImageEnhance.Brightness, 1),
                (augment._adjust_contrast, ImageEnhance.Contrast, 1),
                (augment._adjust_saturation, ImageEnhance.Color, 1)):
            got = ours(pixels, factor)
            assert got.dtype == np.uint8 and got.shape == pixels.shape
            want = np.asarray(reference(img).enhance(factor)).astype(int)
            assert np.abs(got.astype(int) - want).max() <= tolerance, (ours.__name__, factor)
    want = np.asarray(img.convert("L").convert("RGB")).astype(int)
    assert np.abs(augment._gray(pixels).astype(int) - want).max() <= 1


def test_config_from_config_dict_rejects_unknown_keys(dataset):
    import ml_collections

    cfg = ml_collections.ConfigDict({"data_dir": dataset["dir"], "image_size": 32,
                                     "crop_scale": [0.5, 1.0]})
    config = pipeline.TrainPipelineConfig.from_config(cfg)
    assert config.image_size == 32 and config.crop_scale == (0.5, 1.0)
    cfg.unknown_field = 1
    with pytest.raises(ValueError, match="unknown_field"):
        pipeline.TrainPipelineConfig.from_config(cfg)
    with pytest.raises(ValueError, match="local_sentences_per_step"):
        pipeline.TrainPipelineConfig(data_dir="x", max_local_sentences=2,
                                     local_sentences_per_step=3)
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipeline.make_train_iterator(config, None, 7, 0, 2)


def test_training_runtime_never_imports_tensorflow(dataset):
    code = (
        "import sys\n"
        "from emocap_jax.data import pipeline\n"
        "from emocap_jax.tokenizers import get_tokenizer\n"
        f"cfg = pipeline.TrainPipelineConfig(data_dir={dataset['dir']!r}, image_size=32, "
        "context_length=16)\n"
        "it = pipeline.make_train_iterator(cfg, get_tokenizer('clip', 16), 4, 0, 1)\n"
        "batches = [next(it) for _ in range(3)]\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'tensorflow' or m.startswith('tensorflow.')))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=repo, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------------
# Resampler of the random resized crop


def _photo(name):
    from sklearn.datasets import load_sample_image  # a 427 x 640 photo shipped with scikit-learn
    return load_sample_image(name)


def test_resize_crop_is_close_to_pillows_antialiased_bilinear():
    """resize_crop (OpenCV) against the resize it replaced, Pillow's BILINEAR with a source box,
    on photos and crops from 0.75x to 2.7x the output side. Bound: mean |diff| <= 2 grey levels,
    99th percentile <= 16. Both are antialiased bilinear filters of the same width but not the
    same shape, measured at 0.2-1.4 mean / <= 10 p99; the bound is far below what real mistakes
    give on these crops: no antialiasing at >= 1.8x measures 4.6-6.3 / 33-46, a box one pixel off
    6-11 / 51-100."""
    size = 224
    for name in ("china.jpg", "flower.jpg"):
        image = _photo(name)
        rng = np.random.default_rng(0)
        for w, h in [(170, 190), (200, 180), (224, 224), (230, 230), (240, 244), (246, 210),
                     (250, 250), (250, 200),
                     (200, 250), (330, 260), (400, 380), (560, 420), (600, 400)]:
            left, top = int(rng.integers(0, 640 - w)), int(rng.integers(0, 427 - h))
            want = np.asarray(Image.fromarray(image).resize(
                (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))
            got = augment.resize_crop(image, (left, top, w, h), size)
            assert got.shape == (size, size, 3) and got.dtype == np.uint8
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.mean() <= 2.0 and np.percentile(diff, 99) <= 16, \
                (name, (w, h), diff.mean(), np.percentile(diff, 99))


def test_resize_crop_antialiases_a_strong_downscale():
    # One-pixel stripes shrunk 2.5x: an antialiased resize gives flat grey (Pillow: std 5.6),
    # plain bilinear sampling aliases them into stripes (std 63.5).
    stripes = np.zeros((400, 560, 3), np.uint8)
    stripes[:, ::2] = 255
    out = augment.resize_crop(stripes, (0, 0, 560, 400), 224)
    assert abs(out.mean() - 127.5) < 1 and out.std() < 8


def _full_resize_center_crop(image, size):
    """resize_center_crop as it was before elongated images got their own path: the whole image
    resized (bicubic, torchvision's truncated long side), then the central crop."""
    height, width = image.shape[:2]
    new_h, new_w = ((size, int(size * width / height)) if height <= width
                    else (int(size * height / width), size))
    img = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _strip(shape, kind, rng):
    if kind == "noise":
        return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(_photo("china.jpg")).resize(shape[::-1],
                                                                  Image.Resampling.BILINEAR))


@pytest.mark.parametrize("kind", ["noise", "photo"])
def test_resize_center_crop_is_unchanged_up_to_16_to_1(kind):
    """Up to FULL_RESIZE_MAX_ASPECT the whole image is still resized: bit-identical outputs."""
    rng = np.random.default_rng(0)
    for shape in [(427, 640), (300, 200), (30, 480), (480, 30), (14, 224), (100, 1600),
                  (1600, 100), (230, 240)]:
        image = _strip(shape, kind, rng)
        np.testing.assert_array_equal(augment.resize_center_crop(image, 224),
                                      _full_resize_center_crop(image, 224), err_msg=str(shape))


@pytest.mark.parametrize("kind", ["noise", "photo"])
def test_resize_center_crop_of_an_elongated_image_is_close_to_the_full_resize(kind):
    """Beyond 16:1 only the central span is resampled (Pillow's box resize, not bit-exact):
    measured max |diff| 0-4 grey levels, mean <= 0.2; a crop one source pixel off, or a span
    without the filter's reach, gives far more on noise."""
    rng = np.random.default_rng(1)
    for shape in [(1, 300), (3, 400), (10, 200), (200, 10), (30, 1000), (1000, 30), (7, 5000),
                  (50, 4000), (500, 9000), (9000, 500)]:
        image = _strip(shape, kind, rng)
        got = augment.resize_center_crop(image, 224)
        want = _full_resize_center_crop(image, 224)
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 8 and diff.mean() <= 0.5, (shape, diff.max(), diff.mean())


@pytest.mark.parametrize("shape", [(1, 20000), (20000, 1)])
def test_resize_center_crop_of_a_thin_strip_allocates_little(shape):
    """A 1 x 20000 strip at 224: the full resize peaked at 4 GiB of memory (18 s); the central
    span needs about a megabyte. Measured in a fresh process by its peak resident memory."""
    root = pathlib.Path(__file__).resolve().parents[1]
    script = (
        "import json, resource, numpy as np\n"
        "from emocap_jax.data import augment\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"out = augment.resize_center_crop(np.full({shape} + (3,), 200, np.uint8), 224)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps([out.shape, int(out.min()), int(out.max()), grown // 1024]))\n")
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    out_shape, low, high, grown_mib = json.loads(done.stdout)
    assert out_shape == [224, 224, 3] and (low, high) == (200, 200), done.stdout
    assert grown_mib < 64, f"peak memory grew by {grown_mib} MiB (ru_maxrss is in KiB on Linux)"


def test_flip_without_jitter_mirrors_the_crop():
    image = _photo("flower.jpg")
    params = augment.AugmentParams(flip_prob=1.0, brightness=0, contrast=0, saturation=0,
                                   grayscale_prob=0)
    box = augment.random_resized_crop_box(427, 640, np.random.default_rng(3), params.crop_scale,
                                          params.crop_ratio)
    flipped = augment.augment_image(image, 64, np.random.default_rng(3), params)
    np.testing.assert_array_equal(flipped, augment.resize_crop(image, box, 64)[:, ::-1])
    assert flipped.flags.c_contiguous  # batching copies a reversed view ~40x slower


# ------------------------------------------------------------------------------------------------
# Token ids stored at conversion


LONG = " ".join(["the left brow is lowered and drawn together with the right one"] * 3)


class _NoTextTokenizer(type(get_tokenizer("clip"))):
    """CLIP BPE that fails if asked to tokenize text: proves the stored ids were used."""

    def __call__(self, texts, context_length=None):
        raise AssertionError(f"tokenized text on the fly: {texts!r:.80}")

    def encode_batch(self, texts):
        raise AssertionError(f"encoded text on the fly: {texts!r:.80}")


@pytest.fixture(scope="module")
def token_datasets(tmp_path_factory):
    """The same records (sentences longer than the context and empty local sentences included)
    written with CLIP ids and with none (an old dataset), and label-only records with CLIP ids."""
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(5)
    records = []
    for i in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
        local = [f"part {j} of {i}" if j % 4 else LONG for j in range(i % 7)]
        local.insert(i % 3, " " if i % 2 else "")  # not a slot: the stored ids must stay aligned
        records.append(FaceRecord(
            id=f"t{i}", images=[buf.getvalue()], local_captions=local, summary=f"summary {i}",
            global_caption=f"face {i}: {LONG}" if i % 3 == 0 else f"face {i} is calm",
            label=["happy", "sad"][i % 2]))
    out = {name: str(root / name) for name in ("clip", "none", "labels")}
    for name, tokenizer, rows in (
            ("clip", get_tokenizer("clip"), records), ("none", None, records),
            ("labels", get_tokenizer("clip"),
             [FaceRecord(id=r.id, images=r.images, label=r.label) for r in records])):
        with ShardedRecordWriter(out[name], 2, tokenizer=tokenizer) as writer:
            for record in rows:
                writer.add(record)
    return out


def _token_batches(data_dir, tokenizer, n=4, **overrides):
    it = pipeline.make_train_iterator(_config(data_dir, **overrides), tokenizer, 8, 0, 1)
    return _take(it, n)


def test_stored_ids_give_the_batches_of_tokenizing_on_the_fly(dataset, token_datasets, tok):
    # convert_manifest (data_prep.captions, training's synthetic corpus) stores CLIP ids.
    metadata = json.loads(open(os.path.join(dataset["dir"], "metadata.json")).read())
    assert metadata["tokenizer"] == tok.identity()
    metadata = json.loads(open(os.path.join(token_datasets["clip"], "metadata.json")).read())
    assert pipeline.stored_tokens_usable(metadata, tok)
    on_the_fly = _token_batches(token_datasets["clip"], tok, stored_tokens=False)
    stored = _token_batches(token_datasets["clip"], _NoTextTokenizer(CONTEXT))
    _assert_batches_equal(on_the_fly, stored)
    assert (np.concatenate([b["global_tokens"][:, -1] for b in stored]) == tok.eot_id).any(), \
        "some global sentences should be cut at the context length"
    assert any(b["local_mask"].sum() for b in stored)
    # An old dataset without ids gives the same batches, tokenizing on the fly.
    _assert_batches_equal(on_the_fly, _token_batches(token_datasets["none"], tok))
    with pytest.raises(AssertionError, match="on the fly"):
        _token_batches(token_datasets["none"], _NoTextTokenizer(CONTEXT), n=1)


def test_another_tokenizer_ignores_the_stored_ids(token_datasets, tmp_path):
    from emocap_jax.tokenizers import SentencePieceTokenizer

    sentences = [LONG] + [f"face {i} is calm, summary part {i} of {i + 7}" for i in range(300)]
    sp = SentencePieceTokenizer.train(sentences, tmp_path / "sp", 50, context_length=CONTEXT,
                                      minloglevel=2)
    metadata = json.loads(open(os.path.join(token_datasets["clip"], "metadata.json")).read())
    assert not pipeline.stored_tokens_usable(metadata, sp)
    assert not pipeline.stored_tokens_usable(metadata, lambda texts, context_length: None)
    assert not pipeline.stored_tokens_usable({}, get_tokenizer("clip"))
    batches = _token_batches(token_datasets["clip"], sp)
    _assert_batches_equal(_token_batches(token_datasets["none"], sp), batches)
    assert int(np.max(batches[0]["global_tokens"])) == sp.eot_id  # sentencepiece ids, not CLIP's


def _with_recorded_tokenizer(data_dir, tmp_path, recorded):
    """A copy of a dataset whose metadata.json records `recorded` as the tokenizer identity."""
    copy = tmp_path / "ds"
    shutil.copytree(data_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["tokenizer"] = recorded
    (copy / "metadata.json").write_text(json.dumps(metadata))
    return str(copy)


def test_stored_ids_of_another_ftfy_are_tokenized_again(token_datasets, tok, tmp_path, caplog,
                                                         monkeypatch):
    """CLIP BPE ids depend on ftfy (fix_text on non-ASCII text): ids stored under another ftfy
    version, or under metadata.json written before the version was recorded (unknown ftfy), are
    not used; the text is tokenized on the fly, with a warning saying why."""
    metadata = json.loads(open(os.path.join(token_datasets["clip"], "metadata.json")).read())
    assert metadata["tokenizer"]["ftfy"] == tok.identity()["ftfy"]
    on_the_fly = _token_batches(token_datasets["clip"], tok, stored_tokens=False)
    old = {k: metadata["tokenizer"][k] for k in ("type", "clean", "vocab_sha256")}
    old_dir = _with_recorded_tokenizer(token_datasets["clip"], tmp_path / "old", old)
    with pytest.raises(AssertionError, match="on the fly"):
        _token_batches(old_dir, _NoTextTokenizer(CONTEXT), n=1)
    with caplog.at_level("WARNING", logger=pipeline._LOG.name):
        _assert_batches_equal(on_the_fly, _token_batches(old_dir, tok))
    assert "ftfy is" in caplog.text and "not recorded" in caplog.text
    caplog.clear()
    monkeypatch.setattr("emocap_jax.tokenizers.ftfy.__version__", "0.0-other")
    assert not pipeline.stored_tokens_usable(metadata, tok)
    with caplog.at_level("WARNING", logger=pipeline._LOG.name):
        _assert_batches_equal(on_the_fly, _token_batches(token_datasets["clip"], tok))
    assert f"ftfy was {metadata['tokenizer']['ftfy']!r} at conversion, '0.0-other' here" \
        in caplog.text


def test_stored_sentencepiece_ids_of_another_or_unknown_version_are_tokenized_again(
        token_datasets, tmp_path, caplog, monkeypatch):
    """sentencepiece ids depend on the library's segmentation code as well as the model file:
    ids stored under another sentencepiece version, or under a metadata.json written before the
    version was recorded, are not used (the same rule as CLIP BPE's ftfy)."""
    sentences = [LONG] + [f"face {i} is calm, summary part {i} of {i + 7}" for i in range(300)]
    sp = SentencePieceTokenizer.train(sentences, tmp_path / "sp", 50, context_length=CONTEXT,
                                      minloglevel=2)
    written = str(tmp_path / "sp_ids")
    source = ShardedTFRecordSource(shard_paths(token_datasets["none"]))
    with ShardedRecordWriter(written, 2, tokenizer=sp) as writer:
        for i in range(len(source)):
            writer.add(decode_record(source[i]))
    metadata = json.loads(open(os.path.join(written, "metadata.json")).read())
    assert metadata["tokenizer"] == sp.identity()
    assert metadata["tokenizer"]["sentencepiece"] == spm.__version__
    on_the_fly = _token_batches(written, sp, stored_tokens=False)
    old = {k: v for k, v in metadata["tokenizer"].items() if k != "sentencepiece"}
    old_dir = _with_recorded_tokenizer(written, tmp_path / "old", old)
    with caplog.at_level("WARNING", logger=pipeline._LOG.name):
        _assert_batches_equal(on_the_fly, _token_batches(old_dir, sp))
    assert f"sentencepiece is {spm.__version__!r} here but not recorded" in caplog.text
    version = spm.__version__
    monkeypatch.setattr("emocap_jax.tokenizers.spm.__version__", "0.0-other")
    assert pipeline.stored_tokens_mismatch(metadata, sp) == (
        f"sentencepiece was {version!r} at conversion, '0.0-other' here")


class _CorruptingClip(type(get_tokenizer("clip"))):
    """CLIP BPE's identity, but the sentence "bad" gets one id outside [0, vocab_size)."""

    def __init__(self, bad_id):
        super().__init__()
        self.bad_id = bad_id

    def encode_batch(self, texts):
        return [[5, self.bad_id] if t == "bad" else [5, 7] for t in texts]


@pytest.mark.parametrize("bad_id,field,where", [(49408, "global", "tokens/global"),
                                                (-3, "local", "tokens/local (sentence 0)")])
def test_stored_ids_outside_the_vocabulary_are_refused_naming_file_and_record(
        tmp_path, tok, monkeypatch, bad_id, field, where):
    """An id >= vocab_size (or negative) would index the token embedding out of range, which JAX
    clamps silently: reading one is an error naming the shard, the record and the field."""
    # The writer refuses negative ids; a corrupt or foreign record may still hold one.
    monkeypatch.setattr(example_codec, "_check_token_ids", lambda rec_id, name, ids: list(ids))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, "JPEG")
    with ShardedRecordWriter(tmp_path / "ds", 1, tokenizer=_CorruptingClip(bad_id)) as writer:
        for i in range(4):
            bad = "bad" if i == 2 else "fine"
            writer.add(FaceRecord(id=f"r{i}", images=[buf.getvalue()], summary="s",
                                  global_caption=bad if field == "global" else "fine",
                                  local_captions=[bad if field == "local" else "fine"]))
    config = _config(str(tmp_path / "ds"), num_epochs=1, max_local_sentences=1,
                     local_sentences_per_step=1)
    with pytest.raises(pipeline.StoredTokenError) as info:
        list(pipeline.make_train_iterator(config, tok, 4, 0, 1))
    message = str(info.value)
    assert shard_paths(str(tmp_path / "ds"))[0] in message and "(record 2," in message
    assert f"record 'r2': stored token id {bad_id} in {where}" in message
    assert "[0, 49408)" in message
    # The text itself is fine: tokenizing it on the fly trains.
    assert len(list(pipeline.make_train_iterator(
        dataclasses.replace(config, stored_tokens=False), tok, 4, 0, 1))) == 1


def test_label_captions_are_memoised_with_the_same_rows(token_datasets, tok):
    on_the_fly = _token_batches(token_datasets["labels"], tok, stored_tokens=False)
    memoised = _token_batches(token_datasets["labels"], tok)
    _assert_batches_equal(on_the_fly, memoised)
    assert len({b.tobytes() for batch in memoised for b in batch["global_tokens"]}) > 2


# ------------------------------------------------------------------------------------------------
# Worker -> trainer batches through recycled shared-memory blocks


def _elements(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
             "tokens": rng.integers(0, 99, (2, 5), dtype=np.int32),
             "mask": rng.random(3) < 0.5, "label_id": np.int32(i)} for i in range(n)]


def test_batch_blocks_carry_batches_and_are_recycled(monkeypatch):
    from emocap_jax.data import shm_transport

    sizes = [x.nbytes * 4 for x in _elements(1)[0].values()]
    blocks = shm_transport.BatchBlocks(num_workers=2, blocks_per_worker=2,
                                       size=shm_transport.block_bytes(sizes))
    try:
        packer = pickle.loads(pickle.dumps(blocks.packer()))  # as the workers get it
        monkeypatch.setattr(shm_transport, "_WORKER_INDEX", 1)
        first, second, third = _elements(4, 1), _elements(4, 2), _elements(4, 3)
        a, b = packer(first), packer(second)
        assert isinstance(a, shm_transport.PackedBatch) and a.name in blocks.names[1]
        assert pickle.loads(pickle.dumps(a)).layout == a.layout
        plain = packer(third)  # both of worker 1's blocks hold a batch: the usual path
        assert isinstance(plain, dict)
        for packed, values in ((a, first), (b, second), (plain, third)):
            got = blocks.unpack(packed)
            want = shm_transport.stack_batch(values)
            assert got.keys() == want.keys()
            for key in want:
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])
        assert (blocks.packed, blocks.plain) == (2, 1)
        again = packer(third)  # unpacking freed the blocks
        assert isinstance(again, shm_transport.PackedBatch)
        blocks.unpack(again)
        too_big = [dict(e, image=np.zeros((64, 64, 3), np.uint8)) for e in first]
        assert isinstance(packer(too_big), dict)
        monkeypatch.setattr(shm_transport, "_WORKER_INDEX", None)  # not a worker process
        assert isinstance(pickle.loads(pickle.dumps(blocks.packer()))(first), dict)
    finally:
        blocks.close()
    assert not any(os.path.exists(f"/dev/shm/{name}") for names in blocks.names
                   for name in names)


def test_reader_threads_of_one_worker_never_share_a_block(monkeypatch):
    """A worker's reader threads pack batches side by side (`read_threads`): two of them must
    never pick the same free block, or one batch overwrites the other and the run stops being a
    function of its seed (seen as two demo runs of one commit parting at a random step)."""
    import threading

    from emocap_jax.data import shm_transport

    threads, calls, rounds = 8, 4, 25
    sizes = [x.nbytes * 4 for x in _elements(1)[0].values()]
    blocks = shm_transport.BatchBlocks(num_workers=1, blocks_per_worker=threads * calls,
                                       size=shm_transport.block_bytes(sizes))
    monkeypatch.setattr(shm_transport, "_WORKER_INDEX", 0)
    packer = pickle.loads(pickle.dumps(blocks.packer()))
    batches = [[_elements(4, seed=100 * t + c) for c in range(calls)] for t in range(threads)]

    def pack(t, start, results):
        start.wait()
        for values in batches[t]:
            results.append((packer(values), values))

    # Switch threads as often as the interpreter can, so the window between finding a free block
    # and marking it busy is crossed many times (without a lock, most runs of this test fail).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(rounds):
            results, start = [], threading.Barrier(threads)
            workers = [threading.Thread(target=pack, args=(t, start, results))
                       for t in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            names = [p.name for p, _ in results if isinstance(p, shm_transport.PackedBatch)]
            assert len(names) == threads * calls  # a free block for every batch
            assert len(set(names)) == len(names), "two batches were packed into one block"
            for packed, values in results:
                got, want = blocks.unpack(packed), shm_transport.stack_batch(values)
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key])
    finally:
        sys.setswitchinterval(interval)
        blocks.close()


def test_worker_batches_leave_no_shared_memory_behind(dataset, tmp_path):
    """A run with worker processes: batches arrive through the blocks, and closing the iterator
    and exiting leaves no segment and no resource-tracker warning."""
    code = (
        "import os\n"
        "from emocap_jax.data import pipeline\n"
        "from emocap_jax.tokenizers import get_tokenizer\n"
        "if __name__ == '__main__':\n"
        f"    cfg = pipeline.TrainPipelineConfig(data_dir={dataset['dir']!r}, image_size=32, "
        "context_length=16, worker_count=2)\n"
        "    ds, _ = pipeline.make_train_dataset(cfg, get_tokenizer('clip', 16), 8, 0, 1)\n"
        "    it = iter(ds)\n"
        "    batches = [next(it) for _ in range(12)]\n"
        "    assert batches[-1]['image'].shape == (8, 32, 32, 3)\n"
        "    blocks = ds._map_fn.__self__  # the BatchBlocks whose unpack is the last map\n"
        "    assert blocks.packed >= 8, (blocks.packed, blocks.plain)\n"
        "    print(' '.join(name for names in blocks.names for name in names))\n"
        "    it.close()\n"
    )
    script = tmp_path / "run.py"
    script.write_text(code)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=repo), cwd=repo, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Grain's own per-batch segments: the resource tracker names any left at exit.
    assert "leaked" not in result.stderr, result.stderr[-3000:]
    # The blocks, by name (not a before/after listing of /dev/shm: tests running beside this one
    # create segments of their own).
    names = result.stdout.split()
    assert len(names) == 2 * (2 * 2 + 2 + 2), names  # 2 workers, buffer 2, 2 reader threads
    assert not [name for name in names if os.path.exists(f"/dev/shm/{name}")]


# ------------------------------------------------------------------------------------------------
# Checkpoints written when the iterator's position counted records


class _SavedState:
    """Stands in for an iterator at save time: what Grain's handler asks of a non-dataset
    iterator (its state as JSON bytes)."""

    def __init__(self, state):
        self._state = state

    def get_state(self):
        return json.dumps(self._state).encode()


def test_a_checkpoint_whose_position_counts_records_resumes_at_the_same_step(dataset, tok,
                                                                             tmp_path):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    import grain

    from emocap_jax.checkpoint import TrainCheckpointer, abstract_like

    config = _config(dataset["dir"])
    it = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    _take(it, 3)
    expected = _take(it, 2)
    state = {"w": jnp.arange(3.0)}
    checkpointer = TrainCheckpointer(tmp_path / "old", async_save=False)
    # What the earlier code saved after 3 steps of 8: records taken, no data_format item.
    checkpointer.manager.save(3, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_SavedState({"next_index": 24})),
        config=ocp.args.JsonSave({})))
    checkpointer.wait()
    fresh = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    restored = TrainCheckpointer(tmp_path / "old").restore(3, abstract_like(state), fresh, 8)
    np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])
    assert fresh.get_state() == {"next_index": 3}
    _assert_batches_equal(expected, _take(fresh, 2))

    # The current format round-trips unchanged.
    current = TrainCheckpointer(tmp_path / "new", async_save=False)
    current.save(3, state, fresh, "{}")
    current.wait()
    again = pipeline.make_train_iterator(config, tok, 8, 0, 1)
    TrainCheckpointer(tmp_path / "new").restore(3, abstract_like(state), again, 8)
    assert again.get_state() == {"next_index": 5}


def test_worker_positions_in_records_become_positions_in_batches():
    """Grain's multiprocessing state as the earlier pipeline saved it after one batch of 8 with
    2 workers, and as the current one saves it at the same point."""
    from emocap_jax.checkpoint import record_positions_to_batches

    def mp_state(first_worker):
        return {"next_index_in_cycle": 1, "next_index_in_datasets": 2,
                "iterators_in_use_indices": [0, 1],
                "iterators_in_use_states": [{"next_index": first_worker}, {"next_index": 0}],
                "exhausted": [0, 0], "future_states": {}}

    assert record_positions_to_batches(mp_state(8), 8) == mp_state(1)
    assert record_positions_to_batches({"next_index": 40}, 8) == {"next_index": 5}


WORKER_INIT_WITH_PARENT = r"""
import os, sys, time
from emocap_jax.data import pipeline
recorded = int(sys.argv[1]) if sys.argv[1] != "mine" else os.getppid()
pipeline._exit_with_parent(0, 1, parent_pid=recorded)
time.sleep(3)
print("still running")
"""


@pytest.mark.parametrize("recorded, expected", [("mine", 0), ("1", 1)])
def test_a_worker_initialised_after_its_parent_died_exits(recorded, expected):
    """A Grain worker checks the parent recorded by the process that built the pipeline, not the
    parent it finds when it initialises: on a loaded machine a spawned worker can take seconds to
    get there, and if the trainer died meanwhile its new parent (init, or a subreaper) is not the
    one to watch. A worker whose recorded parent is not its parent exits at once (status 1);
    one whose parent is alive runs on."""
    proc = subprocess.run([sys.executable, "-c", WORKER_INIT_WITH_PARENT, recorded],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == expected, proc.stderr[-2000:]
    assert ("still running" in proc.stdout) == (expected == 0)
