"""Sentence-to-patch maps users can see: `EmoCapCLIP.explain` against a NumPy recomputation from a
tiny model's patch tokens and text embeddings, and `python -m emocap_jax.predict --explain` (one
overlay PNG per face, clear errors for a too-long sentence and an unreadable image)."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.inference_fixtures import FACE_CLASSES, make_tiny_export, write_faces

SENTENCES = ["raised inner brows", "open mouth", "The cheeks are raised, creasing the eyes."]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def _reference_maps(model, images, sentences, tau):
    """NumPy: softmax over patches of <P_p, u> / tau from the model's own towers."""
    from emocap_jax.models.clip import CLIP

    _, tokens = CLIP(model.config).apply({"params": model.params}, images, True,
                                         method=CLIP.encode_image)
    tokens = np.asarray(tokens, np.float64)  # [N, P, D]
    text = np.asarray(model.encode_text(model.tokenize(sentences)), np.float64)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    logits = np.einsum("npd,sd->nsp", tokens, text) / tau
    logits -= logits.max(axis=-1, keepdims=True)
    maps = np.exp(logits)
    maps /= maps.sum(axis=-1, keepdims=True)
    grid = model.config.vision.local_grid_size
    return maps.reshape(len(images), len(sentences), grid, grid)


def _bilinear(grid_map, size):
    """NumPy: a [g, g] map resized to [size, size], each output pixel's centre placed in grid
    units ((i + 0.5) * g / size - 0.5, so cell k covers pixels [k * size / g, (k + 1) * size / g))
    and interpolated between the two nearest cell centres, the edge cells held beyond theirs."""
    g = grid_map.shape[0]
    t = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    lo = np.floor(t).astype(int)
    hi, w = np.minimum(lo + 1, g - 1), t - lo
    rows = grid_map[lo] * (1 - w)[:, None] + grid_map[hi] * w[:, None]
    return rows[:, lo] * (1 - w)[None] + rows[:, hi] * w[None]


def test_explain_matches_numpy_recomputation(model, faces):
    _, paths = faces
    images = model.preprocess(paths)
    assert model.pool_temperature == pytest.approx(0.1)  # the default config's, none recorded
    maps = model.explain(paths, SENTENCES)
    assert maps.shape == (len(paths), len(SENTENCES), 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, _reference_maps(model, images, SENTENCES, 0.1), atol=2e-5)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # Another temperature reshapes the maps, never their argmax; a preprocessed batch is the same.
    flat = model.explain(images, SENTENCES, pool_temperature=1.0)
    np.testing.assert_allclose(flat, _reference_maps(model, images, SENTENCES, 1.0), atol=2e-5)
    assert np.array_equal(flat.reshape(*flat.shape[:2], -1).argmax(-1),
                          maps.reshape(*maps.shape[:2], -1).argmax(-1))
    assert flat.max() < maps.max()
    # Upsampled: the model's input pixels, bilinear from the grid, each cell's value at the
    # centre of the 8 x 8 pixels of its patch (not corner-aligned, rows not swapped with columns).
    up = model.explain(images[:2], SENTENCES, upsample=True)
    assert up.shape == (2, len(SENTENCES), 32, 32) and up.dtype == np.float32
    for i in range(2):
        for k in range(len(SENTENCES)):
            np.testing.assert_allclose(up[i, k], _bilinear(maps[i, k].astype(np.float64), 32),
                                       atol=1e-6)


@pytest.fixture(scope="module")
def fine_model(tmp_path_factory):
    import dataclasses

    import emocap_jax
    from tests.inference_fixtures import tiny_model_config

    config = tiny_model_config()
    config = config.replace(vision=dataclasses.replace(config.vision, local_head="patch_fine"))
    return emocap_jax.load(make_tiny_export(tmp_path_factory.mktemp("fine") / "export",
                                            config=config))


def test_explain_maps_the_fine_heads_grid(fine_model, faces):
    # local_head="patch_fine": 4-px squares, an 8 x 8 grid on the 32-px input (the ViT's is 4 x 4).
    images = fine_model.preprocess(faces[1][:2])
    assert fine_model.config.vision.local_grid_size == 8
    maps = fine_model.explain(images, SENTENCES[:2])
    assert maps.shape == (2, 2, 8, 8)
    np.testing.assert_allclose(maps, _reference_maps(fine_model, images, SENTENCES[:2], 0.1),
                               atol=2e-5)
    up = fine_model.explain(images[:1], SENTENCES[:1], upsample=True)
    np.testing.assert_allclose(up[0, 0], _bilinear(maps[0, 0].astype(np.float64), 32), atol=1e-6)
    # Cell (r, c) is the square of rows 4r..4r+3 and columns 4c..4c+3: changing the pixel at
    # row 13, column 22 changes the map's logits only in cell (3, 5), whose weight moves against
    # every other cell's.
    changed = images[:1].copy()
    changed[0, 13, 22] = 255 - changed[0, 13, 22]
    ratio = np.log(fine_model.explain(changed, SENTENCES[:1])[0, 0]) - np.log(maps[0, 0])
    moved = np.abs(ratio - np.median(ratio)) > 1e-4
    assert np.argwhere(moved).tolist() == [[3, 5]]


