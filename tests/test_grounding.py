"""Grounding: the synthetic faces' region boxes against the drawing, the sentence-region tags, the
regions file beside the eval split, the pointing game against a NumPy reference, and
`--protocol grounding` end to end on a tiny model."""
from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from emocap_jax.data.synthetic import corpus as synthetic
from emocap_jax.data.synthetic.captions import FACE_REGION_OF, REGION_OF_AU, REGIONS
from emocap_jax.data.synthetic.faces import (ALL_CLASSES, FACE_REGIONS, face_regions, render_face,
                                             sample_face_spec)
from emocap_jax.evaluate import grounding
from emocap_jax.evaluate import report as evaluate_report

AU_PATTERN = re.compile(r"\bAU(\d+)\b")


def _mask(boxes, size) -> np.ndarray:
    inside = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    return inside


def _changed(spec, size, omit) -> np.ndarray:
    full = np.asarray(render_face(spec, size), np.int16)
    without = np.asarray(render_face(spec, size, omit_regions=[omit]), np.int16)
    return np.abs(full - without).max(axis=-1) > 0


# ----------------------------------------------------------------------------- region boxes

@pytest.mark.parametrize("size", [48, 96])
def test_boxes_hold_exactly_the_pixels_each_region_draws(size):
    # Leaving a region out of the drawing changes only pixels inside its boxes, and each box is
    # tight: the changed pixels inside it reach to within a pixel of every side.
    for index in range(len(ALL_CLASSES)):
        spec = sample_face_spec(3, "eval", index, ALL_CLASSES[index], index)
        boxes = face_regions(spec, size)
        assert set(boxes) == set(FACE_REGIONS)
        assert len(boxes["eyes"]) == len(boxes["cheeks"]) == 2
        assert all(len(boxes[r]) == 1 for r in ("brows", "nose", "mouth", "jaw"))
        for region in ("brows", "eyes", "cheeks", "nose", "mouth"):
            changed = _changed(spec, size, region)
            assert not (changed & ~_mask(boxes[region], size)).any(), (spec.label, region)
            if region == "cheeks" and 6 not in spec.aus:
                assert not changed.any()  # a cheek at rest is not drawn
                continue
            for x0, y0, x1, y1 in boxes[region]:
                ys, xs = np.nonzero(changed[y0:y1, x0:x1])
                assert len(xs), (spec.label, region)
                assert xs.min() <= 1 and ys.min() <= 1, (spec.label, region)
                assert xs.max() >= x1 - x0 - 2 and ys.max() >= y1 - y0 - 2, (spec.label, region)


def test_eyes_and_cheeks_boxes_are_left_then_right_and_apart():
    spec = sample_face_spec(0, "eval", 5, "happy", 2)  # happy raises the cheeks (AU6)
    assert 6 in spec.aus
    boxes = face_regions(spec, 96)
    for region in ("eyes", "cheeks"):
        left, right = boxes[region]
        assert left[2] <= right[0], region  # image-left box first, no overlap
    # The raised cheeks sit below the eyes and above the mouth.
    assert min(b[1] for b in boxes["cheeks"]) > min(b[1] for b in boxes["eyes"])
    assert max(b[3] for b in boxes["cheeks"]) <= boxes["mouth"][0][3]


