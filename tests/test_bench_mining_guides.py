"""bench/mining_guides.py: precision and recall of caption-guided mining against labels."""
import numpy as np
import pytest

from tests.conftest import load_bench_script
from configs import default as default_config

bench = load_bench_script("mining_guides")


def test_precision_recall_and_confused_labels_counted_by_hand():
    """Four labels of four records, each label's guides one unit vector, except that one record
    of label a carries label b's vector. Whole-set batches, threshold 0.9, no cap: the mined pairs
    are the pairs with equal vectors. Ordered pairs: a's other three 6, b's four plus the odd a
    20 (12 same-label, 8 not), c 12, d 12 -> 50 mined, 42 right; same-label pairs 4 x 12 = 48."""
    from emocap_jax import mining

    labels = np.array([lab for lab in "abcd" for _ in range(4)], dtype=object)
    basis = {lab: np.eye(8, dtype=np.float32)[k] for k, lab in enumerate("abcd")}
    guides = np.stack([basis[lab] for lab in labels])
    guides[0] = basis["b"]
    config = mining.MiningConfig(mode="text", threshold=0.9, top_k=0, min_spread=0.01)
    result = bench.measure(config, guides, labels, batch=16, batches=3, seed=0)
    assert result["per_row"] == pytest.approx(50 / 16)
    assert result["precision"] == pytest.approx(42 / 50)
    assert result["recall"] == pytest.approx(42 / 48)
    assert dict(result["confused"]) == {("a", "b"): 3 * 8}
    # A cap of 2 per row keeps at most 2 of each row's equal-vector columns.
    capped = bench.measure(config.__class__(mode="text", threshold=0.9, top_k=2, min_spread=0.01),
                           guides, labels, batch=16, batches=1, seed=0)
    assert capped["per_row"] == pytest.approx(2.0)


def test_transitivity_counts_the_closed_paths_by_hand():
    """Records 0-1-2 a chain (0~1, 1~2 above the threshold, 0~2 below), 3-4 a pair, 5 alone:
    ordered pairs 2+2+2 = 6; paths i-j-k (i != k) along them: 0-1-2 and 2-1-0, none closed ->
    transitivity 0; with 0~2 above too the three form a clique: 6 paths, all closed."""
    guides = np.zeros((6, 6), np.float32)
    c = np.cos(np.pi / 6)  # 0 and 2 each 30 degrees from 1, 60 degrees from each other
    guides[0, :2] = [c, -0.5]
    guides[1, :2] = [1.0, 0.0]
    guides[2, :2] = [c, 0.5]
    guides[3, 2] = guides[4, 2] = 1.0
    guides[5, 3] = 1.0
    labels = np.array(list("aaabbc"), dtype=object)
    chain = bench.transitivity(guides, labels, 0.8)
    assert chain["per_row"] == pytest.approx(6 / 6)
    assert chain["precision"] == 1.0 and chain["transitivity"] == 0.0
    clique = bench.transitivity(guides, labels, 0.4)
    assert clique["per_row"] == pytest.approx(8 / 6) and clique["transitivity"] == 1.0
    # Labels do not enter transitivity: a class merged with another is a clique too.
    merged = bench.transitivity(guides, np.array(list("abcbbc"), dtype=object), 0.4)
    assert merged["transitivity"] == 1.0 and merged["precision"] == pytest.approx(2 / 8)


