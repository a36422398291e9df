"""The analysis benches name the option whose path is wrong, in one line, before any work, and
refuse an option given twice (argparse would keep only the last)."""
import pytest

from tests.conftest import load_bench_script


def _error(capsys, call):
    with pytest.raises(SystemExit):
        call()
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_split_overlap_names_a_converter_output_folder_given_for_a_dataset(tmp_path, capsys):
    bench = load_bench_script("split_overlap")
    for split in ("train", "val"):
        (tmp_path / "fer" / split).mkdir(parents=True)
        (tmp_path / "fer" / split / "metadata.json").write_text('{"schema_version": 1, "shards": []}')
    error = _error(capsys, lambda: bench.main(["--train", str(tmp_path / "fer"),
                                               "--val", str(tmp_path / "fer" / "val")]))
    assert "error: --train: " in error and "fer/train" in error


@pytest.mark.parametrize("script, argv, named", [
    ("mining_guides", ["--checkpoint", "{tmp}/nowhere", "--data", "{tmp}/data"], "--checkpoint"),
    ("mining_guides", ["--checkpoint", "{tmp}", "--data", "{tmp}/nowhere"], "--data"),
    ("caption_spread", ["--manifest", "{tmp}/nowhere.jsonl", "--checkpoint", "{tmp}"],
     "--manifest"),
    ("caption_spread", ["--manifest", "{tmp}/m.jsonl", "--checkpoint", "{tmp}", "{tmp}/nowhere"],
     "--checkpoint"),
    ("sentence_spread", ["--regions", "{tmp}/data", "--checkpoint", "{tmp}"], "--regions"),
])
def test_a_wrong_path_is_named_by_its_option(tmp_path, capsys, script, argv, named):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text('{"schema_version": 1, "shards": []}')
    (tmp_path / "m.jsonl").write_text("")
    bench = load_bench_script(script)
    error = _error(capsys, lambda: bench.parse_args([a.format(tmp=tmp_path) for a in argv]))
    assert f"error: {named}" in error and str(tmp_path) in error


@pytest.mark.parametrize("script, argv, named", [
    ("mining_guides", ["--checkpoint", "{tmp}", "--data", "{tmp}/data", "--threshold", "0.9",
                       "--threshold", "0.99"], "--threshold"),
    ("loss_memory", ["--sizes", "256", "--sizes", "512"], "--sizes"),
    ("split_overlap", ["--train", "{tmp}/data", "--val", "{tmp}/data", "--thresholds", "0.9",
                       "--thresholds", "0.93"], "--thresholds"),
])
def test_an_option_given_twice_is_refused(tmp_path, capsys, script, argv, named):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text('{"schema_version": 1, "shards": []}')
    bench = load_bench_script(script)
    parse = getattr(bench, "parse_args", bench.main)
    error = _error(capsys, lambda: parse([a.format(tmp=tmp_path) for a in argv]))
    assert named in error and "given 2 times" in error