def test_jaw_box_holds_the_dropped_jaw():
    # AU26 opens the mouth and lowers the chin (no nasolabial fold, which follows the lip corners
    # over the cheek, on this face). Nearly every pixel it changes is in the jaw box; the rest is
    # the edge of the face's sides, which the lengthened outline moves by a pixel or two.
    spec = sample_face_spec(0, "eval", 9, "neutral", 4)
    spec = dataclasses.replace(spec, aus={}, identity=dataclasses.replace(spec.identity, fold_depth=0.0))
    dropped = dataclasses.replace(spec, aus={26: 1.0})
    size = 96
    before = np.asarray(render_face(spec, size), np.int16)
    after = np.asarray(render_face(dropped, size), np.int16)
    changed = np.abs(after - before).max(axis=-1) > 0
    jaw = face_regions(dropped, size)["jaw"]
    (x0, y0, x1, y1), = jaw
    assert changed.sum() > 100
    assert (changed & _mask(jaw, size)).sum() > 0.9 * changed.sum()
    assert not (changed & ~_mask([(x0 - 3, y0, x1 + 3, y1)], size))[y0:].any()
    # The box reaches down to the lowered chin and no further than a pixel past it.
    ys, _ = np.nonzero(changed)
    assert y1 - 2 <= ys.max() + 1 <= y1
    # The (open) mouth lies inside the jaw region.
    mx0, my0, mx1, my1 = face_regions(dropped, size)["mouth"][0]
    assert x0 <= mx0 and y0 <= my0 and mx1 <= x1 and my1 <= y1


def test_regions_leave_the_rendering_unchanged():
    # Recording boxes is bookkeeping: omitting nothing draws the same pixels, and face_regions
    # does not depend on a rendering having happened.
    spec = sample_face_spec(1, "train", 3, "fear", 0)
    first = face_regions(spec, 64)
    plain, nothing_omitted = render_face(spec, 64), render_face(spec, 64, omit_regions=())
    assert np.array_equal(np.asarray(plain), np.asarray(nothing_omitted))
    assert face_regions(spec, 64) == first
    with pytest.raises(ValueError, match="unknown face regions"):
        render_face(spec, 64, omit_regions=["ears"])


# ----------------------------------------------------------------------------- sentence tags

def test_every_local_sentence_is_tagged_with_the_region_of_its_action_units():
    assert set(FACE_REGION_OF) == {name for name, _ in REGIONS}
    assert set(FACE_REGION_OF.values()) <= set(FACE_REGIONS)
    seen = set()
    for index in range(120):
        label = ALL_CLASSES[index % len(ALL_CLASSES)]
        spec = sample_face_spec(7, "train", index, label, index)
        caption = synthetic.face_caption(spec, 7, "train", index)
        record = synthetic.face_record(spec, "x", "", 7, "train", index)
        assert list(caption.local) == record["local"]
        assert len(caption.local_regions) == len(caption.local)
        for region, sentence in zip(caption.local_regions, caption.local):
            codes = {int(c) for c in AU_PATTERN.findall(sentence)}
            if region is None:
                assert not codes and not spec.aus
            else:
                assert codes and {FACE_REGION_OF[REGION_OF_AU[c]] for c in codes} == {region}
                seen.add(region)
    assert seen == set(FACE_REGIONS)


# ----------------------------------------------------------------------------- regions file

def test_corpus_and_training_data_carry_the_eval_regions(tmp_path):
    out = tmp_path / "corpus"
    synthetic.generate_corpus(out, 4, seed=5, size=48, eval_per_class=2, workers=1, progress=False)
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["eval_regions"] == "eval/regions.jsonl"
    manifest = [json.loads(line) for line in (out / "eval" / "manifest.jsonl").read_text().splitlines()]
    lines = (out / "eval" / synthetic.REGIONS_FILE).read_text().splitlines()
    entries = grounding.load_regions(out / "eval" / synthetic.REGIONS_FILE)
    assert list(entries) == [r["id"] for r in manifest]
    _, tasks = synthetic.plan_corpus(0, 5, 2)
    for task, record, line in zip(tasks, manifest, lines):
        spec = sample_face_spec(5, "eval", task.index, task.label, task.identity_index)
        entry = json.loads(line)
        assert entry["image_size"] == [48, 48]
        boxes = face_regions(spec, 48)
        assert entry["regions"] == {r: [list(b) for b in region_boxes] for r, region_boxes in boxes.items()}
        assert [item["text"] for item in entry["local"]] == record["local"]
        with Image.open(out / "eval" / record["image"]) as image:
            assert image.size == (48, 48)
    # prepare_data's copy into the converted eval split, and the same file recomputed from
    # corpus.json for a corpus written before regions existed.
    (tmp_path / "data_a").mkdir()
    copied = synthetic.ensure_eval_regions(out, tmp_path / "data_a")
    assert copied.read_bytes() == (out / "eval" / synthetic.REGIONS_FILE).read_bytes()
    (out / "eval" / synthetic.REGIONS_FILE).unlink()
    (tmp_path / "data_b").mkdir()
    recomputed = synthetic.ensure_eval_regions(out, tmp_path / "data_b")
    assert recomputed.read_bytes() == copied.read_bytes()


