"""Inference: CLIP preprocessing of files and in-memory images, EmoCapCLIP.zero_shot against a NumPy
reference, and the `python -m emocap_jax.predict` CLI as a user runs it."""
import io
import json
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from emocap_jax import preprocess as pp
from emocap_jax.api import label_is_prompt
from tests.conftest import REPO_ROOT
from tests.inference_fixtures import (FACE_CLASSES, clip_reference_probabilities,
                                      make_tiny_export, write_faces)

TEMPLATES = ("a photo of a face showing {}.", "The face conveys {}.")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    return root, write_faces(root)


@pytest.fixture(scope="module")
def model(export_dir):
    import emocap_jax
    return emocap_jax.load(export_dir)


# ----------------------------------------------------------------------------- preprocessing

def test_centre_crop_without_resize_is_exact():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out = pp.preprocess(wide, 32)
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], wide[:, 8:40])
    tall = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pp.preprocess(tall, 32)[0], tall[8:40])
    # torchvision's offset is int(round((45 - 32) / 2)) = round(6.5) = 6 (round half to even).
    odd = rng.integers(0, 256, (32, 45, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pp.preprocess(odd, 32)[0], odd[:, 6:38])


def test_resize_shorter_side_bicubic_then_centre_crop():
    # 40 x 80: a red band over the middle columns 10..69, blue at the sides. Shorter side to 32
    # gives 32 x 64 with the band at 8..55; the central crop (columns 16..47) is all band.
    image = np.zeros((40, 80, 3), np.uint8)
    image[..., 2] = 255
    image[:, 10:70] = (255, 0, 0)
    out = pp.preprocess(Image.fromarray(image), 32)[0]
    assert out.shape == (32, 32, 3)
    assert out[..., 0].min() >= 250 and out[..., 2].max() <= 5
    # And exactly what CLIP's Resize(32, bicubic) + CenterCrop(32) gives with Pillow.
    resized = np.asarray(Image.fromarray(image).resize((64, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, resized[:, 16:48])


def test_grayscale_alpha_palette_and_16_bit_inputs(tmp_path):
    gray = np.arange(48 * 32, dtype=np.uint16).reshape(48, 32) % 256
    gray = gray.astype(np.uint8)
    expected = np.repeat(gray[8:40, :, None], 3, axis=-1)
    np.testing.assert_array_equal(pp.preprocess(Image.fromarray(gray, "L"), 32)[0], expected)
    np.testing.assert_array_equal(pp.preprocess(gray, 32)[0], expected)          # [H, W] array
    np.testing.assert_array_equal(pp.preprocess(gray[..., None], 32)[0], expected)

    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(pp.preprocess(Image.fromarray(opaque, "RGBA"), 32)[0], rgb)
    np.testing.assert_array_equal(pp.preprocess(opaque, 32)[0], rgb)

    # A grayscale PNG file and a 16-bit one (full range maps onto 0..255, not clipped).
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(pp.load_images([tmp_path / "gray.png"], 32)[0], expected)
    deep = np.full((32, 32), 65535, np.uint16)
    deep[:, :16] = 257 * 100
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = pp.load_images([tmp_path / "deep.png"], 32)[0]
    assert (out[:, :16] == 100).all() and (out[:, 16:] == 255).all()

    # A palette image with a transparent colour converts without Pillow's warning.
    palette = Image.fromarray(gray, "L").convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pp.load_images(str(tmp_path / "palette.png"), 32).shape == (1, 32, 32, 3)

    with pytest.raises(ValueError, match="uint8"):
        pp.preprocess(gray.astype(np.float32), 32)
    with pytest.raises(ValueError, match=r"shape \(32, 32, 2\)"):
        pp.preprocess(np.zeros((32, 32, 2), np.uint8), 32)


def test_images_in_the_containers_a_notebook_holds(faces):
    import jax.numpy as jnp

    _, paths = faces
    expected = pp.preprocess([str(p) for p in paths], 32)
    np.testing.assert_array_equal(pp.preprocess((p for p in paths), 32), expected)  # a generator
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    np.testing.assert_array_equal(pp.preprocess([jnp.asarray(a) for a in arrays], 32), expected)
    data = paths[0].read_bytes()
    for images, message in ((None, "got None"),
                            (data, r"got bytes.*PIL.Image.open\(io.BytesIO\(data\)\)"),
                            (io.BytesIO(data), r"got BytesIO.*PIL.Image.open\(f\)"),
                            ([paths[0], io.BytesIO(data)], r"image 1: .*got BytesIO")):
        with pytest.raises(TypeError, match=message):
            pp.preprocess(images, 32)


def test_arrays_in_another_layout_or_dtype_say_how_to_convert():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    chw = rgb.transpose(2, 0, 1)
    for images, message in (
            (chw, r"image 0: .*shape \(3, 40, 48\).*channels-first.*x.transpose\(1, 2, 0\)"),
            (np.stack([chw] * 2), r"batch of shape \(2, 3, 40, 48\): it looks channels-first.*"
                                  r"x.transpose\(0, 2, 3, 1\)"),
            ([np.stack([rgb] * 2)], r"image 0: .*shape \(2, 40, 48, 3\); it is a batch.*not inside"),
            (np.zeros((5, 40, 48), np.uint8), r"grayscale images \[N, H, W\].*x\[\.\.\., None\]"),
            (rgb / 255.0, r"float64 .*in \[0, 1\].*np.clip\(x \* 255, 0, 255\)"),
            (rgb.astype(np.float32), r"float32 .*in \[0, 255\].*np.clip\(x, 0, 255\).round\(\)"),
            (rgb.astype(np.int64), r"int64 .*in \[0, 255\].*x.astype\(np.uint8\)"),
            (rgb.astype(np.uint16) * 257, r"uint16 .*beyond 255.*x // 257"),
            (rgb > 100, r"bool.*x.astype\(np.uint8\) \* 255"),
            (rgb / 127.5 - 1, r"negative.*CLIP-normalised.*\[N, S, S, 3\]")):
        with pytest.raises(ValueError, match=message):
            pp.preprocess(images, 32)
    # Not taken for channels-first: a 3-pixel-high strip is an image like any other.
    assert pp.preprocess(rgb[:3], 32).shape == (1, 32, 32, 3)


def test_transparency_is_composited_on_white_as_the_training_converter_does(tmp_path):
    from emocap_jax.data.manifest import _to_rgb as converter_rgb

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgb[:, :8] = 0  # transparent pixels are often stored black
    alpha = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    alpha[:, :8], alpha[:, -8:] = 0, 255
    palette = Image.fromarray(rgb[..., 1]).convert("P")
    palette.info["transparency"] = 0  # the index of gray level 0: the black pixels
    images = {"rgba": Image.fromarray(np.dstack([rgb, alpha])),
              "la": Image.fromarray(np.dstack([rgb[..., 0], alpha])), "palette": palette}
    for name, image in images.items():
        expected = np.asarray(converter_rgb(image))
        image.save(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(pp.preprocess(image, 32)[0], expected, err_msg=name)
        np.testing.assert_array_equal(pp.load_images([tmp_path / f"{name}.png"], 32)[0],
                                      expected, err_msg=name)
        assert (expected[:, :8] == 255).all(), name  # transparent: white, not the stored black
    # An RGBA array is the RGBA image; opaque pixels keep their colour.
    out = pp.preprocess(np.dstack([rgb, alpha]), 32)[0]
    np.testing.assert_array_equal(out, np.asarray(converter_rgb(images["rgba"])))
    np.testing.assert_array_equal(out[:, -8:], rgb[:, -8:])


def test_16_bit_grayscale_is_scaled_alike_by_inference_and_the_training_converter(tmp_path):
    from emocap_jax.data.manifest import _to_rgb as converter_rgb, encode_face_image

    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I;16")
        converted = np.asarray(converter_rgb(image))
    inferred = pp.load_images([tmp_path / "deep.png"], 32)[0]
    np.testing.assert_array_equal(converted, inferred)
    np.testing.assert_array_equal(inferred[..., 1], np.rint(ramp / 257.0).astype(np.uint8))
    # The converter's JPEG (what a shard stores) holds the ramp too, not saturated white.
    stored = encode_face_image((tmp_path / "deep.png").read_bytes(), max_side=None)
    stored = np.asarray(Image.open(io.BytesIO(stored)), np.float64)
    assert abs(stored.mean() - inferred.mean()) < 2


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    image.save(tmp_path / "sideways.jpg", exif=exif)
    assert pp.read_image(tmp_path / "sideways.jpg").size == (20, 40)


def test_unreadable_files_are_named(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(pp.ImageReadError, match="nope.jpg: no such file"):
        pp.load_images([missing], 32)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(pp.ImageReadError, match="garbage.png: not a readable image"):
        pp.load_images([garbage], 32)
    with pytest.raises(pp.ImageReadError, match="garbage.png"):
        pp.check_image_file(garbage)
    # A truncated file has a good header (check_image_file passes) but fails to decode.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    pp.check_image_file(tmp_path / "cut.png")
    with pytest.raises(pp.ImageReadError, match="cut.png"):
        pp.load_images([tmp_path / "cut.png"], 32)
    # A 20000 x 20000 header (99 bytes on disk): Pillow refuses it as a decompression bomb.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    for read in (pp.check_image_file, lambda path: pp.load_images([path], 32)):
        with pytest.raises(pp.ImageReadError, match="bomb.png: not a readable image"):
            read(bomb)


def _png_header_only(width: int, height: int) -> bytes:
    """A grayscale PNG that claims width x height pixels and holds one compressed row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_directories_expand_sorted_and_recursive(tmp_path):
    for name in ("b/2.png", "b/1.jpg", "a.png", "b/c/3.webp", "notes.txt"):
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    found = pp.expand_image_paths([tmp_path / "root"])
    assert [p.relative_to(tmp_path / "root").as_posix() for p in found] == [
        "a.png", "b/1.jpg", "b/2.png", "b/c/3.webp"]
    assert len(pp.expand_image_paths([tmp_path / "root"], recursive=False)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(pp.ImageReadError, match="empty: directory holds no image files"):
        pp.expand_image_paths([tmp_path / "empty"])
    with pytest.raises(pp.ImageReadError, match="missing: no such file or directory"):
        pp.expand_image_paths([tmp_path / "missing"])


def test_dangling_symlink_in_a_directory_is_reported_not_dropped(tmp_path):
    """A folder's image whose symbolic link points nowhere is listed (then named as unreadable
    by check_image_file, which the CLI reports as skipped), not left out without a word."""
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "b.png").symlink_to(tmp_path / "moved_away.png")
    found = pp.expand_image_paths([root])
    assert [p.name for p in found] == ["a.png", "b.png"]
    pp.check_image_file(found[0])
    with pytest.raises(pp.ImageReadError, match=r"b\.png: no such file \(a broken symbolic link "
                                                r"to .*moved_away\.png\)"):
        pp.check_image_file(found[1])
    with pytest.raises(pp.ImageReadError, match="broken symbolic link"):
        pp.read_image(found[1])


# ----------------------------------------------------------------------------- zero-shot

def test_label_rule():
    for name in ("happiness", "happily surprised", "angry and disgusted", "Anger", "another"):
        assert not label_is_prompt(name), name
    for prompt in ("a photo of a smiling face", "An angry face", "the face of fear",
                   "She looks happy.", "Surprised!", "is this fear?"):
        assert label_is_prompt(prompt), prompt


def test_zero_shot_matches_numpy_reference(model, faces):
    _, paths = faces
    labels = ["happiness", "sadness", "happily surprised", "a photo of an angry face", "Calm."]
    probs = model.zero_shot(paths, labels, templates=TEMPLATES)
    assert probs.shape == (len(paths), len(labels)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    images = model.load_images(paths)
    reference = clip_reference_probabilities(model, images, labels, TEMPLATES,
                                             [False, False, False, True, True])
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    # The modes force one treatment on every label.
    forced = clip_reference_probabilities(model, images, labels, TEMPLATES, [True] * 5)
    np.testing.assert_allclose(model.zero_shot(paths, labels, TEMPLATES, label_mode="prompts"),
                               forced, atol=1e-5)
    named = clip_reference_probabilities(model, images, labels, TEMPLATES, [False] * 5)
    np.testing.assert_allclose(model.zero_shot(paths, labels, TEMPLATES, label_mode="names"),
                               named, atol=1e-5)


def test_tokenize_names_what_it_takes(model):
    """None or a number: "'NoneType' object is not iterable" from inside the tokenizer said
    nothing of what tokenize wants; one text, a list and a generator are all read."""
    for bad, name in ((None, "NoneType"), (3, "int")):
        with pytest.raises(TypeError, match=f"tokenize takes a text or a sequence of texts, got "
                                            f"{name}"):
            model.tokenize(bad)
    assert model.tokenize("a face").shape[0] == 1
    np.testing.assert_array_equal(model.tokenize(t for t in ["a", "b"]), model.tokenize(["a", "b"]))


def test_label_embeddings_follow_swapped_params(export_dir):
    """Label embeddings are cached per label set; parameters swapped in (another checkpoint's, a
    fine-tuned copy) get embeddings and a logit scale of their own, never the old ones (the
    scale was read once, when the model was loaded)."""
    import jax

    import emocap_jax
    from emocap_jax.evaluate.prompts import EMOTION_TEMPLATES

    def by_hand(model, labels):  # CLIP's prompt ensembling, from encode_text
        rows = []
        for label in labels:
            emb = model.encode_text(model.tokenize([t.format(label) for t in EMOTION_TEMPLATES]))
            emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            rows.append(emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0)))
        return np.stack(rows)

    model = emocap_jax.load(export_dir)
    labels = ["happiness", "sadness"]
    first = model.encode_labels(labels)
    assert model.encode_labels(labels) is first  # cached
    original = model.params
    scale = model.logit_scale
    model.params = jax.tree_util.tree_map(lambda x: x * 1.5 if x.ndim == 2 else x, original)
    model.params = {**model.params, "logit_scale": original["logit_scale"] - 1.0}
    swapped = model.encode_labels(labels)
    np.testing.assert_allclose(swapped, by_hand(model, labels), atol=1e-5)
    assert not np.allclose(swapped, first, atol=1e-3)
    np.testing.assert_allclose(model.logit_scale, scale / np.e, rtol=1e-5)
    model.params = original
    np.testing.assert_allclose(model.encode_labels(labels), first, atol=1e-6)
    assert model.logit_scale == scale


def test_zero_shot_takes_paths_pil_arrays_and_batches(model, faces):
    _, paths = faces
    labels = ["neutral", "happiness"]
    expected = model.zero_shot([str(p) for p in paths], labels)
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    batch = np.stack(arrays)  # [N, 40, 40, 3] uint8: resized inside
    ready = model.load_images(paths)  # [N, 32, 32, 3] uint8: used as is
    from emocap_jax.models.clip import CLIP_MEAN, CLIP_STD
    normalised = ((ready / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(
        np.float32)
    for images in (pil, arrays, batch, ready, normalised):
        np.testing.assert_allclose(model.zero_shot(images, labels), expected, atol=1e-5)
    np.testing.assert_allclose(model.zero_shot(paths[0], labels), expected[:1], atol=1e-5)


def test_zero_shot_errors(model, faces):
    _, paths = faces
    with pytest.raises(ValueError, match="duplicate labels"):
        model.zero_shot(paths, ["anger", "anger"])
    with pytest.raises(ValueError, match="at least one label"):
        model.zero_shot(paths, [])
    with pytest.raises(TypeError, match="single string"):
        model.zero_shot(paths, "anger,fear")
    with pytest.raises(ValueError, match="exactly one"):
        model.zero_shot(paths, ["anger"], templates=["no placeholder"])
    with pytest.raises(ValueError, match="CLIP-normalised"):
        model.zero_shot(np.zeros((1, 40, 40, 3), np.float32), ["anger"])
    # A float batch at the model's size is taken as CLIP-normalised: pixels are not.
    pixels = model.load_images(paths).astype(np.float32)
    for images in (model.zero_shot, lambda x, labels: model.explain(x, labels)):
        with pytest.raises(ValueError, match=r"got values in \[\d+, 255\], which look like pixels: "
                                             r"pass uint8 pixels"):
            images(pixels, ["anger"])
    with pytest.warns(UserWarning, match=r"within \[0, 1\], as pixels scaled to \[0, 1\] are"):
        model.zero_shot(pixels / 255.0, ["anger"])
    from emocap_jax.models.clip import CLIP_MEAN, CLIP_STD
    normalised = ((pixels / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.zero_shot(normalised.astype(np.float32), ["anger"])
    with pytest.raises(pp.ImageReadError, match="missing.png"):
        model.zero_shot([paths[0], paths[0].parent / "missing.png"], ["anger"])
    with pytest.warns(UserWarning, match="is cut"):
        model.zero_shot(paths[:1], ["a face " + "very " * 20 + "happy", "anger"])


def test_model_inputs_in_another_layout_or_size_say_how_to_convert(model, faces):
    import jax.numpy as jnp

    _, paths = faces
    ready = model.load_images(paths[:2])  # [2, 32, 32, 3] uint8
    expected = model.zero_shot(ready, ["anger", "fear"])
    # jax arrays, alone or in a list, are read as NumPy arrays.
    np.testing.assert_allclose(model.zero_shot([jnp.asarray(x) for x in ready], ["anger", "fear"]),
                               expected, atol=1e-6)
    nchw = r"\(2, 3, 32, 32\).*channels-first \[N, C, H, W\].*x.transpose\(0, 2, 3, 1\)"
    for images in (ready.transpose(0, 3, 1, 2), ready.transpose(0, 3, 1, 2) / 255.0):
        with pytest.raises(ValueError, match=nchw):
            model.zero_shot(images, ["anger"])
        with pytest.raises(ValueError, match=nchw):
            model.encode_image(images)
    with pytest.raises(ValueError, match=r"32x32 .*got \(1, 40, 40, 3\).*model.preprocess"):
        model.encode_image(np.zeros((1, 40, 40, 3), np.uint8))


def test_encode_text_takes_whole_number_ids_and_says_to_tokenize_texts(model):
    tokens = model.tokenize(["open mouth", "raised brows"])
    expected = model.encode_text(tokens)
    np.testing.assert_allclose(model.encode_text(tokens.astype(np.float32)), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"token ids must be whole numbers, got float32 .*row 0"):
        model.encode_text(tokens.astype(np.float32) + 0.5)  # was cut to the id below
    for texts in (["open mouth"], [["open mouth"]], "open mouth"):
        with pytest.raises(TypeError, match=r"model.encode_text\(model.tokenize\(texts\)\)"):
            model.encode_text(texts)


def test_labels_the_tokenizer_cannot_tell_apart_are_refused(model, faces):
    _, paths = faces
    # CLIP's tokenizer lowercases and collapses whitespace: such columns would be identical, each
    # with half the probability of the one class they stand for.
    for labels in (["sad", "Sad"], ["anger", "sad", "sad "], ["a sad face", "A  sad face"]):
        with pytest.raises(ValueError, match=rf"labels {re.escape(repr(labels[-2]))} and "
                                             rf"{re.escape(repr(labels[-1]))} are the same text"):
            model.zero_shot(paths[:1], labels)
    assert model.zero_shot(paths[:1], ["sad", "a sad face"]).shape == (1, 2)


def test_templates_are_read_as_str_format_reads_them(model, faces):
    _, paths = faces
    # A literal brace pair is written doubled, as str.format reads it; "{{}}" is no placeholder.
    literal = model.zero_shot(paths[:1], ["anger", "fear"], templates=["a {{}} face of {}"])
    as_given = model.zero_shot(paths[:1], ["a {} face of anger", "a {} face of fear"],
                               label_mode="prompts")
    np.testing.assert_allclose(literal, as_given, atol=1e-6)
    for template, why in (("a {name} face", r"\{name\}"), ("a {} face {", r"Single '\{'"),
                          ("a {0} face", r"\{0\}"), ("a {}{} face", "2 fields")):
        with pytest.raises(ValueError, match=rf"template '{re.escape(template)}': .*{why}.*"
                                             r"exactly one '\{\}'.*double"):
            model.zero_shot(paths[:1], ["anger"], templates=[template])


def test_batch_size_that_does_not_divide_the_images_and_bad_batch_sizes(model, faces):
    _, paths = faces  # 4 faces
    expected = model.zero_shot(paths, ["anger", "fear"])
    for bad in (0, -1, 2.5, "8", None):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {bad!r}"):
            model.batch_size = bad
    assert model.batch_size == 256
    try:
        model.batch_size = 3
        np.testing.assert_allclose(model.zero_shot(paths, ["anger", "fear"]), expected, atol=1e-6)
    finally:
        model.batch_size = 256


def test_paths_starting_with_a_tilde_are_the_home_folder(model, faces, export_dir, tmp_path,
                                                         monkeypatch):
    # A notebook user writes "~/ckpt" and "~/faces/1.png"; Python's open() would not expand "~".
    import emocap_jax

    _, paths = faces
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").symlink_to(export_dir)
    (tmp_path / "face.png").symlink_to(paths[0])
    expected = model.zero_shot(paths[:1], ["anger", "fear"])
    for checkpoint in ("~/ckpt", pathlib.Path("~/ckpt")):
        loaded = emocap_jax.load(checkpoint)
        for image in ("~/face.png", ["~/face.png"], pathlib.Path("~/face.png")):
            np.testing.assert_allclose(loaded.zero_shot(image, ["anger", "fear"]), expected,
                                       atol=1e-6)
    assert model.load_images("~/face.png").shape == (1, 32, 32, 3)
    with pytest.raises(pp.ImageReadError, match=re.escape(f"{tmp_path}/gone.png: no such file")):
        model.zero_shot("~/gone.png", ["anger"])


# ----------------------------------------------------------------------------- the CLI

def _predict(*args):
    return subprocess.run([sys.executable, "-m", "emocap_jax.predict", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_table_default_labels(export_dir, faces):
    root, paths = faces
    # The folder holding export/ stands for a training workdir.
    result = _predict("--checkpoint", export_dir.parent, root, paths[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    header = lines[0].split()
    assert header[:2] == ["image", "prediction"]
    assert header[2:] == ["neutral", "happiness", "sadness", "surprise", "fear", "disgust",
                          "anger", "contempt"]
    rows = [line.split() for line in lines[1:]]
    # The folder (sorted, recursive), then the file given again by name.
    assert [r[0] for r in rows] == [str(p) for p in sorted(paths)] + [str(paths[0])]
    for r in rows:
        probs = np.array([float(x) for x in r[2:]])
        assert abs(probs.sum() - 1) < 0.01 and r[1] == header[2 + int(np.argmax(probs))]


@pytest.mark.slow
def test_cli_json_top_matches_api(export_dir, faces, model):
    root, paths = faces
    labels = ["happiness", "sadness", "a photo of a calm face"]
    result = _predict("--checkpoint", export_dir, "--labels", ",".join(labels), "--top", 2,
                      "--json", root / FACE_CLASSES[1], root / FACE_CLASSES[0])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["labels"] == labels
    got = [p["image"] for p in out["predictions"]]
    chosen = sorted((root / FACE_CLASSES[1]).iterdir()) + sorted((root / FACE_CLASSES[0]).iterdir())
    assert got == [str(p) for p in chosen]
    expected = model.zero_shot(chosen, labels)
    for row, p in zip(out["predictions"], expected):
        np.testing.assert_allclose([row["probabilities"][label] for label in labels], p,
                                   atol=1e-5)
        assert row["label"] == labels[int(np.argmax(p))]
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-6)
        assert [t["label"] for t in row["top"]] == [labels[i] for i in np.argsort(-p)[:2]]


def test_cli_bad_inputs_are_named(export_dir, faces, tmp_path):
    root, paths = faces
    # These fail before JAX is imported, so each costs about a second.
    result = _predict("--checkpoint", export_dir, paths[0], tmp_path / "no_such_face.jpg")
    assert result.returncode == 2 and "no_such_face.jpg: no such file" in result.stderr
    garbage = tmp_path / "broken.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    result = _predict("--checkpoint", export_dir, garbage)
    assert result.returncode == 2 and "broken.jpg: not a readable image" in result.stderr
    result = _predict("--checkpoint", tmp_path / "no_model", paths[0])
    assert result.returncode == 2 and "no_model: no such file or directory" in result.stderr
    result = _predict("--checkpoint", export_dir, "--labels", "anger,,fear", paths[0])
    assert result.returncode == 2 and "empty label" in result.stderr
    result = _predict("--checkpoint", export_dir, "--template", "a {name} face", paths[0])
    assert result.returncode == 2 and "--template 'a {name} face': field {name}" in result.stderr


def test_cli_skips_unreadable_images_names_them_and_exits_2(export_dir, faces, model, tmp_path,
                                                           capsys):
    from emocap_jax import predict

    root, paths = faces
    folder = tmp_path / "photos"
    folder.mkdir()
    good = []
    for path in paths[:2]:
        good.append(folder / path.name)
        good[-1].write_bytes(path.read_bytes())
    (folder / "._face_000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS metadata
    data = good[0].read_bytes()
    cut = folder / "zz_cut.png"  # its header reads; its pixels do not
    cut.write_bytes(data[:len(data) // 2])
    labels = ["happiness", "sadness"]
    status = predict.main(["--checkpoint", str(export_dir), "--labels", ",".join(labels),
                           "--json", str(folder)])
    out = capsys.readouterr()
    assert status == 2
    document = json.loads(out.out)
    assert [row["image"] for row in document["predictions"]] == [str(p) for p in good]
    np.testing.assert_allclose(
        [[row["probabilities"][label] for label in labels] for row in document["predictions"]],
        model.zero_shot(good, labels), atol=1e-5)
    assert [row["image"] for row in document["skipped"]] == [str(folder / "._face_000.png"),
                                                             str(cut)]
    assert all("not a readable image" in row["error"] for row in document["skipped"])
    err = out.err.strip().splitlines()
    assert len(err) == 3, out.err
    assert "._face_000.png: not a readable image" in err[0] and "zz_cut.png: not a readable" in err[1]
    assert "2 of 4 images could not be read and were skipped" in err[2]
    # --strict: the first unreadable file stops the run, with nothing printed.
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(export_dir), "--strict", str(good[0]), str(cut)])
    out = capsys.readouterr()
    assert exit_info.value.code == 2 and out.out == ""
    assert out.err.strip().splitlines() == [out.err.strip()] and "zz_cut.png" in out.err


def test_cli_checkpoint_without_tokenizer_is_one_line(fixtures_dir, faces, tmp_path, capsys):
    from emocap_jax import predict

    _, paths = faces
    checkpoint = fixtures_dir / "openclip_tiny_gelu"  # a 1000-token vocabulary: not CLIP BPE
    for mode in ([], ["--explain", "open mouth", "--output", str(tmp_path / "overlays")]):
        assert predict.main(["--checkpoint", str(checkpoint), *mode, str(paths[0])]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --checkpoint {checkpoint}: this model has no known "
                              f"tokenizer") and err.count("\n") == 1, err
    assert not (tmp_path / "overlays").exists()


def test_cli_checkpoint_on_a_bucket_reaches_load(model, faces, monkeypatch, capsys):
    # A URL is looked up through emocap_jax.storage (gs:// as memory:// here), not os.path.
    import emocap_jax
    from emocap_jax import predict, storage

    _, paths = faces
    loaded = []
    monkeypatch.setattr(emocap_jax, "load", lambda path, source: loaded.append(path) or model)
    storage.write_bytes("memory://bucket/run/open_clip_model.safetensors", b"weights")
    assert predict.main(["--checkpoint", "memory://bucket/run", str(paths[0])]) == 0
    assert loaded == ["memory://bucket/run"] and str(paths[0]) in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", "memory://bucket/nothing", str(paths[0])])
    assert exit_info.value.code == 2
    assert "memory://bucket/nothing: no such file or directory" in capsys.readouterr().err
    storage.rmtree("memory://bucket")


def test_cli_labels_the_tokenizer_cannot_tell_apart_are_one_line(model, faces, monkeypatch,
                                                                  capsys):
    import emocap_jax
    from emocap_jax import predict

    _, paths = faces
    monkeypatch.setattr(emocap_jax, "load", lambda path, source: model)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(paths[0]), "--labels", "sad,Sad", str(paths[0])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--labels: labels 'sad' and 'Sad' are the same text" in err and err.count("\n") == 1


def test_cli_help_documents_every_option(capsys):
    from emocap_jax import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--checkpoint", "--labels", "--label-mode", "--template", "--top", "--json",
                   "--batch-size", "--source", "--strict", "IMAGE", "recursively",
                   "neutral, happiness", "skipped"):
        assert option in text, option