def test_conv_stem_maps_put_each_token_at_its_receptive_field_centre(tmp_path_factory, faces):
    # model.vision.stem="conv": token (r, c)'s receptive field is centred on input pixel
    # (8r, 8c) (coordinate 8k + 0.5), 3.5 px before its 8-px patch's centre. Reference: each
    # row and column interpolated with np.interp between those centres (held beyond the ends).
    import dataclasses

    import emocap_jax
    from emocap_jax.explain import overlay_figure
    from tests.inference_fixtures import tiny_model_config

    config = tiny_model_config()
    config = config.replace(vision=dataclasses.replace(config.vision, stem="conv"))
    conv = emocap_jax.load(make_tiny_export(tmp_path_factory.mktemp("conv") / "export",
                                            config=config))
    images = conv.preprocess(faces[1][:1])
    maps = conv.explain(images, SENTENCES[:2])
    up = conv.explain(images, SENTENCES[:2], upsample=True)
    assert maps.shape == (1, 2, 4, 4) and up.shape == (1, 2, 32, 32)
    centres = np.arange(4) * 8 + 0.5
    pixels = np.arange(32) + 0.5
    for k in range(2):
        grid_map = maps[0, k].astype(np.float64)
        rows = np.stack([np.interp(pixels, centres, grid_map[:, c]) for c in range(4)], axis=1)
        expected = np.stack([np.interp(pixels, centres, rows[i]) for i in range(32)])
        np.testing.assert_allclose(up[0, k], expected, atol=1e-6)
        np.testing.assert_allclose(up[0, k][::8, ::8], grid_map, atol=1e-6)  # at pixels 8k
    # The overlay draws the same values and outlines the peak token's square around its centre.
    fig = overlay_figure(images[0], maps[0], SENTENCES[:2],
                         offset=conv.config.vision.local_token_offset)
    for k, ax in enumerate(fig.axes[1:]):
        heat = ax.get_images()[1].get_array()
        np.testing.assert_allclose(heat, up[0, k], atol=1e-6)
        row, col = np.unravel_index(np.argmax(maps[0, k]), (4, 4))
        (outline,) = ax.patches
        np.testing.assert_allclose(outline.get_xy(), (8 * col - 3.5, 8 * row - 3.5))
        assert ax.get_xlim() == (0, 32) and ax.get_ylim() == (32, 0)


def test_explain_uses_the_recorded_pool_temperature(export_dir, tmp_path, model, faces):
    import shutil

    import emocap_jax

    # Training records its loss's tau_pool in the export (train._export); load reads it.
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    description = json.loads((copy / "model_config.json").read_text())
    description["source"]["local_pool_temperature"] = 0.5
    (copy / "model_config.json").write_text(json.dumps(description))
    assert emocap_jax.load(copy).pool_temperature == 0.5
    # ... and explain draws with it (on the already compiled model, its description swapped).
    images = model.preprocess(faces[1][:2])
    original = model.description
    try:
        model.description = description
        maps = model.explain(images, SENTENCES[:2])
    finally:
        model.description = original
    np.testing.assert_allclose(maps, _reference_maps(model, images, SENTENCES[:2], 0.5), atol=2e-5)


def test_explain_errors_name_the_input(model, faces, tmp_path):
    from emocap_jax.preprocess import ImageReadError

    _, paths = faces
    long = "the inner corners of the eyebrows are raised " * 3
    count = len(model.tokenizer.encode(long)) + 2
    with pytest.raises(ValueError, match=rf"sentence '{long.strip()[:20]}.*' is {count} tokens long "
                                         r".*more than the text tower's 16-token context"):
        model.explain(paths[:1], ["open mouth", long])
    with pytest.raises(ValueError, match="at least one sentence"):
        model.explain(paths[:1], [])
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageReadError, match="broken.png: not a readable image"):
        model.explain([paths[0], garbage], ["open mouth"])


def test_overlay_names_are_unique_and_readable(tmp_path):
    from emocap_jax.explain import overlay_names

    paths = [tmp_path / "faces" / "happy" / "1.jpg", tmp_path / "faces" / "sad" / "1.jpg",
             tmp_path / "faces" / "happy" / "1.png"]
    assert overlay_names(paths) == ["happy__1.png", "sad__1.png", "happy__1_1.png"]
    assert overlay_names([tmp_path / "one.jpg"]) == ["one.png"]


class _FlatMapModel:
    """Stand-in for `EmoCapCLIP` in `write_overlays` (no JAX): images as read, random maps."""
    image_size = 16
    config = type("Config", (), {"vision": type("Vision", (), {"local_token_offset": 0.5})})

    def check_sentences(self, sentences):
        return list(sentences)

    def load_images(self, paths):
        return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255
                         for p in paths])

    def explain(self, images, sentences):
        return np.random.default_rng(0).random((len(images), len(sentences), 2, 2))