def test_a_dataset_without_regions_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="regions.jsonl: no regions file"):
        grounding.evaluate_split(None, str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image_size": [8, 8], "regions": {"eyes": [[0, 0, 2, 2]]}, '
                   '"local": [{"region": "mouth", "text": "t"}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*regions \['mouth'\] that have no boxes"):
        grounding.load_regions(bad)
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a regions line"):
        grounding.load_regions(bad)
    # Two "eyes" entries: json keeps the last, so the first boxes would be lost without a word.
    bad.write_text('{"id": "a", "image_size": [8, 8], "regions": {"eyes": [[0, 0, 2, 2]], '
                   '"eyes": [[4, 4, 6, 6]]}, "local": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*key 'eyes' appears more than once "
                                         r"in regions"):
        grounding.load_regions(bad)


# ----------------------------------------------------------------------------- the pointing game

def _reference_point(scores, grid, patch, input_size, stored, boxes, tolerance):
    """Plain NumPy: argmax patch -> its pixel centre through an explicit resize + crop -> inside a
    box; chance by counting sub-pixel samples of the part of the stored image the model's input
    square maps back to inside the boxes (what a point drawn uniformly over what the model sees
    hits)."""
    width, height = stored
    best = int(np.argmax(scores))
    row, col = divmod(best, grid)
    if min(width, height) == input_size:
        new_w, new_h = width, height
    elif height <= width:
        new_w, new_h = int(input_size * width / height), input_size
    else:
        new_w, new_h = input_size, int(input_size * height / width)
    left, top = round((new_w - input_size) / 2), round((new_h - input_size) / 2)

    def to_stored(x_in, y_in):
        return (x_in + left) * width / new_w, (y_in + top) * height / new_h

    x, y = to_stored((col + 0.5) * patch, (row + 0.5) * patch)
    hit = any(x0 - tolerance <= x < x1 + tolerance and y0 - tolerance <= y < y1 + tolerance
              for x0, y0, x1, y1 in boxes)
    # Quarter-pixel samples of the stored image between the input square's corners mapped back
    # (exact for the integer boxes and views of these tests).
    (vx0, vy0), (vx1, vy1) = to_stored(0, 0), to_stored(input_size, input_size)
    step = 0.25
    xs, ys = np.meshgrid(np.arange(vx0, vx1, step) + step / 2, np.arange(vy0, vy1, step) + step / 2)
    inside = np.zeros_like(xs, bool)
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = x0 - tolerance, y0 - tolerance, x1 + tolerance, y1 + tolerance
        inside |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return hit, float(inside.mean())


def test_pointing_game_matches_a_numpy_reference_on_hand_made_maps():
    # A 4 x 4 grid of 16-px patches on a 64-px image: patch (row 0, col 1) has centre (24, 8).
    centres = grounding.patch_centres(4, 16, 64, (64, 64))
    np.testing.assert_allclose(centres[1], [24, 8])
    np.testing.assert_allclose(centres[15], [56, 56])
    peak_at_1 = np.full(16, -1.0)
    peak_at_1[1] = 3.0
    peak_at_15 = np.zeros(16)
    peak_at_15[15] = 0.5
    brows = np.array([[16, 0, 32, 16]])
    eyes = np.array([[10, 20, 30, 30], [34, 20, 54, 30]])
    cases = [
        (peak_at_1, brows, 0.0, True),          # centre (24, 8) inside
        (peak_at_15, brows, 0.0, False),        # centre (56, 56) far away
        (peak_at_1, np.array([[25, 0, 40, 16]]), 0.0, False),  # x0 = 25 > 24: just outside
        (peak_at_1, np.array([[25, 0, 40, 16]]), 1.0, True),   # ... within a 1-px tolerance
        (peak_at_1, np.array([[0, 0, 24, 16]]), 0.0, False),   # half-open: x1 = 24 excludes 24
        (peak_at_15, eyes, 0.0, False),
        (peak_at_15, np.array([[0, 0, 8, 8], [50, 50, 60, 60]]), 0.0, True),  # second box hits
    ]
    for scores, boxes, tolerance, expected in cases:
        out = grounding.point(scores, centres, boxes, (0, 0, 64, 64), tolerance)
        hit, chance = _reference_point(scores, 4, 16, 64, (64, 64), boxes, tolerance)
        assert out["hit"] == hit == expected, (boxes, tolerance)
        assert out["chance"] == pytest.approx(chance, abs=1e-9)
        assert out["patch_chance"] == pytest.approx(
            np.mean([any(x0 - tolerance <= cx < x1 + tolerance and y0 - tolerance <= cy < y1 + tolerance
                         for x0, y0, x1, y1 in boxes) for cx, cy in centres]))
    # Chance is the area fraction of the boxes' union: overlaps count once, dilation is clipped.
    assert grounding.point(peak_at_1, centres, brows, (0, 0, 64, 64))["chance"] == pytest.approx(256 / 4096)
    overlapping = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    assert grounding.union_area(overlapping) == pytest.approx(175)
    assert grounding.point(peak_at_1, centres, overlapping, (0, 0, 64, 64), 2.0)["chance"] == \
        pytest.approx((12 * 12 + 14 * 14 - 9 * 9) / 4096)  # [0, 12)^2 and [3, 17)^2
    # Non-square stored images go through the shorter-side resize and the central crop.
    for stored in [(80, 60), (60, 80), (45, 30), (30, 30)]:
        scores = np.random.default_rng(sum(stored)).normal(size=9)
        boxes = np.array([[5, 5, 20, 25], [22, 10, 40, 28]])
        for tolerance in (0.0, 3.0):
            out = grounding.point(scores, grounding.patch_centres(3, 10, 30, stored), boxes,
                                  grounding.view_box(30, stored), tolerance)
            hit, chance = _reference_point(scores, 3, 10, 30, stored, boxes, tolerance)
            assert out["hit"] == hit and out["chance"] == pytest.approx(chance, abs=1e-9), stored


def test_chance_counts_only_the_part_of_the_image_the_model_sees():
    # An 80 x 40 image at a 40-px input: the central crop shows x in [20, 60). A region the crop
    # hides can never be pointed at (chance 0, not its 25% of the image); one that fills half
    # the view is hit by half the points drawn over it (not 25%).
    stored = (80, 40)
    np.testing.assert_allclose(grounding.view_box(40, stored), [20, 0, 60, 40])
    centres = grounding.patch_centres(4, 10, 40, stored)
    scores = np.zeros(16)
    for boxes, chance, patch_chance in (([[0, 0, 20, 40]], 0.0, 0.0),
                                        ([[20, 0, 40, 40]], 0.5, 0.5),
                                        ([[10, 0, 30, 20]], 0.125, 0.125),  # x in [20, 30) seen
                                        ([[0, 0, 80, 40]], 1.0, 1.0)):
        out = grounding.point(scores, centres, np.array(boxes), grounding.view_box(40, stored))
        assert out["chance"] == pytest.approx(chance), boxes
        assert out["patch_chance"] == pytest.approx(patch_chance), boxes
        assert out["chance"] == pytest.approx(
            _reference_point(scores, 4, 10, 40, stored, boxes, 0.0)[1], abs=1e-9)
    # Through a resize too: 120 x 60 -> 80 x 40, the view is x in [30, 90) of the stored image.
    np.testing.assert_allclose(grounding.view_box(40, (120, 60)), [30, 0, 90, 60])
    np.testing.assert_allclose(grounding.view_box(40, (60, 120)), [0, 30, 60, 90])


def test_patch_centres_follow_the_pixels_through_the_preprocessing():
    # An image whose pixel values are their own x (or y) coordinate: after CLIP's resize and
    # centre crop, the mean value over each patch is that patch's centre in stored coordinates.
    from emocap_jax.preprocess import preprocess

    for width, height in [(200, 120), (120, 200), (60, 60)]:
        xs = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :], (height, width))
        ys = np.broadcast_to(np.arange(height, dtype=np.uint8)[:, None], (height, width))
        size, patch = 60, 10
        centres = grounding.patch_centres(size // patch, patch, size, (width, height))
        for channel, values in ((0, xs), (1, ys)):
            seen = preprocess(np.stack([values] * 3, axis=-1), size)[0, ..., 0].astype(np.float64)
            means = seen.reshape(6, patch, 6, patch).mean(axis=(1, 3)).ravel() + 0.5
            interior = (centres[:, channel] > 8) & (centres[:, channel] < [width, height][channel] - 8)
            np.testing.assert_allclose(means[interior], centres[interior, channel], atol=0.6)


@pytest.mark.parametrize("local_head", ["patch_mlp", "patch_fine"])
def test_patch_centres_are_where_each_local_token_looks(local_head, tmp_path):
    # With a per-patch local head a token sees only its own square of the input: the token a
    # pixel reaches must be the one whose centre (token_centres, what evaluate_split points with)
    # lies within half a square of that pixel, in x and in y.
    import emocap_jax
    from tests.inference_fixtures import make_tiny_export, tiny_model_config

    config = tiny_model_config()
    config = config.replace(vision=dataclasses.replace(config.vision, local_head=local_head))
    model = emocap_jax.load(make_tiny_export(tmp_path / "export", config=config))
    vision = model.config.vision
    grid, patch, size = vision.local_grid_size, vision.local_patch_size, vision.image_size
    assert grid * patch == size and grid == {"patch_mlp": 4, "patch_fine": 8}[local_head]
    centres = grounding.token_centres(vision, (size, size))
    assert len(centres) == grid * grid
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), np.uint8)
    pixels = [(13, 22), (2, 29), (30, 5)]  # (y, x)
    batch = np.repeat(image, len(pixels) + 1, axis=0)
    for i, (y, x) in enumerate(pixels, start=1):
        batch[i, y, x] = 255 - batch[i, y, x]
    tokens = np.asarray(model._patch_tokens(model.params, batch))
    for i, (y, x) in enumerate(pixels, start=1):
        reached = np.flatnonzero(np.abs(tokens[i] - tokens[0]).max(axis=-1) > 0)
        assert len(reached) == 1, (local_head, y, x)
        cx, cy = centres[reached[0]]
        assert abs(cx - (x + 0.5)) < patch / 2 and abs(cy - (y + 0.5)) < patch / 2, (y, x)


