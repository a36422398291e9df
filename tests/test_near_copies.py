"""data_prep/near_copies.py and the hold-out split that joins near-copies (--join-near-copies)."""
import numpy as np
import pytest
from PIL import Image

from data_prep import benchmarks, near_copies
from data_prep.benchmark_formats import common


def _smooth_face(rng, side=48):
    # A smooth random image, as a face is at this scale: a one-pixel shift keeps its thumbnail.
    small = rng.integers(0, 200, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC))


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(_smooth_face(rng)).save(root / cls / f"other{i}.png")
    face = _smooth_face(rng)
    Image.fromarray(face).save(root / "a" / "face.png")
    Image.fromarray((face * 0.8 + 30).astype(np.uint8)).save(root / "a" / "face_bright.jpg",
                                                             quality=70)
    Image.fromarray(np.roll(face, 1, axis=1)).save(root / "a" / "face_shift.png")
    Image.fromarray(face).save(root / "b" / "face_relabelled.jpg", quality=90)
    return root


def test_pairs_are_the_thumbnails_correlating_above_the_threshold(tmp_path):
    root = _folder(tmp_path)
    items = benchmarks.READERS["imagefolder"](str(root), "all", None,
                                              benchmarks.ReaderOptions()).items
    # Reference: numpy's Pearson correlation of the 16x16 thumbnails, every pair.
    thumbs = [np.asarray(Image.open(e.source).convert("L").resize((16, 16), Image.BILINEAR),
                         np.float64).ravel() for e in items]
    corr = np.corrcoef(np.stack(thumbs))
    want = {(i, j) for i in range(len(items)) for j in range(i + 1, len(items))
            if corr[i, j] > 0.93}
    assert set(near_copies.near_copy_pairs(items, 0.93)) == want
    ids = {items[i].id for pair in want for i in pair}
    assert ids == {"a/face", "a/face_bright", "a/face_shift", "b/face_relabelled"}


def test_flat_unreadable_and_non_image_entries_are_never_paired(tmp_path):
    (tmp_path / "flat.png").write_bytes(b"")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(tmp_path / "flat.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [common.Entry(id=n, label="a", label_id=0, source=str(tmp_path / f"{n}.png"))
             for n in ("flat", "flat", "broken", "broken")]
    items.append(common.Entry(id="clip", label="a", label_id=0, source=str(tmp_path / "flat.png"),
                              kind=common.VIDEO))
    assert near_copies.near_copy_pairs(items, -1.0) == []
    with pytest.raises(ValueError, match="correlation"):
        near_copies.near_copy_pairs(items, 1.5)


def test_join_near_copies_keeps_the_copies_of_one_face_on_one_side(tmp_path):
    root = _folder(tmp_path)
    listing = benchmarks.READERS["imagefolder"](str(root), "all", None,
                                                benchmarks.ReaderOptions())
    copies = {"a/face", "a/face_bright", "a/face_shift", "b/face_relabelled"}

    def sides(part_listings):
        return [copies & {e.id for e in part.items} for part in part_listings]

    # By id, the four copies' coins (0.64, 0.15, 0.34, 0.16) fall on both sides of 0.5.
    assert all(sides(benchmarks.split_holdout(listing, 0.5, 0)))
    train, val = benchmarks.split_holdout(listing, 0.5, 0, near_copy_threshold=0.93)
    assert sorted(map(len, sides((train, val)))) == [0, 4]
    assert val.info["holdout"]["near_copy_threshold"] == 0.93
    assert val.info["holdout"]["near_copy_joins"] == 3
    # Faces without a copy keep their own id's coin.
    for e in val.items:
        if e.id not in copies:
            assert benchmarks.holdout_key_fraction(e.id, 0) < 0.5
    assert len(train.items) + len(val.items) == 24


def test_join_near_copies_needs_a_val_fraction_split(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        benchmarks.convert_benchmark("imagefolder", root, tmp_path / "o", workers=1,
                                     near_copy_threshold=0.9, progress=False)
    with pytest.raises(SystemExit):
        benchmarks.main(["--name", "imagefolder", "--root", str(root), "--output",
                         str(tmp_path / "o"), "--join-near-copies", "0.9"])
