"""Faces that carry only a label (benchmark converter output) train on captions built from it, in
the zero-shot prompts' vocabulary; the hold-out split of `data_prep.benchmarks --val-fraction`."""
import io

import numpy as np
import pytest
from PIL import Image

from data_prep import benchmarks
from emocap_jax.data import label_captions, pipeline
from emocap_jax.data.example_codec import FaceRecord
from emocap_jax.data.shard_writer import ShardedRecordWriter, load_metadata
from emocap_jax.evaluate import prompts
from emocap_jax.tokenizers import get_tokenizer

CLASSES = ("angry", "happy", "sad")
CONTEXT = 40


def _jpeg(rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    """What data_prep.benchmarks writes: images, labels, empty captions (plus one unlabelled)."""
    out = tmp_path_factory.mktemp("labelled") / "ds"
    rng = np.random.default_rng(0)
    with ShardedRecordWriter(out, 2, classes=list(CLASSES)) as writer:
        for i in range(24):
            writer.add(FaceRecord(id=f"f{i}", images=[_jpeg(rng)], label=CLASSES[i % 3],
                                  label_id=i % 3))
        writer.close()
    return str(out)


def _batches(data_dir, n, **overrides):
    tok = get_tokenizer("clip", CONTEXT)
    config = pipeline.TrainPipelineConfig(data_dir=data_dir, image_size=16, context_length=CONTEXT,
                                          max_local_sentences=1, local_sentences_per_step=1,
                                          read_threads=1, **overrides)
    it = pipeline.make_train_iterator(config, tok, 8, process_index=0, process_count=1)
    return tok, [next(it) for _ in range(n)]


def test_label_only_records_train_on_prompt_vocabulary_captions(labelled_dir):
    tok, batches = _batches(labelled_dir, 6)
    seen_templates = set()
    for batch in batches:
        for g, s, label_id in zip(batch["global_tokens"], batch["summary_tokens"], batch["label_id"]):
            label = CLASSES[label_id]
            word = prompts.prompt_word(label)  # "angry" -> "anger", as the zero-shot prompts say
            candidates = [tok([label_captions.global_caption(label, t)], CONTEXT)[0]
                          for t in range(len(label_captions.TEMPLATES))]
            matches = [t for t, c in enumerate(candidates) if np.array_equal(c, g)]
            assert len(matches) == 1, tok.decode(g)
            seen_templates.add(matches[0])
            assert word in label_captions.global_caption(label, matches[0])
            np.testing.assert_array_equal(s, tok([prompts.description(label)], CONTEXT)[0])
    # The template is drawn per record and step, so the model sees every prompt template.
    assert seen_templates == set(range(len(label_captions.TEMPLATES)))


def test_label_only_record_is_an_error_when_label_captions_are_off(labelled_dir):
    with pytest.raises(Exception, match=r"record 'f\d+' has no global caption"):
        _batches(labelled_dir, 1, captions_from_labels=False)


def test_unlabelled_caption_free_record_is_named(tmp_path):
    out = tmp_path / "ds"
    rng = np.random.default_rng(1)
    with ShardedRecordWriter(out, 1) as writer:
        for i in range(8):
            writer.add(FaceRecord(id=f"nolabel{i}", images=[_jpeg(rng)]))
        writer.close()
    with pytest.raises(Exception, match=r"record 'nolabel\d' has no global caption and no label"):
        _batches(str(out), 1)


def _face_folders(root, subjects=12, per_subject=3):
    """A CK+48-style folder: S<subject>_<sequence>_<frame>.png under class folders."""
    rng = np.random.default_rng(2)
    for s in range(subjects):
        for k in range(per_subject):
            cls = ("anger", "happy", "surprise")[(s + k) % 3]
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(
                root / cls / f"S{100 + s:03d}_{k + 1:03d}_00000010.png")
    (root / "anger" / "notes.txt").write_text("not an image")


def test_val_fraction_splits_by_subject_and_loses_nothing(tmp_path):
    from emocap_jax.evaluate.features import read_records

    _face_folders(tmp_path / "ck")
    summary = benchmarks.convert_benchmark("ckplus48", tmp_path / "ck", tmp_path / "out",
                                           workers=1, val_fraction=0.3, split_seed=0,
                                           progress=False)
    by_split = {d["split"]: d for d in summary["datasets"]}
    assert set(by_split) == {"train", "val"}
    assert sum(d["num_written"] + d["num_rejected"] for d in by_split.values()) == 12 * 3 + 1
    groups = {split: {r.group for r in read_records(str(tmp_path / "out" / split))}
              for split in by_split}
    assert groups["train"] and groups["val"] and not groups["train"] & groups["val"]
    assert load_metadata(tmp_path / "out" / "val")["split"] == "val"
    # Same inputs, same seed: the same split; another seed: another split.
    again = benchmarks.split_holdout(
        benchmarks.READERS["ckplus48"](str(tmp_path / "ck"), "all", None,
                                       benchmarks.ReaderOptions()), 0.3, 0)
    assert {e.group for e in again[1].items if hasattr(e, "group")} == groups["val"]
    other = benchmarks.split_holdout(
        benchmarks.READERS["ckplus48"](str(tmp_path / "ck"), "all", None,
                                       benchmarks.ReaderOptions()), 0.3, 7)
    assert {e.group for e in other[1].items if hasattr(e, "group")} != groups["val"]


def test_val_fraction_rejects_benchmarks_with_official_splits(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="single split 'all'"):
        benchmarks.convert_benchmark("sfew", tmp_path / "x", tmp_path / "out", val_fraction=0.1)
    with pytest.raises(SystemExit):
        benchmarks.main(["--name", "imagefolder", "--root", str(tmp_path / "x"), "--output",
                         str(tmp_path / "o"), "--val-fraction", "1.5"])


def test_val_fraction_keeps_identical_faces_on_one_side(tmp_path):
    # FER2013's training faces hold 1,035 groups of pixel-identical files under different names
    # (some under different labels); split by id, 215 of the 2,926 validation faces had a twin
    # in train, so the probe and the trained model had seen them.
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    copied = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    for cls in ("angry", "happy"):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
                root / cls / f"Training_{cls}{i}.png")
        for i in range(15):  # one face under many names, in both classes
            Image.fromarray(copied).save(root / cls / f"Training_copy_{cls}{i}.png")
    listing = benchmarks.READERS["imagefolder"](str(root), "all", None,
                                                benchmarks.ReaderOptions())
    train, val = benchmarks.split_holdout(listing, 0.5, 0)
    copies = [{e.id for e in part.items if "copy" in e.id} for part in (train, val)]
    assert sorted(map(len, copies)) == [0, 30]
    # Faces without a twin keep their own id's coin: the split of earlier runs stays theirs.
    for part, side in ((train, False), (val, True)):
        for e in part.items:
            if "copy" not in e.id:
                assert (benchmarks.holdout_key_fraction(e.id, 0) < 0.5) is side
    assert len(train.items) + len(val.items) == 90
    assert val.info["holdout"]["identical_content_sets"] == 1