def _stem_gradient(stem_params, stem, size, token):
    """[size, size] |d token / d image| summed over channels, at a zero image."""
    import jax
    import jax.numpy as jnp

    image = jnp.zeros((1, size, size, 3))
    grad = jax.grad(lambda x: stem.apply(stem_params, x)[0, token].sum())(image)
    return np.abs(np.asarray(grad[0], np.float64)).sum(-1)


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_conv_stem_tokens_sit_at_their_receptive_field_centres(patch):
    # The reference: the gradient of one stem token with respect to the image. With every weight
    # 1 and every bias 0 the stem is linear at a zero image (GELU'(0) = 1/2 everywhere), so the
    # gradient counts the paths from each pixel to the token, symmetric about the field's
    # centre: its centroid is that centre wherever the zero padding does not cut the field.
    import jax
    import jax.numpy as jnp

    from emocap_jax.models.config import VisionConfig
    from emocap_jax.models.vit import ConvStem

    size = 6 * patch
    vision = VisionConfig(image_size=size, patch_size=patch, stem="conv")
    grid = vision.local_grid_size
    centres = grounding.token_centres(vision, (size, size)).reshape(grid, grid, 2)
    stem = ConvStem(16, patch)
    params = stem.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    ones = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) if a.ndim > 1 else jnp.zeros_like(a),
                                  params)
    coords = np.arange(size) + 0.5
    for row, col in [(1, 1), (2, 4), (5, 5), (4, 2)]:  # fields inside the image
        weights = _stem_gradient(ones, stem, size, row * grid + col)
        cx = (weights.sum(0) * coords).sum() / weights.sum()
        cy = (weights.sum(1) * coords).sum() / weights.sum()
        np.testing.assert_allclose(centres[row, col], [cx, cy], atol=1e-6)
        np.testing.assert_allclose(centres[row, col], [col * patch + 0.5, row * patch + 0.5])
    # With random weights the field's extent is the same: pixels p*k - (p-1) .. p*k + (p-1)
    # around the centre pixel p*k, cut by the image's edges (the first row and column hang half
    # over the zero padding).
    randomised = jax.tree_util.tree_map(
        lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params)
    for row, col in [(0, 0), (0, 3), (2, 5), (5, 1)]:
        support = _stem_gradient(randomised, stem, size, row * grid + col) > 0
        for axis, k, centre in ((0, col, centres[row, col, 0]), (1, row, centres[row, col, 1])):
            seen = np.flatnonzero(support.any(axis=axis))
            lo, hi = max(centre - 0.5 - (patch - 1), 0), min(centre - 0.5 + (patch - 1), size - 1)
            assert (seen.min(), seen.max()) == (lo, hi), (row, col, axis)
    # The linear stem and the fine head's own linear squares stay at their squares' centres.
    for other in (dataclasses.replace(vision, stem="patch"),
                  dataclasses.replace(vision, local_head="patch_fine")):
        square = other.local_patch_size
        np.testing.assert_allclose(grounding.token_centres(other, (size, size))[1],
                                   [1.5 * square, 0.5 * square])


