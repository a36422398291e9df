"""bench/sentence_spread.py: how alike a text tower makes sentences of different regions."""
import json

import numpy as np
import pytest

from tests.conftest import load_bench_script

bench = load_bench_script("sentence_spread")


def test_region_cosines_counted_by_hand():
    """brows: e0 and e1; mouth: e0 twice (scaled: cosines ignore length). brows/brows: the one
    off-diagonal pair, cosine 0; brows/mouth: mean of 1, 1, 0 and 0; mouth/mouth: 1. The
    cross-region mean leaves same-region pairs out, so it is brows/mouth alone."""
    e = np.eye(3)
    cos = bench.region_cosines({"brows": np.stack([e[0], 2 * e[1]]),
                                "mouth": np.stack([3 * e[0], 3 * e[0]])})
    assert cos[("brows", "brows")] == pytest.approx(0.0)
    assert cos[("brows", "mouth")] == pytest.approx(0.5)
    assert cos[("mouth", "mouth")] == pytest.approx(1.0)
    assert bench.cross_region(cos) == pytest.approx(0.5)


def test_sentences_are_grouped_by_region_and_a_thin_region_is_named(tmp_path):
    path = tmp_path / "regions.jsonl"
    lines = [{"id": str(i), "image_size": [8, 8],
              "regions": {"brows": [[0, 0, 8, 2]], "mouth": [[0, 6, 8, 8]]},
              "local": [{"region": "brows", "text": f"brow {i % 3}"},
                        {"region": "mouth", "text": "mouth"}, {"region": None, "text": "calm"}]}
             for i in range(5)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    texts = bench.sentences_by_region(str(path), ["brows"], per_region=2)
    assert texts == {"brows": ["brow 0", "brow 1"]}
    with pytest.raises(SystemExit, match="fewer than two distinct sentences for region.s. mouth"):
        bench.sentences_by_region(str(path), ["brows", "mouth"], per_region=60)
