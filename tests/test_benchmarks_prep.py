"""The benchmark converters on tiny fabricated copies of each official layout (plus CK+48 from
../shared/data when present): the right records, labels, class order, groups, frame counts and
split/fold membership are written, and broken entries land in rejected.jsonl with a reason."""
import io
import json
import os
import pathlib

import av
import jax
import numpy as np
import pytest
from PIL import Image

from data_prep import benchmarks
from data_prep.benchmark_formats import LayoutError
from data_prep.benchmark_formats.common import natural_key
from data_prep.benchmark_formats.decode import sample_indices
from data_prep.benchmark_formats.fer import ferplus_majority
from emocap_jax.data import example_codec, shard_writer, tfrecord
from emocap_jax.evaluate.registry import LAYOUTS

FRAMES = 4
FRAME_VALUES = [20 + 20 * i for i in range(10)]  # gray level of frame i of every clip


# ---------------------------------------------------------------- fabrication helpers

def write_image(path, value=128, size=(24, 20), fmt=None, mode="RGB"):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, value if mode == "L" else (value, 255 - value, value // 2))
    img.save(path, format=fmt or {".jpg": "JPEG", ".tiff": "TIFF"}.get(path.suffix, "PNG"))
    return path


def write_bytes(path, data=b"this is not an image"):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_text(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_video(path, num_frames=10, size=32):
    """A clip whose frame i is uniformly FRAME_VALUES[i] gray."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "flv" if path.suffix == ".flv" else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            pixels = np.full((size, size, 3), FRAME_VALUES[i], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(path, num_frames=10):
    for i in range(num_frames):
        write_image(pathlib.Path(path) / f"{i + 1}.jpg", size=(32, 32), mode="L",
                    value=FRAME_VALUES[i])
    return path


# ---------------------------------------------------------------- reading helpers

class Dataset:
    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.meta = shard_writer.load_metadata(self.dir)
        self.records = {}
        for shard in shard_writer.shard_paths(self.dir):
            for _, data in tfrecord.iter_records(shard):
                rec = example_codec.decode_record(data)
                assert rec.id not in self.records, f"duplicate id {rec.id}"
                self.records[rec.id] = rec
        with open(self.dir / shard_writer.REJECTED_FILE, encoding="utf-8") as f:
            self.rejected = [json.loads(line) for line in f]
        self.reasons = {r["id"]: r["reason"] for r in self.rejected}
        classes = self.meta["classes"]
        for rec in self.records.values():  # invariants of every benchmark record
            assert classes[rec.label_id] == rec.label
            assert rec.global_caption == "" and rec.summary == "" and rec.local_captions == []
            assert rec.image_format == "jpeg"
        assert self.meta["num_inputs"] == len(self.records) + len(self.rejected)
        assert sum(self.meta["class_counts"].values()) == len(self.records)

    def labels(self):
        return {i: r.label for i, r in self.records.items()}

    def groups(self):
        return {i: r.group for i, r in self.records.items()}

    def codes(self):
        return {i: reason.split(":", 1)[0] for i, reason in self.reasons.items()}


def convert(name, root, out, **kwargs):
    kwargs.setdefault("workers", 1)
    return benchmarks.convert_benchmark(name, root, out, progress=False, **kwargs)


def frame_means(rec):
    return [float(np.asarray(Image.open(io.BytesIO(b)).convert("L")).mean())
            for b in rec.images]


def assert_uniform_frames(rec, num_source_frames=10):
    expected = [FRAME_VALUES[i] for i in sample_indices(num_source_frames, FRAMES)]
    assert len(rec.images) == FRAMES
    np.testing.assert_allclose(frame_means(rec), expected, atol=10)


# ---------------------------------------------------------------- static image benchmarks

def test_rafdb_basic(tmp_path):
    root = tmp_path / "raf"
    write_text(root / "basic/EmoLabel/list_patition_label.txt",
               "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_00001.jpg 7\ntrain_00003.jpg 9\n"
               "test_00002.jpg 3\ntrain_00004.jpg 2\nbogus line here\n")
    aligned = root / "basic/Image/aligned"
    for stem in ("train_00001", "train_00002", "train_00003", "test_00001"):
        write_image(aligned / f"{stem}_aligned.jpg")
    write_bytes(aligned / "train_00004_aligned.jpg")
    summary = convert("rafdb", root, tmp_path / "out")
    assert [d["split"] for d in summary["datasets"]] == ["train", "test"]

    train = Dataset(tmp_path / "out/train")
    assert train.meta["classes"] == ["surprise", "fear", "disgust", "happiness", "sadness",
                                     "anger", "neutral"]
    assert (train.meta["benchmark"], train.meta["split"], train.meta["fold"]) == \
        ("rafdb", "train", None)
    assert train.labels() == {"train_00001": "sadness", "train_00002": "surprise"}
    assert train.records["train_00001"].label_id == 4
    assert train.codes() == {"train_00003": "label_out_of_range", "train_00004": "bad_image",
                             None: "malformed_line"}
    assert "label 9 on line 4" in train.reasons["train_00003"]

    test = Dataset(tmp_path / "out/test")
    assert test.labels() == {"test_00001": "neutral"}
    assert test.codes()["test_00002"] == "image_not_found"
    assert "test_00002_aligned.jpg" in test.reasons["test_00002"]


def test_rafdb_line_that_is_not_utf8_is_rejected_as_such(tmp_path):
    root = tmp_path / "raf"
    labels = write_bytes(root / "basic/EmoLabel/list_patition_label.txt",
                         b"train_00001.jpg 5\ntrain_0000\xff2.jpg 1\n")
    write_image(root / "basic/Image/aligned/train_00001_aligned.jpg")
    convert("rafdb", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"train_00001": "sadness"}
    assert train.rejected == [{"line": 2, "id": None, "reason": f"not_utf8: byte 10 of line 2 "
                               f"of {labels} is not valid UTF-8"}]


def test_rafdb_lines_of_no_split_are_listed_once(tmp_path):
    root = tmp_path / "raf"
    write_bytes(root / "basic/EmoLabel/list_patition_label.txt",
                b"train_00001.jpg 5\ntrain_00002.jpg 9\ntest_00001.jpg 2\nval_00001.jpg 3\n"
                b"train_0000\xff4.jpg 2\ntrain_00005.jpg 1 extra\ntest_00002.jpg 1 2\n"
                b"bogus\ntrain_00005.jpg x\n")
    for stem in ("train_00001", "test_00001"):
        write_image(root / f"basic/Image/aligned/{stem}_aligned.jpg")
    summary = convert("rafdb", root, tmp_path / "out")
    assert sum(d["num_inputs"] for d in summary["datasets"]) == 9
    train, test = Dataset(tmp_path / "out/train"), Dataset(tmp_path / "out/test")
    assert sorted(r["line"] for r in train.rejected) == [2, 4, 5, 6, 8, 9]
    assert [r["line"] for r in test.rejected] == [7]
    assert train.labels() == {"train_00001": "sadness"}
    assert test.labels() == {"test_00001": "fear"}

    # Converting one split alone, the lines of no split are listed with it.
    convert("rafdb", root, tmp_path / "test_only", split="test")
    assert sorted(r["line"] for r in Dataset(tmp_path / "test_only/test").rejected) == \
        [4, 5, 7, 8]


def test_rafdb_compound_and_layout_error(tmp_path):
    root = tmp_path / "raf"
    write_text(root / "compound/EmoLabel/list_patition_label.txt",
               "train_0001.jpg 11\ntrain_0002.jpg 1\ntrain_0003.jpg 12\n")
    for stem in ("train_0001", "train_0002", "train_0003"):
        write_image(root / f"compound/Image/aligned/{stem}_aligned.jpg")
    convert("rafdb-compound", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert len(train.meta["classes"]) == 11
    assert train.labels() == {"train_0001": "disgustedly surprised",
                              "train_0002": "happily surprised"}
    assert train.codes() == {"train_0003": "label_out_of_range"}
    assert not (tmp_path / "out/test").exists()

    with pytest.raises(LayoutError, match=r"RAF-DB|basic/EmoLabel/list_patition_label\.txt"):
        convert("rafdb", root, tmp_path / "out2")
    with pytest.raises(ValueError, match="splits"):
        convert("rafdb", root, tmp_path / "out3", split="val")


def _affectnet_folders(root):
    for stem, expression in (("0", "1"), ("1", "7"), ("2", "9"), ("4", "6")):
        np.save(root / f"train_set/annotations/{stem}_exp.npy", np.array(expression))
    for stem in ("0", "1", "2", "3"):
        write_image(root / f"train_set/images/{stem}.jpg")
    write_image(root / "val_set/images/0.jpg")
    np.save(root / "val_set/annotations/0_exp.npy", np.array("3"))


def test_affectnet_folder_form_7_and_8(tmp_path):
    root = tmp_path / "affectnet"
    (root / "train_set/annotations").mkdir(parents=True)
    (root / "val_set/annotations").mkdir(parents=True)
    _affectnet_folders(root)
    convert("affectnet-8", root, tmp_path / "a8")
    convert("affectnet-7", root, tmp_path / "a7")
    a8, a7 = Dataset(tmp_path / "a8/train"), Dataset(tmp_path / "a7/train")
    assert a8.meta["classes"] == ["neutral", "happy", "sad", "surprise", "fear", "disgust",
                                  "anger", "contempt"]
    assert a7.meta["classes"] == a8.meta["classes"][:7]
    assert a8.labels() == {"train_set/0": "happy", "train_set/1": "contempt"}
    assert a8.records["train_set/1"].label_id == 7
    assert a8.codes() == {"train_set/2": "label_out_of_range",
                          "train_set/3": "missing_annotation",
                          "train_set/4": "image_not_found"}
    assert "uncertain" in a8.reasons["train_set/2"]
    assert a7.labels() == {"train_set/0": "happy"}
    assert a7.codes()["train_set/1"] == "excluded_class"
    assert Dataset(tmp_path / "a8/val").labels() == {"val_set/0": "surprise"}


def test_affectnet_folder_form_one_image_per_stem(tmp_path):
    root = tmp_path / "affectnet"
    write_image(root / "train_set/images/1.png", value=10)
    write_image(root / "train_set/images/1.jpg", value=200)
    (root / "train_set/annotations").mkdir()
    np.save(root / "train_set/annotations/1_exp.npy", np.array("3"))
    convert("affectnet-8", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.meta["num_inputs"] == 2  # both files: one written, one rejected
    assert train.labels() == {"train_set/1": "surprise"}
    assert train.codes() == {"train_set/1": "duplicate_id"}
    assert "1.png has the stem of" in train.reasons["train_set/1"]
    red = np.asarray(Image.open(io.BytesIO(train.records["train_set/1"].images[0])))[..., 0]
    assert red.mean() > 150  # 1.jpg (first by name) is the one used


def test_affectnet_labels_are_whole_finite_numbers(tmp_path):
    root = tmp_path / "affectnet"
    for stem, value in (("1", np.array(3.0)), ("2", np.array(3, np.int64)),
                        ("3", np.array(3.5))):
        write_image(root / f"train_set/images/{stem}.jpg")
        (root / "train_set/annotations").mkdir(exist_ok=True)
        np.save(root / f"train_set/annotations/{stem}_exp.npy", value)
    convert("affectnet-8", root, tmp_path / "folders", split="train")
    train = Dataset(tmp_path / "folders/train")
    assert train.labels() == {"train_set/1": "surprise", "train_set/2": "surprise"}
    assert train.codes() == {"train_set/3": "bad_label"}
    assert "3.5 is not a whole number" in train.reasons["train_set/3"]

    root = tmp_path / "csv"
    write_text(root / "training.csv", "".join(
        f"1/{name}.jpg,0,0,16,16,x,{expression},0,0\n"
        for name, expression in (("a", "1"), ("b", "2.7"), ("c", "inf"), ("d", "nan"),
                                 ("e", "3.0"))))
    for name in "abcde":
        write_image(root / f"Manually_Annotated_Images/1/{name}.jpg")
    convert("affectnet-8", root, tmp_path / "csv_out", split="train")
    train = Dataset(tmp_path / "csv_out/train")
    assert train.labels() == {"1/a": "happy", "1/e": "surprise"}
    assert train.codes() == {"1/b": "bad_label", "1/c": "bad_label", "1/d": "bad_label"}
    assert "line 2 of" in train.reasons["1/b"] and "'2.7' is not a whole number" in \
        train.reasons["1/b"]
    assert "'inf' is not a finite number" in train.reasons["1/c"]


def test_affectnet_csv_form(tmp_path):
    root = tmp_path / "affectnet"
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    write_text(root / "training.csv", header +
               "689/a.jpg,10,10,80,80,1;2;3,0,0.1,0.2\n"
               "689/b.jpg,10,10,80,80,1;2;3,10,0.1,0.2\n"
               "690/c.png,10,10,80,80,1;2;3,6,0.1,0.2\n"
               "690/missing.jpg,10,10,80,80,1;2;3,2,0.1,0.2\n")
    write_text(root / "validation.csv", "691/d.jpg,1,1,5,5,1;2,4,0,0\n")  # no header row
    images = root / "Manually_Annotated_Images"
    for rel in ("689/a.jpg", "689/b.jpg", "690/c.png", "691/d.jpg"):
        write_image(images / rel)
    convert("affectnet-8", root, tmp_path / "out")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"689/a": "neutral", "690/c": "anger"}
    assert train.codes() == {"689/b": "label_out_of_range", "690/missing": "image_not_found"}
    assert "non-face" in train.reasons["689/b"]
    assert Dataset(tmp_path / "out/val").labels() == {"691/d": "fear"}


def _fer_pixels(value, n=48 * 48):
    return " ".join([str(value)] * n)


def test_fer2013_csv(tmp_path):
    rows = [(3, 100, "Training"), (0, 50, "PublicTest"), (6, 200, "PrivateTest"),
            (9, 10, "Training")]
    text = "emotion,pixels,Usage\n" + "".join(f"{e},{_fer_pixels(v)},{u}\n" for e, v, u in rows)
    text += f"2,{_fer_pixels(7, n=100)},Training\n"
    write_text(tmp_path / "fer/fer2013.csv", text)
    convert("fer2013", tmp_path / "fer", tmp_path / "out")
    train = Dataset(tmp_path / "out/train")
    assert train.meta["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise",
                                     "neutral"]
    assert train.labels() == {"fer0000000": "happy"}
    assert train.codes() == {"fer0000003": "label_out_of_range", "fer0000004": "bad_pixels"}
    img = Image.open(io.BytesIO(train.records["fer0000000"].images[0]))
    assert img.size == (48, 48)
    assert abs(np.asarray(img.convert("L")).mean() - 100) < 2
    assert Dataset(tmp_path / "out/val").labels() == {"fer0000001": "angry"}
    assert Dataset(tmp_path / "out/test").labels() == {"fer0000002": "neutral"}


def test_fer2013_and_ferplus_rows_of_no_split_are_listed_once(tmp_path):
    root = tmp_path / "fer"
    write_text(root / "fer2013.csv", "emotion,pixels,Usage\n"
               f"3,{_fer_pixels(100)},Training\n4,Training\n"
               f"5,{_fer_pixels(100)},Bogus\n0,{_fer_pixels(50)},PublicTest\n")
    summary = convert("fer2013", root, tmp_path / "out")
    assert [d["num_inputs"] for d in summary["datasets"]] == [3, 1, 0]
    train = Dataset(tmp_path / "out/train")
    assert train.codes() == {"fer0000001": "malformed_line", "fer0000002": "malformed_line"}
    assert train.reasons["fer0000001"] == \
        f"malformed_line: line 3 of {root / 'fer2013.csv'} has 2 columns, expected 3"
    assert "Usage 'Bogus' on line 4" in train.reasons["fer0000002"]
    assert Dataset(tmp_path / "out/val").rejected == []

    write_text(root / "fer2013new.csv",
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,"
               "contempt,unknown,NF\n"
               "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
               "Training,fer0000001.png,0,10\n"
               "Bogus,fer0000002.png,0,10,0,0,0,0,0,0,0,0\n"
               "PublicTest,fer0000003.png,10,0,0,0,0,0,0,0,0,0\n")
    summary = convert("ferplus", root, tmp_path / "plus")
    assert [d["num_inputs"] for d in summary["datasets"]] == [3, 1, 0]
    assert Dataset(tmp_path / "plus/train").codes() == {"fer0000001": "malformed_line",
                                                       "fer0000002": "malformed_line"}


def test_fer2013_and_ferplus_skip_blank_lines(tmp_path):
    """An empty line (a file saved with a blank line at its end, or between rows) is no data row:
    it neither shifts the fer<row> ids that FERPlus names its images by, nor breaks the row
    alignment of fer2013new.csv with fer2013.csv."""
    root = tmp_path / "fer"
    write_bytes(root / "fer2013.csv", (
        f"emotion,pixels,Usage\r\n3,{_fer_pixels(100)},Training\r\n\r\n"
        f"0,{_fer_pixels(50)},Training\r\n\r\n\r\n").encode())
    summary = convert("fer2013", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"fer0000000": "happy", "fer0000001": "angry"}
    assert train.rejected == [] and summary["datasets"][0]["num_inputs"] == 2
    write_text(root / "fer2013new.csv",
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,"
               "contempt,unknown,NF\n"
               "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
               "Training,fer0000001.png,10,0,0,0,0,0,0,0,0,0\n")
    convert("ferplus", root, tmp_path / "plus", split="train")
    plus = Dataset(tmp_path / "plus/train")
    assert plus.labels() == {"fer0000000": "happiness", "fer0000001": "neutral"}
    assert abs(np.asarray(Image.open(io.BytesIO(
        plus.records["fer0000001"].images[0])).convert("L")).mean() - 50) < 2


def test_fer2013_csv_that_cannot_be_read_names_the_line(tmp_path):
    header = "emotion,pixels,Usage\n"
    write_bytes(tmp_path / "utf/fer2013.csv", header.encode() +
                f"0,{_fer_pixels(1)},Training\n".encode() + b"3,1 2 \xff,Training\n")
    with pytest.raises(LayoutError, match=r"fer2013\.csv is not UTF-8 text: byte 6 of line 3 "
                                          r"\(0xff\)"):
        convert("fer2013", tmp_path / "utf", tmp_path / "out")
    # A quote left open swallows the rows after it: past the csv module's field limit, or to
    # the end of the file.
    rows = [f"0,{_fer_pixels(1)},Training\n", f'2,"{_fer_pixels(1)},Training\n'] + \
        [f"{i % 7},{_fer_pixels(1)},Training\n" for i in range(40)]
    write_text(tmp_path / "long/fer2013.csv", header + "".join(rows))
    with pytest.raises(LayoutError, match=r"fer2013\.csv: the CSV row that starts on line 3 "
                                          "cannot be read"):
        convert("fer2013", tmp_path / "long", tmp_path / "out")
    write_text(tmp_path / "short/fer2013.csv", header + "".join(rows[:4]))
    with pytest.raises(LayoutError, match="the CSV row that starts on line 3 runs on to line 5"):
        convert("fer2013", tmp_path / "short", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The other CSV lists read the same way.
    write_bytes(tmp_path / "affectnet/training.csv", b"1/a.jpg,0,0,1,1,x,\xff1,0,0\n")
    with pytest.raises(LayoutError, match=r"training\.csv is not UTF-8 text: byte 18 of line 1"):
        convert("affectnet-8", tmp_path / "affectnet", tmp_path / "out", split="train")


def test_ferplus_majority_rule():
    # Single votes are outliers: [3, 2, 1, 1, 1, 1, 1] has no raw majority (3 of 10) but
    # after dropping the 1s, 3 of 5 is one.
    assert ferplus_majority([3, 2, 1, 1, 1, 1, 1, 0, 0, 0]) == 0
    assert ferplus_majority([0, 4, 4, 0, 0, 0, 0, 0, 2, 0]) is None
    assert ferplus_majority([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) is None
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 0, 0, 2, 8]) == 9


def test_ferplus(tmp_path):
    root = tmp_path / "ferplus"
    pixels = [(0, 30, "Training"), (0, 60, "Training"), (0, 90, "Training"),
              (0, 120, "Training"), (0, 150, "PrivateTest")]
    write_text(root / "fer2013.csv", "emotion,pixels,Usage\n" +
               "".join(f"{e},{_fer_pixels(v)},{u}\n" for e, v, u in pixels))
    write_text(root / "fer2013new.csv",
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,"
               "contempt,unknown,NF\n"
               "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
               "Training,fer0000001.png,0,4,4,0,0,0,0,0,2,0\n"
               "Training,fer0000002.png,0,0,0,0,0,0,0,0,2,8\n"
               "Training,,0,0,0,0,0,0,0,0,0,10\n"
               "PrivateTest,fer0000004.png,3,2,1,1,1,1,1,0,0,0\n")
    convert("ferplus", root, tmp_path / "out")
    train = Dataset(tmp_path / "out/train")
    assert train.meta["classes"][:2] == ["neutral", "happiness"]
    assert train.labels() == {"fer0000000": "happiness"}
    assert train.codes() == {"fer0000001": "no_majority", "fer0000002": "excluded_class",
                             "fer0000003": "excluded_class"}
    assert abs(np.asarray(Image.open(io.BytesIO(
        train.records["fer0000000"].images[0])).convert("L")).mean() - 30) < 2
    test = Dataset(tmp_path / "out/test")
    assert test.labels() == {"fer0000004": "neutral"}
    assert Dataset(tmp_path / "out/val").records == {}  # no PublicTest row: empty, not absent


def test_ferplus_rejects_votes_that_are_not_finite(tmp_path):
    root = tmp_path / "ferplus"
    write_text(root / "fer2013.csv", "emotion,pixels,Usage\n" +
               f"0,{_fer_pixels(30)},Training\n0,{_fer_pixels(60)},Training\n")
    write_text(root / "fer2013new.csv",
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,"
               "contempt,unknown,NF\n"
               "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
               "Training,fer0000001.png,nan,10,0,0,0,0,0,0,0,0\n")
    convert("ferplus", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"fer0000000": "happiness"}
    assert train.codes() == {"fer0000001": "bad_label"}
    assert "line 3" in train.reasons["fer0000001"]


def test_fer2013_folders(tmp_path):
    root = tmp_path / "fer"
    write_image(root / "train/angry/a.png", mode="L", size=(48, 48))
    write_image(root / "train/Happy/b.png", mode="L", size=(48, 48))
    write_text(root / "train/angry/notes.txt", "x")
    write_image(root / "train/joy/c.png")
    write_image(root / "test/neutral/d.png")
    convert("fer2013-folders", root, tmp_path / "out")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"train/angry/a": "angry", "train/Happy/b": "happy"}
    assert train.records["train/Happy/b"].label_id == 3
    assert train.codes() == {"train/angry/notes": "not_an_image_file", "train/joy": "unknown_class"}
    assert train.reasons["train/angry/notes"] == \
        f"not_an_image_file: {root / 'train/angry/notes.txt'} does not have an image extension"
    assert Dataset(tmp_path / "out/test").records["test/neutral/d"].label_id == 6


def test_sfew(tmp_path):
    root = tmp_path / "sfew"
    write_image(root / "Train/Angry/1.png")
    write_image(root / "Train/Neutral/2.png")
    write_image(root / "Val/Sad/3.png")
    write_bytes(root / "Val/Sad/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    convert("sfew", root, tmp_path / "out")
    train = Dataset(tmp_path / "out/train")
    assert train.meta["classes"] == ["angry", "disgust", "fear", "happy", "neutral", "sad",
                                     "surprise"]
    assert train.labels() == {"Train/Angry/1": "angry", "Train/Neutral/2": "neutral"}
    val = Dataset(tmp_path / "out/val")
    assert val.labels() == {"Val/Sad/3": "sad"}
    assert val.codes() == {"Val/Sad/broken": "bad_image"}


def _ckplus_root(root):
    for i in range(1, 6):
        write_image(root / f"cohn-kanade-images/S005/001/S005_001_{i:08d}.png", mode="L",
                    value=40 * i)
    write_text(root / "Emotion/S005/001/S005_001_00000005_emotion.txt", "   3.0000000e+00\n")
    for i in range(1, 5):
        write_image(root / f"cohn-kanade-images/S010/002/S010_002_{i:08d}.png", mode="L")
    write_text(root / "Emotion/S010/002/S010_002_00000004_emotion.txt", "   9.0000000e+00\n")
    write_text(root / "Emotion/S011/001/S011_001_00000007_emotion.txt", "   7.0000000e+00\n")
    write_image(root / "cohn-kanade-images/S012/001/S012_001_00000001.png", mode="L")


def test_ckplus_last_frames(tmp_path):
    root = tmp_path / "ck"
    _ckplus_root(root)
    convert("ckplus", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"] == ["anger", "contempt", "disgust", "fear", "happy", "sadness",
                                  "surprise"]
    assert ds.labels() == {f"S005_001_{i:08d}": "disgust" for i in (3, 4, 5)}
    assert set(ds.groups().values()) == {"S005"}
    assert {r.label_id for r in ds.records.values()} == {2}
    assert ds.codes() == {"S010_002": "label_out_of_range", "S011_001": "image_not_found"}
    assert ds.meta["layout_info"]["unlabelled_sequences"] == 1

    convert("ckplus", root, tmp_path / "neutral", with_neutral=True)
    ds = Dataset(tmp_path / "neutral/all")
    assert ds.meta["classes"][0] == "neutral"
    assert ds.records["S005_001_00000001"].label == "neutral"
    assert ds.records["S005_001_00000001"].label_id == 0
    assert ds.records["S005_001_00000005"].label_id == 3  # the CK+ code itself


def test_ckplus_rejects_a_label_that_is_not_a_whole_number(tmp_path):
    root = tmp_path / "ck"
    _ckplus_root(root)
    for subject, text in (("S020", "nan\n"), ("S021", "4.5\n")):
        write_image(root / f"cohn-kanade-images/{subject}/001/{subject}_001_00000001.png",
                    mode="L")
        write_text(root / f"Emotion/{subject}/001/{subject}_001_00000001_emotion.txt", text)
    convert("ckplus", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.labels() == {f"S005_001_{i:08d}": "disgust" for i in (3, 4, 5)}
    assert ds.codes() == {"S010_002": "label_out_of_range", "S011_001": "image_not_found",
                          "S020_001": "bad_label", "S021_001": "bad_label"}
    assert "S020_001_00000001_emotion.txt" in ds.reasons["S020_001"]
    assert "'nan' is not a finite number" in ds.reasons["S020_001"]


def test_ckplus48_fabricated(tmp_path):
    root = tmp_path / "ck48"
    write_image(root / "anger/S010_004_00000017.png", mode="L", size=(48, 48))
    write_image(root / "surprise/S011_001_00000003.png", mode="L", size=(48, 48))
    write_image(root / "surprise/badname.png", mode="L", size=(48, 48))
    convert("ckplus48", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.groups() == {"anger/S010_004_00000017": "S010",
                           "surprise/S011_001_00000003": "S011"}
    assert ds.records["surprise/S011_001_00000003"].label_id == 6
    assert ds.codes() == {"surprise/badname": "bad_file_name"}


def test_jaffe(tmp_path):
    root = tmp_path / "jaffe"
    write_image(root / "jaffe/KA.AN1.39.tiff", mode="L")
    write_image(root / "jaffe/KM.HA2.5.tiff", mode="L")
    write_image(root / "jaffe/YM.XX1.1.tiff", mode="L")
    write_image(root / "jaffe/notes.tiff", mode="L")
    write_text(root / "README", "readme")
    convert("jaffe", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"] == ["anger", "disgust", "fear", "happiness", "neutral",
                                  "sadness", "surprise"]
    assert ds.labels() == {"KA.AN1.39": "anger", "KM.HA2.5": "happiness"}
    assert ds.groups() == {"KA.AN1.39": "KA", "KM.HA2.5": "KM"}
    assert ds.codes() == {"YM.XX1.1": "unknown_class", "notes": "bad_file_name"}


def test_imagefolder_with_and_without_classes(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "zebra/1.jpg")
    write_image(root / "ant/sub/2.png")
    write_image(root / "other/3.png")
    convert("imagefolder", root, tmp_path / "sorted")
    ds = Dataset(tmp_path / "sorted/all")
    assert ds.meta["classes"] == ["ant", "other", "zebra"]
    assert ds.labels() == {"zebra/1": "zebra", "ant/sub/2": "ant", "other/3": "other"}

    convert("imagefolder", root, tmp_path / "given", classes=["zebra", "ant"])
    ds = Dataset(tmp_path / "given/all")
    assert ds.meta["classes"] == ["zebra", "ant"]
    assert ds.records["ant/sub/2"].label_id == 1
    assert ds.codes() == {"other": "unknown_class"}
    with pytest.raises(ValueError, match="imagefolder"):
        convert("rafdb", root, tmp_path / "x", classes=["a"])


def test_an_output_inside_the_root_is_refused_before_anything_is_written(tmp_path, capsys):
    """imagefolder takes every folder of the root as a class: datasets written inside the root
    became an extra class on the next run (shifting the label ids) and their shards rejected
    inputs. Refused, naming both folders, for the root itself and any folder below it."""
    root = tmp_path / "faces"
    write_image(root / "happy/1.jpg")
    write_image(root / "sad/2.jpg")
    for output in (root / "tfrecords", root, root / "happy/out"):
        with pytest.raises(ValueError, match=f"output {output} is inside root {root}"):
            convert("imagefolder", root, output)
    assert not (root / "tfrecords").exists() and not (root / "happy/out").exists()
    # Through a link too: the folders are compared as they are on disk.
    os.symlink(root, tmp_path / "link")
    with pytest.raises(ValueError, match="is inside root"):
        convert("imagefolder", tmp_path / "link", root / "tfrecords")
    assert benchmarks.main(["--name", "imagefolder", "--root", str(root), "--output",
                            str(root / "tfrecords")]) == 2
    assert f"error: output {root / 'tfrecords'} is inside root {root}" in capsys.readouterr().err
    # A sibling folder whose name starts like the root's is outside it.
    convert("imagefolder", root, tmp_path / "faces_tfrecords")
    assert Dataset(tmp_path / "faces_tfrecords/all").meta["classes"] == ["happy", "sad"]


def test_class_folders_follow_linked_subfolders_and_list_stray_images(tmp_path):
    """A subfolder linked into a class folder holds inputs too (os.walk skipped it, so its
    images were dropped without a word), and an image directly in the class root belongs to no
    class: it is listed as rejected, not ignored like a README."""
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "1.jpg")
    write_image(elsewhere / "deeper/2.png")
    root = tmp_path / "folders"
    write_image(root / "happy/0.jpg")
    write_image(root / "sad face/é ü.png")
    os.symlink(elsewhere, root / "happy/linked")
    os.symlink(root / "happy", root / "happy/loop")  # a link back up is listed once
    write_image(root / "stray.jpg")
    write_text(root / "README.txt", "not an input")
    convert("imagefolder", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.labels() == {"happy/0": "happy", "happy/linked/1": "happy",
                           "happy/linked/deeper/2": "happy", "sad face/é ü": "sad face"}
    assert ds.codes() == {"stray": "not_in_class_folder"}
    assert f"{root / 'stray.jpg'} is not inside a class folder" in ds.reasons["stray"]

    write_image(tmp_path / "fer/train/angry/a.png")
    write_image(tmp_path / "fer/train/b.png")
    write_image(tmp_path / "fer/test/sad/c.png")
    convert("fer2013-folders", tmp_path / "fer", tmp_path / "fer_out")
    train = Dataset(tmp_path / "fer_out/train")
    assert train.labels() == {"train/angry/a": "angry"}
    assert train.codes() == {"train/b": "not_in_class_folder"}


def test_workers_are_not_forked_from_a_process_running_jax(tmp_path, monkeypatch):
    """A converter called from a process where JAX runs its thread pools (a notebook, a script
    that evaluated first) must not fork it: the children can deadlock on a lock one of those
    threads held. Before, the pool was multiprocessing's default (fork on Linux) whatever the
    process held; now it comes from emocap_jax.data.pools, as the caption converter's does."""
    jax.numpy.zeros(2).block_until_ready()

    def no_fork():
        raise AssertionError("os.fork() called in a process running JAX")

    monkeypatch.setattr("os.fork", no_fork)
    root = tmp_path / "folders"
    for i in range(4):
        write_image(root / ("ant" if i % 2 else "zebra") / f"{i}.png", value=40 * i)
    convert("imagefolder", root, tmp_path / "out", workers=2)
    ds = Dataset(tmp_path / "out/all")
    assert ds.labels() == {"zebra/0": "zebra", "ant/1": "ant", "zebra/2": "zebra", "ant/3": "ant"}


def test_file_names_that_are_not_utf8_are_rejected_one_by_one(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "cls/ok.jpg")
    image = write_image(tmp_path / "image.jpg").read_bytes()
    bad_file = os.fsencode(root / "cls") + b"/\xff.jpg"
    bad_folder = os.fsencode(root) + b"/cl\xe9s"
    os.mkdir(bad_folder)
    for path in (bad_file, bad_folder + b"/1.jpg"):
        with open(path, "wb") as f:
            f.write(image)
    convert("imagefolder", root, tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"] == ["cls"]
    assert ds.labels() == {"cls/ok": "cls"}
    assert ds.codes() == {"cls/\\xff": "bad_file_name", "cl\\xe9s": "bad_file_name"}
    assert "cls/\\xff.jpg: the name is not UTF-8" in ds.reasons["cls/\\xff"]
    assert "its 1 files were not read" in ds.reasons["cl\\xe9s"]

    # Other readers list such files too; the hold-out split hashes ids, so it must not see them.
    write_image(tmp_path / "jaffe/KA.AN1.39.tiff", mode="L")
    with open(os.fsencode(tmp_path / "jaffe") + b"/KA.AN1.4\xff.tiff", "wb") as f:
        f.write(image)
    with open(os.fsencode(tmp_path / "jaffe") + b"/KM.HA\xff.1.tiff", "wb") as f:
        f.write(image)
    convert("jaffe", tmp_path / "jaffe", tmp_path / "jaffe_out", val_fraction=0.5)
    train, val = Dataset(tmp_path / "jaffe_out/train"), Dataset(tmp_path / "jaffe_out/val")
    assert {**train.codes(), **val.codes()} == {"KA.AN1.4\\xff": "bad_file_name",
                                                 "KM.HA\\xff.1": "bad_file_name"}
    assert len(train.records) + len(val.records) == 1


def test_list_lines_without_a_name_are_rejected_naming_the_line(tmp_path):
    """A label-list row whose name cell is empty (",2") has no record id: it was an entry with
    id "", which decoded the whole clip folder and then ended the conversion with 'record id
    must be a non-empty string', naming no file or line."""
    root = tmp_path / "dfew"
    write_frame_folder(root / "Clip/clip_224x224/00001", num_frames=2)
    write_image(root / "Clip/clip_224x224/stray.jpg")
    write_text(root / "EmoLabel_DataSplit/train(single-labeled)/set_1.csv",
               "video_name,label\n1,1\n ,2\n")
    convert("dfew", root, tmp_path / "out", fold=1, split="train", frames=2)
    train = Dataset(tmp_path / "out/fold1/train")
    assert train.labels() == {"00001": "happy"}
    assert train.rejected == [{"line": 3, "id": None, "reason": "malformed_line: line 3 of "
                               + os.path.join("EmoLabel_DataSplit", "train(single-labeled)",
                                              "set_1.csv") + " has no video_name"}]

    root = tmp_path / "ferv"
    write_text(root / "4_setups/All_scenes/train_All.csv", "Action/Happy/0001 Happy\n, Happy\n")
    write_frame_folder(root / "2_ClipsforFaceCrop/Action/Happy/0001", num_frames=2)
    write_image(root / "2_ClipsforFaceCrop/stray.jpg")
    convert("ferv39k", root, tmp_path / "ferv_out", split="train", frames=2)
    train = Dataset(tmp_path / "ferv_out/train")
    assert train.labels() == {"Action/Happy/0001": "happy"}
    assert [(r["line"], r["id"], r["reason"].split(":")[0]) for r in train.rejected] == \
        [(2, None, "malformed_line")]
    assert "has no clip path" in train.rejected[0]["reason"]

    root = tmp_path / "affectnet"
    write_image(root / "Manually_Annotated_Images/1/a.jpg")
    write_text(root / "training.csv", "1/a.jpg,0,0,1,1,x,1,0,0\n ,0,0,1,1,x,2,0,0\n")
    convert("affectnet-8", root, tmp_path / "aff_out", split="train")
    train = Dataset(tmp_path / "aff_out/train")
    assert train.labels() == {"1/a": "happy"}
    assert train.rejected == [{"line": 2, "id": None, "reason": "malformed_line: line 2 of "
                               f"{root / 'training.csv'} has no image path"}]


def test_an_entry_with_an_empty_id_is_rejected_not_fatal(tmp_path, monkeypatch):
    """Whatever reader lists it, an entry without an id is rejected naming its source and line,
    and the conversion of the others goes on."""
    from data_prep.benchmark_formats import READERS, common
    image = write_image(tmp_path / "img.jpg")

    def reader(root, split, fold, options):
        return common.SplitListing(classes=["a"], items=[
            common.Entry(id="ok", label="a", label_id=0, source=str(image), line=1),
            common.Entry(id=" ", label="a", label_id=0, source=str(image), line=2)])

    monkeypatch.setitem(READERS, "imagefolder", reader)
    (tmp_path / "root").mkdir()
    convert("imagefolder", tmp_path / "root", tmp_path / "out")
    ds = Dataset(tmp_path / "out/all")
    assert list(ds.records) == ["ok"]
    assert ds.rejected == [{"line": 2, "id": None, "reason":
                            f"malformed_entry: {image} (line 2) has no record id"}]


def test_an_existing_dataset_in_a_later_split_is_refused_before_any_is_written(tmp_path):
    """Converting every split into a folder where one split's dataset already exists used to
    convert the splits before it (hours, for a large benchmark) and only then refuse."""
    root = tmp_path / "raf"
    write_text(root / "basic/EmoLabel/list_patition_label.txt",
               "train_00001.jpg 5\ntest_00001.jpg 7\n")
    for stem in ("train_00001", "test_00001"):
        write_image(root / f"basic/Image/aligned/{stem}_aligned.jpg")
    convert("rafdb", root, tmp_path / "out", split="test")
    with pytest.raises(FileExistsError, match=r"out/test already holds a dataset"):
        convert("rafdb", root, tmp_path / "out")
    assert not (tmp_path / "out/train").exists()
    convert("rafdb", root, tmp_path / "out", overwrite=True)
    assert Dataset(tmp_path / "out/train").labels() == {"train_00001": "sadness"}


def test_duplicate_id_names_the_line_that_first_used_it(tmp_path):
    root = tmp_path / "raf"
    write_text(root / "basic/EmoLabel/list_patition_label.txt",
               "train_00001.jpg 5\ntrain_00001.jpg 3\n")
    write_image(root / "basic/Image/aligned/train_00001_aligned.jpg")
    convert("rafdb", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"train_00001": "sadness"}
    assert train.rejected[0]["line"] == 2
    assert "first listed on line 1" in train.rejected[0]["reason"]


def test_natural_order_is_total():
    # Names the natural order ranks alike keep one order whatever order they are listed in.
    names = ["frame10.jpg", "a.jpg", "frame2.jpg", "A.jpg", "1.jpg", "01.jpg"]
    expected = ["01.jpg", "1.jpg", "A.jpg", "a.jpg", "frame2.jpg", "frame10.jpg"]
    assert sorted(names, key=natural_key) == expected
    assert sorted(reversed(names), key=natural_key) == expected


# ---------------------------------------------------------------- real data: CK+48

CKPLUS48_COUNTS = {"anger": 135, "contempt": 54, "disgust": 177, "fear": 75, "happy": 207,
                   "sadness": 84, "surprise": 249}


def test_imagefolder_and_ckplus48_on_shared_data(shared_data_dir, tmp_path):
    root = shared_data_dir / "ckplus48"
    if not root.is_dir():
        pytest.skip("../shared/data/ckplus48 is absent")
    convert("imagefolder", root, tmp_path / "if", workers=2)
    ds = Dataset(tmp_path / "if/all")
    assert len(ds.records) == 981 and ds.rejected == []
    assert ds.meta["classes"] == sorted(CKPLUS48_COUNTS)
    assert ds.meta["class_counts"] == CKPLUS48_COUNTS

    convert("ckplus48", root, tmp_path / "ck", workers=1)
    ck = Dataset(tmp_path / "ck/all")
    assert len(ck.records) == 981 and ck.rejected == []
    assert ck.meta["class_counts"] == CKPLUS48_COUNTS
    assert len(set(ck.groups().values())) == 118
    for record_id, group in ck.groups().items():
        assert record_id.split("/")[1].startswith(group + "_")
    # Same records whichever converter and however many workers.
    assert {i: r.images for i, r in ck.records.items()} == \
        {i: r.images for i, r in ds.records.items()}


# ---------------------------------------------------------------- video benchmarks

def _dfew_root(root):
    header = "video_name,label\n"
    write_text(root / "EmoLabel_DataSplit/train(single-labeled)/set_1.csv",
               header + "1,1\n2,7\n3,4\n4,8\n")
    write_text(root / "EmoLabel_DataSplit/test(single-labeled)/set_1.csv", header + "5,3\n")
    write_frame_folder(root / "Clip/clip_224x224/00001")
    write_video(root / "Clip/original/00002.avi")
    write_video(root / "Clip/original/00004.avi")
    write_frame_folder(root / "Clip/clip_224x224/00005", num_frames=3)


def test_dfew_fold_frames_and_rejections(tmp_path):
    root = tmp_path / "dfew"
    _dfew_root(root)
    summary = convert("dfew", root, tmp_path / "out", fold=1, frames=FRAMES)
    assert [(d["fold"], d["split"]) for d in summary["datasets"]] == [(1, "train"), (1, "test")]
    train = Dataset(tmp_path / "out/fold1/train")
    assert train.meta["classes"] == ["happy", "sad", "neutral", "angry", "surprise", "disgust",
                                     "fear"]
    assert (train.meta["fold"], train.meta["split"]) == (1, "train")
    assert train.meta["frames_per_record"] == FRAMES
    assert train.labels() == {"00001": "happy", "00002": "fear"}
    assert_uniform_frames(train.records["00001"])  # frame folder
    assert_uniform_frames(train.records["00002"])  # decoded .avi
    assert train.codes() == {"00003": "video_not_found", "00004": "label_out_of_range"}
    test = Dataset(tmp_path / "out/fold1/test")
    # 3 frames, 4 wanted: indices round(linspace(0, 2, 4)) = 0, 1, 1, 2.
    assert_uniform_frames(test.records["00005"], num_source_frames=3)

    with pytest.raises(LayoutError, match=r"set_2\.csv"):
        convert("dfew", root, tmp_path / "all_folds")
    with pytest.raises(ValueError, match="folds"):
        convert("dfew", root, tmp_path / "bad_fold", fold=6)


def test_dfew_labels_are_whole_finite_numbers(tmp_path):
    root = tmp_path / "dfew"
    write_text(root / "EmoLabel_DataSplit/train(single-labeled)/set_1.csv",
               "video_name,label\n1,2.0\n2,3.9\n3,inf\n")
    for n in (1, 2, 3):
        write_frame_folder(root / f"Clip/clip_224x224/{n:05d}", num_frames=2)
    convert("dfew", root, tmp_path / "out", fold=1, split="train", frames=2)
    train = Dataset(tmp_path / "out/fold1/train")
    assert train.labels() == {"00001": "sad"}
    assert train.codes() == {"00002": "bad_label", "00003": "bad_label"}
    assert "line 3 of" in train.reasons["00002"]
    assert "'3.9' is not a whole number" in train.reasons["00002"]
    assert "'inf' is not a finite number" in train.reasons["00003"]


def test_ferv39k(tmp_path):
    root = tmp_path / "ferv"
    write_text(root / "4_setups/All_scenes/train_All.csv",
               "Action/Happy/0001 Happy\nAction/Sad/0003 Sad\nTalk/Joy/0004 Joy\n")
    write_text(root / "4_setups/All_scenes/test_All.csv", "Talk/Sad/0002 Sad\n")
    write_frame_folder(root / "2_ClipsforFaceCrop/Action/Happy/0001")
    write_frame_folder(root / "2_ClipsforFaceCrop/Talk/Sad/0002", num_frames=5)
    convert("ferv39k", root, tmp_path / "out", frames=FRAMES)
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"Action/Happy/0001": "happy"}
    assert train.records["Action/Happy/0001"].label_id == 3
    assert_uniform_frames(train.records["Action/Happy/0001"])
    assert train.codes() == {"Action/Sad/0003": "video_not_found",
                             "Talk/Joy/0004": "unknown_class"}
    test = Dataset(tmp_path / "out/test")
    assert_uniform_frames(test.records["Talk/Sad/0002"], num_source_frames=5)


def test_ferv39k_first_line_is_data_unless_it_names_columns(tmp_path):
    root = tmp_path / "ferv"
    write_text(root / "4_setups/All_scenes/train_All.csv", "clip0 Joyful\nAction/Happy/0001 Happy\n")
    write_text(root / "4_setups/All_scenes/test_All.csv", "video_path,label\nTalk/Sad/0002 Sad\n")
    write_frame_folder(root / "2_ClipsforFaceCrop/Action/Happy/0001", num_frames=2)
    write_frame_folder(root / "2_ClipsforFaceCrop/Talk/Sad/0002", num_frames=2)
    convert("ferv39k", root, tmp_path / "out", frames=2)
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"Action/Happy/0001": "happy"}
    assert train.codes() == {"clip0": "unknown_class"}
    assert train.rejected[0]["line"] == 1
    test = Dataset(tmp_path / "out/test")  # the header is not an input
    assert test.labels() == {"Talk/Sad/0002": "sad"} and test.rejected == []


def test_mafw_single(tmp_path):
    root = tmp_path / "mafw"
    lists = root / "Train & Test Set/single/no_caption/set_2"
    write_text(lists / "train.txt", "00001.mp4 anger\n00002.mp4 helplessness\n"
                                    "00003.mp4 sadness\n00004.mp4 fear\n")
    write_text(lists / "test.txt", "00005.mp4 disappointment\n")
    write_video(root / "data/clips/00001.mp4")
    write_frame_folder(root / "data/frames/00002")
    write_text(root / "data/frames/00002/n_frames", "10")  # MAFW ships this beside the frames
    write_bytes(root / "data/clips/00004.mp4", b"\x00\x00\x00\x18ftypmp42 garbage" * 4)
    write_video(root / "data/clips/00005.mp4", num_frames=6)
    convert("mafw", root, tmp_path / "out", fold=2, frames=FRAMES)
    train = Dataset(tmp_path / "out/fold2/train")
    assert len(train.meta["classes"]) == 11
    assert train.labels() == {"00001": "anger", "00002": "helplessness"}
    assert train.records["00002"].label_id == 9
    assert_uniform_frames(train.records["00001"])
    assert_uniform_frames(train.records["00002"])
    assert train.codes() == {"00003": "video_not_found", "00004": "bad_video"}
    test = Dataset(tmp_path / "out/fold2/test")
    assert test.records["00005"].label_id == 10
    assert_uniform_frames(test.records["00005"], num_source_frames=6)
    assert not (tmp_path / "out/fold1").exists()


def test_mafw_compound(tmp_path):
    root = tmp_path / "mafw"
    lists = root / "Train & Test Set/compound/no_caption"
    write_text(lists / "set_1/train.txt", "00001.mp4 anger_disgust\n00002.mp4 neutral\n"
                                          "00003.mp4 anger_joy\n")
    write_text(lists / "set_1/test.txt", "00004.mp4 fear_surprise\n")
    write_text(lists / "set_2/train.txt", "00005.mp4 sadness_helplessness\n")
    for stem in ("00001", "00002", "00003", "00004"):
        write_video(root / f"data/clips/{stem}.mp4", num_frames=4)
    convert("mafw-compound", root, tmp_path / "out", fold=1, frames=2)
    train = Dataset(tmp_path / "out/fold1/train")
    assert train.meta["classes"] == ["neutral", "anger_disgust", "fear_surprise",
                                     "sadness_helplessness"]
    assert train.labels() == {"00001": "anger_disgust", "00002": "neutral"}
    assert train.codes() == {"00003": "unknown_class"}
    assert all(len(r.images) == 2 for r in train.records.values())
    assert Dataset(tmp_path / "out/fold1/test").labels() == {"00004": "fear_surprise"}


def test_afew(tmp_path):
    root = tmp_path / "afew"
    write_video(root / "Train_AFEW/Angry/000046280.avi")
    write_video(root / "Val_AFEW/Happy/000150120.avi")
    write_image(root / "Train_AFEW/AlignedFaces_LBPTOP_Points/x/1.png")
    convert("afew", root, tmp_path / "out", frames=FRAMES)
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"Train_AFEW/Angry/000046280": "angry"}
    assert_uniform_frames(train.records["Train_AFEW/Angry/000046280"])
    assert train.codes() == {"Train_AFEW/AlignedFaces_LBPTOP_Points": "unknown_class"}
    assert Dataset(tmp_path / "out/val").records["Val_AFEW/Happy/000150120"].label_id == 3