def test_conv_stem_token_centres_follow_the_models_local_tokens():
    # End to end through the image tower: with the conv stem and a per-patch local head, each
    # local token's gradient reaches exactly the pixels within p - 1 of its centre pixel
    # (token_centres, what evaluate_split points with), and the pointer uses those centres
    # through the resize and crop of a non-square stored image.
    import jax
    import jax.numpy as jnp

    from emocap_jax.models.clip import CLIP, param_shapes
    from tests.inference_fixtures import tiny_model_config

    config = tiny_model_config()
    config = config.replace(vision=dataclasses.replace(config.vision, stem="conv",
                                                       local_head="patch_mlp"))
    vision = config.vision
    size, patch, grid = vision.image_size, vision.patch_size, vision.local_grid_size
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s),
                                                          jnp.float32),
                                    param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    model = CLIP(config)
    image = jnp.asarray(rng.standard_normal((1, size, size, 3)), jnp.float32)
    centres = grounding.token_centres(vision, (size, size))
    for token in (grid + 1, 2 * grid + 3, grid * grid - 1):
        grad = jax.grad(lambda x: model.apply({"params": params}, x, True,
                                              method=CLIP.encode_image)[1][0, token].sum())(image)
        support = np.abs(np.asarray(grad[0])).sum(-1) > 0
        ys, xs = np.nonzero(support)
        cx, cy = centres[token]
        assert (xs.min() + xs.max() + 1) / 2 == cx and (ys.min() + ys.max() + 1) / 2 == cy, token
        assert xs.max() - xs.min() == 2 * (patch - 1)
    # Stored 2x the input, non-square: centres scale by 2 and shift by the crop's offset.
    stored = (4 * size, 2 * size)
    np.testing.assert_allclose(grounding.token_centres(vision, stored),
                               centres * 2 + [size, 0])


