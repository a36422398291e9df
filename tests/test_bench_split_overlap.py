"""bench/split_overlap.py: validation faces with a copy on the training side."""
import numpy as np
import pytest
from PIL import Image

from data_prep import benchmarks
from tests.conftest import load_bench_script

bench = load_bench_script("split_overlap")


def test_nearest_is_the_largest_pearson_correlation():
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(50, 64)), rng.normal(size=(7, 64))
    xt, _ = bench.unit_rows(train)
    xv, _ = bench.unit_rows(val)
    best, where = bench.nearest(xv, xt, chunk=16)
    corr = np.array([[np.corrcoef(v, t)[0, 1] for t in train] for v in val])
    np.testing.assert_allclose(best, corr.max(1), rtol=1e-5)
    np.testing.assert_array_equal(where, corr.argmax(1))


def test_counts_identical_and_near_copies_across_a_converted_split(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    (root / "a").mkdir(parents=True)
    base = rng.integers(0, 200, (32, 32)).astype(np.uint8)
    Image.fromarray(base).save(root / "a" / "orig.png")
    Image.fromarray(base + 40).save(root / "a" / "brighter.png")  # the same photo, brightened
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
            root / "a" / f"other{i}.png")
    Image.fromarray(base).save(root / "a" / "orig_again.png")  # byte-identical to orig
    benchmarks.convert_benchmark("imagefolder", root, tmp_path / "out", workers=1,
                                 val_fraction=0.2, progress=False)
    train, val = str(tmp_path / "out" / "train"), str(tmp_path / "out" / "val")
    # The hold-out coins put orig (and its byte-identical twin with it) in val, brighter in train.
    assert {"a/orig", "a/orig_again"} <= set(bench.thumbnails(val, 16)[3])
    assert "a/brighter" in bench.thumbnails(train, 16)[3]
    r = bench.overlap(train, val, 16, [0.99, 0.5])
    assert r["identical"] == 0 and r["flat"] == 0
    # Independent random faces correlate about 1/16 at 16x16; the brightened copy about 1.
    assert r["above"] == {0.99: 2, 0.5: 2}


@pytest.mark.parametrize("args, message", [
    # A 1x1 thumbnail is flat once centred: every face was left out and nothing counted.
    (["--side", "1"], "argument --side: must be an integer >= 2, got '1'"),
    (["--side", "0"], "argument --side: must be an integer >= 2, got '0'"),
    # No correlation lies above 1, and NaN compares false with every one: counts of 0.
    (["--thresholds", "0.9", "1.5"], "argument --thresholds: must be in [-1, 1), got '1.5'"),
    (["--thresholds", "nan"], "argument --thresholds: must be in [-1, 1), got 'nan'"),
    (["--thresholds", "-2"], "argument --thresholds: must be in [-1, 1), got '-2'"),
])
def test_numbers_out_of_range_are_refused_naming_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--train", "t", "--val", "v", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_empty_dataset_is_refused_naming_it(tmp_path, capsys):
    # A validation split without records ended in numpy's "need at least one array to stack".
    from emocap_jax.data.shard_writer import ShardedRecordWriter

    empty = tmp_path / "empty"
    with ShardedRecordWriter(empty, num_shards=1):
        pass
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--train", str(empty), "--val", str(empty)])
    assert str(exit_info.value.code) == (
        f"split_overlap: {empty} holds no records: there is nothing to compare")
