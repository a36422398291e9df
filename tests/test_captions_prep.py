"""The caption-corpus converter on a fabricated manifest mixing good lines with every kind of
bad line: good ones written intact, bad ones rejected with the right reason, output
deterministic and atomic."""
import io
import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from PIL import Image

from data_prep import captions as captions_cli
from emocap_jax.data import manifest as captions
from emocap_jax.data import example_codec, label_captions, shard_writer, tfrecord
from emocap_jax.evaluate import prompts


def _save(img, path, fmt, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kwargs)
    return path


def _gradient(size, mode="RGB"):
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1)
    return Image.fromarray(rgb, "RGB").convert(mode) if mode != "RGB" else \
        Image.fromarray(rgb, "RGB")


def _caption(i):
    return {"global": f"Face {i} portrays a mild expression of contentment.",
            "local": [f"The cheeks of face {i} are slightly raised.",
                      "The lip corners are pulled up with low intensity."],
            "summary": f"Face {i} looks content, shown by raised cheeks."}


class Corpus:
    """A manifest plus images in tmp_path; remembers what each line should become."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.lines: list[bytes] = []
        self.good: dict[str, dict] = {}  # id -> manifest object, in input order
        self.expected_rejections: dict[int, str] = {}  # line -> reason code

    def add_good(self, obj):
        self.lines.append(json.dumps(obj, ensure_ascii=False).encode("utf-8"))
        self.good[obj["id"]] = obj

    def add_bad(self, line, code):
        self.lines.append(line if isinstance(line, bytes) else
                          json.dumps(line, ensure_ascii=False).encode("utf-8"))
        self.expected_rejections[len(self.lines)] = code

    def write(self, name="manifest.jsonl"):
        path = self.root / name
        path.write_bytes(b"\n".join(self.lines) + b"\n")
        return path


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    img_dir = root / "images"
    c = Corpus(root)
    _save(_gradient((40, 30)), img_dir / "rgb.png", "PNG")
    _save(_gradient((64, 48)), img_dir / "rgb.jpg", "JPEG", quality=90)
    _save(_gradient((36, 36), "L"), img_dir / "gray.png", "PNG")
    _save(_gradient((32, 40), "CMYK"), img_dir / "cmyk.jpg", "JPEG")
    rgba = _gradient((30, 30), "RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(15), (30, 1))))
    _save(rgba, img_dir / "rgba.png", "PNG")  # left half fully transparent
    _save(_gradient((24, 24), "P"), img_dir / "palette.gif", "GIF")
    _save(_gradient((120, 60)), img_dir / "wide.jpg", "JPEG")
    full_jpeg = (img_dir / "rgb.jpg").read_bytes()
    (img_dir / "truncated.jpg").write_bytes(full_jpeg[:len(full_jpeg) // 2])
    (img_dir / "notes.jpg").write_text("this is a text file, not an image\n")

    c.add_good({"id": "png", "image": "images/rgb.png", **_caption(0)})
    c.add_good({"id": "jpeg", "image": "images/rgb.jpg", **_caption(1), "label": "content",
                "aus": {"AU6": 0.5, "AU12": 0.25}, "group": "movie_1"})
    c.add_bad(b'{"id": "broken", "image": "images/rgb.png", "global": ', captions.MALFORMED_JSON)
    c.add_good({"id": "gray", "image": "images/gray.png", **_caption(2)})
    c.add_bad({"id": "trunc", "image": "images/truncated.jpg", **_caption(3)}, captions.BAD_IMAGE)
    c.add_good({"id": "cmyk", "image": "images/cmyk.jpg", **_caption(4)})
    c.add_bad({"id": "text", "image": "images/notes.jpg", **_caption(5)}, captions.BAD_IMAGE)
    c.add_bad('{"id": "latin1", "image": "images/rgb.png", "global": "caf\xe9"}'.encode("latin-1"),
              captions.NOT_UTF8)
    c.add_good({"id": "rgba", "image": "images/rgba.png", **_caption(6)})
    c.add_bad({"id": "png", "image": "images/gray.png", **_caption(7)}, captions.DUPLICATE_ID)
    c.add_bad({"id": "nosum", "image": "images/rgb.png", **_caption(8), "summary": "  "},
              captions.EMPTY_CAPTION)
    c.add_good({"id": "palette", "image": "images/palette.gif", **_caption(9)})
    c.add_bad({"id": "long", "image": "images/rgb.png", **_caption(10),
               "local": ["The brows are raised.", " ".join(["word"] * 1000)]},
              captions.SENTENCE_TOO_LONG)
    c.add_bad({"id": "noimgfield", **_caption(11)}, captions.MISSING_IMAGE)
    c.add_bad({"id": "nofile", "image": "images/absent.jpg", **_caption(12)},
              captions.IMAGE_NOT_FOUND)
    c.add_bad({"image": "images/rgb.png", **_caption(13)}, captions.MISSING_ID)
    c.add_good({"id": "unicode_é", "image": "images/wide.jpg", "global": "Ça sourit 😊 fort.",
                "local": [], "summary": "  Heureux: joues relevées.  ", "label": "joie"})
    c.add_bad({"id": 17, "image": "images/rgb.png", **_caption(14)}, captions.BAD_TYPE)
    c.add_bad({"id": "localstr", "image": "images/rgb.png", **_caption(15), "local": "one"},
              captions.BAD_TYPE)
    c.add_bad({"id": "emptylocal", "image": "images/rgb.png", **_caption(16),
               "local": ["fine", ""]}, captions.EMPTY_CAPTION)
    c.add_bad({"id": "noglobal", "image": "images/rgb.png", "local": [], "summary": "s."},
              captions.MISSING_CAPTION)
    c.add_bad({"id": "badau", "image": "images/rgb.png", **_caption(17), "aus": {"AU1": "hi"}},
              captions.BAD_TYPE)
    c.add_bad(b'{"id": "surrogate", "image": "images/rgb.png", "global": "bad \\ud800",'
              b' "local": [], "summary": "s."}', captions.NOT_UTF8)
    c.add_bad(b"[1, 2, 3]", captions.NOT_AN_OBJECT)
    c.add_bad(b"   ", captions.BLANK_LINE)
    c.add_bad({"id": "numcap", "image": "images/rgb.png", **_caption(18), "summary": 5},
              captions.BAD_TYPE)
    # Valid JSON, but no file name holds a NUL: open() raised ValueError and ended the run.
    c.add_bad({"id": "nulpath", "image": "images/rgb\u0000.png", **_caption(19)},
              captions.BAD_VALUE)
    return c


def read_records(dataset_dir):
    """Records of all shards, in input order (shards hold records round-robin)."""
    shards = [[example_codec.decode_record(payload) for _, payload in tfrecord.iter_records(p)]
              for p in shard_writer.shard_paths(dataset_dir)]
    ordered = []
    for i in range(max(len(s) for s in shards)):
        ordered.extend(s[i] for s in shards if i < len(s))
    return ordered


def read_rejected(dataset_dir):
    return [json.loads(line) for line in
            (pathlib.Path(dataset_dir) / "rejected.jsonl").read_text("utf-8").splitlines()]


def test_good_lines_written_bad_lines_rejected_with_reasons(corpus, tmp_path):
    manifest = corpus.write()
    out = tmp_path / "out"
    summary = captions.convert_manifest(manifest, corpus.root, out, num_shards=3, workers=1,
                                        progress=False)

    records = read_records(out)
    assert [r.id for r in records] == list(corpus.good)
    for record in records:
        source = corpus.good[record.id]
        assert record.global_caption == source["global"].strip()
        assert record.local_captions == [s.strip() for s in source["local"]]
        assert record.summary == source["summary"].strip()
        assert record.label == source.get("label", "") and record.label_id == -1
        assert record.aus == source.get("aus", {})
        assert record.group == source.get("group", "")
        assert record.image_format == "jpeg" and len(record.images) == 1
        image = Image.open(io.BytesIO(record.images[0]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == Image.open(corpus.root / source["image"]).size

    by_id = {r.id: r for r in records}
    # An RGB JPEG that needs no change is stored as is, not recompressed.
    assert by_id["jpeg"].images[0] == (corpus.root / "images/rgb.jpg").read_bytes()
    # Transparent pixels become white; opaque ones keep their colour.
    rgba_out = np.asarray(Image.open(io.BytesIO(by_id["rgba"].images[0])), dtype=int)
    assert (rgba_out[:, :12] > 240).all()
    opaque_source = np.asarray(Image.open(corpus.root / "images/rgba.png").convert("RGB"), int)
    assert np.abs(rgba_out[:, 18:] - opaque_source[:, 18:]).mean() < 6

    rejected = read_rejected(out)
    assert {entry["line"]: entry["reason"].split(":")[0] for entry in rejected} == \
        corpus.expected_rejections
    assert [entry["line"] for entry in rejected] == sorted(corpus.expected_rejections)
    reasons = {entry["id"]: entry["reason"] for entry in rejected if entry["id"]}
    assert reasons["png"] == "duplicate_id: id first seen on line 1"
    assert "'local'[1] has 1000 words (max 200)" in reasons["long"]
    assert "truncated.jpg" in reasons["trunc"] and "notes.jpg" in reasons["text"]
    assert "'summary' is empty" in reasons["nosum"]
    assert reasons["localstr"] == "bad_type: 'local' must be a list of strings, got str"
    assert reasons["nulpath"] == "bad_value: 'image' contains a NUL character (U+0000)"
    latin1_line = next(e for e in rejected if e["reason"].startswith("not_utf8: byte"))
    assert latin1_line["id"] is None

    num_lines = len(corpus.lines)
    assert summary["num_lines"] == num_lines
    assert summary["num_written"] == len(corpus.good)
    assert summary["num_rejected"] == len(corpus.expected_rejections)
    assert summary["num_written"] + summary["num_rejected"] == num_lines
    metadata = shard_writer.load_metadata(out)
    assert metadata["num_records"] == len(corpus.good)
    assert metadata["num_rejected"] == len(corpus.expected_rejections)
    assert metadata["num_input_lines"] == num_lines
    assert metadata["created_by"] == "data_prep.captions"
    assert sum(metadata["rejected_by_reason"].values()) == len(corpus.expected_rejections)
    assert metadata["label_counts"] == {"content": 1, "joie": 1}


def test_rerun_is_byte_identical_whatever_the_worker_count(corpus, tmp_path):
    manifest = corpus.write()
    captions.convert_manifest(manifest, corpus.root, tmp_path / "a", num_shards=4, workers=1,
                              progress=False)
    captions.convert_manifest(manifest, corpus.root, tmp_path / "b", num_shards=4, workers=2,
                              progress=False)
    files_a = shard_writer.shard_paths(tmp_path / "a")
    files_b = shard_writer.shard_paths(tmp_path / "b")
    assert [pathlib.Path(p).name for p in files_a] == [pathlib.Path(p).name for p in files_b]
    for a, b in zip(files_a, files_b):
        assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
    assert (tmp_path / "a" / "rejected.jsonl").read_bytes() == \
        (tmp_path / "b" / "rejected.jsonl").read_bytes()


def test_workers_are_not_forked_from_a_process_running_jax(corpus, tmp_path, monkeypatch):
    """Training converts its corpus (train.prepare_data) in a process where JAX runs its thread
    pools; forking that process can deadlock the children (JAX warns as much), so the image
    workers are spawned there. Before, the pool forked whatever the process held."""
    jax.numpy.zeros(2).block_until_ready()  # JAX loaded and its backend running

    def no_fork():
        raise AssertionError("os.fork() called in a process running JAX")

    monkeypatch.setattr("os.fork", no_fork)
    manifest = corpus.write()
    summary = captions.convert_manifest(manifest, corpus.root, tmp_path / "out", num_shards=2,
                                        workers=2, progress=False, tokenizer=None)
    assert summary["num_written"] == len(corpus.good)


def test_max_side_resizes_keeping_aspect(corpus, tmp_path):
    manifest = corpus.write()
    out = tmp_path / "small"
    captions.convert_manifest(manifest, corpus.root, out, num_shards=2, max_side=32,
                              workers=1, progress=False)
    sizes = {r.id: Image.open(io.BytesIO(r.images[0])).size for r in read_records(out)}
    assert sizes["jpeg"] == (32, 24)  # 64x48
    assert sizes["unicode_é"] == (32, 16)  # 120x60
    assert sizes["png"] == (32, 24)  # 40x30
    assert sizes["gray"] == (32, 32)  # 36x36
    assert sizes["palette"] == (24, 24)  # already small: untouched
    assert shard_writer.load_metadata(out)["conversion"]["max_side"] == 32


def test_captions_from_labels(tmp_path):
    root = tmp_path / "root"
    _save(_gradient((20, 20)), root / "a.png", "PNG")
    lines = [{"id": "s1", "image": "a.png", "label": "sad"},
             {"id": "h1", "image": "a.png", "label": "happy"},
             {"id": "h2", "image": "a.png", "label": "happy"},
             {"id": "nolabel", "image": "a.png"},
             {"id": "s2", "image": "missing.png", "label": "surprised"}]
    manifest = root / "labels.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    with pytest.warns(captions.EmptyClassesWarning, match="'surprised'"):
        summary = captions.convert_manifest(manifest, root, out, num_shards=2, workers=1,
                                            captions_from_labels=True, progress=False)
    assert summary["num_written"] == 3 and summary["num_rejected"] == 2

    metadata = shard_writer.load_metadata(out)
    # The class list comes from the lines' text; a class may lose all images to rejections,
    # and is then reported.
    assert metadata["classes"] == ["happy", "sad", "surprised"]
    assert metadata["classes_without_records"] == summary["classes_without_records"] == \
        ["surprised"]
    records = read_records(out)
    assert [(r.id, r.label, r.label_id) for r in records] == [
        ("s1", "sad", 1), ("h1", "happy", 0), ("h2", "happy", 0)]
    for record in records:
        assert record.local_captions == []
        # The zero-shot prompts' vocabulary: "sad" is written as the prompt word "sadness".
        assert record.global_caption in [label_captions.global_caption(record.label, t)
                                         for t in range(len(label_captions.TEMPLATES))]
        assert prompts.prompt_word(record.label) in record.global_caption
        assert record.summary == prompts.description(record.label)
        assert (record.global_caption, record.summary) == \
            captions.template_captions(record.id, record.label)
    codes = {e["id"]: e["reason"].split(":")[0] for e in read_rejected(out)}
    assert codes == {"nolabel": captions.MISSING_LABEL, "s2": captions.IMAGE_NOT_FOUND}
    # Templates vary across ids (a single template for all would teach the model nothing).
    variants = {captions.template_captions(f"id{i}", "x") for i in range(50)}
    assert len({g for g, _ in variants}) == len(label_captions.TEMPLATES)


def test_captions_from_labels_classes_match_the_lines_that_can_be_written(tmp_path, capsys):
    """Before, the class list took the label of every line that parsed, a repeated id included,
    and said nothing of a class whose every image was unreadable: metadata `classes` held classes
    no record has. Now a line rejected on its text (here a repeated id) adds no class, and a
    class that loses all its images keeps its place (its label_id must not depend on which files
    happened to be readable) but is reported, by the library and the command line."""
    root = tmp_path / "root"
    _save(_gradient((20, 20)), root / "a.png", "PNG")
    (root / "broken.png").write_bytes(b"not an image")
    lines = [{"id": "h1", "image": "a.png", "label": "happy"},
             {"id": "h1", "image": "a.png", "label": "angry"},
             {"id": "f1", "image": "broken.png", "label": "fear"},
             {"id": "s1", "image": "a.png", "label": "sad"}]
    manifest = root / "labels.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    with pytest.warns(captions.EmptyClassesWarning, match=r"1 of the 3 classes .* 'fear'"):
        summary = captions.convert_manifest(manifest, root, out, num_shards=1, workers=1,
                                            captions_from_labels=True, progress=False,
                                            tokenizer=None)
    metadata = shard_writer.load_metadata(out)
    assert metadata["classes"] == ["fear", "happy", "sad"]
    assert metadata["classes_without_records"] == summary["classes_without_records"] == ["fear"]
    assert [(r.id, r.label_id) for r in read_records(out)] == [("h1", 1), ("s1", 2)]
    # The repeat is rejected as one, not for a label missing from the class list.
    codes = {e["line"]: e["reason"].split(":")[0] for e in read_rejected(out)}
    assert codes == {2: captions.DUPLICATE_ID, 3: captions.BAD_IMAGE}

    assert captions_cli.main(["--manifest", str(manifest), "--root", str(root), "--output",
                              str(tmp_path / "cli"), "--captions-from-labels", "--workers", "1",
                              "--tokenizer", "none"]) == 0
    assert "warning: every line of the classes 'fear' was rejected" in capsys.readouterr().err


def test_crash_mid_conversion_leaves_no_dataset(corpus, tmp_path, monkeypatch):
    manifest = corpus.write()
    real = captions.process_entry

    def failing(item, options):
        if getattr(item, "id", None) == "cmyk":
            raise RuntimeError("worker died")
        return real(item, options)

    monkeypatch.setattr(captions, "process_entry", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="worker died"):
        captions.convert_manifest(manifest, corpus.root, out, num_shards=2, workers=1,
                                  progress=False)
    assert list(out.iterdir()) == []


def test_a_root_whose_name_is_not_utf8_is_refused_before_converting(corpus, tmp_path, capsys):
    """Linux allows any bytes in a directory name, but metadata.json (the source paths) and
    rejected.jsonl (the image paths) are UTF-8 text: such a --root used to fail with a
    UnicodeEncodeError only when those were written, after every image had been converted, and
    left no dataset. Now it is refused first, naming the parameter."""
    root = pathlib.Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    root.mkdir()
    (root / "images").symlink_to(corpus.root / "images")
    manifest = corpus.write()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="root") as info:
        captions.convert_manifest(manifest, root, out, num_shards=2, workers=1, progress=False)
    assert "UTF-8" in str(info.value)
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        captions_cli.main(["--manifest", str(manifest), "--root", str(root),
                           "--output", str(out), "--workers", "1"])
    assert exit_info.value.code == 2
    assert "--root" in capsys.readouterr().err and not out.exists()


def test_cli_summary_exit_codes_and_overwrite(corpus, tmp_path, capsys):
    manifest = corpus.write()
    out = tmp_path / "cli"
    argv = ["--manifest", str(manifest), "--root", str(corpus.root), "--output", str(out),
            "--num-shards", "2", "--workers", "1"]
    assert captions_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{len(corpus.good)} written to {out}" in printed
    assert f"{len(corpus.expected_rejections)} rejected" in printed
    assert "duplicate_id: 1" in printed

    assert captions_cli.main(argv) == 2  # refuses to replace an existing dataset
    assert "--overwrite" in capsys.readouterr().err
    assert captions_cli.main(argv + ["--overwrite"]) == 0

    # CLIP token ids by default (and the tokenizer named in metadata.json); --tokenizer none: none.
    from emocap_jax.data.shard_writer import load_metadata
    from emocap_jax.tokenizers import get_tokenizer

    assert load_metadata(out)["tokenizer"] == get_tokenizer("clip").identity()
    assert all(r.has_tokens for r in read_records(out))
    assert captions_cli.main(argv + ["--overwrite", "--tokenizer", "none"]) == 0
    assert "tokenizer" not in load_metadata(out)
    assert not any(r.has_tokens for r in read_records(out))
    capsys.readouterr()

    with pytest.raises(SystemExit) as info:
        captions_cli.main(["--manifest", str(tmp_path / "nope.jsonl"), "--root", str(corpus.root),
                           "--output", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "nope.jsonl is not a file" in capsys.readouterr().err
    # The corpus folder where its manifest goes (data_prep.synthetic's --output): the folder is
    # named as such, with the manifest in it.
    (tmp_path / "corpus_dir").mkdir()
    (tmp_path / "corpus_dir" / "manifest.jsonl").write_text("")
    with pytest.raises(SystemExit) as info:
        captions_cli.main(["--manifest", str(tmp_path / "corpus_dir"), "--root",
                           str(corpus.root), "--output", str(tmp_path / "x")])
    assert info.value.code == 2
    assert (f"--manifest {tmp_path / 'corpus_dir'} is a folder, not the manifest file: give "
            f"{tmp_path / 'corpus_dir' / 'manifest.jsonl'}") in capsys.readouterr().err

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("not json\n")
    assert captions_cli.main(["--manifest", str(only_bad), "--root", str(corpus.root),
                              "--output", str(tmp_path / "empty"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no record was written" in err and "were not found" not in err
    # Every image missing (a --root other than the folder the paths are relative to): the
    # error says where the images were looked for.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert captions_cli.main(["--manifest", str(manifest), "--root", str(elsewhere),
                              "--output", str(tmp_path / "missing"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no record was written" in err
    assert re.search(r"; [1-9]\d* images were not found: the manifest's relative image paths "
                     rf"are read below --root {re.escape(str(elsewhere))}", err), err


def test_fixed_class_order_numbers_labels_and_rejects_unknown(tmp_path):
    from PIL import Image

    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.shard_writer import load_metadata, shard_paths
    from emocap_jax.data.tfrecord import iter_records

    lines = []
    for i, label in enumerate(["sad", "happy", "angry", "sad"]):
        Image.new("RGB", (16, 16), (i * 40, 80, 120)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "image": f"{i}.png", "global": "g.",
                                 "local": [], "summary": "s.", "label": label}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    summary = convert_manifest(tmp_path / "m.jsonl", tmp_path, tmp_path / "out", num_shards=2,
                               workers=1, progress=False, classes=["happy", "sad"])
    assert summary["num_written"] == 3 and summary["num_rejected"] == 1
    assert load_metadata(tmp_path / "out")["classes"] == ["happy", "sad"]
    got = {}
    for path in shard_paths(tmp_path / "out"):
        for _, data in iter_records(path):
            rec = decode_record(data)
            got[rec.id] = rec.label_id
    assert got == {"r0": 1, "r1": 0, "r3": 1}
    rejected = [json.loads(line)
                for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["id"] == "r2" and rejected[0]["reason"].startswith("unknown_label")


def test_action_unit_values_must_fit_float32(tmp_path):
    # 1e300 is a finite double but records store AUs as float32, where it would be inf.
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a.png")
    lines = [json.dumps({"id": f"r{i}", "image": "a.png", **_caption(i), "aus": {"AU1": value}})
             for i, value in enumerate([0.5, 1e300, -1e39, 3e38])]
    lines.append(json.dumps({"id": "r4", "image": "a.png", **_caption(4)})[:-1] +
                 ', "aus": {"AU1": 1' + "0" * 400 + "}}")
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    summary = captions.convert_manifest(tmp_path / "m.jsonl", tmp_path, tmp_path / "out",
                                        num_shards=1, workers=1, progress=False, tokenizer=None)
    assert summary["rejected_by_reason"] == {"bad_value": 3}
    rejected = {r["id"]: r["reason"] for r in read_rejected(tmp_path / "out")}
    assert set(rejected) == {"r1", "r2", "r4"}
    assert rejected["r1"] == "bad_value: 'aus'['AU1'] is 1e+300, not a finite float32 number"
    records = {r.id: r for r in read_records(tmp_path / "out")}
    assert records["r3"].aus["AU1"] == pytest.approx(3e38, rel=1e-6)


def test_a_number_python_refuses_to_parse_is_malformed_json(tmp_path):
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a.png")
    good = json.dumps({"id": "ok", "image": "a.png", **_caption(0)})
    huge = good.replace('"id": "ok"', '"id": "huge", "n": ' + "1" * 5000)
    (tmp_path / "m.jsonl").write_text(good + "\n" + huge + "\n")
    summary = captions.convert_manifest(tmp_path / "m.jsonl", tmp_path, tmp_path / "out",
                                        num_shards=1, workers=1, progress=False, tokenizer=None)
    assert (summary["num_written"], summary["rejected_by_reason"]) == (1, {"malformed_json": 1})
    (rejected,) = read_rejected(tmp_path / "out")
    assert rejected["line"] == 2 and "4300 digits" in rejected["reason"]


def test_cli_rejects_bad_classes_and_tokenizer_in_one_line(corpus, tmp_path, capsys):
    manifest = corpus.write()
    argv = ["--manifest", str(manifest), "--root", str(corpus.root), "--output",
            str(tmp_path / "out"), "--workers", "1"]
    for extra, message in [
            (["--classes", "happy,,sad"], "--classes 'happy,,sad' has an empty class name"),
            (["--classes", "happy,sad,happy"], "--classes names happy more than once"),
            (["--tokenizer", str(tmp_path / "x.model")], f"--tokenizer {tmp_path}/x.model is "
                                                         "not a file"),
            (["--tokenizer", "gpt"], "--tokenizer: unknown tokenizer 'gpt'")]:
        with pytest.raises(SystemExit) as info:
            captions_cli.main(argv + extra)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_line_that_repeats_a_key_is_rejected_naming_the_key(tmp_path):
    # json.loads keeps the last of repeated keys: the first image (or AU value) was lost unseen.
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (20, 30, 40)).save(tmp_path / "b.png")
    good = json.dumps({"id": "ok", "image": "a.png", **_caption(0)})
    two_images = good.replace('"id": "ok"', '"id": "two", "image": "b.png"')
    two_aus = json.dumps({"id": "au", "image": "a.png", **_caption(1)})[:-1] + \
        ', "aus": {"AU5": 0.9, "AU5": 0.1}}'
    (tmp_path / "m.jsonl").write_text("\n".join([good, two_images, two_aus]) + "\n")
    summary = captions.convert_manifest(tmp_path / "m.jsonl", tmp_path, tmp_path / "out",
                                        num_shards=1, workers=1, progress=False, tokenizer=None)
    assert (summary["num_written"], summary["rejected_by_reason"]) == \
        (1, {captions.DUPLICATE_KEY: 2})
    assert [r.id for r in read_records(tmp_path / "out")] == ["ok"]
    assert read_rejected(tmp_path / "out") == [
        {"line": 2, "id": None, "reason": "duplicate_key: key 'image' appears more than once; "
                                          "only the last of its values would be read"},
        {"line": 3, "id": None, "reason": "duplicate_key: key 'AU5' appears more than once in "
                                          "aus; only the last of its values would be read"}]


def test_a_utf16_manifest_is_refused_naming_its_encoding(tmp_path, capsys):
    """Windows PowerShell 5 (`... > manifest.jsonl`) and Notepad's "Unicode" write UTF-16 with a
    byte-order mark: every line used to be rejected as 'not_utf8: byte 0 of the line' or
    'malformed_json' (the NUL bytes split at each newline make extra lines), which named no
    cause. Now the file is refused before anything is written, saying what it is."""
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a.png")
    line = json.dumps({"id": "ok", "image": "a.png", **_caption(0)})
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes((line + "\r\n").encode("utf-16"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"m\.jsonl is UTF-16 text \(it starts with the "
                                         r"byte-order mark ff fe\); save it as UTF-8"):
        captions.convert_manifest(manifest, tmp_path, out, num_shards=1, workers=1,
                                  progress=False, tokenizer=None)
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        captions_cli.main(["--manifest", str(manifest), "--root", str(tmp_path),
                           "--output", str(out), "--workers", "1", "--tokenizer", "none"])
    assert exit_info.value.code == 2
    assert "--manifest" in capsys.readouterr().err and not out.exists()


def test_crlf_bom_and_lone_cr_line_endings(tmp_path):
    """CRLF and a UTF-8 BOM read as plain lines; lines separated by a lone CR (classic Mac OS)
    are one line to the reader, so its rejection says why it holds several objects."""
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a b é.png")
    lines = [json.dumps({"id": f"r{i}", "image": "a b é.png", **_caption(i)}, ensure_ascii=False)
             for i in range(3)]
    (tmp_path / "crlf.jsonl").write_bytes(
        b"\xef\xbb\xbf" + "\r\n".join(lines[:2]).encode() + b"\r\n\r\n")
    summary = captions.convert_manifest(tmp_path / "crlf.jsonl", tmp_path, tmp_path / "out",
                                        num_shards=1, workers=1, progress=False, tokenizer=None)
    assert [r.id for r in read_records(tmp_path / "out")] == ["r0", "r1"]
    assert summary["rejected_by_reason"] == {"blank_line": 1}

    (tmp_path / "cr.jsonl").write_bytes(("\r".join(lines) + "\r").encode())
    captions.convert_manifest(tmp_path / "cr.jsonl", tmp_path, tmp_path / "cr_out",
                              num_shards=1, workers=1, progress=False, tokenizer=None)
    (rejected,) = read_rejected(tmp_path / "cr_out")
    assert rejected["line"] == 1 and rejected["reason"].startswith("malformed_json: ")
    assert "carriage return (CR) without a line feed" in rejected["reason"]


def test_an_empty_image_file_is_named_as_empty(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (16, 16), (90, 80, 120)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "ok", "image": "a.png", **_caption(0)}) + "\n" +
        json.dumps({"id": "empty", "image": "empty.jpg", **_caption(1)}) + "\n")
    captions.convert_manifest(tmp_path / "m.jsonl", tmp_path, tmp_path / "out", num_shards=1,
                              workers=1, progress=False, tokenizer=None)
    (rejected,) = read_rejected(tmp_path / "out")
    assert rejected == {"line": 2, "id": "empty", "reason":
                        f"bad_image: {tmp_path / 'empty.jpg'} is empty (0 bytes)"}