def test_summary_per_region_and_overall():
    # Which of 4 patches would hit, per pair: the best fixed patch for the eyes is patch 2 (hits
    # both eyes pairs), for the mouth patch 0, for the brows any (the first, 0).
    patch_hits = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    report = grounding.summarize(["eyes", "mouth", "eyes", "brows"], [True, False, False, True],
                                 [0.1, 0.2, 0.3, 0.4], [0.0, 0.25, 0.5, 0.25], patch_hits,
                                 FACE_REGIONS)
    assert list(report["per_region"]) == ["brows", "eyes", "mouth"]
    assert report["accuracy"] == 0.5 and report["chance"] == pytest.approx(0.25)
    assert report["prior"] == pytest.approx(3 / 4)
    assert report["per_region"]["eyes"] == {"pairs": 2, "hits": 1, "accuracy": 0.5,
                                            "chance": pytest.approx(0.2), "patch_chance": 0.25,
                                            "prior": 1.0, "prior_patch": 2}
    assert report["per_region"]["brows"]["prior"] == 0.0
    table = evaluate_report.grounding_table(report)
    assert "| eyes | 50.0 | 20.0 | 25.0 | 100.0 | 1 / 2 |" in table
    assert "| **all** | 50.0 | 25.0 | 25.0 | 75.0 | 2 / 4 |" in table