def test_every_input_gets_its_own_overlay_file(tmp_path):
    """The same file given twice (also as a/../a/x.jpg), one file name in two folders, and two
    folders whose names differ only in case: one overlay file each, none overwritten, even in an
    output folder that ignores case; the names are the same on a second run."""
    from emocap_jax.explain import overlay_names, write_overlays

    root = tmp_path / "faces"
    relative = ["a/x.jpg", "b/x.jpg", "Happy/1.jpg", "happy/1.jpg"]
    for i, rel in enumerate(relative):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / rel)
    paths = [root / r for r in relative] + [root / "a/x.jpg", root / "a" / ".." / "a" / "x.jpg"]
    names = overlay_names(paths)
    assert names == ["a__x.png", "b__x.png", "Happy__1.png", "happy__1_1.png", "a__x_1.png",
                     "a__x_2.png"]
    assert overlay_names(paths) == names
    written = write_overlays(_FlatMapModel(), paths, ["open mouth"], tmp_path / "out")
    assert [image for image, _ in written] == [str(p) for p in paths]
    assert [png.name for _, png in written] == names
    assert len({png.name.casefold() for _, png in written}) == len(paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    for _, png in written:
        assert png.read_bytes().startswith(PNG_MAGIC)


def test_overlay_names_never_start_with_a_dot(tmp_path):
    """An input folder or file starting with a dot gave a hidden overlay (.hidden__x.png), which
    `ls` and file browsers leave out; the dots become "_", and a name that then meets another
    still gets a counter."""
    from emocap_jax.explain import overlay_names

    root = tmp_path / "faces"
    paths = [root / ".hidden" / "x.jpg", root / "b" / "y.jpg", root / "_hidden" / "x.jpg",
             root / "b" / ".z.jpg", root / "b" / "..jpg"]
    names = overlay_names(paths)
    assert names == ["_hidden__x.png", "b__y.png", "_hidden__x_1.png", "b__.z.png", "b__..png"]
    assert overlay_names(paths) == names
    assert overlay_names([root / ".x.jpg"]) == ["_x.png"]
    assert overlay_names([root / ".x.jpg", root / "y.jpg"]) == ["_x.png", "y.png"]
    assert overlay_names([root / "..jpg", root / "a.jpg"]) == ["_.png", "a.png"]


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "emocap_jax.predict", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_writes_one_overlay_per_face(export_dir, faces, tmp_path):
    root, paths = faces
    out = tmp_path / "overlays"
    result = _predict("--checkpoint", export_dir, "--explain", "raised inner brows",
                      "--explain", "open mouth", "--output", out, root)
    assert result.returncode == 0, result.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(f"{c}__{p.stem}.png" for c, p in
                                               zip(FACE_CLASSES, paths))
    for png in written:
        assert png.read_bytes().startswith(PNG_MAGIC)
        with Image.open(png) as image:
            width, height = image.size
        assert width > 2 * height  # the face and two sentence panels side by side
    assert f"wrote {len(paths)} overlays to {out}" in result.stdout


def test_cli_errors_name_the_bad_input(export_dir, faces, tmp_path, capsys):
    from emocap_jax import predict

    root, paths = faces
    out = tmp_path / "overlays"
    # Caught before JAX is imported.
    garbage = tmp_path / "broken.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    result = _predict("--checkpoint", export_dir, "--explain", "open mouth", "--output", out,
                      garbage)
    assert result.returncode == 2 and "broken.jpg: not a readable image" in result.stderr
    assert "none of the 1 image files can be read" in result.stderr
    for args, message in (
            (["--explain", "open mouth"], "--explain needs --output DIR"),
            (["--output", out], "--output is for the overlays of --explain"),
            (["--explain", "open mouth", "--output", out, "--top", "2"], "--top classifies"),
            (["--explain", " ", "--output", out], "empty sentence")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(["--checkpoint", str(export_dir), *map(str, args), str(paths[0])])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # After the model is loaded: a sentence longer than the context, named with its count.
    long = "the lip corners are pulled up and back strongly showing a pronounced smile " * 2
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(export_dir), "--explain", "open mouth", "--explain",
                      long, "--output", str(out), str(root)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"--explain: sentence {long!r} is" in err and "16-token context" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written before the check
    # A file whose header reads but whose pixels do not: named when it is decoded and skipped;
    # the other face's overlay is written, and the exit status says a file was skipped.
    truncated = tmp_path / "truncated.png"
    data = (root / FACE_CLASSES[0] / paths[0].name).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    status = predict.main(["--checkpoint", str(export_dir), "--explain", "open mouth", "--output",
                           str(out), str(truncated), str(paths[1])])
    printed = capsys.readouterr()
    assert status == 2 and "truncated.png: not a readable image" in printed.err
    assert "1 of 2 images could not be read" in printed.err
    assert f"wrote 1 overlays to {out}" in printed.out and len(list(out.iterdir())) == 1
    with pytest.raises(SystemExit) as exit_info:  # --strict: stops at it
        predict.main(["--checkpoint", str(export_dir), "--explain", "open mouth", "--output",
                      str(tmp_path / "strict"), "--strict", str(truncated)])
    assert exit_info.value.code == 2 and "truncated.png: not a readable image" in capsys.readouterr().err