def test_crema_d(tmp_path):
    root = tmp_path / "crema"
    write_video(root / "VideoFlash/1001_DFA_ANG_XX.flv")
    write_video(root / "VideoFlash/1002_IEO_HAP_HI.flv", num_frames=7)
    write_bytes(root / "VideoFlash/1003_TIE_BOR_XX.flv", b"FLV")
    convert("crema-d", root, tmp_path / "out", frames=FRAMES)
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"] == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    assert ds.labels() == {"1001_DFA_ANG_XX": "anger", "1002_IEO_HAP_HI": "happy"}
    assert ds.groups() == {"1001_DFA_ANG_XX": "1001", "1002_IEO_HAP_HI": "1002"}
    # FLV carries no frame count: the sample comes from the decoded count.
    assert_uniform_frames(ds.records["1001_DFA_ANG_XX"])
    assert_uniform_frames(ds.records["1002_IEO_HAP_HI"], num_source_frames=7)
    assert ds.codes() == {"1003_TIE_BOR_XX": "unknown_class"}


def test_ravdess(tmp_path):
    root = tmp_path / "ravdess"
    write_video(root / "Actor_01/01-01-03-01-01-01-01.mp4", num_frames=3)
    write_video(root / "Actor_01/02-01-03-01-01-01-01.mp4", num_frames=3)
    write_video(root / "Actor_01/01-02-05-02-02-01-01.mp4", num_frames=3)
    write_video(root / "Actor_02/02-01-08-02-01-01-02.mp4", num_frames=3)
    write_video(root / "Actor_02/02-01-09-02-01-01-02.mp4", num_frames=3)
    write_video(root / "Actor_02/03-01-01-01-01-01-02.mp4", num_frames=3)
    convert("ravdess", root, tmp_path / "out", frames=2)
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"][:2] == ["neutral", "calm"]
    assert ds.labels() == {"02-01-03-01-01-01-01": "happy", "01-02-05-02-02-01-01": "angry",
                           "02-01-08-02-01-01-02": "surprised"}
    assert ds.groups()["02-01-08-02-01-01-02"] == "Actor_02"
    assert ds.codes() == {"01-01-03-01-01-01-01": "duplicate_video",
                          "02-01-09-02-01-01-02": "label_out_of_range",
                          "03-01-01-01-01-01-02": "not_a_video_file"}