# ----------------------------------------------------------------------------- a tiny model

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from emocap_jax.evaluate.synthetic_benchmarks import generate_benchmarks
    from tests.inference_fixtures import make_tiny_export

    root = tmp_path_factory.mktemp("grounding")
    export = make_tiny_export(root / "export")
    # 40-px faces for the tiny model's 32-px input: the resize path is exercised.
    generate_benchmarks(root / "bench", per_class=1, size=40, splits=["basic"], progress=False)
    return export, root / "bench"


def _records(data_dir):
    from emocap_jax.data import example_codec, shard_writer
    from emocap_jax.data.source import ShardedTFRecordSource

    source = ShardedTFRecordSource(shard_writer.shard_paths(data_dir))
    return [example_codec.decode_record(source[i]) for i in range(len(source))]


@pytest.mark.slow
def test_grounding_protocol_matches_a_numpy_recomputation(bench):
    import emocap_jax
    from emocap_jax.evaluate import runner
    from emocap_jax.evaluate.features import Encoder
    from emocap_jax.models.clip import CLIP
    from emocap_jax.preprocess import preprocess

    export, data = bench
    model = emocap_jax.load(export)
    encoder = Encoder.load(export, batch_size=8)
    records = _records(data / "basic")
    entries = grounding.load_regions(data / "basic" / "regions.jsonl")
    images = preprocess([np.asarray(Image.open(io.BytesIO(r.images[0])).convert("RGB")) for r in records], 32)
    _, tokens = CLIP(model.config).apply({"params": model.params}, images, True, method=CLIP.encode_image)
    tokens = np.asarray(tokens, np.float64)
    for tolerance in (0.0, 6.0):
        result = runner.run(encoder, "synthetic", "grounding", data,
                            runner.Options(batch_size=8, grounding_tolerance=tolerance))
        rows = result["predictions"]
        expected = []
        for record, face_tokens in zip(records, tokens):
            for k, (region, text) in enumerate(entries[record.id]["local"]):
                if region is None:
                    continue
                u = model.encode_text(model.tokenize([text]))[0].astype(np.float64)
                scores = face_tokens @ (u / np.linalg.norm(u))
                boxes = entries[record.id]["regions"][region]
                hit, chance = _reference_point(scores, 4, 8, 32, (40, 40), boxes, tolerance)
                expected.append((record.id, k, region, int(np.argmax(scores)), hit, chance))
        assert [(r["id"], r["sentence"], r["region"], 4 * r["patch_row"] + r["patch_col"], bool(r["hit"]))
                for r in rows] == [e[:5] for e in expected]
        report = result["report"]
        assert report["num_pairs"] == len(expected)
        assert report["num_faces"] == len({e[0] for e in expected})  # a relaxed face has no pairs
        assert report["accuracy"] == pytest.approx(np.mean([e[4] for e in expected]))
        assert report["chance"] == pytest.approx(np.mean([e[5] for e in expected]), abs=1e-6)
        assert result["value"] == report["accuracy"] and result["metric"] == "pointing_accuracy"
        prior_hits = 0
        for region, block in report["per_region"].items():
            mine = [e for e in expected if e[2] == region]
            assert block["pairs"] == len(mine)
            assert block["accuracy"] == pytest.approx(np.mean([e[4] for e in mine]))
            # The best fixed patch: try every patch as the pointer of every pair of the region.
            rates = [np.mean([_reference_point(np.eye(16)[p], 4, 8, 32, (40, 40),
                                               entries[e[0]]["regions"][region], tolerance)[0]
                              for e in mine]) for p in range(16)]
            assert block["prior"] == pytest.approx(max(rates))
            prior_hits += max(rates) * len(mine)
        assert report["prior"] == pytest.approx(prior_hits / len(expected))
    assert report["tolerance"] == 6.0
    # A stale regions file of other faces is refused, naming the record.
    stale = data / "stale.jsonl"
    lines = (data / "basic" / "regions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["local"] = [{"region": "eyes", "text": "Some other sentence."}]
    stale.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=f"record {first['id']!r} has local sentences"):
        runner.run(encoder, "synthetic", "grounding", data, runner.Options(regions=str(stale)))


