"""bench/caption_spread.py: how alike a text tower makes captions of one label and of others."""
import json

import numpy as np
import pytest

from tests.conftest import load_bench_script

bench = load_bench_script("caption_spread")


def test_label_cosines_counted_by_hand():
    """Rows a, a, b (labels x, x, y): the one same-label pair is e0/e0 (cosine 1, lengths
    ignored); the different-label pairs are e0/e1 twice each way (cosine 0)."""
    e = np.eye(2)
    same, other = bench.label_cosines(np.stack([e[0], 2 * e[0], e[1]]), ["x", "x", "y"])
    assert same == pytest.approx(1.0) and other == pytest.approx(0.0)
    assert bench.paired_cosine(np.stack([e[0], e[1]]), np.stack([3 * e[0], e[0]])) == \
        pytest.approx(0.5)
    with pytest.raises(ValueError, match="two records of one label"):
        bench.label_cosines(np.eye(2), ["x", "y"])


def test_baseline_records_are_read_by_id(tmp_path):
    rows = [{"id": i, "label": "x", "global": i} for i in ("a", "b", "c")]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["id"] for r in bench.read_records(str(path), 2)] == ["a", "b"]
    assert [r["id"] for r in bench.read_records(str(path), ids=["c", "a"])] == ["c", "a"]
    with pytest.raises(SystemExit, match="no record with id 'z'"):
        bench.read_records(str(path), ids=["z"])