def test_enterface05(tmp_path):
    root = tmp_path / "enterface"
    write_video(root / "subject 1/anger/sentence 1/s1_an_1.avi", num_frames=3)
    write_video(root / "subject 6/happiness/s6_ha_1.avi", num_frames=3)
    write_video(root / "subject 1/joy/sentence 1/s1_jo_1.avi", num_frames=3)
    convert("enterface05", root, tmp_path / "out", frames=3)
    ds = Dataset(tmp_path / "out/all")
    assert ds.meta["classes"] == ["anger", "disgust", "fear", "happiness", "sadness",
                                  "surprise"]
    assert ds.groups() == {"subject 1/anger/sentence 1/s1_an_1": "subject 1",
                           "subject 6/happiness/s6_ha_1": "subject 6"}
    assert ds.records["subject 6/happiness/s6_ha_1"].label_id == 3
    assert ds.codes() == {"subject 1/joy": "unknown_class"}


# ---------------------------------------------------------------- CLI and determinism

def test_cli_list_errors_and_worker_determinism(tmp_path, capsys):
    assert benchmarks.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in LAYOUTS:
        assert name in listed

    root = tmp_path / "sfew"
    for i in range(12):
        write_image(root / f"Train/{['Angry', 'Sad', 'Happy'][i % 3]}/{i}.png", value=10 * i)
        write_image(root / f"Val/Fear/{i}.png", value=10 * i)
    args = ["--name", "sfew", "--root", str(root), "--num-shards", "3"]
    assert benchmarks.main(args + ["--output", str(tmp_path / "w1"), "--workers", "1"]) == 0
    assert benchmarks.main(args + ["--output", str(tmp_path / "w2"), "--workers", "2"]) == 0
    for split in ("train", "val"):
        for shard in shard_writer.shard_paths(tmp_path / "w1" / split):
            other = tmp_path / "w2" / split / pathlib.Path(shard).name
            assert pathlib.Path(shard).read_bytes() == other.read_bytes()
    assert benchmarks.main(args + ["--output", str(tmp_path / "w1")]) == 2  # exists
    capsys.readouterr()
    assert benchmarks.main(["--name", "ckplus", "--root", str(root), "--output",
                            str(tmp_path / "x")]) == 2
    assert "cohn-kanade-images" in capsys.readouterr().err