def test_boxes_of_another_aspect_ratio_are_refused_naming_the_record(bench, tmp_path):
    # The 40 x 40 faces with boxes recorded for an 80 x 40 image: stretching them onto the faces
    # would score a pointing game against the wrong places. Refused before any model runs.
    _, data = bench
    lines = [json.loads(line) for line in (data / "basic" / "regions.jsonl").read_text().splitlines()]
    lines[1]["image_size"] = [80, 40]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=rf"other.jsonl: record {lines[1]['id']!r} is 40x40 pixels "
                                         r".* boxes are for a 80x40 image"):
        grounding.evaluate_split(None, str(data / "basic"), str(other))
    # A uniformly resized copy is fine (sides truncated to int): the boxes are scaled.
    np.testing.assert_allclose(grounding.box_scale((96, 96), (48, 48)), [0.5] * 4)
    np.testing.assert_allclose(grounding.box_scale((97, 61), (48, 30)), [48 / 97, 30 / 61] * 2)
    assert grounding.box_scale((96, 96), (80, 60)) is None
    assert grounding.box_scale((60, 80), (80, 60)) is None  # width and height swapped


@pytest.mark.slow
def test_grounding_cli_writes_json_and_prints_the_table(bench, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    export, data = bench
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "emocap_jax.evaluate", "--checkpoint", str(export),
               "--benchmark", "synthetic", "--data", str(data), "--protocol",
               "grounding", "--output", str(out), "--batch-size", "8", "--quiet"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "synthetic faces grounding: pointing-game accuracy" in result.stdout
    assert ("| region | accuracy | chance (area) | chance (patch) | fixed-patch prior | "
            "hits / pairs |") in result.stdout
    saved = json.loads((out / "results" / "synthetic__grounding.json").read_text())
    assert saved["metric"] == "pointing_accuracy" and set(saved["report"]["per_region"]) <= set(FACE_REGIONS)
    assert (out / "predictions" / "synthetic__grounding.csv").is_file()
    markdown = (out / "report.md").read_text()
    assert "pointing game over" in markdown and "| **all** |" in markdown