def test_the_command_reports_every_threshold_and_refuses_too_few_records(tmp_path, capsys):
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.synthetic.corpus import generate_corpus
    from inference_fixtures import make_tiny_export

    generate_corpus(tmp_path / "synthetic", num=24, seed=0, size=32, eval_per_class=1, workers=1,
                    progress=False)
    convert_manifest(tmp_path / "synthetic" / "manifest.jsonl", tmp_path / "synthetic",
                     tmp_path / "train", num_shards=2, workers=1, progress=False)
    export = make_tiny_export(tmp_path / "export")
    args = ["--checkpoint", str(export), "--data", str(tmp_path / "train"), "--batch", "8",
            "--batches", "2"]
    assert bench.main(args + ["--threshold", "0.5", "0.99", "--no-mutual"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("24 records (")
    assert "threshold 0.5, top-k 8:" in out and "threshold 0.99, top-k 8:" in out
    assert "mean guide cosine: same label" in out
    # Without the flag the bench measures the rule a default training run mines with.
    assert default_config.get_config().loss.mining.mutual
    assert bench.main(args + ["--threshold", "0.5"]) == 0
    assert "threshold 0.5, top-k 8 mutual:" in capsys.readouterr().out
    assert bench.main(args + ["--threshold", "0.5", "--transitivity"]) == 0
    out = capsys.readouterr().out
    assert "all pairs at threshold 0.5: " in out and "all pairs at threshold 0.999: " in out
    assert bench.main(args + ["--threshold", "0.5", "--suggest", "0.99"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("suggested: --config.loss.mining.threshold=") or last.startswith(
        "no threshold of [0.5, 0.6, ")
    assert bench.main(args[:4] + ["--batch", "32"]) == 2
    assert "24 records with a label and a summary sentence (0 without), fewer than --batch 32" \
        in capsys.readouterr().err


def test_the_suggested_threshold_is_the_lowest_that_stops_a_near_miss():
    """Labels a-d, four records each, one unit vector per label; record 0 (label a) leans towards
    b: cosine 0.96 with b's records, 0 with its own. Up to 0.96 it is mined with b's four records
    (8 wrong ordered pairs); above, nothing wrong is mined, so 0.97 is the lowest threshold of
    SUGGEST_GRID with precision 1, and none reaches it with a guide whose wrong pair is exact."""
    from emocap_jax import mining

    labels = np.array([lab for lab in "abcd" for _ in range(4)], dtype=object)
    basis = {lab: np.eye(8, dtype=np.float32)[k] for k, lab in enumerate("abcd")}
    guides = np.stack([basis[lab] for lab in labels])
    guides[0] = 0.96 * basis["b"] + np.sqrt(1 - 0.96 ** 2) * np.eye(8, dtype=np.float32)[7]
    results = {t: bench.measure(mining.MiningConfig(mode="text", threshold=t, top_k=0,
                                                    min_spread=0.01),
                                guides, labels, batch=16, batches=1, seed=0)
               for t in bench.SUGGEST_GRID}
    assert results[0.95]["precision"] == pytest.approx(42 / 50)  # right: 6 + 12 + 12 + 12
    assert results[0.97]["precision"] == 1.0
    assert bench.suggest_threshold(results, 0.99) == 0.97
    assert bench.suggest_threshold(results, 0.8) == 0.5
    exact = {t: dict(r, precision=min(r["precision"], 0.9)) for t, r in results.items()}
    assert bench.suggest_threshold(exact, 0.99) is None


def test_faces_with_only_a_label_are_guided_by_the_captions_training_makes(tmp_path):
    """Benchmark output (labels, no captions): the summary guide is the label's description, as
    in training (data.captions_from_labels), and the global guide one of the label's templates."""
    import io

    from PIL import Image

    from emocap_jax.data import label_captions
    from emocap_jax.data.example_codec import FaceRecord
    from emocap_jax.data.shard_writer import ShardedRecordWriter

    classes = ("angry", "happy", "sad")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    with ShardedRecordWriter(tmp_path / "ds", 1, classes=list(classes)) as writer:
        for i in range(9):
            writer.add(FaceRecord(id=f"f{i}", images=[buf.getvalue()], label=classes[i % 3],
                                  label_id=i % 3))
        writer.close()
    texts, labels, skipped = bench.read_guides(str(tmp_path / "ds"), "summary", 100, seed=0)
    assert skipped == 0 and len(texts) == 9
    assert texts == [label_captions.summary_caption(lab) for lab in labels]
    texts, labels, _ = bench.read_guides(str(tmp_path / "ds"), "global_caption", 100, seed=0)
    assert all(t in {label_captions.global_caption(lab, k)
                     for k in range(len(label_captions.TEMPLATES))} for t, lab in zip(texts, labels))


def test_the_mutual_cap_drops_a_rare_label_mined_with_the_next_one():
    """Label a: 5 records on one vector, label b: 1 record at cosine 0.9 to a's, labels c-e: 26
    records (cosine 0.6 between labels). Cap 4, relative threshold 1.5: the b record mines four a
    records (a's own rows keep b out: their four places hold their classmates); mutual: none."""
    from emocap_jax import mining

    e = np.eye(6)
    common = np.sqrt(0.6) * e[0]
    vec = {lab: common + np.sqrt(0.4) * e[k] for k, lab in enumerate("acde", start=1)}
    vec["b"] = common + np.sqrt(0.4) * (0.75 * e[1] + np.sqrt(1 - 0.75 ** 2) * e[5])
    labels = np.array(list("aaaaab") + list("c" * 9 + "d" * 9 + "e" * 8), dtype=object)
    guides = np.stack([vec[lab] for lab in labels]).astype(np.float32)
    config = mining.MiningConfig(mode="text", threshold=-1.0, top_k=4, relative_threshold=1.5,
                                 min_spread=0.01)
    capped = bench.measure(config, guides, labels, batch=32, batches=1, seed=0)
    mutual = bench.measure(config.__class__(**{**config.__dict__, "mutual": True}), guides,
                           labels, batch=32, batches=1, seed=0)
    assert capped["confused"][("a", "b")] == 4 and capped["precision"] < 1.0
    assert mutual["confused"][("a", "b")] == 0 and mutual["precision"] == 1.0


@pytest.mark.parametrize("args, message", [
    # A cosine floor above 1 (or NaN) mines nothing; one below -1 is no floor, as -1 is.
    (["--threshold", "0.9", "1.5"], "argument --threshold: must be in [-1, 1], got '1.5'"),
    (["--threshold", "nan"], "argument --threshold: must be in [-1, 1], got 'nan'"),
    (["--relative-threshold", "nan"], "argument --relative-threshold: must be in (-inf, inf)"),
    (["--relative-threshold", "inf"], "argument --relative-threshold: must be in (-inf, inf)"),
    # MiningConfig refused a negative spread after encoding; above 1 (a cosine std's largest)
    # every row mines nothing.
    (["--min-spread", "-0.1"], "argument --min-spread: must be in [0, 1], got '-0.1'"),
    (["--min-spread", "2"], "argument --min-spread: must be in [0, 1], got '2'"),
    (["--seed", "-1"], "argument --seed: must be a non-negative integer, got '-1'"),
    # The mutual cap (the default) without a cap: MiningConfig's ValueError traceback, after the
    # model had encoded every guide sentence.
    (["--top-k", "0"], "--top-k 0 (no cap) with --mutual"),
    (["--top-k", "0", "--mutual"], "give --top-k > 0, or --no-mutual"),
])
def test_numbers_out_of_range_are_refused_naming_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--checkpoint", "c", "--data", "d", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_cap_without_the_mutual_cap_and_ranges_ends_are_accepted(tmp_path):
    # parse_args checks that --checkpoint and --data are there.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.json").write_text('{"schema_version": 1, "shards": []}')
    c, d = str(tmp_path), str(tmp_path / "d")
    args = bench.parse_args(["--checkpoint", c, "--data", d, "--top-k", "0", "--no-mutual",
                             "--threshold", "-1", "1", "--min-spread", "0",
                             "--relative-threshold", "-1.5", "--seed", "0"])
    assert (args.top_k, args.mutual, args.threshold) == (0, False, [-1.0, 1.0])
    assert (args.min_spread, args.relative_threshold, args.seed) == (0.0, -1.5, 0)
    bench._config(args, -1.0)  # a rule mining.MiningConfig takes