def test_an_empty_image_file_and_a_utf16_label_list_are_named_as_such(tmp_path):
    root = tmp_path / "raf"
    labels = root / "basic/EmoLabel/list_patition_label.txt"
    write_bytes(labels, "train_00001.jpg 5\r\ntrain_00002.jpg 1\r\n".encode("utf-16"))
    write_image(root / "basic/Image/aligned/train_00001_aligned.jpg")
    write_bytes(root / "basic/Image/aligned/train_00002_aligned.jpg", b"")
    with pytest.raises(LayoutError, match=r"list_patition_label\.txt is UTF-16 text \(it starts "
                                          r"with the byte-order mark ff fe\); save it as UTF-8"):
        convert("rafdb", root, tmp_path / "out")
    write_text(labels, "train_00001.jpg 5\ntrain_00002.jpg 1\n")
    convert("rafdb", root, tmp_path / "out", split="train")
    train = Dataset(tmp_path / "out/train")
    assert train.labels() == {"train_00001": "sadness"}
    assert train.reasons["train_00002"] == \
        f"bad_image: {root / 'basic/Image/aligned/train_00002_aligned.jpg'} is empty (0 bytes)"
    write_bytes(tmp_path / "dfew/EmoLabel_DataSplit/train(single-labeled)/set_1.csv",
                "video_name,label\n1,1\n".encode("utf-16"))
    with pytest.raises(LayoutError, match=r"set_1\.csv is UTF-16 text"):
        convert("dfew", tmp_path / "dfew", tmp_path / "dfew_out", fold=1, split="train")
